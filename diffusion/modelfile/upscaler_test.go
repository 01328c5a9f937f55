package modelfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The kit's x4 upscaler folder carries its noise augmentation; other pipelines none.
func TestLoadUpscalerFolder(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	m, err := Load(filepath.Join(kit, "upscaler-tiny", "diffusers"))
	require.NoError(t, err)
	defer m.Close()
	require.NotNil(t, m.Upscaler)
	assert.Equal(t, 350, m.Upscaler.MaxNoiseLevel)
	lr := m.Upscaler.LowResScheduler
	assert.Equal(t, "DDPMScheduler", lr.ClassName)
	assert.Equal(t, "scaled_linear", lr.BetaSchedule)
	assert.Equal(t, 1000, lr.NumTrainTimesteps)
	assert.Equal(t, 7, m.UNet.Config.InChannels)

	sd, err := Load(filepath.Join(kit, "sd1-tiny", "diffusers"))
	require.NoError(t, err)
	defer sd.Close()
	assert.Nil(t, sd.Upscaler)
}

func TestReadUpscaler(t *testing.T) {
	ddpm := `{"_class_name": "DDPMScheduler", "beta_schedule": "linear", "num_train_timesteps": 500}`
	cases := []struct {
		name, index, lowRes string // lowRes "": no low_res_scheduler folder
		wantNil             bool
		wantMax             int
		wantSchedule        string
		wantErr             string
	}{
		{name: "plain SD pipeline", index: `{"_class_name": "StableDiffusionPipeline"}`, wantNil: true},
		{name: "class and folder", index: `{"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 250, "low_res_scheduler": ["diffusers", "DDPMScheduler"]}`,
			lowRes: ddpm, wantMax: 250, wantSchedule: "linear"},
		{name: "class alone: the released low-res scheduler", index: `{"_class_name": "StableDiffusionUpscalePipeline"}`,
			wantMax: 350, wantSchedule: "scaled_linear"},
		{name: "named folder missing", index: `{"low_res_scheduler": ["diffusers", "DDPMScheduler"]}`, wantErr: "low_res_scheduler"},
		{name: "negative max", index: `{"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": -1}`, wantErr: "negative"},
		{name: "max beyond the schedule", index: `{"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 600, "low_res_scheduler": ["diffusers", "DDPMScheduler"]}`,
			lowRes: ddpm, wantErr: "not a timestep"},
		{name: "broken index", index: `{`, wantErr: "model_index.json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "model_index.json"), []byte(tc.index), 0o644))
			if tc.lowRes != "" {
				require.NoError(t, os.Mkdir(filepath.Join(dir, "low_res_scheduler"), 0o755))
				require.NoError(t, os.WriteFile(filepath.Join(dir, "low_res_scheduler", "scheduler_config.json"), []byte(tc.lowRes), 0o644))
			}
			u, err := readUpscaler(dir)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			if tc.wantNil {
				assert.Nil(t, u)
				return
			}
			require.NotNil(t, u)
			assert.Equal(t, tc.wantMax, u.MaxNoiseLevel)
			assert.Equal(t, tc.wantSchedule, u.LowResScheduler.BetaSchedule)
		})
	}
}
