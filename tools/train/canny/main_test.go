package main

import (
	"bytes"
	"image"
	"image/color"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion/control"
)

// square is a w x h RGB frame: a red square on white, and the same as an image.
func square(w, h int) ([]byte, *image.NRGBA) {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	frame := make([]byte, 0, 3*w*h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.NRGBA{255, 255, 255, 255}
			if x >= w/4 && x < 3*w/4 && y >= h/4 && y < 3*h/4 {
				c = color.NRGBA{200, 20, 20, 255}
			}
			img.SetNRGBA(x, y, c)
			frame = append(frame, c.R, c.G, c.B)
		}
	}
	return frame, img
}

func TestRun(t *testing.T) {
	frame, img := square(16, 12)
	want := control.Canny(img, control.CannyLow, control.CannyHigh).Pix
	require.Contains(t, want, uint8(255), "the square has edges")

	var out bytes.Buffer
	n, err := run(bytes.NewReader(append(append([]byte{}, frame...), frame...)), &out, 16, 12, control.CannyLow, control.CannyHigh)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Equal(t, append(append([]byte{}, want...), want...), out.Bytes())

	n, err = run(bytes.NewReader(nil), &out, 16, 12, 100, 200)
	assert.NoError(t, err, "no frames is no error")
	assert.Zero(t, n)
}

func TestRunErrors(t *testing.T) {
	frame, _ := square(8, 8)
	for _, tc := range []struct {
		name      string
		in        []byte
		w, h      int
		low, high int
		want      string
	}{
		{"incomplete frame", append(append([]byte{}, frame...), frame[:10]...), 8, 8, 100, 200, "frame 1 is incomplete"},
		{"zero width", frame, 0, 8, 100, 200, "frame size"},
		{"huge frame", frame, 1 << 15, 8, 100, 200, "frame size"},
		{"negative threshold", frame, 8, 8, -1, 200, "thresholds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(bytes.NewReader(tc.in), &bytes.Buffer{}, tc.w, tc.h, tc.low, tc.high)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
