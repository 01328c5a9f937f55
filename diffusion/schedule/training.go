package schedule

import (
	"fmt"
	"math"
)

// TrainingSchedule is the forward (noising) process a model was trained
// with: the betas β_t and ᾱ_t = Π(1−β_s) for t = 0..T−1, as diffusers'
// DDPMScheduler (the scheduler diffusers' training scripts use) builds them.
// The values are float32, computed with the same roundings as diffusers so
// they match it bit for bit.
//
// A TrainingSchedule is immutable and safe for concurrent use.
type TrainingSchedule struct {
	prediction    PredictionType
	betas         []float32
	alphasCumprod []float32
}

// NewTrainingSchedule builds the training schedule of cfg; unset fields take
// DDPMScheduler's defaults.
func NewTrainingSchedule(cfg Config) (*TrainingSchedule, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := cfg.resolve("DDPMScheduler")
	betas := trainingBetas(s)
	return &TrainingSchedule{
		prediction:    s.prediction,
		betas:         betas,
		alphasCumprod: cumprodAlphas(betas),
	}, nil
}

// NumTimesteps returns T, the number of training timesteps.
func (s *TrainingSchedule) NumTimesteps() int { return len(s.betas) }

// Prediction returns the model's prediction type.
func (s *TrainingSchedule) Prediction() PredictionType { return s.prediction }

// Betas returns a copy of β_0..β_{T−1}.
func (s *TrainingSchedule) Betas() []float32 { return append([]float32(nil), s.betas...) }

// AlphasCumprod returns a copy of ᾱ_0..ᾱ_{T−1}.
func (s *TrainingSchedule) AlphasCumprod() []float32 {
	return append([]float32(nil), s.alphasCumprod...)
}

// coefficients returns √ᾱ_t and √(1−ᾱ_t) rounded as torch computes them in
// float32. It panics if t is not a training timestep.
func (s *TrainingSchedule) coefficients(t int) (sqrtAlpha, sqrtOneMinus float64) {
	if t < 0 || t >= len(s.alphasCumprod) {
		panic(fmt.Sprintf("schedule: timestep %d outside [0, %d)", t, len(s.alphasCumprod)))
	}
	a := s.alphasCumprod[t]
	return sqrt32(a), sqrt32(1 - a)
}

// AddNoise samples q(x_t | x_0): √ᾱ_t·x0 + √(1−ᾱ_t)·noise for the training
// timestep t in [0, T). x0 and noise are flattened batches of equal length;
// AddNoise panics if they differ or t is out of range.
func (s *TrainingSchedule) AddNoise(x0, noise []float32, t int) []float32 {
	a, b := s.coefficients(t)
	return combine(a, x0, b, noise)
}

// Target returns what the model should output for the noised sample
// AddNoise(x0, noise, t): noise for epsilon prediction,
// v = √ᾱ_t·noise − √(1−ᾱ_t)·x0 for v prediction (diffusers' get_velocity),
// and x0 for sample prediction. It panics like AddNoise.
func (s *TrainingSchedule) Target(x0, noise []float32, t int) []float32 {
	a, b := s.coefficients(t)
	checkLen(x0, noise)
	switch s.prediction {
	case PredictV:
		return combine(a, noise, -b, x0)
	case PredictSample:
		return append([]float32(nil), x0...)
	default:
		return append([]float32(nil), noise...)
	}
}

// PredictOriginal inverts the model's prediction at training timestep t: the
// x0 implied by modelOutput for the noised sample xt, i.e.
// (xt − √(1−ᾱ)·ε)/√ᾱ for epsilon, √ᾱ·xt − √(1−ᾱ)·v for v, and the output
// itself for sample prediction. It panics like AddNoise.
func (s *TrainingSchedule) PredictOriginal(modelOutput, xt []float32, t int) []float32 {
	a, b := s.coefficients(t)
	return predictOriginal(s.prediction, modelOutput, xt, a, b)
}

// predictOriginal converts a model output to x0 given √ᾱ and √(1−ᾱ) of the
// sample's noise level (the diffusers DDPM/DDIM/LCM formulas).
func predictOriginal(p PredictionType, modelOutput, x []float32, sqrtAlpha, sqrtOneMinus float64) []float32 {
	checkLen(modelOutput, x)
	switch p {
	case PredictV:
		return combine(sqrtAlpha, x, -sqrtOneMinus, modelOutput)
	case PredictSample:
		return append([]float32(nil), modelOutput...)
	default:
		out := make([]float32, len(x))
		for j := range x {
			out[j] = float32((float64(x[j]) - sqrtOneMinus*float64(modelOutput[j])) / sqrtAlpha)
		}
		return out
	}
}

// trainingBetas computes the betas in float32 the way diffusers does:
// torch.linspace in float32 for the linear schedules, float64 for the cosine
// one, then the optional zero-terminal-SNR rescale.
func trainingBetas(s settings) []float32 {
	n := s.numTrain
	var betas []float32
	switch {
	case s.trainedBetas != nil:
		betas = make([]float32, n)
		for i, b := range s.trainedBetas {
			betas[i] = float32(b)
		}
	case s.betaSchedule == BetaScaledLinear || s.betaSchedule == BetaQuadratic:
		betas = linspace32(math.Sqrt(s.betaStart), math.Sqrt(s.betaEnd), n)
		for i, b := range betas {
			betas[i] = b * b
		}
	case s.betaSchedule == BetaCosine:
		betas = cosineBetas(n)
	case s.betaSchedule == BetaSigmoid:
		betas = linspace32(-6, 6, n)
		scale, offset := float32(s.betaEnd-s.betaStart), float32(s.betaStart)
		for i, x := range betas {
			sig := float32(1 / (1 + math.Exp(-float64(x))))
			betas[i] = float32(sig*scale) + offset
		}
	default:
		betas = linspace32(s.betaStart, s.betaEnd, n)
	}
	if s.rescaleZeroSNR {
		betas = rescaleZeroTerminalSNR(betas)
	}
	return betas
}

// linspace32 reproduces torch.linspace(start, end, n, dtype=float32) on the
// CPU: a float32 step, the first half counted up from start and the second
// half down from end.
func linspace32(start, end float64, n int) []float32 {
	s, e := float32(start), float32(end)
	out := make([]float32, n)
	if n == 1 {
		out[0] = s
		return out
	}
	step := (e - s) / float32(n-1)
	for i := range out {
		if i < n/2 {
			out[i] = s + float32(step*float32(i))
		} else {
			out[i] = e - float32(step*float32(n-1-i))
		}
	}
	return out
}

// cosineBetas is diffusers' betas_for_alpha_bar with the "cosine" transform
// (Nichol & Dhariwal 2021), computed in float64 and stored as float32.
func cosineBetas(n int) []float32 {
	alphaBar := func(t float64) float64 {
		c := math.Cos((t + 0.008) / 1.008 * math.Pi / 2)
		return c * c
	}
	betas := make([]float32, n)
	for i := range betas {
		t1, t2 := float64(i)/float64(n), float64(i+1)/float64(n)
		betas[i] = float32(math.Min(1-alphaBar(t2)/alphaBar(t1), 0.999))
	}
	return betas
}

// rescaleZeroTerminalSNR is Algorithm 1 of Lin et al. 2023 ("Common
// Diffusion Noise Schedules and Sample Steps are Flawed") in float32: shift
// and scale √ᾱ so that its last value is 0 and its first is unchanged.
func rescaleZeroTerminalSNR(betas []float32) []float32 {
	ac := cumprodAlphas(betas)
	sq := make([]float32, len(ac))
	for i, a := range ac {
		sq[i] = float32(math.Sqrt(float64(a)))
	}
	first, last := sq[0], sq[len(sq)-1]
	scale := first / (first - last)
	out := make([]float32, len(betas))
	prev := float32(0)
	for i := range sq {
		v := (sq[i] - last) * scale
		bar := float32(v * v)
		if i == 0 {
			out[i] = 1 - bar
		} else {
			out[i] = 1 - bar/prev
		}
		prev = bar
	}
	return out
}

// cumprodAlphas returns ᾱ_t = Π_{s≤t}(1−β_s): alphas rounded to float32,
// the running product kept in float64 and each result rounded to float32,
// as torch.cumprod does on the CPU.
func cumprodAlphas(betas []float32) []float32 {
	out := make([]float32, len(betas))
	prod := 1.0
	for i, b := range betas {
		prod *= float64(1 - b)
		out[i] = float32(prod)
	}
	return out
}

// sqrt32 is a float32 square root, as torch computes x**0.5 on a float32,
// widened to float64.
func sqrt32(x float32) float64 { return float64(sqrtf(x)) }

// sqrtf, expf, logf and expm1f are float32 functions rounded from float64.
func sqrtf(x float32) float32  { return float32(math.Sqrt(float64(x))) }
func expf(x float32) float32   { return float32(math.Exp(float64(x))) }
func logf(x float32) float32   { return float32(math.Log(float64(x))) }
func expm1f(x float32) float32 { return float32(math.Expm1(float64(x))) }

// combine returns a·x + b·y.
func combine(a float64, x []float32, b float64, y []float32) []float32 {
	checkLen(x, y)
	out := make([]float32, len(x))
	for j := range x {
		out[j] = float32(a*float64(x[j]) + b*float64(y[j]))
	}
	return out
}

func checkLen(a, b []float32) {
	if len(a) != len(b) {
		panic(fmt.Sprintf("schedule: slices of length %d and %d", len(a), len(b)))
	}
}

// toFloat64 widens float32 values.
func toFloat64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
