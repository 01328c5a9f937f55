package main

import (
	"context"
	"fmt"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/tokenizer"
)

func infoCommand(a *app, fs *flagSet) func(context.Context, []string) error {
	var mo modelOptions
	mo.define(fs)
	return func(ctx context.Context, args []string) error {
		if len(args) > 1 {
			return usagef("unexpected argument %q: info takes one model", args[1])
		}
		var path string
		if len(args) == 1 {
			path = args[0]
		}
		path, err := a.modelPath(path)
		if err != nil {
			return err
		}
		m, err := modelfile.Load(path, mo.options()...)
		if err != nil {
			return err
		}
		defer m.Close()
		// Reading the tokenizer is pure Go too: a broken one fails here as it
		// would fail generation.
		if m.TokenizerDir != "" {
			if _, err := tokenizer.Load(m.TokenizerDir); err != nil {
				return err
			}
		}
		fmt.Fprint(a.stdout, describeModel(m))
		return nil
	}
}

// describeModel is modelfile's summary (family, format, prediction type, and per
// network its config, dtype histogram, parameters and size) with what generation
// depends on besides.
func describeModel(m *modelfile.Model) string {
	s := m.Summary().String()
	tok := m.TokenizerDir
	if tok == "" {
		tok = "built-in CLIP BPE vocabulary (the model has no tokenizer folder)"
	}
	// diffusers' vae_scale_factor: 2^(levels-1) pixels per latent.
	side := m.UNet.Config.SampleSize << (len(m.VAE.Config.BlockOutChannels) - 1)
	s += fmt.Sprintf("  tokenizer    %s\n", tok)
	s += fmt.Sprintf("  native size  %d×%d\n", side, side)
	s += fmt.Sprintf("  scheduler    %s (--sampler auto: %s)\n", m.Scheduler.ClassName, diffusion.ConfiguredSampler(m.Scheduler))
	if up := m.Upscaler; up != nil {
		s += fmt.Sprintf("  upscaler     x%d: noise levels 0-%d by %s (use upscale)\n",
			1<<(len(m.VAE.Config.BlockOutChannels)-1), up.MaxNoiseLevel, up.LowResScheduler.ClassName)
	} else if m.UNet.Config.InChannels == 9 {
		s += "  inpainting   yes: a 9-channel UNet (use inpaint)\n"
	}
	return s
}
