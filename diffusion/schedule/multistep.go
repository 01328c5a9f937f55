package schedule

import (
	"fmt"
	"math"
	"slices"
)

// multistep is DPMSolverMultistepScheduler with its defaults (DPM-Solver++,
// order 2, midpoint, lower_order_final) and, with unipc set,
// UniPCMultistepScheduler with its defaults (bh2, order 2, predict_x0, no
// disabled corrector). Both integrate in λ = log(α/σ) on data predictions
// x0 and keep the previous x0 between steps; the first step of a run and the
// last step are first order.
type multistep struct {
	identityInput
	anyStart
	unipc      bool
	prediction PredictionType
	sigmas     []float32 // steps+1, the last 0
	// α_t = 1/√(σ²+1), σ_t = σ·α_t and λ = log α_t − log σ_t per entry,
	// float32 as diffusers computes them.
	alpha, sigmaT, lambda []float32
	// History: x0 estimates of the previous two model calls (newest last),
	// how many steps have run, and UniPC's corrector state.
	outputs    [2][]float32
	history    int
	lastSample []float32
	lastOrder  int
}

func newMultistep(b *base, s settings, sig SigmaSchedule, unipc bool) (*multistep, error) {
	n := b.steps
	ac := cumprodAlphas(trainingBetas(s))
	if s.rescaleZeroSNR {
		ac[len(ac)-1] = 1.0 / (1 << 24) // see newKSchedule
	}
	train := trainingSigmas(ac)
	ts := multistepTimesteps(s.spacing, s.numTrain, n, s.stepsOffset)
	sigmas := make([]float64, n)
	if sig == SigmasDefault {
		for i, t := range ts {
			sigmas[i] = interpSigma(t, train)
		}
	} else {
		// Respaced between the extreme training sigmas, whatever the
		// timestep spacing; timesteps are mapped back and truncated to
		// integers, Karras ones rounded first (DPM-Solver skips the
		// rounding for the cosine schedule).
		lo, hi := float64(train[0]), float64(train[len(train)-1])
		if sig == SigmasKarras {
			sigmas = karrasSigmas(lo, hi, n)
		} else {
			sigmas = exponentialSigmas(lo, hi, n)
		}
		logSig := logSigmas(train)
		round := sig == SigmasKarras && (unipc || s.betaSchedule != BetaCosine)
		for i, v := range sigmas {
			t := sigmaToT(v, logSig)
			if round {
				t = math.RoundToEven(t)
			}
			ts[i] = math.Trunc(t)
		}
	}
	for _, t := range ts[1:] {
		if t == ts[0] {
			return nil, fmt.Errorf("schedule: %v: the %v sigma schedule repeats the first timestep %v (diffusers steps past the end of such a schedule)", b.sampler, sig, t)
		}
	}
	m := &multistep{
		unipc:      unipc,
		prediction: s.prediction,
		sigmas:     make([]float32, n+1),
		alpha:      make([]float32, n+1),
		sigmaT:     make([]float32, n+1),
		lambda:     make([]float32, n+1),
	}
	for i := range m.sigmas {
		if i < n {
			m.sigmas[i] = float32(sigmas[i])
		}
		sg := m.sigmas[i]
		m.alpha[i] = 1 / sqrtf(float32(sg*sg)+1)
		m.sigmaT[i] = sg * m.alpha[i]
		m.lambda[i] = logf(m.alpha[i]) - logf(m.sigmaT[i])
	}
	b.timesteps = ts
	b.sigmas = toFloat64(m.sigmas)
	b.initNoiseSigma = 1
	return m, nil
}

// addNoise is α_t·x0 + σ_t·noise at entry i.
func (m *multistep) addNoise(x0, noise []float32, i int) []float32 {
	return combine(float64(m.alpha[i]), x0, float64(m.sigmaT[i]), noise)
}

// dataPrediction converts a model output at entry i to an x0 estimate.
func (m *multistep) dataPrediction(modelOutput, x []float32, i int) []float32 {
	return predictOriginal(m.prediction, modelOutput, x, float64(m.alpha[i]), float64(m.sigmaT[i]))
}

func (m *multistep) step(modelOutput []float32, i int, x []float32, _ Noise) ([]float32, error) {
	x0 := m.dataPrediction(modelOutput, x, i)
	if m.unipc {
		return m.stepUniPC(x0, i, x), nil
	}
	m.push(x0)
	final := i == len(m.sigmas)-2
	var out []float32
	if m.history < 1 || final {
		out = m.dpmFirstOrder(x0, i, x)
	} else {
		out = m.dpmSecondOrder(i, x)
	}
	m.history = min(m.history+1, 2)
	return out, nil
}

// push appends a model output to the two-entry history.
func (m *multistep) push(x0 []float32) {
	m.outputs[0], m.outputs[1] = m.outputs[1], x0
}

// dpmFirstOrder is DPM-Solver++(1), i.e. DDIM in data prediction form:
// x_t = (σ_t/σ_s)·x − α_t·(e^−h − 1)·x0.
func (m *multistep) dpmFirstOrder(x0 []float32, i int, x []float32) []float32 {
	h := m.lambda[i+1] - m.lambda[i]
	c := m.alpha[i+1] * (expf(-h) - 1)
	return combine(float64(m.sigmaT[i+1]/m.sigmaT[i]), x, -float64(c), x0)
}

// dpmSecondOrder is the DPM-Solver++(2M) midpoint update with D1 the
// backward difference of the last two x0 estimates scaled by h/h_0.
func (m *multistep) dpmSecondOrder(i int, x []float32) []float32 {
	h := m.lambda[i+1] - m.lambda[i]
	h0 := m.lambda[i] - m.lambda[i-1]
	invR := 1 / (h0 / h)
	c := m.alpha[i+1] * (expf(-h) - 1)
	ratio := float64(m.sigmaT[i+1] / m.sigmaT[i])
	m0, m1 := m.outputs[1], m.outputs[0]
	out := make([]float32, len(x))
	for j := range out {
		d1 := float32(invR * (m0[j] - m1[j]))
		out[j] = float32(ratio*float64(x[j]) - float64(c)*float64(m0[j]) - 0.5*float64(c)*float64(d1))
	}
	return out
}

// stepUniPC corrects x with the new x0 (UniC, from the previous step's
// start), then predicts the next sample (UniP).
func (m *multistep) stepUniPC(x0 []float32, i int, x []float32) []float32 {
	if i > 0 && m.lastSample != nil {
		x = m.uniC(x0, i)
	}
	m.push(x0)
	order := min(2, len(m.sigmas)-1-i, m.history+1)
	m.lastOrder = order
	m.lastSample = slices.Clone(x)
	out := m.uniP(i, x, order)
	m.history = min(m.history+1, 2)
	return out
}

// uniBasis returns the bh2 quantities of a step of size h in λ:
// hh = −h, h·φ_1 = expm1(hh), B(h) = expm1(hh), and the right-hand sides
// b_1, b_2 of the order conditions.
func uniBasis(h float32) (hPhi1, bh float32, b [2]float32) {
	hh := -h
	hPhi1 = expm1f(hh)
	bh = hPhi1
	phiK := hPhi1/hh - 1
	factorial := float32(1)
	for k := range b {
		b[k] = phiK * factorial / bh
		factorial *= float32(k + 2)
		phiK = phiK/hh - 1/factorial
	}
	return hPhi1, bh, b
}

// uniP is the UniP-2 predictor from entry i to i+1 (order 1 or 2).
func (m *multistep) uniP(i int, x []float32, order int) []float32 {
	h := m.lambda[i+1] - m.lambda[i]
	hPhi1, bh, _ := uniBasis(h)
	ratio := float64(m.sigmaT[i+1] / m.sigmaT[i])
	c0 := float64(m.alpha[i+1] * hPhi1)
	cRes := float64(m.alpha[i+1] * bh)
	m0 := m.outputs[1]
	out := make([]float32, len(x))
	if order == 1 {
		for j := range out {
			out[j] = float32(ratio*float64(x[j]) - c0*float64(m0[j]))
		}
		return out
	}
	rk := (m.lambda[i-1] - m.lambda[i]) / h
	m1 := m.outputs[0]
	for j := range out {
		d1 := (m1[j] - m0[j]) / rk
		res := 0.5 * float64(d1)
		out[j] = float32(ratio*float64(x[j]) - c0*float64(m0[j]) - cRes*res)
	}
	return out
}

// uniC is the UniC corrector for entry i: it redoes the previous step from
// lastSample (entry i−1) using the new x0 at entry i, at the previous
// step's order.
func (m *multistep) uniC(x0 []float32, i int) []float32 {
	h := m.lambda[i] - m.lambda[i-1]
	hPhi1, bh, b := uniBasis(h)
	ratio := float64(m.sigmaT[i] / m.sigmaT[i-1])
	c0 := float64(m.alpha[i] * hPhi1)
	cRes := float64(m.alpha[i] * bh)
	m0, m1 := m.outputs[1], m.outputs[0]
	x := m.lastSample
	out := make([]float32, len(x))
	if m.lastOrder == 1 {
		for j := range out {
			dt := float64(x0[j] - m0[j])
			out[j] = float32(ratio*float64(x[j]) - c0*float64(m0[j]) - cRes*0.5*dt)
		}
		return out
	}
	// Order 2: solve [1 1; r 1]·ρ = b for the weights of the two
	// differences.
	rk := (m.lambda[i-2] - m.lambda[i-1]) / h
	r := float64(rk)
	rho1 := (float64(b[1]) - r*float64(b[0])) / (1 - r)
	rho0 := float64(b[0]) - rho1
	for j := range out {
		d1 := float64((m1[j] - m0[j]) / rk)
		dt := float64(x0[j] - m0[j])
		out[j] = float32(ratio*float64(x[j]) - c0*float64(m0[j]) - cRes*(rho0*d1+rho1*dt))
	}
	return out
}
