package schedule

import (
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

func TestSamplerNames(t *testing.T) {
	want := map[Sampler]string{
		DDPM: "ddpm", DDIM: "ddim", PNDM: "pndm", Euler: "euler", EulerAncestral: "euler_a",
		Heun: "heun", DPM2: "dpm2", DPMPP2M: "dpmpp_2m", DPMPP2SAncestral: "dpmpp_2s_a",
		LMS: "lms", UniPC: "unipc", LCM: "lcm",
	}
	require.Len(t, samplerNames, len(want))
	require.Len(t, samplerClasses, len(want))
	for s, name := range want {
		assert.Equal(t, name, s.String())
	}
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
		prediction: PredictEpsilon, spacing: SpacingLeading, stepsOffset: 1,
		clipRange: 1, skipPRKSteps: true, originalSteps: 50, timestepScaling: 10,
	}, s)
}

// TestConfigDefaults checks that unset fields take diffusers' defaults: those
// of the file's class first, then those of the sampler's class.
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
			assert.Equal(t, SpacingLeading, s.spacing, "PNDM's recorded default wins")
		}, Euler},
		{"Heun from a DDPM file", Config{ClassName: "DDPMScheduler"}, "HeunDiscreteScheduler", func(t *testing.T, s settings) {
			assert.True(t, s.clipSample, "DDPM records clip_sample=True, Heun reads it")
			assert.Equal(t, 0.0001, s.betaStart)
		}, Heun},
		{"DDIM from an Euler file", Config{ClassName: "EulerDiscreteScheduler"}, "DDIMScheduler", func(t *testing.T, s settings) {
			assert.Equal(t, SpacingLinspace, s.spacing)
			assert.True(t, s.clipSample, "Euler has no clip_sample: DDIM's default")
		}, DDIM},
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
			require.Equal(t, tt.class, samplerClasses[tt.sampler])
			tt.check(t, tt.cfg.resolve(tt.class))
		})
	}
}
