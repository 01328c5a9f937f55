package schedule

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/internal/testutil"
)

func TestEnumNamesRoundTrip(t *testing.T) {
	type enum struct {
		names []string
		parse func(string) (int, error)
		str   func(int) string
	}
	enums := map[string]enum{
		"Sampler": {samplerNames,
			func(s string) (int, error) { v, err := ParseSampler(s); return int(v), err },
			func(v int) string { return Sampler(v).String() }},
		"SigmaSchedule": {sigmaScheduleNames,
			func(s string) (int, error) { v, err := ParseSigmaSchedule(s); return int(v), err },
			func(v int) string { return SigmaSchedule(v).String() }},
		"BetaSchedule": {betaScheduleNames,
			func(s string) (int, error) { v, err := ParseBetaSchedule(s); return int(v), err },
			func(v int) string { return BetaSchedule(v).String() }},
		"TimestepSpacing": {spacingNames,
			func(s string) (int, error) { v, err := ParseTimestepSpacing(s); return int(v), err },
			func(v int) string { return TimestepSpacing(v).String() }},
		"PredictionType": {predictionNames,
			func(s string) (int, error) { v, err := ParsePredictionType(s); return int(v), err },
			func(v int) string { return PredictionType(v).String() }},
	}
	for typ, e := range enums {
		t.Run(typ, func(t *testing.T) {
			for v := range e.names {
				got, err := e.parse(e.str(v))
				require.NoError(t, err)
				assert.Equal(t, v, got, e.str(v))
			}
			_, err := e.parse("no-such-name")
			require.Error(t, err)
			for _, n := range e.names {
				assert.Contains(t, err.Error(), n, "the error lists the valid names")
			}
			assert.Equal(t, typ+"(99)", e.str(99))
			assert.Equal(t, typ+"(-1)", e.str(-1))
		})
	}
}

// PredictionType is a JSON field of modelfile's scheduler config: it reads and
// writes diffusers' names and refuses a value that is none of them.
func TestPredictionTypeText(t *testing.T) {
	for _, p := range []PredictionType{PredictEpsilon, PredictV, PredictSample} {
		b, err := p.MarshalText()
		require.NoError(t, err)
		var got PredictionType
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, p, got)
	}
	_, err := PredictionType(9).MarshalText()
	assert.Error(t, err)
	var p PredictionType
	assert.ErrorContains(t, p.UnmarshalText([]byte("flow")), `unknown prediction type "flow"`)
	assert.False(t, PredictionType(-1).Valid())
}

func TestSamplerNames(t *testing.T) {
	want := map[Sampler]string{
		DDPM: "ddpm", DDIM: "ddim", PNDM: "pndm", Euler: "euler", EulerAncestral: "euler_a",
		Heun: "heun", DPM2: "dpm2", DPMPP2M: "dpmpp_2m", DPMPP2SAncestral: "dpmpp_2s_a",
		LMS: "lms", UniPC: "unipc", LCM: "lcm",
	}
	require.Len(t, samplerNames, len(want))
	require.Len(t, samplers, len(want))
	for s, name := range want {
		assert.Equal(t, name, s.String())
		assert.NotEmpty(t, s.A1111Name())
		// Each class a config names runs the sampler that reproduces it;
		// dpmpp_2s_a only borrows euler_a's class.
		back, ok := SamplerForClass(s.ClassName())
		require.True(t, ok, s.ClassName())
		assert.Equal(t, s.ClassName(), back.ClassName())
		if s != DPMPP2SAncestral {
			assert.Equal(t, s, back)
		}
	}
	assert.Equal(t, "DPM++ 2M", DPMPP2M.A1111Name())
	assert.Equal(t, "PLMS", PNDM.A1111Name())
	assert.Equal(t, "Sampler(99)", Sampler(99).A1111Name())
	assert.Empty(t, Sampler(-1).ClassName())
	if s, ok := SamplerForClass("EulerAncestralDiscreteScheduler"); assert.True(t, ok) {
		assert.Equal(t, EulerAncestral, s)
	}
	_, ok := SamplerForClass("FlowMatchEulerDiscreteScheduler")
	assert.False(t, ok)
	for _, name := range []string{"karras", "default", "exponential"} {
		_, err := ParseSigmaSchedule(name)
		assert.NoError(t, err, name)
	}
	cos, err := ParseBetaSchedule("cosine")
	require.NoError(t, err)
	assert.Equal(t, BetaCosine, cos)
	assert.Equal(t, "squaredcos_cap_v2", cos.String())
}

func TestParseConfigFiles(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	tests := []struct {
		model string
		pred  PredictionType
	}{
		{"sd1-tiny", PredictEpsilon},
		{"sd2-tiny-v", PredictV},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, tt.model, "diffusers", "scheduler", "scheduler_config.json"))
			require.NoError(t, err)
			cfg, err := ParseConfig(data)
			require.NoError(t, err)
			assert.Equal(t, Config{
				ClassName:         "DDIMScheduler",
				NumTrainTimesteps: 1000,
				BetaStart:         0.00085,
				BetaEnd:           0.012,
				BetaSchedule:      BetaScaledLinear,
				PredictionType:    tt.pred,
				TimestepSpacing:   SpacingLeading,
				StepsOffset:       1,
				ClipSample:        boolPtr(false),
				ClipSampleRange:   1,
				SetAlphaToOne:     boolPtr(false),
			}, cfg)
		})
	}
}

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{
		"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
		"beta_schedule": "cosine", "trained_betas": null, "use_karras_sigmas": null,
		"skip_prk_steps": true, "rescale_betas_zero_snr": true, "steps_offset": 2,
		"use_exponential_sigmas": true, "original_inference_steps": 30, "timestep_scaling": 5,
		"some_future_field": {"nested": [1, 2]}
	}`))
	require.NoError(t, err)
	assert.Equal(t, Config{
		ClassName:              "PNDMScheduler",
		BetaSchedule:           BetaCosine,
		SkipPRKSteps:           boolPtr(true),
		RescaleBetasZeroSNR:    true,
		StepsOffset:            2,
		UseExponentialSigmas:   true,
		OriginalInferenceSteps: 30,
		TimestepScaling:        5,
	}, cfg)

	cfg, err = ParseConfig([]byte(`{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3, 0.4]}`))
	require.NoError(t, err)
	assert.Equal(t, []float64{0.1, 0.2, 0.3, 0.4}, cfg.TrainedBetas)

	cfg, err = ParseConfig([]byte(`{}`))
	require.NoError(t, err)
	assert.Equal(t, Config{}, cfg)
}

func TestParseConfigErrors(t *testing.T) {
	tests := map[string]string{
		"not json":                   `{"beta_start": `,
		"not an object":              `[1, 2]`,
		"number as string":           `{"beta_start": "0.00085"}`,
		"unknown beta schedule":      `{"beta_schedule": "exp"}`,
		"unknown prediction":         `{"prediction_type": "flow_prediction"}`,
		"unknown spacing":            `{"timestep_spacing": "even"}`,
		"zero train timesteps":       `{"num_train_timesteps": 0}`,
		"one train timestep":         `{"num_train_timesteps": 1}`,
		"a billion train timesteps":  `{"num_train_timesteps": 1000000000}`,
		"fractional train steps":     `{"num_train_timesteps": 1000.5}`,
		"zero beta_start":            `{"beta_start": 0}`,
		"beta_end of 1":              `{"beta_end": 1}`,
		"negative steps_offset":      `{"steps_offset": -1}`,
		"zero clip range":            `{"clip_sample_range": 0}`,
		"karras and exponential":     `{"use_karras_sigmas": true, "use_exponential_sigmas": true}`,
		"trained_betas too short":    `{"trained_betas": [0.1, 0.2]}`,
		"trained_betas out of [0,1)": `{"num_train_timesteps": 2, "trained_betas": [0.1, 1.0]}`,
		"zero original steps":        `{"original_inference_steps": 0}`,
		"negative timestep scaling":  `{"timestep_scaling": -10}`,
	}
	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(data))
			assert.Error(t, err)
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	require.NoError(t, cfg.validate())
	s := cfg.resolve("EulerDiscreteScheduler")
	assert.Equal(t, settings{
		numTrain: 1000, betaStart: 0.00085, betaEnd: 0.012, betaSchedule: BetaScaledLinear,
		prediction: PredictEpsilon, spacing: SpacingLinspace, stepsOffset: 1,
		clipRange: 1, skipPRKSteps: true, originalSteps: 50, timestepScaling: 10,
	}, s)
}

// TestConfigDefaults checks that unset fields take the defaults of the
// sampler's class whatever class the file names, as diffusers' from_config
// drops the keys the file's class filled with its own defaults.
func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		class   string
		check   func(t *testing.T, s settings)
		sampler Sampler
	}{
		{"DDIMScheduler()", Config{}, "DDIMScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingLeading, s.spacing)
			assert.Equal(t, BetaLinear, s.betaSchedule)
			assert.Equal(t, 0.0001, s.betaStart)
			assert.True(t, s.clipSample)
			assert.True(t, s.setAlphaToOne)
		}, DDIM},
		{"HeunDiscreteScheduler()", Config{}, "HeunDiscreteScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingLinspace, s.spacing)
			assert.Equal(t, 0.00085, s.betaStart)
			assert.Equal(t, 0.012, s.betaEnd)
			assert.False(t, s.clipSample)
		}, Heun},
		{"LCMScheduler()", Config{}, "LCMScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, BetaScaledLinear, s.betaSchedule)
			assert.False(t, s.clipSample)
			assert.Equal(t, 50, s.originalSteps)
		}, LCM},
		{"Euler from a PNDM file", Config{ClassName: "PNDMScheduler"}, "EulerDiscreteScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingLinspace, s.spacing, "PNDM's default leading is not carried over")
		}, Euler},
		{"Heun from a DDPM file", Config{ClassName: "DDPMScheduler"}, "HeunDiscreteScheduler", func(t *testing.T, s settings) {
			assert.False(t, s.clipSample, "DDPM's default clip_sample=True is not carried over")
			assert.Equal(t, 0.00085, s.betaStart, "Heun's own default")
		}, Heun},
		{"DDIM from an Euler file", Config{ClassName: "EulerDiscreteScheduler"}, "DDIMScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingLeading, s.spacing)
			assert.True(t, s.clipSample, "Euler has no clip_sample: DDIM's default")
		}, DDIM},
		{"PNDM from a DDIM file", Config{ClassName: "DDIMScheduler"}, "PNDMScheduler", func(t *testing.T, s settings) {
			assert.False(t, s.setAlphaToOne, "DDIM's default set_alpha_to_one=True is not carried over")
			assert.False(t, s.skipPRKSteps)
		}, PNDM},
		{"unknown class", Config{ClassName: "FlowMatchEulerDiscreteScheduler"}, "EulerDiscreteScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingLinspace, s.spacing)
		}, Euler},
		{"explicit values win", Config{ClassName: "DDIMScheduler", TimestepSpacing: SpacingTrailing, ClipSample: boolPtr(false), BetaStart: 0.001}, "DDIMScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingTrailing, s.spacing)
			assert.False(t, s.clipSample)
			assert.Equal(t, 0.001, s.betaStart)
		}, DDIM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.class, tt.sampler.ClassName())
			tt.check(t, tt.cfg.resolve(tt.class))
		})
	}
}

// sd15SchedulerFile is runwayml/stable-diffusion-v1-5's
// scheduler/scheduler_config.json as released: PNDM, and no
// timestep_spacing key.
const sd15SchedulerFile = `{
	"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
	"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
	"num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
	"steps_offset": 1, "trained_betas": null, "clip_sample": false
}`

// TestSwitchingSamplerUsesNewClassDefaults checks diffusers'
// SchedulerX.from_config(pipe.scheduler.config): keys the file sets carry
// over, keys it lacks take the new class's defaults.
func TestSwitchingSamplerUsesNewClassDefaults(t *testing.T) {
	sd15, err := ParseConfig([]byte(sd15SchedulerFile))
	require.NoError(t, err)
	trailing, err := ParseConfig([]byte(`{"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
		"beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1, "timestep_spacing": "trailing"}`))
	require.NoError(t, err)
	tests := []struct {
		name string
		cfg  Config
		opts Options
		want []float64
	}{
		{"sd15 euler: linspace", sd15, Options{Sampler: Euler}, []float64{999, 666, 333, 0}},
		{"sd15 euler_a: linspace", sd15, Options{Sampler: EulerAncestral}, []float64{999, 666, 333, 0}},
		{"sd15 lms: linspace", sd15, Options{Sampler: LMS}, []float64{999, 666, 333, 0}},
		{"sd15 dpmpp_2m: linspace", sd15, Options{Sampler: DPMPP2M}, []float64{999, 749, 500, 250}},
		{"sd15 ddim: leading", sd15, Options{Sampler: DDIM}, []float64{751, 501, 251, 1}},
		{"sd15 pndm: leading", sd15, Options{Sampler: PNDM}, []float64{751, 501, 501, 251, 1}},
		{"file's trailing kept by euler", trailing, Options{Sampler: Euler}, []float64{999, 749, 499, 249}},
		{"file's trailing kept by ddim", trailing, Options{Sampler: DDIM}, []float64{999, 749, 499, 249}},
		{"override beats the class default", sd15, Options{Sampler: DDIM, Spacing: SpacingLinspace}, []float64{999, 666, 333, 0}},
		{"override beats the file", trailing, Options{Sampler: Euler, Spacing: SpacingLeading}, []float64{751, 501, 251, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, tt.opts, 4)
			require.NoError(t, err)
			assert.Equal(t, tt.want, s.Timesteps())
		})
	}
	for smp, want := range map[Sampler]TimestepSpacing{
		Euler: SpacingLinspace, UniPC: SpacingLinspace, DDIM: SpacingLeading, PNDM: SpacingLeading, LCM: SpacingLeading,
	} {
		assert.Equal(t, want, sd15.Spacing(smp), "%v", smp)
		assert.Equal(t, SpacingTrailing, trailing.Spacing(smp), "%v", smp)
	}
}

// TestSD15PNDMWithoutRungeKutta checks that the released SD 1.5 config runs
// PNDM as diffusers does with skip_prk_steps: steps+1 model calls, and any
// step count from 1.
func TestSD15PNDMWithoutRungeKutta(t *testing.T) {
	for _, cfg := range []Config{mustParse(t, sd15SchedulerFile), DefaultConfig()} {
		for _, tt := range []struct{ steps, calls int }{{1, 1}, {2, 3}, {3, 4}, {20, 21}} {
			s, err := New(cfg, Options{Sampler: PNDM}, tt.steps)
			require.NoError(t, err, "%d steps", tt.steps)
			assert.Len(t, s.Timesteps(), tt.calls, "%d steps", tt.steps)
		}
	}
}

func mustParse(t *testing.T, data string) Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(data))
	require.NoError(t, err)
	return cfg
}

// TestBetaRangeErrors checks that beta ranges that would give a broken
// schedule are config errors, whether the file sets both ends or a class
// default completes the range.
func TestBetaRangeErrors(t *testing.T) {
	parseErrors := map[string]string{
		"inverted":       `{"beta_start": 0.012, "beta_end": 0.00085}`,
		"negative start": `{"beta_start": -0.001}`,
		"zero end":       `{"beta_end": 0}`,
		"end of 1":       `{"beta_end": 1}`,
		"start above 1":  `{"beta_start": 2}`,
	}
	for name, data := range parseErrors {
		t.Run("parse/"+name, func(t *testing.T) {
			_, err := ParseConfig([]byte(data))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "beta_")
		})
	}
	newErrors := []struct {
		name    string
		cfg     Config
		sampler Sampler
	}{
		{"inverted", Config{BetaStart: 0.012, BetaEnd: 0.00085}, Euler},
		{"inverted scaled_linear", Config{BetaStart: 0.012, BetaEnd: 0.00085, BetaSchedule: BetaScaledLinear}, PNDM},
		{"start above euler's default end 0.02", Config{BetaStart: 0.05}, Euler},
		{"start above heun's default end 0.012", Config{BetaStart: 0.015}, Heun},
		{"end below ddim's default start 0.0001", Config{BetaEnd: 0.00005}, DDIM},
		{"NaN start", Config{BetaStart: math.NaN()}, Euler},
		{"infinite end", Config{BetaEnd: math.Inf(1)}, Euler},
		{"negative end", Config{BetaEnd: -0.01}, Euler},
	}
	for _, tt := range newErrors {
		t.Run("new/"+tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, Options{Sampler: tt.sampler}, 10)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
	// The range is unused by the cosine schedule and by trained_betas, and
	// a start above Euler's default end is fine for a class whose default
	// end is higher.
	for _, cfg := range []Config{
		{BetaStart: 0.012, BetaEnd: 0.00085, BetaSchedule: BetaCosine},
		{NumTrainTimesteps: 2, BetaStart: 0.5, BetaEnd: 0.1, TrainedBetas: []float64{0.1, 0.2}},
		{BetaStart: 0.012, BetaEnd: 0.012},
	} {
		_, err := New(cfg, Options{Sampler: DDIM}, 2)
		assert.NoError(t, err, "%+v", cfg)
	}
	_, err := New(Config{BetaStart: 0.015}, Options{Sampler: Euler}, 10)
	assert.NoError(t, err, "Euler's default beta_end is 0.02")
}
