package diffusion

import (
	"context"
	"fmt"
	"image"
	"time"

	"github.com/gosd/gosd/diffusion/schedule"
)

// start is where sampling begins: the latents, the first timestep index (and the end,
// 0 for the whole schedule), and what inpainting adds (a latent blend for 4-channel UNets,
// extra UNet input channels for 9-channel ones; nil otherwise).
type start struct {
	x          []float32
	first, end int
	blend      *latentBlend
	extra      []float32
	// classLabels are the UNet's class labels per latent row (the x4 upscaler's noise
	// level); nil for none.
	classLabels []float32
	// tile is how the denoiser tiles large grids and vaeTile how the decoder does (the
	// x4 upscaler's); zero: whole.
	tile, vaeTile tiling
}

// sample is the sampling loop: from st, one denoiser evaluation and one scheduler step
// per timestep, the inpainting blend after each, progress and previews, cancellation
// between steps, and a check of every step's output. It returns the final latents.
func (p *Pipeline) sample(ctx context.Context, req Request, sched schedule.Scheduler, d *denoiser, st start, gen batchGenerator, tm *Timings) ([]float32, error) {
	timesteps := sched.Timesteps()
	if st.end > 0 {
		timesteps = timesteps[:st.end]
	}
	first, x := st.first, st.x
	total := len(timesteps) - first
	firstStep := sched.StepOf(first)
	steps := sched.StepOf(len(timesteps)-1) + 1 - firstStep
	lc := len(x) / (d.batch * d.h * d.w)
	began := time.Now()
	for i := first; i < len(timesteps); i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		stepStart := time.Now()
		t := timesteps[i]
		scaled := sched.ScaleModelInput(x, i)
		var noise []float32
		err := p.guard(ctx, func() (err error) {
			noise, err = d.predict(scaled, t, i-first+1)
			return err
		})
		if err != nil {
			return nil, err
		}
		if x, err = sched.Step(noise, i, x, gen); err != nil {
			return nil, fmt.Errorf("sampler step %d: %w", i, err)
		}
		if err := checkFinite(fmt.Sprintf("sampler at step %d", i-first+1), x); err != nil {
			return nil, err
		}
		if st.blend != nil {
			st.blend.apply(x, sched, i)
		}
		tm.Steps = append(tm.Steps, time.Since(stepStart))
		if req.onStep != nil {
			req.onStep(i-first, x)
		}
		if req.Progress != nil {
			done := sched.StepOf(len(timesteps)-1) + 1 // after the last call
			if i+1 < len(timesteps) {
				done = sched.StepOf(i + 1)
			}
			pr := Progress{Step: done - firstStep, Steps: steps, Evaluation: i - first + 1, Evaluations: total,
				Timestep: t, Elapsed: time.Since(began)}
			if req.Preview {
				if pr.Preview, err = p.preview(ctx, x[:lc*d.h*d.w], lc, d.h, d.w); err != nil {
					return nil, err
				}
			}
			req.Progress(pr)
		}
	}
	return x, nil
}

// preview is the first image of the batch, x (c, h, w): decoded by the TAESD when the
// pipeline has one, else the linear latent approximation.
func (p *Pipeline) preview(ctx context.Context, x []float32, c, h, w int) (image.Image, error) {
	t, ok := p.taesdCodec()
	if !ok {
		return latentPreview(x, c, h, w), nil
	}
	var img image.Image
	err := p.guard(ctx, func() (err error) {
		img, err = p.taesdPreview(t, x, h, w)
		return err
	})
	return img, err
}
