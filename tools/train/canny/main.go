// Command canny turns images into Canny edge maps with the runtime's own Canny
// (diffusion/control), so the demo ControlNet is trained on exactly the edges that
// sdcli's --control-preprocess canny makes.
//
// It reads raw 8-bit RGB frames of -width x -height pixels (row-major, R G B interleaved)
// from stdin until EOF and writes, per frame, its edges as width x height bytes, 255 on
// 0. The thresholds default to sdcli's (control.CannyLow, control.CannyHigh), and the
// image is taken as RGB, unblurred, as there.
//
// canny_data.py runs it as: go run ./tools/train/canny -width 64 -height 64
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"image"
	"io"
	"os"

	"github.com/gosd/gosd/diffusion/control"
)

func main() {
	fs := flag.NewFlagSet("canny", flag.ExitOnError)
	w := fs.Int("width", 64, "frame width in pixels")
	h := fs.Int("height", 64, "frame height in pixels")
	low := fs.Int("low", control.CannyLow, "low hysteresis threshold")
	high := fs.Int("high", control.CannyHigh, "high hysteresis threshold")
	_ = fs.Parse(os.Args[1:])
	n, err := run(os.Stdin, os.Stdout, *w, *h, *low, *high)
	if err != nil {
		fmt.Fprintln(os.Stderr, "canny:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "canny: %d frames of %dx%d, thresholds %d,%d\n", n, *w, *h, *low, *high)
}

// run converts the frames of in to edge maps on out and returns how many it converted.
func run(in io.Reader, out io.Writer, w, h, low, high int) (int, error) {
	if w < 1 || h < 1 || w > 1<<14 || h > 1<<14 {
		return 0, fmt.Errorf("frame size %dx%d (want 1 to 16384 pixels a side)", w, h)
	}
	if low < 0 || high < 0 {
		return 0, fmt.Errorf("thresholds %d,%d (want >= 0)", low, high)
	}
	r := bufio.NewReader(in)
	bw := bufio.NewWriter(out)
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	frame := make([]byte, 3*w*h)
	n := 0
	for ; ; n++ {
		if _, err := io.ReadFull(r, frame); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return n, fmt.Errorf("frame %d is incomplete (want %d bytes of RGB)", n, len(frame))
			}
			return n, err
		}
		for i := 0; i < w*h; i++ {
			copy(img.Pix[4*i:4*i+3], frame[3*i:3*i+3])
			img.Pix[4*i+3] = 255
		}
		if _, err := bw.Write(control.Canny(img, low, high).Pix); err != nil {
			return n, fmt.Errorf("write edges: %w", err)
		}
	}
	return n, bw.Flush()
}
