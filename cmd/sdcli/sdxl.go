package main

import (
	"errors"
	"fmt"
	"image"
	"strconv"
	"strings"

	"github.com/gosd/gosd/diffusion"
)

// sdxlOptions are the generation flags only SDXL models take: the second text encoder's
// prompts and the micro-conditioning. Other models refuse them when set.
type sdxlOptions struct {
	prompt2, negative2 string
	sizes              diffusion.SizeConditioning
	// txt2img: a second model that finishes the schedule from refinerStart on.
	refiner      string
	refinerStart float64
}

func (o *sdxlOptions) define(fs *flagSet, m mode) {
	if m == modeTxt2Img {
		fs.stringVar(&o.refiner, "refiner", "path", "", "a model that takes over the last part of the schedule (SDXL's base + refiner;\ndefault: none)")
		fs.floatVar(&o.refinerStart, "refiner-start", "x", diffusion.DefaultRefinerStart,
			fmt.Sprintf("with --refiner: the fraction of the schedule the first model runs, in (0, 1) (default %g)", diffusion.DefaultRefinerStart),
			func(v float64) error {
				if !(v > 0 && v < 1) {
					return errors.New("must be in (0, 1)")
				}
				return nil
			})
	}
	fs.stringVar(&o.prompt2, "prompt-2", "text", "", "SDXL: prompt of the second text encoder (default: the prompt)")
	fs.stringVar(&o.negative2, "negative-prompt-2", "text", "", "SDXL: negative prompt of the second text encoder (default: the negative prompt)")
	for _, f := range []struct {
		name, what string
		size       *diffusion.Size
	}{
		{"original-size", "the original image size the model is told (default: the output size)", &o.sizes.OriginalSize},
		{"target-size", "the target size it is told (default: the output size)", &o.sizes.TargetSize},
		{"negative-original-size", "the negative row's original size, with --negative-target-size\n(default: the positive row's)", &o.sizes.NegativeOriginalSize},
		{"negative-target-size", "the negative row's target size, with --negative-original-size\n(default: the positive row's)", &o.sizes.NegativeTargetSize},
	} {
		fs.funcVar(f.name, "WxH", "SDXL: "+f.what, func(s string) (err error) {
			*f.size, err = parseSize(s)
			return err
		})
	}
	for _, f := range []struct {
		name, what string
		score      *float64
		def        float64
	}{
		{"aesthetic-score", "SDXL refiner: the aesthetic score it is told", &o.sizes.AestheticScore, 6},
		{"negative-aesthetic-score", "SDXL refiner: the negative row's aesthetic score", &o.sizes.NegativeAestheticScore, 2.5},
	} {
		fs.floatVar(f.score, f.name, "x", 0, fmt.Sprintf("%s (default 0: diffusers' %g)", f.what, f.def), floatRange(0, 1000))
	}
	for _, f := range []struct {
		name, what string
		at         *image.Point
	}{
		{"crop", "the crop's top-left corner, left,top, the model is told (default 0,0)", &o.sizes.CropTopLeft},
		{"negative-crop", "the negative row's crop, with the negative sizes (default 0,0)", &o.sizes.NegativeCropTopLeft},
	} {
		fs.funcVar(f.name, "X,Y", "SDXL: "+f.what, func(s string) (err error) {
			*f.at, err = parsePoint(s)
			return err
		})
	}
}

func (o *sdxlOptions) apply(req *diffusion.Request) {
	req.Prompt2, req.NegativePrompt2, req.SizeConditioning = o.prompt2, o.negative2, o.sizes
}

// parseSize reads WxH in pixels.
func parseSize(s string) (diffusion.Size, error) {
	w, h, ok := strings.Cut(strings.ToLower(s), "x")
	if !ok {
		return diffusion.Size{}, errors.New("want WxH, e.g. 1024x1024")
	}
	var v [2]int
	for i, p := range []string{w, h} {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 1<<16 {
			return diffusion.Size{}, fmt.Errorf("%q: want a side between 1 and %d", p, 1<<16)
		}
		v[i] = n
	}
	return diffusion.Size{Width: v[0], Height: v[1]}, nil
}

// parsePoint reads X,Y in pixels.
func parsePoint(s string) (image.Point, error) {
	x, y, ok := strings.Cut(s, ",")
	if !ok {
		return image.Point{}, errors.New("want X,Y, e.g. 0,0")
	}
	var v [2]int
	for i, p := range []string{x, y} {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || n > 1<<16 {
			return image.Point{}, fmt.Errorf("%q: want a coordinate between 0 and %d", p, 1<<16)
		}
		v[i] = n
	}
	return image.Point{X: v[0], Y: v[1]}, nil
}
