package diffusion

import (
	"context"
	"math"

	"github.com/gosd/gosd/diffusion/schedule"
)

// latentBlend keeps the known part of an inpainted image: for 4-channel UNets the latents
// are blended with the re-noised image after every step; for 9-channel inpainting UNets
// the mask and masked image go into the UNet instead (unetExtra).
type latentBlend struct {
	mask         []float32 // (b, 1, h, w), 1 = repaint
	imageLatents []float32 // (b, c, h, w)
	noise        []float32 // the initial noise, reused to re-noise the image
	c, hw        int
	unetExtra    []float32 // (b, 1 + c, h, w): mask, masked image latents
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

// prepareInit encodes the init image and returns the starting latents, the first step
// and, for inpainting, the blend. The generator is drawn from in diffusers' order:
// posterior sample of the image, initial noise, posterior sample of the masked image.
func (p *Pipeline) prepareInit(ctx context.Context, par Params, sched schedule.Scheduler, init *initImage, gen batchGenerator) ([]float32, int, *latentBlend, error) {
	e := p.eng
	f := e.vaeFactor()
	b, lh, lw := par.BatchSize, par.Height/f, par.Width/f
	lc := int(e.vaeCfg.LatentChannels)
	hw := lh * lw
	n := b * lc * hw
	first := sched.StartIndex(par.Strength) // plan made sure that steps are left
	img := imageTensor(init.image, par.Width, par.Height)
	inpaint := init.mask != nil
	strengthMax := par.Strength == 1

	var imageLatents []float32
	var err error
	if !inpaint || !p.desc.info.Inpainting || !strengthMax {
		if imageLatents, err = p.encodeImage(ctx, img, par, gen); err != nil {
			return nil, 0, nil, err
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
		return x, first, nil, nil
	}

	mask := maskTensor(init.mask, par.Width, par.Height) // (1, 1, H, W) in {0, 1}
	masked := make([]float32, len(img))
	plane := par.Width * par.Height
	for k := range img {
		if mask[k%plane] < 0.5 {
			masked[k] = img[k]
		}
	}
	maskedLatents, err := p.encodeImage(ctx, masked, par, gen) // (b, c, h, w)
	if err != nil {
		return nil, 0, nil, err
	}
	// Nearest downsampling to latent size, as F.interpolate(size=...).
	lm := make([]float32, hw)
	for y := 0; y < lh; y++ {
		for xx := 0; xx < lw; xx++ {
			lm[y*lw+xx] = mask[(y*f)*par.Width+xx*f]
		}
	}
	blend := &latentBlend{mask: repeat(lm, b), imageLatents: imageLatents, noise: noise, c: lc, hw: hw}
	if p.desc.info.Inpainting {
		blend.unetExtra = concatChannels(blend.mask, maskedLatents, b, 1, lc, hw)
	}
	return x, first, blend, nil
}

// encodeImage encodes one image (1, 3, H, W) in [-1, 1] into scaled latents for each image
// of the batch, (b, c, h, w): the posterior is sampled once per image, each with its own
// generator, as diffusers' retrieve_latents(sample_mode="sample").
func (p *Pipeline) encodeImage(ctx context.Context, img []float32, par Params, gen batchGenerator) ([]float32, error) {
	var mean, logvar []float32
	err := p.guard(ctx, func() (err error) {
		mean, logvar, err = p.eng.vaeEncode(img, 1, par.Height, par.Width)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := checkFinite("VAE encoder", mean); err != nil {
		return nil, err
	}
	if err := checkFinite("VAE encoder", logvar); err != nil {
		return nil, err
	}
	eps := make([]float32, len(gen)*len(mean))
	gen.Normal(eps)
	vc := p.model.VAE.Config
	out := make([]float32, len(eps))
	for k := range out {
		m := k % len(mean)
		std := math.Exp(0.5 * float64(logvar[m]))
		z := float64(mean[m]) + std*float64(eps[k])
		out[k] = float32((z - vc.ShiftFactor) * vc.ScalingFactor)
	}
	return out, nil
}

// repeat concatenates n copies of v.
func repeat(v []float32, n int) []float32 {
	out := make([]float32, 0, len(v)*n)
	for i := 0; i < n; i++ {
		out = append(out, v...)
	}
	return out
}
