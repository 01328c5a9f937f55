package schedule

import "slices"

// dpm2 is KDPM2DiscreteScheduler (k-diffusion's sample_dpm_2, Karras et al.
// 2022 with DPM-Solver-2 midpoints): an Euler half step to the geometric
// mean of the two sigmas, then a full step with the slope there. Entries
// alternate first stage (even index) and midpoint (odd); the last step, to
// σ = 0, is Euler only.
type dpm2 struct {
	kSampler
	sigmas []float32 // diffusers' sigmas: s0, s1, s1, ..., s(n−1), s(n−1), 0, 0, 0
	interp []float32 // the midpoints √(s(k)·s(k−1)), laid out like sigmas
	sample []float32 // sample at the start of the step, for the second stage
}

func newDPM2(b *base, s settings, sig SigmaSchedule) *dpm2 {
	ks := newKSchedule(s, sig, b.steps, true)
	// Midpoints exp(lerp(log s(k), log s(k−1), ½)) in float32 as torch
	// computes them; index 0 has no predecessor (NaN, never read).
	n := b.steps
	mid := make([]float32, n+1)
	for k := range mid {
		prev := ks.sigmas[(k+n)%(n+1)] // torch.roll(sigmas, 1)
		lo, hi := logf(ks.sigmas[k]), logf(prev)
		mid[k] = expf(hi - float32((hi-lo)*0.5))
	}
	dpm := &dpm2{
		sigmas: append(repeatInner(ks.sigmas), 0),
		interp: append(repeatInner(mid), mid[n]),
	}
	// The midpoint timesteps come from the midpoint sigmas; the rounding of
	// Karras timesteps leaves these fractional, as in diffusers.
	ts := []float64{ks.timesteps[0]}
	for k := 1; k < n; k++ {
		t := sigmaToT(float64(mid[k]), ks.logSigmas)
		if sig != SigmasKarras {
			t = float64(float32(t))
		}
		ts = append(ts, t, ks.timesteps[k])
	}
	in := make([]float32, len(ts))
	for i := range in {
		in[i] = dpm.sigmas[i]
		if i%2 == 1 {
			in[i] = dpm.interp[i]
		}
	}
	dpm.kSampler = kSampler{prediction: s.prediction, inSigma: in, noiseSigma: dpm.sigmas}
	b.timesteps = ts
	b.sigmas = toFloat64(dpm.sigmas)
	b.initNoiseSigma = ks.initNoiseSigma(dpm.sigmas)
	b.order = 2
	return dpm
}

func (d *dpm2) canStart(i int) bool { return i%2 == 0 }

func (d *dpm2) step(modelOutput []float32, i int, x []float32, _ Noise) ([]float32, error) {
	if i%2 == 0 {
		sigma, mid := d.sigmas[i], d.interp[i+1]
		x0 := d.denoised(modelOutput, x, sigma)
		d.sample = slices.Clone(x)
		return eulerUpdate(x, x0, sigma, mid-sigma), nil
	}
	sigma, mid, next := d.sigmas[i-1], d.interp[i], d.sigmas[i]
	x0 := d.denoised(modelOutput, x, mid)
	slope := slopes(x, x0, mid)
	dt := next - sigma
	out := make([]float32, len(x))
	for j := range out {
		out[j] = d.sample[j] + float32(slope[j]*dt)
	}
	d.sample = nil
	return out, nil
}
