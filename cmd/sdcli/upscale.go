package main

import (
	"fmt"
	"image"

	"github.com/gosd/gosd/diffusion"
)

// upscaleOptions are the flags upscale adds to the generation flags.
type upscaleOptions struct {
	noiseLevel, tile int
}

func (o *upscaleOptions) define(fs *flagSet) {
	fs.intVar(&o.noiseLevel, "noise-level", "N", diffusion.DefaultNoiseLevel,
		fmt.Sprintf("noise added to the low-resolution image first, in [0, the model's max_noise_level]: more lets the model change more\n(default %d)", diffusion.DefaultNoiseLevel),
		intRange(0, 1000))
	fs.intVar(&o.tile, "tile", "PX", 0, "larger images run in overlapping tiles of at most PX x PX input pixels (the VAE in tiles of half),\nblended; one covering the image runs it whole (default 0: twice the model's sample size, 256 for the released model)",
		func(v int) error {
			if v != 0 && (v < diffusion.MinTile || v > diffusion.MaxSide) {
				return fmt.Errorf("must be 0 or between %d and %d", diffusion.MinTile, diffusion.MaxSide)
			}
			return nil
		})
}

// request is the Upscale call of the generation flags req on img.
func (o *upscaleOptions) request(req diffusion.Request, img image.Image) diffusion.UpscaleRequest {
	level := o.noiseLevel
	if level == 0 {
		level = diffusion.NoNoise // the API's 0 is its default
	}
	return diffusion.UpscaleRequest{Request: req, Image: img, NoiseLevel: level, Tile: o.tile}
}
