package schedule

import (
	"fmt"
	"math"
	"slices"
)

// Scheduler runs one sampling loop, mirroring a diffusers scheduler after
// set_timesteps: for i over Timesteps(), the caller evaluates the model on
// ScaleModelInput(x, i) at timestep Timesteps()[i] and passes its output to
// Step(output, i, x, noise), which returns the next x. The initial x is
// noise scaled by InitNoiseSigma, or AddNoise(latents, noise,
// StartIndex(strength)) for img2img.
//
// Samples are flattened float32 batches of any length (B latents
// concatenated); every slice passed to one call must have the same length.
//
// A Scheduler keeps the state of its multistep and second-order samplers
// between Step calls, so it serves one sampling loop and one goroutine at a
// time. Step must be called with consecutive indices; the first call may use
// any index at which a step begins (StartIndex's result always does), with
// empty history, as after diffusers' set_begin_index. New is cheap: make a new
// Scheduler for each image.
type Scheduler interface {
	// Timesteps returns the model timestep of each call, as diffusers'
	// scheduler.timesteps: integers for DDPM, DDIM, PNDM, DPM++ 2M,
	// UniPC and LCM, float32 values that may be fractional for the
	// k-diffusion samplers. Samplers with two model calls a step list
	// both, so Heun, DPM2 and DPM++ 2S ancestral have 2·steps−1 entries;
	// PNDM has steps+1, or steps+9 with Runge-Kutta warm-up.
	Timesteps() []float64
	// Sigmas returns diffusers' scheduler.sigmas for sigma-based samplers
	// (the noise level σ = √((1−ᾱ)/ᾱ) at each entry, ending with 0; Heun
	// and DPM2 repeat entries as diffusers does) and nil for DDPM, DDIM,
	// PNDM and LCM. For DPM++ 2S ancestral it is the step boundaries
	// σ_0..σ_steps.
	Sigmas() []float64
	// InitNoiseSigma is the factor that scales unit noise into the
	// initial sample of a full (txt2img) run.
	InitNoiseSigma() float64
	// ScaleModelInput returns x as the model must see it at entry i: a
	// copy of x, divided by √(σ²+1) for the k-diffusion samplers. It
	// panics if i is outside Timesteps().
	ScaleModelInput(x []float32, i int) []float32
	// Step takes the model output for entry i and the current sample x
	// and returns the next sample. noise is read only by stochastic
	// samplers (DDPM, DDIM with Eta > 0, Euler ancestral, DPM++ 2S
	// ancestral, LCM), in the order diffusers draws it; it may be nil
	// for the others.
	Step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error)
	// AddNoise noises clean samples x0 to the level of entry i (img2img
	// and inpainting), as diffusers' scheduler.add_noise at timesteps[i]
	// after set_begin_index. It panics if i is outside Timesteps() or the
	// slices differ in length.
	AddNoise(x0, noise []float32, i int) []float32
	// StartIndex returns the first entry an img2img run of the given
	// strength executes, as StableDiffusionImg2ImgPipeline computes it:
	// steps − int(steps·strength) model steps are skipped, times the
	// scheduler's order (2 for Heun, DPM2 and DPM++ 2S ancestral).
	// strength is clamped to [0, 1]; 1 gives 0 and 0 gives
	// len(Timesteps()), an empty run.
	StartIndex(strength float64) int
	// StepOf returns the 0-based sampling step that model call i belongs to.
	StepOf(i int) int
}

// New returns a scheduler running the chosen sampler for steps model steps
// on the training schedule described by cfg.
//
// The sigma schedule is opts.Sigmas, or when that is SigmasDefault the
// Config's UseKarrasSigmas / UseExponentialSigmas for the samplers whose
// diffusers class reads them (all sigma-based samplers but Euler ancestral
// and DPM++ 2S ancestral).
//
// New fails on an invalid Config (the error wraps ErrInvalidConfig; so does
// a beta range that the class defaults complete backwards) or Options, on
// steps outside [1, NumTrainTimesteps], and on combinations that diffusers
// rejects or would silently mishandle: a SigmaSchedule with DDPM, DDIM, PNDM
// or LCM; Eta with any sampler but DDIM; sample prediction with Euler
// ancestral, DPM2 or PNDM; RescaleBetasZeroSNR with PNDM, Heun, DPM2 or LMS
// (their diffusers classes ignore it); PNDM with Runge-Kutta warm-up and
// fewer than 4 steps; LCM with more steps than OriginalInferenceSteps; DDPM,
// DDIM, PNDM or LCM timesteps outside the training range (a large
// StepsOffset); and DPM++ 2M or UniPC schedules whose first integer timestep
// repeats (diffusers then indexes past its sigmas).
func New(cfg Config, opts Options, steps int) (Scheduler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !opts.Sampler.Valid() {
		return nil, fmt.Errorf("schedule: unknown sampler %d", int(opts.Sampler))
	}
	if opts.Sigmas < 0 || int(opts.Sigmas) >= len(sigmaScheduleNames) {
		return nil, fmt.Errorf("schedule: unknown sigma schedule %d", int(opts.Sigmas))
	}
	if !(opts.Eta >= 0 && opts.Eta <= 1) {
		return nil, fmt.Errorf("schedule: eta %v is outside [0, 1]", opts.Eta)
	}
	if opts.Eta != 0 && opts.Sampler != DDIM {
		return nil, fmt.Errorf("schedule: eta applies to ddim only, not %v", opts.Sampler)
	}
	if opts.Spacing < 0 || int(opts.Spacing) >= len(spacingNames) {
		return nil, fmt.Errorf("schedule: unknown timestep spacing %d", int(opts.Spacing))
	}
	s := cfg.resolve(opts.Sampler.ClassName())
	s.spacing = orDefault(opts.Spacing, s.spacing)
	if err := s.checkBetas(); err != nil {
		return nil, err
	}
	if steps < 1 || steps > s.numTrain {
		return nil, fmt.Errorf("schedule: %d steps is outside [1, %d]", steps, s.numTrain)
	}
	sigmas := opts.Sigmas
	if !opts.Sampler.usesSigmas() && sigmas != SigmasDefault {
		return nil, fmt.Errorf("schedule: %v has no sigma schedule, cannot use %v sigmas", opts.Sampler, sigmas)
	}
	if sigmas == SigmasDefault && opts.Sampler.readsSigmaConfig() {
		switch {
		case cfg.UseKarrasSigmas:
			sigmas = SigmasKarras
		case cfg.UseExponentialSigmas:
			sigmas = SigmasExponential
		}
	}
	switch opts.Sampler {
	case EulerAncestral, DPM2, PNDM:
		if s.prediction == PredictSample {
			return nil, fmt.Errorf("schedule: %v does not support %v prediction", opts.Sampler, s.prediction)
		}
	}
	switch opts.Sampler {
	case PNDM, Heun, DPM2, LMS:
		if s.rescaleZeroSNR {
			return nil, fmt.Errorf("schedule: %v does not support rescale_betas_zero_snr", opts.Sampler)
		}
	}

	b := base{sampler: opts.Sampler, steps: steps, order: 1, next: -1}
	var impl stepper
	var err error
	switch opts.Sampler {
	case DDPM:
		impl, err = newDDPM(&b, s)
	case DDIM:
		impl, err = newDDIM(&b, s, opts.Eta)
	case PNDM:
		impl, err = newPNDM(&b, s)
	case LCM:
		impl, err = newLCM(&b, s)
	case Euler, EulerAncestral:
		impl = newEuler(&b, s, sigmas, opts.Sampler == EulerAncestral)
	case Heun:
		impl = newHeun(&b, s, sigmas)
	case DPM2:
		impl = newDPM2(&b, s, sigmas)
	case LMS:
		impl = newLMS(&b, s, sigmas)
	case DPMPP2SAncestral:
		impl = newDPMPP2SAncestral(&b, s, sigmas)
	case DPMPP2M, UniPC:
		impl, err = newMultistep(&b, s, sigmas, opts.Sampler == UniPC)
	}
	if err != nil {
		return nil, err
	}
	return &scheduler{base: b, impl: impl}, nil
}

// base holds what every sampler exposes; the sampler constructors fill it.
type base struct {
	sampler        Sampler
	steps          int
	order          int // diffusers' scheduler.order, the StartIndex multiplier
	timesteps      []float64
	sigmas         []float64
	initNoiseSigma float64
	next           int // index the next Step must use; -1 before the first Step
}

// stepper is one sampler's arithmetic. Indices are checked before the calls.
type stepper interface {
	scale(x []float32, i int) []float32
	step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error)
	addNoise(x0, noise []float32, i int) []float32
	// canStart reports whether a run may begin at entry i, i.e. whether
	// i is the first model call of a step.
	canStart(i int) bool
}

type scheduler struct {
	base
	impl stepper
}

func (s *scheduler) Timesteps() []float64    { return slices.Clone(s.timesteps) }
func (s *scheduler) Sigmas() []float64       { return slices.Clone(s.sigmas) }
func (s *scheduler) InitNoiseSigma() float64 { return s.initNoiseSigma }

func (s *scheduler) mustIndex(i int, op string) {
	if i < 0 || i >= len(s.timesteps) {
		panic(fmt.Sprintf("schedule: %s: index %d outside [0, %d)", op, i, len(s.timesteps)))
	}
}

func (s *scheduler) ScaleModelInput(x []float32, i int) []float32 {
	s.mustIndex(i, "ScaleModelInput")
	return s.impl.scale(x, i)
}

func (s *scheduler) AddNoise(x0, noise []float32, i int) []float32 {
	s.mustIndex(i, "AddNoise")
	checkLen(x0, noise)
	return s.impl.addNoise(x0, noise, i)
}

func (s *scheduler) Step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error) {
	switch {
	case i < 0 || i >= len(s.timesteps):
		return nil, fmt.Errorf("schedule: step index %d outside [0, %d)", i, len(s.timesteps))
	case len(modelOutput) != len(x):
		return nil, fmt.Errorf("schedule: model output has %d values, sample %d", len(modelOutput), len(x))
	case s.next >= 0 && i != s.next:
		return nil, fmt.Errorf("schedule: step %d called after step %d; steps run in order (use a new Scheduler to restart)", i, s.next-1)
	case s.next < 0 && !s.impl.canStart(i):
		return nil, fmt.Errorf("schedule: %v cannot start at index %d, the second model call of a step", s.sampler, i)
	}
	out, err := s.impl.step(modelOutput, i, x, noise)
	if err != nil {
		return nil, err
	}
	s.next = i + 1
	return out, nil
}

func (s *scheduler) StartIndex(strength float64) int {
	if !(strength > 0) {
		strength = 0
	}
	strength = math.Min(strength, 1)
	initSteps := min(int(float64(s.steps)*strength), s.steps)
	return min((s.steps-initSteps)*s.order, len(s.timesteps))
}

// errNoNoise is returned by stochastic samplers asked to step without noise.
func errNoNoise(s Sampler) error {
	return fmt.Errorf("schedule: %v needs a Noise source to step", s)
}

// anyStart is embedded by samplers that may start at every entry.
type anyStart struct{}

func (anyStart) canStart(int) bool { return true }

// identityInput is embedded by samplers whose model input is the sample.
type identityInput struct{}

func (identityInput) scale(x []float32, _ int) []float32 { return slices.Clone(x) }

// draw fills a new slice with n normal samples.
func draw(noise Noise, n int) []float32 {
	z := make([]float32, n)
	noise.Normal(z)
	return z
}

// clampAll clamps every element to [−r, r] in place.
func clampAll(x []float32, r float64) {
	lim := float32(r)
	for j, v := range x {
		x[j] = max(-lim, min(lim, v))
	}
}
