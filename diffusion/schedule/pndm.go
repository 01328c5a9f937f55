package schedule

import (
	"errors"
	"slices"
)

// pndm is PNDMScheduler (Liu et al. 2022, pseudo numerical methods): an
// optional Runge-Kutta warm-up (12 model calls over the first 3 steps), then
// pseudo linear multistep steps of up to fourth order. As in diffusers, its
// state advances with a call counter, not with the timestep index.
type pndm struct {
	alphaSampler
	stride     int // T div steps
	prkCalls   int // Runge-Kutta model calls; 0 with skip_prk_steps
	finalAlpha float32
	counter    int
	rkSum      []float32   // Runge-Kutta weighted sum of model outputs
	curSample  []float32   // sample at the start of the current (pseudo) step
	ets        [][]float32 // past model outputs, oldest first, at most 4
}

func newPNDM(b *base, s settings) (*pndm, error) {
	n := b.steps
	if !s.skipPRKSteps && n < 4 {
		return nil, errors.New("schedule: pndm with Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 steps")
	}
	desc := spacedTimesteps(s.spacing, s.numTrain, n, s.stepsOffset, true)
	asc := slices.Clone(desc)
	slices.Reverse(asc)
	var ts []float64
	prkCalls := 0
	if s.skipPRKSteps {
		// The second timestep is repeated: the first plms step is a
		// predictor whose corrector reruns the model at the same timestep.
		ts = append(ts, asc[n-1])
		if n > 1 {
			ts = append(ts, asc[n-2])
			ts = append(ts, desc[1:]...)
		}
	} else {
		// Runge-Kutta points: the last four timesteps and their midpoints
		// (t + T/steps/2), each inner point visited twice.
		half := float64(s.numTrain / n / 2)
		var pts []float64
		for _, t := range asc[n-4:] {
			pts = append(pts, t, t+half)
		}
		pts = pts[:len(pts)-1]
		var prk []float64
		for _, p := range pts {
			prk = append(prk, p, p)
		}
		prk = prk[1 : len(prk)-1]
		slices.Reverse(prk)
		prkCalls = len(prk)
		ts = append(prk, desc[3:]...)
	}
	a, err := newAlphaSampler(b, s, ts)
	if err != nil {
		return nil, err
	}
	final := a.alphasCumprod[0]
	if s.setAlphaToOne {
		final = 1
	}
	return &pndm{alphaSampler: a, stride: s.numTrain / n, prkCalls: prkCalls, finalAlpha: final}, nil
}

func (p *pndm) step(modelOutput []float32, i int, x []float32, _ Noise) ([]float32, error) {
	t := int(p.timesteps[i])
	var out []float32
	if p.counter < p.prkCalls {
		out = p.stepPRK(modelOutput, t, x)
	} else {
		out = p.stepPLMS(modelOutput, t, x)
	}
	p.counter++
	return out, nil
}

// stepPRK is one of the four calls of a Runge-Kutta step: each lands on the
// step's end or midpoint from the step's start sample, and the fourth
// combines the outputs with weights 1/6, 1/3, 1/3, 1/6.
func (p *pndm) stepPRK(modelOutput []float32, t int, x []float32) []float32 {
	prev := t
	if p.counter%2 == 0 {
		prev -= p.stride / 2
	}
	start := int(p.timesteps[p.counter/4*4])
	eff := modelOutput
	switch p.counter % 4 {
	case 0:
		p.rkSum = scaled(modelOutput, 1.0/6)
		p.ets = append(p.ets, slices.Clone(modelOutput))
		p.curSample = slices.Clone(x)
	case 1, 2:
		for j, m := range modelOutput {
			p.rkSum[j] = float32(float64(p.rkSum[j]) + float64(m)/3)
		}
	case 3:
		eff = make([]float32, len(modelOutput))
		for j, m := range modelOutput {
			eff[j] = float32(float64(p.rkSum[j]) + float64(m)/6)
		}
		p.rkSum = nil
	}
	return p.prevSample(p.curSample, start, prev, eff)
}

// stepPLMS is a pseudo linear multistep step with Adams-Bashforth weights of
// the order the history allows. Without warm-up, the first step is a
// predictor and the second reruns it from the same start with the average of
// both model outputs (a pseudo improved Euler step).
func (p *pndm) stepPLMS(modelOutput []float32, t int, x []float32) []float32 {
	prev := t - p.stride
	if p.counter != 1 {
		if len(p.ets) > 3 {
			p.ets = p.ets[len(p.ets)-3:]
		}
		p.ets = append(p.ets, slices.Clone(modelOutput))
	} else {
		prev, t = t, t+p.stride
	}
	e := p.ets
	n := len(e)
	sample := x
	var eff []float32
	switch {
	case n == 1 && p.counter == 0:
		eff = modelOutput
		p.curSample = slices.Clone(x)
	case n == 1 && p.counter == 1:
		eff = weighted([]float64{0.5, 0.5}, modelOutput, e[0])
		sample = p.curSample
		p.curSample = nil
	case n == 2:
		eff = weighted([]float64{1.5, -0.5}, e[1], e[0])
	case n == 3:
		eff = weighted([]float64{23.0 / 12, -16.0 / 12, 5.0 / 12}, e[2], e[1], e[0])
	default:
		eff = weighted([]float64{55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24}, e[3], e[2], e[1], e[0])
	}
	return p.prevSample(sample, t, prev, eff)
}

// prevSample is PNDM's transfer from timestep t to prev (formula (9) of the
// paper) given an ε estimate; v predictions are converted to ε first.
func (p *pndm) prevSample(x []float32, t, prev int, modelOutput []float32) []float32 {
	acT, acPrev := p.alphasCumprod[t], p.finalAlpha
	if prev >= 0 {
		acPrev = p.alphasCumprod[prev]
	}
	betaT, betaPrev := 1-acT, 1-acPrev
	eps := modelOutput
	if p.prediction == PredictV {
		eps = combine(sqrt32(acT), modelOutput, sqrt32(betaT), x)
	}
	sampleCoeff := sqrt32(acPrev / acT)
	denom := float64(float32(acT*sqrtf(betaPrev)) + sqrtf(float32(float32(acT*betaT)*acPrev)))
	diff := float64(acPrev - acT)
	out := make([]float32, len(x))
	for j := range out {
		out[j] = float32(sampleCoeff*float64(x[j]) - diff*float64(eps[j])/denom)
	}
	return out
}

// scaled returns c·x.
func scaled(x []float32, c float64) []float32 {
	out := make([]float32, len(x))
	for j, v := range x {
		out[j] = float32(c * float64(v))
	}
	return out
}

// weighted returns Σ w_k·xs_k.
func weighted(w []float64, xs ...[]float32) []float32 {
	out := make([]float32, len(xs[0]))
	for j := range out {
		var v float64
		for k, x := range xs {
			v += w[k] * float64(x[j])
		}
		out[j] = float32(v)
	}
	return out
}
