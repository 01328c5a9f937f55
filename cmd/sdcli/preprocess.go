package main

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gosd/gosd/diffusion/control"
)

// maxCannyThreshold is the largest L1 gradient magnitude of an 8-bit image (|dx| and
// |dy| of a 3×3 Sobel are at most 4·255 each): a threshold at or above it finds nothing.
const maxCannyThreshold = 2040

// preprocessOptions are the flags of preprocess.
type preprocessOptions struct {
	input, output string
	low, high     int
	cannySet      bool
}

func preprocessCommand(a *app, fs *flagSet) func(context.Context, []string) error {
	o := &preprocessOptions{low: control.CannyLow, high: control.CannyHigh}
	fs.stringVar(&o.input, "i", "path", "", "input image, PNG or JPEG (no default: required)")
	fs.stringVar(&o.output, "o", "path", "", "output PNG, 8-bit gray (no default: required; an existing file is replaced)")
	fs.funcVar("canny", "LOW,HIGH", fmt.Sprintf("canny's hysteresis thresholds on the gradient magnitude, 0 to %d;\nswapped when LOW > HIGH, as OpenCV (default 100,200, as diffusers' example)", maxCannyThreshold),
		func(s string) (err error) {
			o.low, o.high, err = parseThresholds(s)
			o.cannySet = true
			return err
		})
	return func(ctx context.Context, args []string) error { return a.preprocess(ctx, fs, o, args) }
}

func parseThresholds(s string) (low, high int, err error) {
	parts := strings.Split(s, ",")
	if len(parts) != 2 {
		return 0, 0, errors.New("want two comma-separated integers LOW,HIGH")
	}
	var v [2]int
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || n > maxCannyThreshold {
			return 0, 0, fmt.Errorf("%q: want an integer between 0 and %d", p, maxCannyThreshold)
		}
		v[i] = n
	}
	return v[0], v[1], nil
}

// preprocessKinds are the control images preprocess makes, by KIND.
var preprocessKinds = map[string]func(img image.Image, o *preprocessOptions) *image.Gray{
	"canny":  func(img image.Image, o *preprocessOptions) *image.Gray { return control.Canny(img, o.low, o.high) },
	"gray":   func(img image.Image, _ *preprocessOptions) *image.Gray { return control.Gray(img) },
	"invert": func(img image.Image, _ *preprocessOptions) *image.Gray { return control.Invert(img) },
}

// preprocess runs with args the arguments left after the flags before KIND: KIND, then
// maybe more flags, which are parsed here so that they may come on either side of it.
func (a *app) preprocess(ctx context.Context, fs *flagSet, o *preprocessOptions, args []string) error {
	if len(args) == 0 {
		return usagef("which control image? want KIND: canny, gray or invert")
	}
	kind := args[0]
	if err := fs.parse(args[1:]); err != nil {
		return err
	}
	convert := preprocessKinds[kind]
	switch {
	case convert == nil:
		return usagef("unknown kind %q: want canny, gray or invert", kind)
	case fs.NArg() > 0:
		return usagef("unexpected argument %q", fs.Arg(0))
	case o.cannySet && kind != "canny":
		return usagef("--canny is for canny, not %s", kind)
	case o.input == "":
		return usagef("preprocess needs an input image: pass -i")
	case o.output == "":
		return usagef("preprocess needs an output file: pass -o")
	case !strings.EqualFold(filepath.Ext(o.output), ".png"):
		return usagef("-o %s: the output must be a .png file", o.output)
	}
	if err := checkOutput(o.output, 1); err != nil {
		return err
	}
	img, err := readImage(o.input)
	if err != nil {
		return err
	}
	out := convert(img, o)
	if err := ctx.Err(); err != nil {
		return err // cancelled while computing: write nothing
	}
	if err := writeFileAtomic(o.output, func(w io.Writer) error { return png.Encode(w, out) }); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, o.output)
	return nil
}
