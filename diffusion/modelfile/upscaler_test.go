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

// x4UpscalerSingleFile writes the kit's upscaler folder as an original single file:
// the UNet and VAE under LDM's names (the mapping the kit's SD single files check), the
// noise-level table as label_emb.weight (diffusers' conversion maps it to
// class_embedding.weight), the text encoder as a CLIPTextModel under
// cond_stage_model.transformer. (SD 2.x files re-saved by diffusers).
func x4UpscalerSingleFile(t *testing.T, folder *Model) string {
	var tensors []Tensor
	add := func(c map[string]Tensor, rename func(string) string) {
		for name, x := range c {
			x.Name = rename(name)
			tensors = append(tensors, x)
		}
	}
	add(folder.UNet.Tensors, func(n string) string {
		if n == "class_embedding.weight" {
			return ldmUNet + "label_emb.weight"
		}
		return unetModules(folder.UNet.Config).resolver(ldmUNet)(n).name
	})
	add(folder.VAE.Tensors, func(n string) string { return vaeModules(folder.VAE.Config).resolver(ldmVAE)(n).name })
	add(folder.TextEncoder.Tensors, func(n string) string { return ldmHFCLIP + n })
	path := filepath.Join(t.TempDir(), "x4-upscaler-tiny.safetensors")
	require.NoError(t, WriteSafetensors(path, tensors, nil))
	return path
}

// The original single-file layout of the x4 upscaler loads to exactly the folder's
// weights and configs (but the sample size, which only the yaml gives), with the
// released model's schedulers and noise levels.
func TestLoadX4UpscalerSingleFile(t *testing.T) {
	folder := loadModel(t, filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny", "diffusers"))
	single := loadModel(t, x4UpscalerSingleFile(t, folder), WithTextHeads(4))
	assert.Equal(t, FamilySD2, single.Family)
	assertSameWeights(t, folder.UNet.Tensors, single.UNet.Tensors)
	assertSameWeights(t, folder.VAE.Tensors, single.VAE.Tensors)
	assertSameWeights(t, folder.TextEncoder.Tensors, single.TextEncoder.Tensors)
	assert.Empty(t, single.Unused)

	want := folder.UNet.Config
	assert.Equal(t, 128, single.UNet.Config.SampleSize)
	want.SampleSize = 128
	assert.Equal(t, want, single.UNet.Config)
	wantVAE := folder.VAE.Config
	wantVAE.SampleSize = single.VAE.Config.SampleSize // unused by the pipelines; not in the file
	assert.Equal(t, wantVAE, single.VAE.Config)
	assert.Equal(t, folder.TextEncoder.Config.HiddenAct, single.TextEncoder.Config.HiddenAct)
	assert.Equal(t, folder.TextEncoder.Config.NumHiddenLayers, single.TextEncoder.Config.NumHiddenLayers)

	require.NotNil(t, single.Upscaler)
	assert.Equal(t, 350, single.Upscaler.MaxNoiseLevel)
	for _, c := range []struct{ got, want SchedulerConfig }{
		{single.Scheduler, folder.Scheduler},
		{single.Upscaler.LowResScheduler, folder.Upscaler.LowResScheduler},
	} {
		assert.Equal(t, c.want.ClassName, c.got.ClassName)
		assert.Equal(t, c.want.BetaSchedule, c.got.BetaSchedule)
		assert.Equal(t, c.want.BetaStart, c.got.BetaStart)
		assert.Equal(t, c.want.BetaEnd, c.got.BetaEnd)
		assert.Equal(t, c.want.PredictionType, c.got.PredictionType)
		assert.Equal(t, c.want.StepsOffset, c.got.StepsOffset)
		assert.Equal(t, c.want.NumTrainTimesteps, c.got.NumTrainTimesteps)
	}
}

// tinyX4Upscaler is X4Upscaler at the kit's tiny widths.
func tinyX4Upscaler() Architecture {
	a := X4Upscaler()
	a.UNet.BlockOutChannels = []int{32, 32, 64, 64}
	a.UNet.TimeEmbeddingDim = 128
	a.UNet.CrossAttentionDim = 32
	a.VAE.BlockOutChannels = []int{32, 32, 64}
	a.TextEncoder.HiddenSize, a.TextEncoder.IntermediateSize = 32, 64
	a.TextEncoder.NumHiddenLayers, a.TextEncoder.NumAttentionHeads = 2, 4
	a.TextEncoder.ProjectionDim = 32
	return a
}

// Random weights of the x4 upscaler architecture load back as an upscaler folder with
// the architecture's configs; at the kit's widths its UNet has exactly the kit's
// tensors (the kit's tiny upscaler has the released structure).
func TestWriteRandomX4Upscaler(t *testing.T) {
	arch := tinyX4Upscaler()
	dir := t.TempDir()
	require.NoError(t, WriteRandom(t.Context(), dir, arch, F16, 1))
	m := loadModel(t, dir)
	require.NotNil(t, m.Upscaler)
	assert.Equal(t, 350, m.Upscaler.MaxNoiseLevel)
	assert.Equal(t, "scaled_linear", m.Upscaler.LowResScheduler.BetaSchedule)
	assert.Equal(t, arch.UNet, m.UNet.Config)
	assert.Equal(t, arch.VAE, m.VAE.Config)
	assert.Equal(t, "DDIMScheduler", m.Scheduler.ClassName)
	assert.Equal(t, 0.02, m.Scheduler.BetaEnd)

	kit := loadModel(t, filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny", "diffusers"))
	tiny, err := arch.UNet.TensorSpecs()
	require.NoError(t, err)
	require.Len(t, tiny, len(kit.UNet.Tensors))
	for _, s := range tiny {
		k, ok := kit.UNet.Tensors[s.Name]
		require.True(t, ok, s.Name)
		assert.Equal(t, k.Shape, s.Shape, s.Name)
	}

	specs, err := X4Upscaler().UNet.TensorSpecs()
	require.NoError(t, err)
	var params int64
	for _, s := range specs {
		n := int64(1)
		for _, d := range s.Shape {
			n *= d
		}
		params += n
	}
	t.Logf("x4 upscaler UNet: %d tensors, %.1fM parameters", len(specs), float64(params)/1e6)
}
