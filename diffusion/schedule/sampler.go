package schedule

// Sampler selects the sampling algorithm. The names follow the usual
// Stable Diffusion UI vocabulary; each maps to one diffusers scheduler class
// (see the package documentation).
type Sampler int

// Samplers. The zero value is DDPM.
const (
	DDPM             Sampler = iota // DDPMScheduler: ancestral DDPM, stochastic
	DDIM                            // DDIMScheduler: deterministic at Eta 0
	PNDM                            // PNDMScheduler: pseudo linear multistep
	Euler                           // EulerDiscreteScheduler
	EulerAncestral                  // EulerAncestralDiscreteScheduler, stochastic
	Heun                            // HeunDiscreteScheduler, two model calls a step
	DPM2                            // KDPM2DiscreteScheduler, two model calls a step
	DPMPP2M                         // DPMSolverMultistepScheduler (DPM-Solver++ 2M)
	DPMPP2SAncestral                // k-diffusion's sample_dpmpp_2s_ancestral, stochastic
	LMS                             // LMSDiscreteScheduler, order-4 linear multistep
	UniPC                           // UniPCMultistepScheduler (bh2, order 2)
	LCM                             // LCMScheduler, for latent consistency models
)

// samplers is the one table of sampler names: the name here (String), the
// diffusers class the sampler reproduces, whose defaults fill the unset
// Config fields, and the name in AUTOMATIC1111's generation parameters. DPM++
// 2S ancestral has no diffusers class and runs on
// EulerAncestralDiscreteScheduler's schedule; SamplerForClass maps that class
// to EulerAncestral, the earlier row.
var samplers = []struct{ name, class, a1111 string }{
	DDPM:             {"ddpm", "DDPMScheduler", "DDPM"},
	DDIM:             {"ddim", "DDIMScheduler", "DDIM"},
	PNDM:             {"pndm", "PNDMScheduler", "PLMS"},
	Euler:            {"euler", "EulerDiscreteScheduler", "Euler"},
	EulerAncestral:   {"euler_a", "EulerAncestralDiscreteScheduler", "Euler a"},
	Heun:             {"heun", "HeunDiscreteScheduler", "Heun"},
	DPM2:             {"dpm2", "KDPM2DiscreteScheduler", "DPM2"},
	DPMPP2M:          {"dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M"},
	DPMPP2SAncestral: {"dpmpp_2s_a", "EulerAncestralDiscreteScheduler", "DPM++ 2S a"},
	LMS:              {"lms", "LMSDiscreteScheduler", "LMS"},
	UniPC:            {"unipc", "UniPCMultistepScheduler", "UniPC"},
	LCM:              {"lcm", "LCMScheduler", "LCM"},
}

// samplerNames are the names of samplers, in Sampler order, for the enum
// helpers.
var samplerNames = func() []string {
	names := make([]string, len(samplers))
	for i, s := range samplers {
		names[i] = s.name
	}
	return names
}()

// String returns the sampler's name: ddpm ddim pndm euler euler_a heun dpm2
// dpmpp_2m dpmpp_2s_a lms unipc lcm.
func (s Sampler) String() string { return enumName(samplerNames, int(s), "Sampler") }

// ParseSampler parses a name returned by Sampler.String.
func ParseSampler(s string) (Sampler, error) {
	v, err := parseEnum(samplerNames, s, "sampler")
	return Sampler(v), err
}

// ClassName is the diffusers scheduler class the sampler reproduces
// ("EulerDiscreteScheduler"); "" for an invalid Sampler.
func (s Sampler) ClassName() string {
	if !s.Valid() {
		return ""
	}
	return samplers[s].class
}

// A1111Name is the sampler's name in AUTOMATIC1111's generation parameters
// ("Euler a", "DPM++ 2M"), or String for an invalid Sampler.
func (s Sampler) A1111Name() string {
	if !s.Valid() {
		return s.String()
	}
	return samplers[s].a1111
}

// SamplerForClass is the sampler a scheduler_config.json's _class_name
// names, and false for a class no sampler reproduces.
func SamplerForClass(class string) (Sampler, bool) {
	for i, s := range samplers {
		if s.class == class {
			return Sampler(i), true
		}
	}
	return 0, false
}

// Valid reports whether s is one of the samplers above.
func (s Sampler) Valid() bool { return s >= 0 && int(s) < len(samplers) }

// usesSigmas reports whether the sampler works on a sigma schedule and so
// accepts a SigmaSchedule other than SigmasDefault.
func (s Sampler) usesSigmas() bool {
	switch s {
	case DDPM, DDIM, PNDM, LCM:
		return false
	}
	return true
}

// readsSigmaConfig reports whether the sampler's diffusers class reads
// use_karras_sigmas and use_exponential_sigmas.
func (s Sampler) readsSigmaConfig() bool {
	return s.usesSigmas() && s != EulerAncestral && s != DPMPP2SAncestral
}

// SigmaSchedule selects how the noise levels of a sigma-based sampler are
// spaced (diffusers' use_karras_sigmas / use_exponential_sigmas).
type SigmaSchedule int

// Sigma schedules.
const (
	// SigmasDefault: the Config decides (UseKarrasSigmas,
	// UseExponentialSigmas, see New); with neither set, the sigmas of the
	// training schedule at the spaced timesteps.
	SigmasDefault SigmaSchedule = iota
	// SigmasKarras: Karras et al. (2022) ρ=7 spacing between the
	// schedule's smallest and largest sigma.
	SigmasKarras
	// SigmasExponential: log-uniform spacing between the same bounds.
	SigmasExponential
)

var sigmaScheduleNames = []string{"default", "karras", "exponential"}

// String returns "default", "karras" or "exponential".
func (s SigmaSchedule) String() string { return enumName(sigmaScheduleNames, int(s), "SigmaSchedule") }

// ParseSigmaSchedule parses a name returned by SigmaSchedule.String.
func ParseSigmaSchedule(s string) (SigmaSchedule, error) {
	v, err := parseEnum(sigmaScheduleNames, s, "sigma schedule")
	return SigmaSchedule(v), err
}

// Options picks the sampling algorithm; the zero value is DDPM.
type Options struct {
	// Sampler is the sampling algorithm.
	Sampler Sampler
	// Sigmas overrides the Config's sigma schedule for sigma-based
	// samplers (every sampler but DDPM, DDIM, PNDM and LCM). DPM++ 2M
	// Karras is Options{Sampler: DPMPP2M, Sigmas: SigmasKarras}.
	Sigmas SigmaSchedule
	// Eta is DDIM's η in [0, 1]: 0 is deterministic DDIM, 1 matches DDPM's
	// variance. Other samplers require 0.
	Eta float64
	// Spacing overrides the Config's timestep spacing, as passing
	// timestep_spacing to from_config does in diffusers; SpacingDefault
	// keeps the Config's (see Config.Spacing).
	Spacing TimestepSpacing
}

// Noise is a source of standard normal samples, such as a torch-compatible
// generator from the rng package.
type Noise interface {
	// Normal fills dst with independent N(0, 1) samples, in the order
	// torch.randn fills a tensor of len(dst) elements.
	Normal(dst []float32)
}
