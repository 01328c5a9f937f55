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

var samplerNames = []string{
	"ddpm", "ddim", "pndm", "euler", "euler_a", "heun", "dpm2",
	"dpmpp_2m", "dpmpp_2s_a", "lms", "unipc", "lcm",
}

// samplerClasses names the diffusers class each sampler reproduces; it also
// supplies the defaults of unset Config fields. DPM++ 2S ancestral has no
// diffusers class and runs on EulerAncestralDiscreteScheduler's schedule.
var samplerClasses = []string{
	"DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
	"EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
	"DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
	"UniPCMultistepScheduler", "LCMScheduler",
}

// String returns the sampler's name: ddpm ddim pndm euler euler_a heun dpm2
// dpmpp_2m dpmpp_2s_a lms unipc lcm.
func (s Sampler) String() string { return enumName(samplerNames, int(s), "Sampler") }

// ParseSampler parses a name returned by Sampler.String.
func ParseSampler(s string) (Sampler, error) {
	v, err := parseEnum(samplerNames, s, "sampler")
	return Sampler(v), err
}

func (s Sampler) valid() bool { return s >= 0 && int(s) < len(samplerNames) }

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
