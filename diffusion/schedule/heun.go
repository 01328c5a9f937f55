package schedule

import "slices"

// heun is HeunDiscreteScheduler (Karras et al. 2022, Algorithm 1 without
// churn): an Euler predictor to the next sigma, then a corrector that
// averages the slopes at both ends. Entries alternate predictor (even index)
// and corrector (odd); the last step, to σ = 0, is Euler only.
type heun struct {
	kSampler
	sigmas    []float32 // diffusers' interleaved sigmas: s0, s1, s1, ..., s(n−1), s(n−1), 0
	clip      bool
	clipRange float64
	// Predictor state for the corrector.
	slope  []float32
	dt     float32
	sample []float32
}

func newHeun(b *base, s settings, sig SigmaSchedule) *heun {
	ks := newKSchedule(s, sig, b.steps, false)
	sigmas := append(repeatInner(ks.sigmas[:b.steps]), 0)
	b.timesteps = repeatInner(ks.timesteps)
	b.sigmas = toFloat64(sigmas)
	b.initNoiseSigma = ks.initNoiseSigma(sigmas)
	b.order = 2
	return &heun{
		kSampler:  kSampler{prediction: s.prediction, inSigma: sigmas, noiseSigma: sigmas},
		sigmas:    sigmas,
		clip:      s.clipSample,
		clipRange: s.clipRange,
	}
}

// repeatInner returns v[0], v[1], v[1], ..., v[n−1], v[n−1]: every entry but
// the first twice (torch.cat([v[:1], v[1:].repeat_interleave(2)])).
func repeatInner[T any](v []T) []T {
	out := make([]T, 0, 2*len(v)-1)
	out = append(out, v[0])
	for _, x := range v[1:] {
		out = append(out, x, x)
	}
	return out
}

func (h *heun) canStart(i int) bool { return i%2 == 0 }

func (h *heun) step(modelOutput []float32, i int, x []float32, _ Noise) ([]float32, error) {
	if i%2 == 0 {
		sigma, next := h.sigmas[i], h.sigmas[i+1]
		x0 := h.denoised(modelOutput, x, sigma)
		if h.clip {
			clampAll(x0, h.clipRange)
		}
		h.slope = slopes(x, x0, sigma)
		h.dt = next - sigma
		h.sample = slices.Clone(x)
		return eulerUpdate(x, x0, sigma, h.dt), nil
	}
	next := h.sigmas[i]
	x0 := h.denoised(modelOutput, x, next)
	if h.clip {
		clampAll(x0, h.clipRange)
	}
	slope := slopes(x, x0, next)
	out := make([]float32, len(x))
	for j := range out {
		d := (h.slope[j] + slope[j]) / 2
		out[j] = h.sample[j] + float32(d*h.dt)
	}
	h.slope, h.sample = nil, nil
	return out, nil
}

// slopes returns (x − x0)/σ, the ODE derivative dx/dσ.
func slopes(x, x0 []float32, sigma float32) []float32 {
	out := make([]float32, len(x))
	for j := range out {
		out[j] = (x[j] - x0[j]) / sigma
	}
	return out
}
