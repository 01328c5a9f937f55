package main

import (
	"image"
	"image/color"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion/modelfile"
)

// kitImage is the "image" tensor of a conformance kit run: (1, 3, H, W) in [0, 1].
func kitImage(t *testing.T, path string) []float32 {
	t.Helper()
	f, err := modelfile.OpenSafetensors(path)
	require.NoError(t, err)
	defer f.Close()
	golden, ok := f.Tensor("image")
	require.True(t, ok, "%s has no image", path)
	require.Len(t, golden.Shape, 4)
	require.Equal(t, []int64{1, 3}, golden.Shape[:2])
	ref, err := golden.Float32s()
	require.NoError(t, err)
	return ref
}

// maxPixelError is the largest |pixel - 255 ref| over img's red, green and blue, ref
// (3, H, W) in [0, 1] at img's size.
func maxPixelError(t *testing.T, img image.Image, ref []float32) float64 {
	t.Helper()
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	require.Len(t, ref, 3*w*h, "reference for a %dx%d image", w, h)
	var worst float64
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
			for ch, v := range []uint8{c.R, c.G, c.B} {
				worst = math.Max(worst, math.Abs(float64(v)-255*float64(ref[(ch*h+y)*w+x])))
			}
		}
	}
	return worst
}
