package diffusion

import (
	"context"
	"fmt"
	"math"
	"time"
)

// DefaultRefinerStart is the fraction of the schedule the base model runs before the
// refiner takes over, as in diffusers' SDXL base + refiner example (high_noise_frac 0.8).
const DefaultRefinerStart = 0.8

// Txt2ImgRefined generates with two models sharing the schedule, diffusers' SDXL
// "ensemble of expert denoisers": p runs the timesteps down to the hand-over point (the
// base pipeline's denoising_end = start) and refiner continues from its latents as they
// are, without new noise, on the rest (the refiner's denoising_start = start), then
// decodes with its VAE. The hand-over timestep is round(T - start * T) for T training
// timesteps: p keeps the timesteps at or above it, refiner those below. start 0 means
// DefaultRefinerStart; it must leave both models at least one step.
//
// Both models take the request as it is (prompts, size, steps, guidance, seed); a
// Sampler of SamplerAuto resolves to each model's own scheduler. Samplers with more than
// one model call a step (Heun, DPM2, DPM++ 2S, PNDM) are refused. refiner may be p.
// LoRAs adapt p only (the refiner is another model; when it is p, it keeps them);
// textual-inversion embeddings serve both models' encoders. The result's Params are the
// refiner's, with Model, ModelHash, LoRAs and Embeddings the base model's and Refiner,
// RefinerSwitchAt set; Timings cover both.
func (p *Pipeline) Txt2ImgRefined(ctx context.Context, req Request, refiner *Pipeline, start float64) (*Result, error) {
	if refiner == nil {
		return nil, invalid("no refiner")
	}
	if start == 0 {
		start = DefaultRefinerStart
	}
	if !(start > 0 && start < 1) {
		return nil, invalid("refiner start %g not in (0, 1)", start)
	}
	req, err := promptLoRAs(req)
	if err != nil {
		return nil, err
	}
	par, sched, err := p.desc.plan(req, nil)
	if err != nil {
		return nil, err
	}
	rpar, rsched, err := refiner.desc.plan(req, nil)
	if err != nil {
		return nil, err
	}
	if len(req.Controls) > 0 || req.Hires != nil {
		return nil, invalid("ControlNets and the hires fix are not supported with a refiner hand-over yet")
	}
	if err := checkLoRAs(req.LoRAs); err != nil {
		return nil, err
	}
	// Each model encodes the prompts with the embeddings for its own encoders (an SDXL
	// embedding's clip_g vectors serve the refiner's only one).
	if par.embeds, par.Embeddings, err = p.requestEmbeddings(req); err != nil {
		return nil, err
	}
	if rpar.embeds, rpar.Embeddings, err = refiner.requestEmbeddings(req); err != nil {
		return nil, fmt.Errorf("refiner: %w", err)
	}
	base, _, err := p.codecs(req)
	if err != nil {
		return nil, err
	}
	// The refiner decodes the final image, so its codecs must serve the request too.
	ref, _, err := refiner.codecs(req)
	if err != nil {
		return nil, err
	}
	if par.Width != rpar.Width || par.Height != rpar.Height || base.channels() != ref.channels() || base.factor() != ref.factor() {
		return nil, invalid("the refiner's latents (%dx%d images) are not the base model's (%dx%d)", rpar.Width, rpar.Height, par.Width, par.Height)
	}
	for _, s := range []struct {
		name  string
		steps int
		n     int
	}{{"base", par.Steps, len(sched.Timesteps())}, {"refiner", rpar.Steps, len(rsched.Timesteps())}} {
		if s.n != s.steps {
			return nil, invalid("the %s's sampler makes %d model calls for %d steps: a hand-over needs one call a step", s.name, s.n, s.steps)
		}
	}
	cutoff := handOverTimestep(start, p.model.Scheduler.NumTrainTimesteps)
	baseEnd := 0
	for _, t := range sched.Timesteps() {
		if t >= cutoff {
			baseEnd++
		}
	}
	refinerFirst := len(rsched.Timesteps())
	for i, t := range rsched.Timesteps() {
		if t < cutoff {
			refinerFirst = i
			break
		}
	}
	if baseEnd == 0 || refinerFirst == len(rsched.Timesteps()) {
		return nil, invalid("refiner start %g with %d steps leaves the base model %d steps and the refiner %d", start, par.Steps, baseEnd, len(rsched.Timesteps())-refinerFirst)
	}

	began := time.Now()
	var tm Timings
	var x []float32
	err = p.runLocked(ctx, func(ctx context.Context) error {
		return p.withLoRAs(req.LoRAs, func(applied []AppliedLoRA) error {
			par.LoRAs = applied
			dn, err := p.denoise(ctx, req, par, sched, nil, &stage{end: baseEnd}, &tm)
			x = dn.x
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	// The LoRAs adapt the base model: the refiner, another model, runs its own weights
	// (the same adapted ones when it is p).
	var refinerLoRAs []LoRA
	if refiner == p {
		refinerLoRAs = req.LoRAs
	}
	res := &Result{Params: rpar}
	err = refiner.runLocked(ctx, func(ctx context.Context) error {
		return refiner.withLoRAs(refinerLoRAs, func([]AppliedLoRA) error {
			dn, err := refiner.denoise(ctx, req, rpar, rsched, nil, &stage{from: x, first: refinerFirst}, &tm)
			if err == nil {
				res.Images, err = refiner.decodeImages(ctx, dn, req, rpar, &tm)
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	res.Params.LoRAs, res.Params.Embeddings = par.LoRAs, par.Embeddings
	res.Params.Model, res.Params.ModelHash = par.Model, p.hash.get()
	res.Params.Refiner = rpar.Model
	if h := refiner.hash.get(); h != "" {
		res.Params.Refiner += " [" + h + "]"
	}
	res.Params.RefinerSwitchAt = start
	tm.Total = time.Since(began)
	res.Params.Elapsed, res.Timings = tm.Total, tm
	return res, nil
}

// handOverTimestep is diffusers' discrete_timestep_cutoff for denoising_end and
// denoising_start.
func handOverTimestep(start float64, trainTimesteps int) float64 {
	t := float64(trainTimesteps)
	return math.RoundToEven(t - start*t) // Python's round: halves to even
}
