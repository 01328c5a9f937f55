package modelfile

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion/schedule"
)

// TestSingleFileDefaultScheduler checks the scheduler a single-file checkpoint
// gets against what diffusers' from_single_file builds from the released
// scheduler_config.json: PNDM without Runge-Kutta warm-up (steps+1 UNet
// calls, any step count from 1), and no timestep_spacing, so that a sampler
// switched to uses its own class's spacing.
func TestSingleFileDefaultScheduler(t *testing.T) {
	tests := []struct {
		name    string
		family  Family
		pred    schedule.PredictionType
		sampler schedule.Sampler
		steps   int
		want    []float64 // timesteps; nil: only count them
		calls   int
	}{
		{"sd1 pndm 20 steps", FamilySD1, schedule.PredictEpsilon, schedule.PNDM, 20, nil, 21},
		{"sd1 pndm 1 step", FamilySD1, schedule.PredictEpsilon, schedule.PNDM, 1, []float64{1}, 1},
		{"sd1 pndm 2 steps", FamilySD1, schedule.PredictEpsilon, schedule.PNDM, 2, []float64{501, 1, 1}, 3},
		{"sd1 pndm 3 steps", FamilySD1, schedule.PredictEpsilon, schedule.PNDM, 3, []float64{667, 334, 334, 1}, 4},
		{"sd1 euler: linspace", FamilySD1, schedule.PredictEpsilon, schedule.Euler, 4, []float64{999, 666, 333, 0}, 4},
		{"sd1 ddim: leading", FamilySD1, schedule.PredictEpsilon, schedule.DDIM, 4, []float64{751, 501, 251, 1}, 4},
		{"sd2 ddim: leading", FamilySD2, schedule.PredictV, schedule.DDIM, 4, []float64{751, 501, 251, 1}, 4},
		{"sd2 euler: linspace", FamilySD2, schedule.PredictV, schedule.Euler, 4, []float64{999, 666, 333, 0}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := defaultScheduler(tt.family, tt.pred)
			cfg, err := schedule.ParseConfig(sc.Raw)
			require.NoError(t, err)
			require.NotNil(t, cfg.SkipPRKSteps)
			assert.True(t, *cfg.SkipPRKSteps)
			assert.Equal(t, schedule.SpacingDefault, cfg.TimestepSpacing, "the released file has no timestep_spacing")
			s, err := schedule.New(cfg, schedule.Options{Sampler: tt.sampler}, tt.steps)
			require.NoError(t, err)
			assert.Len(t, s.Timesteps(), tt.calls)
			if tt.want != nil {
				assert.Equal(t, tt.want, s.Timesteps())
			}
		})
	}
}

// TestSD15SchedulerConfigKeys checks the built-in SD 1.5 config key by key
// against runwayml/stable-diffusion-v1-5's scheduler_config.json.
func TestSD15SchedulerConfigKeys(t *testing.T) {
	assert.JSONEq(t, `{
		"_class_name": "PNDMScheduler", "num_train_timesteps": 1000,
		"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
		"prediction_type": "epsilon", "steps_offset": 1,
		"clip_sample": false, "set_alpha_to_one": false, "skip_prk_steps": true
	}`, string(SD15SchedulerConfig().Raw))
}
