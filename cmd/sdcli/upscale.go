package main

import (
	"context"
	"fmt"
	"image"
	"io"
	"path/filepath"
	"time"

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
	fs.intVar(&o.tile, "tile", "PX", 0, "larger images run in overlapping tiles of at most PX x PX input pixels (the VAE in tiles of half, at least 64),\nblended; one covering the image runs it whole (default 0: twice the model's sample size, 256 for the released model)",
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

// esrganUpscale is upscale with an ESRGAN generator: no prompt, no sampling; the PNG
// carries AUTOMATIC1111's postprocessing fields.
func (a *app) esrganUpscale(ctx context.Context, o *genOptions, modelPath string) error {
	if o.prompt != "" || o.negative != "" {
		fmt.Fprintln(a.stderr, "note: an ESRGAN model takes no prompt; -p and -n are not used")
	}
	img, err := readImage(o.init)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "loading %s (ESRGAN)\n", modelPath)
	e, err := o.pipe.openESRGAN(modelPath, a.stderr)
	if err != nil {
		return err
	}
	defer e.Close()
	start := time.Now()
	out, err := e.Upscale(ctx, diffusion.ESRGANRequest{Image: img, Tile: o.up.tile})
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b := out.Bounds()
	fmt.Fprintf(a.stderr, "%d×%d (x%d) in %s\n", b.Dx(), b.Dy(), e.Scale(), time.Since(start).Round(10*time.Millisecond))
	parameters := fmt.Sprintf("Postprocess upscale by: %d, Postprocess upscaler: %s, Version: gosd", e.Scale(), filepath.Base(modelPath))
	if err := writeFileAtomic(o.output, func(w io.Writer) error { return encodePNG(w, out, parameters) }); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, o.output)
	return nil
}
