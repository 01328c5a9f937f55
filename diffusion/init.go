package diffusion

import (
	"context"

	"github.com/gosd/gosd/diffusion/schedule"
)

// latentBlend keeps the known part of an inpainted image for 4-channel UNets: the latents
// are blended with the re-noised image after every step (9-channel inpainting UNets get
// the mask and masked image as extra input channels instead).
type latentBlend struct {
	mask         []float32 // (b, 1, h, w), 1 = repaint
	imageLatents []float32 // (b, c, h, w)
	noise        []float32 // the initial noise, reused to re-noise the image
	c, hw        int
}

// apply is diffusers' StableDiffusionInpaintPipeline step for 4-channel UNets:
// x = (1 - mask) * add_noise(image, noise, t_next) + mask * x (no noise after the last).
func (l *latentBlend) apply(x []float32, sched schedule.Scheduler, i int) {
	known := l.imageLatents
	if i+1 < len(sched.Timesteps()) {
		known = sched.AddNoise(l.imageLatents, l.noise, i+1)
	}
	for k := range x {
		m := l.mask[(k/(l.c*l.hw))*l.hw+k%l.hw]
		x[k] = (1-m)*known[k] + m*x[k]
	}
}

// prepareInit encodes the init image and returns where sampling starts: the latents, the
// first step and, for inpainting, the blend or the extra UNet channels. The generator is
// drawn from in diffusers' order: posterior sample of the image, initial noise, posterior
// sample of the masked image.
func (p *Pipeline) prepareInit(ctx context.Context, vae codec, par Params, sched schedule.Scheduler, init *initImage, gen batchGenerator) (start, error) {
	f := vae.factor()
	b, lh, lw := par.BatchSize, par.Height/f, par.Width/f
	lc := vae.channels()
	hw := lh * lw
	n := b * lc * hw
	first := sched.StartIndex(par.Strength) // plan made sure that steps are left
	img := imageTensor(init.image, par.Width, par.Height)
	inpaint := init.mask != nil
	strengthMax := par.Strength == 1

	var imageLatents []float32
	var err error
	if !inpaint || !p.desc.info.Inpainting || !strengthMax {
		if imageLatents, err = p.encodeImage(ctx, vae, img, par, gen); err != nil {
			return start{}, err
		}
	}
	noise := make([]float32, n)
	gen.Normal(noise)
	var x []float32
	if inpaint && strengthMax {
		x = append([]float32(nil), noise...)
		scale(x, float32(sched.InitNoiseSigma()))
	} else {
		x = sched.AddNoise(imageLatents, noise, first)
	}
	if !inpaint {
		return start{x: x, first: first}, nil
	}

	mask := maskTensor(init.mask, par.Width, par.Height) // (1, 1, H, W) in {0, 1}
	masked := make([]float32, len(img))
	plane := par.Width * par.Height
	for k := range img {
		if mask[k%plane] < 0.5 {
			masked[k] = img[k]
		}
	}
	maskedLatents, err := p.encodeImage(ctx, vae, masked, par, gen) // (b, c, h, w)
	if err != nil {
		return start{}, err
	}
	// Nearest downsampling to latent size, as F.interpolate(size=...).
	lm := make([]float32, hw)
	for y := 0; y < lh; y++ {
		for xx := 0; xx < lw; xx++ {
			lm[y*lw+xx] = mask[(y*f)*par.Width+xx*f]
		}
	}
	bm := repeat(lm, b)
	if p.desc.info.Inpainting {
		return start{x: x, first: first, extra: concatChannels(bm, maskedLatents, b, 1, lc, hw)}, nil
	}
	return start{x: x, first: first, blend: &latentBlend{mask: bm, imageLatents: imageLatents, noise: noise, c: lc, hw: hw}}, nil
}

// encodeImage encodes one image (1, 3, H, W) in [-1, 1] into scaled latents for each image
// of the batch, (b, c, h, w): the posterior is sampled once per image, each with its own
// generator, as diffusers' retrieve_latents(sample_mode="sample").
func (p *Pipeline) encodeImage(ctx context.Context, vae codec, img []float32, par Params, gen batchGenerator) ([]float32, error) {
	var dist latentDist
	err := p.guard(ctx, func() (err error) {
		dist, err = vae.encode(img, 1, par.Height, par.Width)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := checkFinite("VAE encoder", dist.mean); err != nil {
		return nil, err
	}
	if err := checkFinite("VAE encoder", dist.logvar); err != nil {
		return nil, err
	}
	eps := make([]float32, len(gen)*len(dist.mean))
	gen.Normal(eps)
	return dist.sample(eps), nil
}

// repeat concatenates n copies of v.
func repeat(v []float32, n int) []float32 {
	out := make([]float32, 0, len(v)*n)
	for i := 0; i < n; i++ {
		out = append(out, v...)
	}
	return out
}
