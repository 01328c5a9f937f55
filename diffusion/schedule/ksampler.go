package schedule

import (
	"math"
	"slices"
)

// kSchedule is the sigma schedule of diffusers' k-diffusion style schedulers
// (Euler, Euler ancestral, Heun, KDPM2, LMS; also DPM++ 2S ancestral here):
// the training sigmas
// interpolated at the spaced timesteps, optionally respaced (Karras,
// exponential) with timesteps mapped back through sigmaToT.
type kSchedule struct {
	timesteps []float64 // steps entries, float32 values
	sigmas    []float32 // steps+1 entries, the last 0
	logSigmas []float64 // log of the training sigmas, for sigmaToT
	spacing   TimestepSpacing
}

// newKSchedule builds the schedule; roundKarras rounds the timesteps of a
// Karras schedule to integers (KDPM2 does, the others do not).
func newKSchedule(s settings, sig SigmaSchedule, steps int, roundKarras bool) kSchedule {
	ac := cumprodAlphas(trainingBetas(s))
	if s.rescaleZeroSNR {
		// Zero terminal SNR means σ = ∞ at T−1; diffusers substitutes
		// ᾱ = 2⁻²⁴ (σ ≈ 4096) to keep the schedule finite.
		ac[len(ac)-1] = 1.0 / (1 << 24)
	}
	train := trainingSigmas(ac)
	ks := kSchedule{
		timesteps: spacedTimesteps(s.spacing, s.numTrain, steps, s.stepsOffset, false),
		logSigmas: logSigmas(train),
		spacing:   s.spacing,
	}
	sigmas := make([]float64, steps)
	for i, t := range ks.timesteps {
		sigmas[i] = interpSigma(t, train)
	}
	if sig != SigmasDefault {
		if sig == SigmasKarras {
			sigmas = karrasSigmas(sigmas[steps-1], sigmas[0], steps)
		} else {
			sigmas = exponentialSigmas(sigmas[steps-1], sigmas[0], steps)
		}
		for i, v := range sigmas {
			t := sigmaToT(v, ks.logSigmas)
			if roundKarras && sig == SigmasKarras {
				t = math.RoundToEven(t)
			}
			ks.timesteps[i] = float64(float32(t))
		}
	}
	ks.sigmas = make([]float32, steps+1)
	for i, v := range sigmas {
		ks.sigmas[i] = float32(v)
	}
	return ks
}

// initNoiseSigma is the k-diffusion schedulers' init_noise_sigma: the largest
// sigma, or √(σ²+1) of it with leading spacing (diffusers' rule).
func (ks kSchedule) initNoiseSigma(sigmas []float32) float64 {
	m := slices.Max(sigmas)
	if ks.spacing == SpacingLeading {
		return float64(sqrtf(float32(m*m) + 1))
	}
	return float64(m)
}

// kSampler holds what the k-diffusion samplers share: their model input is
// x/√(σ²+1) and they noise clean samples as x0 + σ·noise.
type kSampler struct {
	prediction PredictionType
	inSigma    []float32 // σ of each entry's model input
	noiseSigma []float32 // σ add_noise uses at each entry
}

func (k *kSampler) scale(x []float32, i int) []float32 {
	s := k.inSigma[i]
	d := sqrtf(float32(s*s) + 1)
	out := make([]float32, len(x))
	for j, v := range x {
		out[j] = v / d
	}
	return out
}

func (k *kSampler) addNoise(x0, noise []float32, i int) []float32 {
	s := k.noiseSigma[i]
	out := make([]float32, len(x0))
	for j := range out {
		out[j] = x0[j] + float32(noise[j]*s)
	}
	return out
}

// denoised converts a model output at noise level σ to the x0 estimate of
// the k-diffusion samplers: x − σ·ε, x/(σ²+1) − σ/√(σ²+1)·v, or the output.
func (k *kSampler) denoised(modelOutput, x []float32, sigma float32) []float32 {
	out := make([]float32, len(x))
	switch k.prediction {
	case PredictSample:
		copy(out, modelOutput)
	case PredictV:
		s2 := float32(sigma*sigma) + 1
		cOut := -sigma / sqrtf(s2)
		for j := range out {
			out[j] = float32(modelOutput[j]*cOut) + x[j]/s2
		}
	default:
		for j := range out {
			out[j] = x[j] - float32(sigma*modelOutput[j])
		}
	}
	return out
}

// eulerUpdate returns x + (x − x0)/σ·dt, an Euler step of the probability
// flow ODE dx/dσ = (x − x0)/σ. It rounds like torch's float32 ops: near
// σ_max (zero terminal SNR) the step cancels most of x.
func eulerUpdate(x, x0 []float32, sigma, dt float32) []float32 {
	out := make([]float32, len(x))
	for j := range out {
		d := (x[j] - x0[j]) / sigma
		out[j] = x[j] + float32(d*dt)
	}
	return out
}

// euler is EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2 without
// churn) and, with ancestral set, EulerAncestralDiscreteScheduler.
type euler struct {
	kSampler
	anyStart
	sigmas    []float32
	ancestral bool
}

func newEuler(b *base, s settings, sig SigmaSchedule, ancestral bool) *euler {
	ks := newKSchedule(s, sig, b.steps, false)
	b.timesteps = ks.timesteps
	b.sigmas = toFloat64(ks.sigmas)
	b.initNoiseSigma = ks.initNoiseSigma(ks.sigmas)
	return &euler{
		kSampler:  kSampler{prediction: s.prediction, inSigma: ks.sigmas, noiseSigma: ks.sigmas},
		sigmas:    ks.sigmas,
		ancestral: ancestral,
	}
}

func (e *euler) step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error) {
	sigma, next := e.sigmas[i], e.sigmas[i+1]
	x0 := e.denoised(modelOutput, x, sigma)
	if !e.ancestral {
		return eulerUpdate(x, x0, sigma, next-sigma), nil
	}
	if noise == nil {
		return nil, errNoNoise(EulerAncestral)
	}
	// Step down to σ_down deterministically, then add fresh noise of
	// std σ_up so that σ_down² + σ_up² = σ_next².
	s2, n2 := float32(sigma*sigma), float32(next*next)
	up := sqrtf(float32(n2*(s2-n2)) / s2)
	down := sqrtf(n2 - float32(up*up))
	out := eulerUpdate(x, x0, sigma, down-sigma)
	z := draw(noise, len(x))
	for j := range out {
		out[j] += float32(z[j] * up)
	}
	return out, nil
}
