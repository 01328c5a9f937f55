package schedule

import "fmt"

// alphaSampler is shared by the samplers that step between integer training
// timesteps using ᾱ directly (DDPM, DDIM, PNDM, LCM). Their model input is
// the sample and their initial noise is unscaled.
type alphaSampler struct {
	identityInput
	anyStart
	alphasCumprod []float32
	timesteps     []float64
	prediction    PredictionType
}

// newAlphaSampler builds the training schedule and records the timesteps in
// b after checking that each is a training timestep.
func newAlphaSampler(b *base, s settings, timesteps []float64) (alphaSampler, error) {
	ac := cumprodAlphas(trainingBetas(s))
	for _, t := range timesteps {
		if t < 0 || t >= float64(len(ac)) {
			return alphaSampler{}, fmt.Errorf("schedule: %v timestep %v is outside [0, %d) (steps_offset %d)", b.sampler, t, len(ac), s.stepsOffset)
		}
	}
	b.timesteps = timesteps
	b.initNoiseSigma = 1
	return alphaSampler{alphasCumprod: ac, timesteps: timesteps, prediction: s.prediction}, nil
}

// addNoise is diffusers' add_noise at timesteps[i]: √ᾱ·x0 + √(1−ᾱ)·noise.
func (a *alphaSampler) addNoise(x0, noise []float32, i int) []float32 {
	ac := a.alphasCumprod[int(a.timesteps[i])]
	return combine(sqrt32(ac), x0, sqrt32(1-ac), noise)
}

// ddpm is DDPMScheduler with fixed_small variance: the ancestral step of
// Ho et al. 2020 between consecutive inference timesteps.
type ddpm struct {
	alphaSampler
	clip      bool
	clipRange float64
}

func newDDPM(b *base, s settings) (*ddpm, error) {
	ts := spacedTimesteps(s.spacing, s.numTrain, b.steps, s.stepsOffset, true)
	a, err := newAlphaSampler(b, s, ts)
	if err != nil {
		return nil, err
	}
	return &ddpm{alphaSampler: a, clip: s.clipSample, clipRange: s.clipRange}, nil
}

func (d *ddpm) step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error) {
	t := int(d.timesteps[i])
	acT, acPrev := d.alphasCumprod[t], float32(1)
	if i+1 < len(d.timesteps) {
		acPrev = d.alphasCumprod[int(d.timesteps[i+1])]
	}
	betaT, betaPrev := 1-acT, 1-acPrev
	curAlpha := acT / acPrev
	curBeta := 1 - curAlpha

	x0 := predictOriginal(d.prediction, modelOutput, x, sqrt32(acT), sqrt32(betaT))
	if d.clip {
		clampAll(x0, d.clipRange)
	}
	cx0 := float64(float32(sqrtf(acPrev)*curBeta) / betaT)
	cx := float64(float32(sqrtf(curAlpha)*betaPrev) / betaT)
	out := make([]float32, len(x))
	var z []float32
	var std float64
	if t > 0 {
		if noise == nil {
			return nil, errNoNoise(DDPM)
		}
		z = draw(noise, len(x))
		std = sqrt32(max(float32(betaPrev/betaT)*curBeta, 1e-20))
	}
	for j := range out {
		v := cx0*float64(x0[j]) + cx*float64(x[j])
		if z != nil {
			v += std * float64(z[j])
		}
		out[j] = float32(v)
	}
	return out, nil
}

// ddim is DDIMScheduler (Song et al. 2020). Like diffusers it steps from
// timestep t to t − T/steps whatever the spacing.
type ddim struct {
	alphaSampler
	eta        float64
	stride     int
	finalAlpha float32
	clip       bool
	clipRange  float64
}

func newDDIM(b *base, s settings, eta float64) (*ddim, error) {
	ts := spacedTimesteps(s.spacing, s.numTrain, b.steps, s.stepsOffset, true)
	a, err := newAlphaSampler(b, s, ts)
	if err != nil {
		return nil, err
	}
	final := a.alphasCumprod[0]
	if s.setAlphaToOne {
		final = 1
	}
	return &ddim{
		alphaSampler: a, eta: eta, stride: s.numTrain / b.steps, finalAlpha: final,
		clip: s.clipSample, clipRange: s.clipRange,
	}, nil
}

func (d *ddim) step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error) {
	t := int(d.timesteps[i])
	prev := t - d.stride
	acT, acPrev := d.alphasCumprod[t], d.finalAlpha
	if prev >= 0 {
		acPrev = d.alphasCumprod[prev]
	}
	betaT := 1 - acT
	sa, sb := float64(sqrtf(acT)), float64(sqrtf(betaT))

	x0 := make([]float32, len(x))
	eps := make([]float32, len(x))
	for j := range x {
		m, xj := float64(modelOutput[j]), float64(x[j])
		switch d.prediction {
		case PredictSample:
			x0[j] = modelOutput[j]
			eps[j] = float32((xj - sa*m) / sb)
		case PredictV:
			x0[j] = float32(sa*xj - sb*m)
			eps[j] = float32(sa*m + sb*xj)
		default:
			x0[j] = float32((xj - sb*m) / sa)
			eps[j] = modelOutput[j]
		}
	}
	if d.clip {
		clampAll(x0, d.clipRange)
	}
	variance := ((1 - acPrev) / betaT) * (1 - acT/acPrev)
	std := float32(d.eta) * sqrtf(variance)
	dir := float64(sqrtf((1 - acPrev) - float32(std*std)))
	sp := float64(sqrtf(acPrev))
	var z []float32
	if d.eta > 0 {
		if noise == nil {
			return nil, errNoNoise(DDIM)
		}
		z = draw(noise, len(x))
	}
	out := make([]float32, len(x))
	for j := range out {
		v := sp*float64(x0[j]) + dir*float64(eps[j])
		if z != nil {
			v += float64(std) * float64(z[j])
		}
		out[j] = float32(v)
	}
	return out, nil
}
