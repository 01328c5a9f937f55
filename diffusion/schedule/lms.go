package schedule

import "math"

// lms is LMSDiscreteScheduler: a linear multistep method of order up to 4 on
// the probability flow ODE, its coefficients the integrals of the Lagrange
// basis polynomials over the previous sigmas.
type lms struct {
	kSampler
	anyStart
	sigmas      []float32
	derivatives [][]float32 // newest last, at most lmsOrder
}

const lmsOrder = 4

func newLMS(b *base, s settings, sig SigmaSchedule) *lms {
	ks := newKSchedule(s, sig, b.steps, false)
	b.timesteps = ks.timesteps
	b.sigmas = toFloat64(ks.sigmas)
	b.initNoiseSigma = ks.initNoiseSigma(ks.sigmas)
	return &lms{
		kSampler: kSampler{prediction: s.prediction, inSigma: ks.sigmas, noiseSigma: ks.sigmas},
		sigmas:   ks.sigmas,
	}
}

func (l *lms) step(modelOutput []float32, i int, x []float32, _ Noise) ([]float32, error) {
	sigma := l.sigmas[i]
	x0 := l.denoised(modelOutput, x, sigma)
	l.derivatives = append(l.derivatives, slopes(x, x0, sigma))
	if len(l.derivatives) > lmsOrder {
		l.derivatives = l.derivatives[1:]
	}
	// diffusers sizes the method by the index, not by the history, so a run
	// started at i > 0 (img2img) weighs its only derivative with the first
	// coefficient of a higher-order method. That is reproduced here.
	order := min(i+1, lmsOrder)
	n := min(order, len(l.derivatives))
	out := make([]float32, len(x))
	coeffs := make([]float64, n)
	for c := range coeffs {
		coeffs[c] = l.coefficient(order, i, c)
	}
	for j := range out {
		v := float64(x[j])
		for c, w := range coeffs {
			v += w * float64(l.derivatives[len(l.derivatives)-1-c][j])
		}
		out[j] = float32(v)
	}
	return out, nil
}

// coefficient integrates, from σ_t to σ_t+1, the Lagrange basis polynomial
// that is 1 at σ_(t−cur) and 0 at the other σ_(t−k), k < order. The
// polynomial has degree < 4, so two-point Gauss-Legendre is exact.
func (l *lms) coefficient(order, t, cur int) float64 {
	basis := func(tau float64) float64 {
		prod := 1.0
		for k := range order {
			if k == cur {
				continue
			}
			sk := float64(l.sigmas[t-k])
			prod *= (tau - sk) / (float64(l.sigmas[t-cur]) - sk)
		}
		return prod
	}
	a, b := float64(l.sigmas[t]), float64(l.sigmas[t+1])
	mid, half := (a+b)/2, (b-a)/2
	off := half / math.Sqrt(3)
	return half * (basis(mid-off) + basis(mid+off))
}
