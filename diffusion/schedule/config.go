package schedule

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
)

// BetaSchedule names how the training betas β_1..β_T are laid out between
// BetaStart and BetaEnd (diffusers' beta_schedule).
type BetaSchedule int

// Beta schedules. The zero value defers to the sampler's diffusers class
// default (linear for most classes, scaled_linear for LCMScheduler).
const (
	BetaScheduleDefault BetaSchedule = iota
	// BetaLinear: β evenly spaced from BetaStart to BetaEnd ("linear").
	BetaLinear
	// BetaScaledLinear: √β evenly spaced, then squared ("scaled_linear";
	// Stable Diffusion's schedule).
	BetaScaledLinear
	// BetaCosine: Nichol & Dhariwal's cosine ᾱ(t), β capped at 0.999
	// ("squaredcos_cap_v2"; BetaStart and BetaEnd are unused).
	BetaCosine
	// BetaSigmoid: sigmoid of 12 evenly spaced points in [-6, 6], scaled
	// into [BetaStart, BetaEnd] (GeoDiff; "sigmoid").
	BetaSigmoid
	// BetaQuadratic: the DDPM/LDM "quad" schedule, √β evenly spaced then
	// squared. It gives the same numbers as BetaScaledLinear; the name
	// exists because training code outside diffusers uses it.
	BetaQuadratic
)

var betaScheduleNames = []string{"default", "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "quadratic"}

// String returns the diffusers name ("scaled_linear", "squaredcos_cap_v2", ...).
func (b BetaSchedule) String() string { return enumName(betaScheduleNames, int(b), "BetaSchedule") }

// ParseBetaSchedule parses a diffusers beta_schedule name; "cosine" is
// accepted for "squaredcos_cap_v2".
func ParseBetaSchedule(s string) (BetaSchedule, error) {
	if s == "cosine" {
		return BetaCosine, nil
	}
	v, err := parseEnum(betaScheduleNames, s, "beta schedule")
	return BetaSchedule(v), err
}

// TimestepSpacing selects how inference timesteps are picked among the
// training timesteps (diffusers' timestep_spacing; see Table 2 of
// "Common Diffusion Noise Schedules and Sample Steps are Flawed").
type TimestepSpacing int

// Timestep spacings. The zero value defers to the sampler's diffusers class
// default (leading for DDPM, DDIM, PNDM and LCM; linspace for the others).
const (
	SpacingDefault TimestepSpacing = iota
	// SpacingLeading: multiples of T/steps from 0, plus Config.StepsOffset.
	SpacingLeading
	// SpacingTrailing: multiples of T/steps counted down from T, minus one;
	// the first timestep is always T-1.
	SpacingTrailing
	// SpacingLinspace: evenly spaced over [0, T-1] including both ends.
	SpacingLinspace
)

var spacingNames = []string{"default", "leading", "trailing", "linspace"}

// String returns the diffusers name: "leading", "trailing" or "linspace".
func (s TimestepSpacing) String() string { return enumName(spacingNames, int(s), "TimestepSpacing") }

// ParseTimestepSpacing parses a diffusers timestep_spacing name.
func ParseTimestepSpacing(s string) (TimestepSpacing, error) {
	v, err := parseEnum(spacingNames, s, "timestep spacing")
	return TimestepSpacing(v), err
}

// PredictionType is what the denoising model outputs (diffusers'
// prediction_type). It is the one prediction type of the module: modelfile
// reads it from scheduler configs and the diffusion API takes it as an
// option, so a model's value reaches the samplers unconverted.
type PredictionType int

// Prediction types; the zero value is epsilon, every diffusers default.
const (
	// PredictEpsilon: the model predicts the added noise ε.
	PredictEpsilon PredictionType = iota
	// PredictV: the model predicts v = √ᾱ·ε − √(1−ᾱ)·x0 ("v_prediction";
	// SD 2.x 768px models).
	PredictV
	// PredictSample: the model predicts the clean sample x0 ("sample").
	PredictSample
)

var predictionNames = []string{"epsilon", "v_prediction", "sample"}

// String returns the diffusers name: "epsilon", "v_prediction" or "sample".
func (p PredictionType) String() string { return enumName(predictionNames, int(p), "PredictionType") }

// ParsePredictionType parses a diffusers prediction_type name.
func ParsePredictionType(s string) (PredictionType, error) {
	v, err := parseEnum(predictionNames, s, "prediction type")
	return PredictionType(v), err
}

// Valid reports whether p is one of the prediction types above.
func (p PredictionType) Valid() bool { return p >= 0 && int(p) < len(predictionNames) }

// MarshalText writes the diffusers name, so that the type can be a field of
// a JSON config.
func (p PredictionType) MarshalText() ([]byte, error) {
	if !p.Valid() {
		return nil, fmt.Errorf("invalid prediction type %d", int(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText parses the diffusers name.
func (p *PredictionType) UnmarshalText(b []byte) error {
	v, err := ParsePredictionType(string(b))
	*p = v
	return err
}

// Config mirrors the fields of a diffusers scheduler_config.json that change
// what a scheduler computes. A field left at its zero value is one the file
// does not set, and takes the default of the class that implements the chosen
// Sampler. That is diffusers' rule when a pipeline switches schedulers with
// SchedulerX.from_config(pipe.scheduler.config): the loaded config lists the
// keys the old class filled with its own defaults (_use_default_values) and
// from_config drops them, so only the keys present in the file carry over. So
// the zero Config with Options{Sampler: DDIM} is DDIMScheduler() with no
// arguments, and a PNDMScheduler file without timestep_spacing gives Euler
// EulerDiscreteScheduler's linspace spacing, not PNDM's leading.
//
// Fields not listed here (thresholding, variance_type, solver_order,
// algorithm_type, interpolation_type, final_sigmas_type, ...) are not read:
// the sampler fixes them to the values the samplers in this package
// implement (see the package documentation).
type Config struct {
	// ClassName is "_class_name", the diffusers scheduler class the file
	// was written for, e.g. "PNDMScheduler". It is informational: the
	// defaults of unset fields come from the sampler's class (see Config).
	ClassName string

	// NumTrainTimesteps is num_train_timesteps, T; 0 means 1000.
	NumTrainTimesteps int
	// BetaStart and BetaEnd are beta_start and beta_end; 0 means the
	// class default (0.0001 and 0.02 for most classes, 0.00085 and 0.012
	// for Heun, KDPM2 and LCM).
	BetaStart, BetaEnd float64
	// BetaSchedule is beta_schedule; BetaScheduleDefault means the class
	// default.
	BetaSchedule BetaSchedule
	// TrainedBetas is trained_betas: when non-nil it replaces the beta
	// schedule and must hold NumTrainTimesteps values in [0, 1).
	TrainedBetas []float64
	// RescaleBetasZeroSNR is rescale_betas_zero_snr: rescale the betas so
	// that the last training timestep has zero signal (Lin et al. 2023).
	RescaleBetasZeroSNR bool

	// PredictionType is prediction_type.
	PredictionType PredictionType
	// TimestepSpacing is timestep_spacing; SpacingDefault means the class
	// default.
	TimestepSpacing TimestepSpacing
	// StepsOffset is steps_offset, added to leading-spaced timesteps.
	StepsOffset int

	// ClipSample is clip_sample: clamp the predicted x0 to
	// ±ClipSampleRange (DDPM, DDIM, Heun, LCM). nil means the class default
	// (true for DDPMScheduler and DDIMScheduler, false otherwise).
	ClipSample *bool
	// ClipSampleRange is clip_sample_range; 0 means 1.
	ClipSampleRange float64
	// SetAlphaToOne is set_alpha_to_one: the ᾱ a DDIM/PNDM step lands on
	// when it steps past timestep 0 is 1 instead of ᾱ_0. nil means the
	// class default (true for DDIM and LCM, false for PNDM).
	SetAlphaToOne *bool
	// SkipPRKSteps is skip_prk_steps: PNDM starts with linear multistep
	// steps instead of the 12 Runge-Kutta warm-up calls. nil means false,
	// PNDMScheduler's default; SD 1.x files set it to true.
	SkipPRKSteps *bool

	// UseKarrasSigmas and UseExponentialSigmas are use_karras_sigmas and
	// use_exponential_sigmas. They pick the sigma schedule when
	// Options.Sigmas is SigmasDefault and the sampler's diffusers class
	// reads them (see New); at most one may be set.
	UseKarrasSigmas, UseExponentialSigmas bool

	// OriginalInferenceSteps is LCM's original_inference_steps, the
	// distillation schedule length; 0 means 50.
	OriginalInferenceSteps int
	// TimestepScaling is LCM's timestep_scaling; 0 means 10.
	TimestepScaling float64
}

// DefaultConfig returns the scheduler configuration of Stable Diffusion 1.x
// (runwayml/stable-diffusion-v1-5's scheduler_config.json): scaled_linear
// betas from 0.00085 to 0.012 over 1000 steps, steps_offset 1, epsilon
// prediction, no clipping, set_alpha_to_one false and PNDM without
// Runge-Kutta warm-up. The file has no timestep_spacing, so each sampler
// uses its class default: leading for PNDM and DDIM, linspace for Euler.
func DefaultConfig() Config {
	return Config{
		ClassName:         "PNDMScheduler",
		NumTrainTimesteps: 1000,
		BetaStart:         0.00085,
		BetaEnd:           0.012,
		BetaSchedule:      BetaScaledLinear,
		PredictionType:    PredictEpsilon,
		StepsOffset:       1,
		ClipSample:        boolPtr(false),
		SetAlphaToOne:     boolPtr(false),
		SkipPRKSteps:      boolPtr(true),
	}
}

// configFile is the JSON layout of scheduler_config.json. Pointers tell a
// missing field from a zero one.
type configFile struct {
	ClassName              string    `json:"_class_name"`
	NumTrainTimesteps      *int      `json:"num_train_timesteps"`
	BetaStart              *float64  `json:"beta_start"`
	BetaEnd                *float64  `json:"beta_end"`
	BetaSchedule           *string   `json:"beta_schedule"`
	TrainedBetas           []float64 `json:"trained_betas"`
	RescaleBetasZeroSNR    *bool     `json:"rescale_betas_zero_snr"`
	PredictionType         *string   `json:"prediction_type"`
	TimestepSpacing        *string   `json:"timestep_spacing"`
	StepsOffset            *int      `json:"steps_offset"`
	ClipSample             *bool     `json:"clip_sample"`
	ClipSampleRange        *float64  `json:"clip_sample_range"`
	SetAlphaToOne          *bool     `json:"set_alpha_to_one"`
	SkipPRKSteps           *bool     `json:"skip_prk_steps"`
	UseKarrasSigmas        *bool     `json:"use_karras_sigmas"`
	UseExponentialSigmas   *bool     `json:"use_exponential_sigmas"`
	OriginalInferenceSteps *int      `json:"original_inference_steps"`
	TimestepScaling        *float64  `json:"timestep_scaling"`
}

// ParseConfig reads the bytes of a diffusers scheduler_config.json. Unknown
// fields are ignored and JSON null reads as absent; a field with a value
// diffusers would reject (an unknown beta_schedule, a negative steps_offset,
// a non-positive beta_start, ...) is an error.
func ParseConfig(data []byte) (Config, error) {
	var f configFile
	if err := json.Unmarshal(data, &f); err != nil {
		return Config{}, fmt.Errorf("schedule: parse scheduler config: %w", err)
	}
	cfg := Config{
		ClassName:              f.ClassName,
		NumTrainTimesteps:      derefOr(f.NumTrainTimesteps, 0),
		BetaStart:              derefOr(f.BetaStart, 0),
		BetaEnd:                derefOr(f.BetaEnd, 0),
		TrainedBetas:           f.TrainedBetas,
		RescaleBetasZeroSNR:    derefOr(f.RescaleBetasZeroSNR, false),
		StepsOffset:            derefOr(f.StepsOffset, 0),
		ClipSample:             f.ClipSample,
		ClipSampleRange:        derefOr(f.ClipSampleRange, 0),
		SetAlphaToOne:          f.SetAlphaToOne,
		SkipPRKSteps:           f.SkipPRKSteps,
		UseKarrasSigmas:        derefOr(f.UseKarrasSigmas, false),
		UseExponentialSigmas:   derefOr(f.UseExponentialSigmas, false),
		OriginalInferenceSteps: derefOr(f.OriginalInferenceSteps, 0),
		TimestepScaling:        derefOr(f.TimestepScaling, 0),
	}
	// A field present in the file must hold a usable value: zero would
	// silently mean "default" in Config.
	for _, c := range []struct {
		name    string
		present bool
		ok      bool
	}{
		{"num_train_timesteps", f.NumTrainTimesteps != nil, cfg.NumTrainTimesteps > 0},
		{"beta_start", f.BetaStart != nil, cfg.BetaStart > 0},
		{"beta_end", f.BetaEnd != nil, cfg.BetaEnd > 0},
		{"clip_sample_range", f.ClipSampleRange != nil, cfg.ClipSampleRange > 0},
		{"original_inference_steps", f.OriginalInferenceSteps != nil, cfg.OriginalInferenceSteps > 0},
		{"timestep_scaling", f.TimestepScaling != nil, cfg.TimestepScaling > 0},
	} {
		if c.present && !c.ok {
			return Config{}, fmt.Errorf("schedule: scheduler config: %s must be positive", c.name)
		}
	}
	var err error
	if f.BetaSchedule != nil {
		if cfg.BetaSchedule, err = ParseBetaSchedule(*f.BetaSchedule); err != nil {
			return Config{}, fmt.Errorf("schedule: scheduler config: %w", err)
		}
	}
	if f.PredictionType != nil {
		if cfg.PredictionType, err = ParsePredictionType(*f.PredictionType); err != nil {
			return Config{}, fmt.Errorf("schedule: scheduler config: %w", err)
		}
	}
	if f.TimestepSpacing != nil {
		if cfg.TimestepSpacing, err = ParseTimestepSpacing(*f.TimestepSpacing); err != nil {
			return Config{}, fmt.Errorf("schedule: scheduler config: %w", err)
		}
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ErrInvalidConfig is wrapped by the errors of ParseConfig and New that come
// from the Config itself rather than from Options or the step count, so that
// callers can tell a broken model from a bad request.
var ErrInvalidConfig = errors.New("schedule: invalid config")

// validate checks the values that make no sense whatever the sampler.
// MaxTrainTimesteps bounds num_train_timesteps (Stable Diffusion models use 1000).
const MaxTrainTimesteps = 1 << 16

func (c Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	switch {
	case c.NumTrainTimesteps < 0:
		return bad("num_train_timesteps %d is negative", c.NumTrainTimesteps)
	case c.NumTrainTimesteps == 1:
		return bad("num_train_timesteps must be at least 2")
	case c.NumTrainTimesteps > MaxTrainTimesteps:
		// Tables of this length are built per call: a hostile file must not size them.
		return bad("num_train_timesteps %d is above %d", c.NumTrainTimesteps, MaxTrainTimesteps)
	case c.BetaStart < 0 || c.BetaStart >= 1 || math.IsNaN(c.BetaStart):
		return bad("beta_start %v is outside [0, 1)", c.BetaStart)
	case c.BetaEnd < 0 || c.BetaEnd >= 1 || math.IsNaN(c.BetaEnd):
		return bad("beta_end %v is outside [0, 1)", c.BetaEnd)
	case c.BetaStart != 0 && c.BetaEnd != 0 && c.usesBetaRange() && c.BetaStart > c.BetaEnd:
		// New also checks a range completed by class defaults; this
		// catches a file that sets both ends when it is parsed.
		return bad("beta_start %v is above beta_end %v", c.BetaStart, c.BetaEnd)
	case c.BetaSchedule < 0 || int(c.BetaSchedule) >= len(betaScheduleNames):
		return bad("unknown beta schedule %d", int(c.BetaSchedule))
	case !c.PredictionType.Valid():
		return bad("unknown prediction type %d", int(c.PredictionType))
	case c.TimestepSpacing < 0 || int(c.TimestepSpacing) >= len(spacingNames):
		return bad("unknown timestep spacing %d", int(c.TimestepSpacing))
	case c.StepsOffset < 0:
		return bad("steps_offset %d is negative", c.StepsOffset)
	case c.ClipSampleRange < 0 || math.IsNaN(c.ClipSampleRange):
		return bad("clip_sample_range %v is negative", c.ClipSampleRange)
	case c.UseKarrasSigmas && c.UseExponentialSigmas:
		return bad("use_karras_sigmas and use_exponential_sigmas are both set")
	case c.OriginalInferenceSteps < 0:
		return bad("original_inference_steps %d is negative", c.OriginalInferenceSteps)
	case c.TimestepScaling < 0 || math.IsNaN(c.TimestepScaling):
		return bad("timestep_scaling %v is negative", c.TimestepScaling)
	}
	if c.TrainedBetas != nil {
		if n := c.numTrainTimesteps(); len(c.TrainedBetas) != n {
			return bad("trained_betas has %d values, num_train_timesteps is %d", len(c.TrainedBetas), n)
		}
		for i, b := range c.TrainedBetas {
			if !(b >= 0 && b < 1) {
				return bad("trained_betas[%d] = %v is outside [0, 1)", i, b)
			}
		}
	}
	return nil
}

// usesBetaRange reports whether BetaStart and BetaEnd shape the betas.
func (c Config) usesBetaRange() bool { return c.TrainedBetas == nil && c.BetaSchedule != BetaCosine }

func (c Config) numTrainTimesteps() int {
	if c.NumTrainTimesteps == 0 {
		return 1000
	}
	return c.NumTrainTimesteps
}

// classDefaults holds a diffusers scheduler class's defaults for the
// parameters whose defaults differ between classes. A nil pointer means the
// class has no such parameter.
type classDefaults struct {
	betaStart, betaEnd float64
	betaSchedule       BetaSchedule
	spacing            TimestepSpacing
	clipSample         *bool
	setAlphaToOne      *bool
	skipPRKSteps       *bool
}

// diffusersClasses lists the defaults of the classes behind the samplers
// (diffusers 0.40 __init__ signatures).
var diffusersClasses = map[string]classDefaults{
	"DDPMScheduler":                   {0.0001, 0.02, BetaLinear, SpacingLeading, boolPtr(true), nil, nil},
	"DDIMScheduler":                   {0.0001, 0.02, BetaLinear, SpacingLeading, boolPtr(true), boolPtr(true), nil},
	"PNDMScheduler":                   {0.0001, 0.02, BetaLinear, SpacingLeading, nil, boolPtr(false), boolPtr(false)},
	"EulerDiscreteScheduler":          {0.0001, 0.02, BetaLinear, SpacingLinspace, nil, nil, nil},
	"EulerAncestralDiscreteScheduler": {0.0001, 0.02, BetaLinear, SpacingLinspace, nil, nil, nil},
	"HeunDiscreteScheduler":           {0.00085, 0.012, BetaLinear, SpacingLinspace, boolPtr(false), nil, nil},
	"KDPM2DiscreteScheduler":          {0.00085, 0.012, BetaLinear, SpacingLinspace, nil, nil, nil},
	"LMSDiscreteScheduler":            {0.0001, 0.02, BetaLinear, SpacingLinspace, nil, nil, nil},
	"DPMSolverMultistepScheduler":     {0.0001, 0.02, BetaLinear, SpacingLinspace, nil, nil, nil},
	"UniPCMultistepScheduler":         {0.0001, 0.02, BetaLinear, SpacingLinspace, nil, nil, nil},
	"LCMScheduler":                    {0.00085, 0.012, BetaScaledLinear, SpacingLeading, boolPtr(false), boolPtr(true), nil},
}

// settings is a Config with every default filled in for one diffusers class.
type settings struct {
	numTrain        int
	betaStart       float64
	betaEnd         float64
	betaSchedule    BetaSchedule
	trainedBetas    []float64
	rescaleZeroSNR  bool
	prediction      PredictionType
	spacing         TimestepSpacing
	stepsOffset     int
	clipSample      bool
	clipRange       float64
	setAlphaToOne   bool
	skipPRKSteps    bool
	originalSteps   int
	timestepScaling float64
}

// resolve fills c's unset fields with the defaults of the named target
// class (see Config). The parameters whose defaults agree across classes
// (num_train_timesteps, prediction_type, steps_offset, ...) are 0 or false in
// every class and need no table.
func (c Config) resolve(target string) settings {
	def := diffusersClasses[target]
	return settings{
		numTrain:        c.numTrainTimesteps(),
		betaStart:       orDefault(c.BetaStart, def.betaStart),
		betaEnd:         orDefault(c.BetaEnd, def.betaEnd),
		betaSchedule:    orDefault(c.BetaSchedule, def.betaSchedule),
		trainedBetas:    c.TrainedBetas,
		rescaleZeroSNR:  c.RescaleBetasZeroSNR,
		prediction:      c.PredictionType,
		spacing:         orDefault(c.TimestepSpacing, def.spacing),
		stepsOffset:     c.StepsOffset,
		clipSample:      derefOr(cmp.Or(c.ClipSample, def.clipSample), false),
		clipRange:       orDefault(c.ClipSampleRange, 1),
		setAlphaToOne:   derefOr(cmp.Or(c.SetAlphaToOne, def.setAlphaToOne), false),
		skipPRKSteps:    derefOr(cmp.Or(c.SkipPRKSteps, def.skipPRKSteps), false),
		originalSteps:   orDefault(c.OriginalInferenceSteps, 50),
		timestepScaling: orDefault(c.TimestepScaling, 10),
	}
}

// checkBetas rejects a resolved beta range that runs backwards (beta_start
// above beta_end). diffusers builds such a schedule without complaint, but no
// model is trained with noise that grows more slowly at the end than at the
// start: the config is broken or mistyped, and sampling with it gives
// garbage (an all-black image). The cosine schedule and trained_betas ignore
// the range.
func (s settings) checkBetas() error {
	if s.trainedBetas != nil || s.betaSchedule == BetaCosine || s.betaStart <= s.betaEnd {
		return nil
	}
	return fmt.Errorf("%w: beta_start %v is above beta_end %v", ErrInvalidConfig, s.betaStart, s.betaEnd)
}

// Spacing returns the timestep spacing sampler smp runs with under c when
// Options.Spacing is SpacingDefault: the file's timestep_spacing, else the
// sampler's class default.
func (c Config) Spacing(smp Sampler) TimestepSpacing {
	if !smp.Valid() {
		return c.TimestepSpacing
	}
	return c.resolve(smp.ClassName()).spacing
}

func boolPtr(v bool) *bool { return &v }

func derefOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func enumName(names []string, v int, typ string) string {
	if v < 0 || v >= len(names) {
		return fmt.Sprintf("%s(%d)", typ, v)
	}
	return names[v]
}

func parseEnum(names []string, s, what string) (int, error) {
	for i, n := range names {
		if n == s {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q (valid: %s)", what, s, strings.Join(names, ", "))
}
