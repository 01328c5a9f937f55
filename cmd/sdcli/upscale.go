package main

import (
	"fmt"
	"image"

	"github.com/gosd/gosd/diffusion"
)

// upscaleOptions are the flags upscale adds to the generation flags.
type upscaleOptions struct {
	noiseLevel int
}

func (o *upscaleOptions) define(fs *flagSet) {
	fs.intVar(&o.noiseLevel, "noise-level", "N", diffusion.DefaultNoiseLevel,
		fmt.Sprintf("noise added to the low-resolution image first, in [0, the model's max_noise_level]: more lets the model change more\n(default %d)", diffusion.DefaultNoiseLevel),
		intRange(0, 1000))
}

// request is the Upscale call of the generation flags req on img.
func (o *upscaleOptions) request(req diffusion.Request, img image.Image) diffusion.UpscaleRequest {
	level := o.noiseLevel
	if level == 0 {
		level = diffusion.NoNoise // the API's 0 is its default
	}
	return diffusion.UpscaleRequest{Request: req, Image: img, NoiseLevel: level}
}
