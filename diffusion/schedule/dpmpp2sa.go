package schedule

import (
	"math"
	"slices"
)

// dpmpp2sa is DPM-Solver++(2S) with ancestral noise, following k-diffusion's
// sample_dpmpp_2s_ancestral (η = 1, s_noise = 1) on the sigma schedule of
// EulerAncestralDiscreteScheduler (or Euler's Karras / exponential one).
// diffusers has no class for it.
//
// Step k goes from σ_k to σ_k+1. It splits σ_k+1 into σ_down (deterministic)
// and σ_up (fresh noise), with σ_down² + σ_up² = σ_k+1² and
// σ_up = min(σ_k+1, σ_k+1·√(σ_k² − σ_k+1²)/σ_k). In log-sigma time
// t = −log σ, h = t(σ_down) − t(σ_k): the first model call, at σ_k, gives
// x_mid = (σ_mid/σ_k)·x − expm1(−h/2)·D(x, σ_k) at σ_mid = √(σ_k·σ_down);
// the second, at σ_mid, gives x' = (σ_down/σ_k)·x − expm1(−h)·D(x_mid, σ_mid)
// + σ_up·z. (With η = 1, σ_down = σ_k+1²/σ_k, so σ_mid equals σ_k+1 up to
// rounding.) The last step (σ_down = 0) is a single Euler call to σ = 0.
// Entries alternate first (even index) and second (odd) calls, so there are
// 2·steps−1 of them, and noise is drawn once per step except the last.
type dpmpp2sa struct {
	kSampler
	sigmas   []float32 // σ_0..σ_steps
	up, down []float64 // per step
	sample   []float32 // x at the start of the current step
}

func newDPMPP2SAncestral(b *base, s settings, sig SigmaSchedule) *dpmpp2sa {
	ks := newKSchedule(s, sig, b.steps, false)
	n := b.steps
	d := &dpmpp2sa{sigmas: ks.sigmas, up: make([]float64, n), down: make([]float64, n)}
	var ts []float64
	var in []float32
	for k := range n {
		from, to := float64(ks.sigmas[k]), float64(ks.sigmas[k+1])
		up := math.Min(to, math.Sqrt(to*to*(from*from-to*to)/(from*from)))
		d.up[k], d.down[k] = up, math.Sqrt(to*to-up*up)
		ts = append(ts, ks.timesteps[k])
		in = append(in, ks.sigmas[k])
		if k < n-1 {
			mid := float32(d.midSigma(k))
			ts = append(ts, float64(float32(sigmaToT(float64(mid), ks.logSigmas))))
			in = append(in, mid)
		}
	}
	d.kSampler = kSampler{prediction: s.prediction, inSigma: in, noiseSigma: in}
	b.timesteps = ts
	b.sigmas = toFloat64(ks.sigmas)
	b.initNoiseSigma = ks.initNoiseSigma(ks.sigmas)
	b.order = 2
	return d
}

// logStep returns t = −log σ_k and the step h in t to σ_down.
func (d *dpmpp2sa) logStep(k int) (t, h float64) {
	t = -math.Log(float64(d.sigmas[k]))
	return t, -math.Log(d.down[k]) - t
}

// midSigma is σ at t + h/2.
func (d *dpmpp2sa) midSigma(k int) float64 {
	t, h := d.logStep(k)
	return math.Exp(-(t + h/2))
}

func (d *dpmpp2sa) canStart(i int) bool { return i%2 == 0 }

func (d *dpmpp2sa) step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error) {
	k := i / 2
	sigma := d.sigmas[k]
	last := i == len(d.inSigma)-1
	if last {
		x0 := d.denoised(modelOutput, x, sigma)
		return eulerUpdate(x, x0, sigma, float32(d.down[k])-sigma), nil
	}
	_, h := d.logStep(k)
	if i%2 == 0 {
		x0 := d.denoised(modelOutput, x, sigma)
		d.sample = slices.Clone(x)
		return combine(d.midSigma(k)/float64(sigma), x, -math.Expm1(-h/2), x0), nil
	}
	if noise == nil {
		return nil, errNoNoise(DPMPP2SAncestral)
	}
	x0 := d.denoised(modelOutput, x, d.inSigma[i])
	out := combine(d.down[k]/float64(sigma), d.sample, -math.Expm1(-h), x0)
	d.sample = nil
	z := draw(noise, len(x))
	for j := range out {
		out[j] = float32(float64(out[j]) + d.up[k]*float64(z[j]))
	}
	return out, nil
}
