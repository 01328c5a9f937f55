package diffusion

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/gosd/gosd/diffusion/schedule"
)

// Hires is AUTOMATIC1111's "hires fix", a second pass of a txt2img call: the image made at
// the request's size is upscaled by Scale and repainted there as img2img with its own
// strength and steps, so that a model keeps the composition of its native size and gains
// the detail of the larger one.
type Hires struct {
	// Scale multiplies the request's width and height (each rounded down to a multiple
	// of 8); in (1, 4].
	Scale float64
	// Upscaler enlarges the first pass: nil upscales its latents bilinearly (the web
	// UI's "Latent"); an ESRGAN upscales the decoded image, which is then resized
	// (Lanczos) to the target size and encoded again.
	Upscaler *ESRGAN
	// Steps of the second pass, as img2img counts them (about Strength × Steps run);
	// 0: the request's Steps.
	Steps int
	// Strength is the second pass's denoising strength in (0, 1]; 0: 0.7, the web UI's
	// default.
	Strength float64
}

// DefaultHiresStrength is Hires.Strength's default.
const DefaultHiresStrength = 0.7

// hiresPlan is a resolved hires pass.
type hiresPlan struct {
	width, height, steps int
	strength             float64
	upscaler             *ESRGAN
	sched                schedule.Scheduler
}

// planHires checks req.Hires against the model and the first pass par, records it in par
// and builds the second pass's scheduler.
func (d *modelDesc) planHires(h *Hires, par *Params) (*hiresPlan, error) {
	if !(h.Scale > 1 && h.Scale <= 4) {
		return nil, invalid("hires scale %g not in (1, 4]", h.Scale)
	}
	u := d.sizeUnit()
	hp := &hiresPlan{
		width:    int(float64(par.Width)*h.Scale) / u * u,
		height:   int(float64(par.Height)*h.Scale) / u * u,
		steps:    h.Steps,
		strength: h.Strength,
		upscaler: h.Upscaler,
	}
	if hp.width > MaxSide || hp.height > MaxSide {
		return nil, invalid("hires size %dx%d over %d pixels a side", hp.width, hp.height, MaxSide)
	}
	if hp.steps == 0 {
		hp.steps = par.Steps
	}
	if hp.steps < 1 || hp.steps > MaxSteps {
		return nil, invalid("hires steps %d not in [1, %d]", hp.steps, MaxSteps)
	}
	var err error
	if hp.strength, err = resolveStrength(h.Strength, DefaultHiresStrength); err != nil {
		return nil, fmt.Errorf("hires: %w", err)
	}
	hp.sched, err = schedule.New(d.sched, schedule.Options{
		Sampler: par.Sampler.scheduleSampler(), Sigmas: par.Schedule, Eta: par.Eta, Spacing: par.TimestepSpacing,
	}, hp.steps)
	if err != nil {
		return nil, fmt.Errorf("%w: hires: %v", ErrInvalidRequest, err)
	}
	if hp.sched.StartIndex(hp.strength) >= len(hp.sched.Timesteps()) {
		return nil, invalid("hires strength %g with %d steps leaves nothing to do", hp.strength, hp.steps)
	}
	par.HiresScale, par.HiresSteps, par.Strength = h.Scale, h.Steps, hp.strength
	par.HiresUpscaler = "Latent"
	if hp.upscaler != nil {
		par.HiresUpscaler = hp.upscaler.name
	}
	return hp, nil
}

// hiresPass upscales the first pass's latents x (b, c, lh, lw) and repaints them at the
// target size: the second pass's noise comes from fresh generators seeded as the first
// pass's (as the web UI re-seeds it), added at the strength's timestep. It returns the
// final latents and their size.
func (p *Pipeline) hiresPass(ctx context.Context, req Request, par Params, hp *hiresPlan, cond *conditioning, x []float32, lh, lw int, tm *Timings) ([]float32, int, int, error) {
	vae, err := p.vaeCodec(req.VAETiling)
	if err != nil {
		return nil, 0, 0, err
	}
	f := vae.factor()
	b, c := par.BatchSize, vae.channels()
	th, tw := hp.height/f, hp.width/f
	gen := newBatchGenerator(par.RNG, par.Seed, b)
	var up []float32
	if hp.upscaler == nil {
		up = resizeBilinear(x, b*c, lh, lw, th, tw)
	} else {
		phase := time.Now()
		var pix []float32
		err := p.guard(ctx, func() (err error) {
			pix, err = vae.decode(x, b, lh, lw)
			return err
		})
		if err != nil {
			return nil, 0, 0, err
		}
		for k, img := range toImages(pix, b, lh*f, lw*f) {
			big, err := hp.upscaler.Upscale(ctx, ESRGANRequest{Image: img})
			if err != nil {
				return nil, 0, 0, fmt.Errorf("hires upscaler: %w", err)
			}
			sub := par
			sub.Width, sub.Height = hp.width, hp.height
			lat, err := p.encodeImage(ctx, vae, imageTensor(big, hp.width, hp.height), sub, gen[k:k+1])
			if err != nil {
				return nil, 0, 0, err
			}
			up = append(up, lat...)
		}
		tm.Encode += time.Since(phase)
	}
	first := hp.sched.StartIndex(hp.strength)
	noise := make([]float32, len(up))
	gen.Normal(noise)
	st := start{x: hp.sched.AddNoise(up, noise, first), first: first}
	d := &denoiser{unet: p.eng.unetNet(), cond: cond, batch: b, h: th, w: tw,
		guidance: par.GuidanceScale, rescale: par.GuidanceRescale}
	out, err := p.sample(ctx, req, hp.sched, d, st, gen, tm)
	return out, th, tw, err
}

// resizeBilinear resizes n planes (h, w) to (oh, ow) as torch's F.interpolate(mode=
// "bilinear", align_corners=False, antialias=False): source coordinate (dst + 0.5) *
// in / out - 0.5, clamped at 0, its two neighbours weighted linearly.
func resizeBilinear(v []float32, n, h, w, oh, ow int) []float32 {
	src := func(d, in, out int) (int, int, float32) {
		s := math.Max((float64(d)+0.5)*float64(in)/float64(out)-0.5, 0)
		i0 := min(int(s), in-1)
		i1 := min(i0+1, in-1)
		return i0, i1, float32(s - float64(i0))
	}
	out := make([]float32, n*oh*ow)
	for p := 0; p < n; p++ {
		plane, dst := v[p*h*w:(p+1)*h*w], out[p*oh*ow:]
		for y := 0; y < oh; y++ {
			y0, y1, fy := src(y, h, oh)
			for x := 0; x < ow; x++ {
				x0, x1, fx := src(x, w, ow)
				top := plane[y0*w+x0]*(1-fx) + plane[y0*w+x1]*fx
				bot := plane[y1*w+x0]*(1-fx) + plane[y1*w+x1]*fx
				dst[y*ow+x] = top*(1-fy) + bot*fy
			}
		}
	}
	return out
}
