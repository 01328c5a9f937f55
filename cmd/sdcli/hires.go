package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/gosd/gosd/diffusion"
)

// hiresOptions are txt2img's hires-fix flags.
type hiresOptions struct {
	scale, strength float64
	steps           int
	upscaler        string // "latent" or "esrgan:PATH"
}

func (o *hiresOptions) define(fs *flagSet) {
	fs.floatVar(&o.scale, "hires-scale", "x", 0, "hires fix: repaint the image at this many times its size, in (1, 4]\n(default 0: no hires fix)",
		func(v float64) error {
			if v != 0 && !(v > 1 && v <= 4) {
				return errors.New("must be 0 or in (1, 4]")
			}
			return nil
		})
	fs.stringVar(&o.upscaler, "hires-upscaler", "NAME", "latent", "how the hires fix enlarges the first pass: latent (bilinear, the web UI's \"Latent\") or esrgan:PATH\n(an ESRGAN .pth or safetensors; default latent)")
	fs.intVar(&o.steps, "hires-steps", "N", 0, "steps of the hires pass, counted as img2img counts them (default 0: --steps)", intRange(0, diffusion.MaxSteps))
	fs.floatVar(&o.strength, "hires-strength", "x", diffusion.DefaultHiresStrength,
		fmt.Sprintf("denoising strength of the hires pass, in (0, 1] (default %g)", diffusion.DefaultHiresStrength), func(v float64) error {
			if !(v > 0 && v <= 1) {
				return errors.New("must be in (0, 1]")
			}
			return nil
		})
}

// check validates the upscaler's name before any model is opened.
func (o *hiresOptions) check() error {
	if o.upscaler != "latent" && !strings.HasPrefix(o.upscaler, "esrgan:") {
		return usagef("--hires-upscaler %q: want latent or esrgan:PATH", o.upscaler)
	}
	if strings.HasPrefix(o.upscaler, "esrgan:") && !diffusion.IsESRGAN(strings.TrimPrefix(o.upscaler, "esrgan:")) {
		return usagef("--hires-upscaler %s: not an ESRGAN file (Real-ESRGAN's .pth or safetensors)", o.upscaler)
	}
	return nil
}

// hires returns the request's hires fix (nil without --hires-scale) and a function that
// frees what it opened.
func (o *hiresOptions) hires(pipe *pipelineOptions, stderr io.Writer) (*diffusion.Hires, func(), error) {
	if o.scale == 0 {
		return nil, func() {}, nil
	}
	h := &diffusion.Hires{Scale: o.scale, Steps: o.steps, Strength: o.strength}
	path, ok := strings.CutPrefix(o.upscaler, "esrgan:")
	if !ok {
		return h, func() {}, nil
	}
	e, err := pipe.openESRGAN(path, stderr)
	if err != nil {
		return nil, nil, err
	}
	h.Upscaler = e
	return h, func() { e.Close() }, nil
}
