package modelfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// SD-Turbo's scheduler_config.json (stabilityai/sd-turbo).
const turboScheduler = `{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
	"beta_start": 0.00085, "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000,
	"prediction_type": "epsilon", "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
	"timestep_spacing": "trailing", "trained_betas": null, "use_karras_sigmas": false}`

func writeTemp(t *testing.T, name, data string) string {
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(data), 0o644))
	return p
}

// A single SD 2.x file (which defaults to the 768 px v-prediction models) with SD-Turbo's
// scheduler config becomes an epsilon model of native size 512 with Euler and trailing
// spacing; WithPredictionType still wins over the file; a folder's own config is replaced.
func TestWithSchedulerConfig(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	cfg := writeTemp(t, "scheduler_config.json", turboScheduler)
	single := openCLIPCheckpoint(t, loadModel(t, filepath.Join(dir, "sd2-tiny-v", "diffusers")))
	heads := []Option{WithUNetHeads(2, 4, 4, 4), WithTextHeads(4)}

	m := loadModel(t, single, append(heads, WithSchedulerConfig(cfg))...)
	assert.Equal(t, "EulerDiscreteScheduler", m.Scheduler.ClassName)
	assert.Equal(t, "trailing", m.Scheduler.TimestepSpacing)
	assert.Equal(t, schedule.PredictEpsilon, m.Scheduler.PredictionType)
	assert.Equal(t, 64, m.UNet.Config.SampleSize, "epsilon SD 2.x: the 512 px models")
	sc, err := schedule.ParseConfig(m.Scheduler.Raw)
	require.NoError(t, err)
	assert.Equal(t, schedule.SpacingTrailing, sc.TimestepSpacing)

	v := loadModel(t, single, append(heads, WithSchedulerConfig(cfg), WithPredictionType(schedule.PredictV))...)
	assert.Equal(t, schedule.PredictV, v.Scheduler.PredictionType)
	assert.Equal(t, 96, v.UNet.Config.SampleSize)
	sc, err = schedule.ParseConfig(v.Scheduler.Raw)
	require.NoError(t, err)
	assert.Equal(t, schedule.PredictV, sc.PredictionType)

	folder := loadModel(t, filepath.Join(dir, "sd1-tiny", "diffusers"), WithSchedulerConfig(cfg))
	assert.Equal(t, "EulerDiscreteScheduler", folder.Scheduler.ClassName)

	_, err = Load(single, WithSchedulerConfig(filepath.Join(t.TempDir(), "missing.json")))
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = Load(single, WithSchedulerConfig(writeTemp(t, "bad.json", `{"prediction_type": 3`)))
	assert.ErrorIs(t, err, ErrBadModel)
}
