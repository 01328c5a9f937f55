package main

import (
	"image"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// SD-Turbo's scheduler_config.json (stabilityai/sd-turbo).
const turboScheduler = `{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
	"beta_start": 0.00085, "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000,
	"prediction_type": "epsilon", "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
	"timestep_spacing": "trailing", "trained_betas": null, "use_karras_sigmas": false}`

// `txt2img --steps 1 --cfg 1` on a turbo-style folder runs the scheduler its config names;
// the same weights as one file with --scheduler-config give the same image.
func TestTxt2ImgTurboOneStep(t *testing.T) {
	_, rt := tinyModel(t)
	kit := testutil.ConformanceDir(t)
	folder := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{"scheduler/scheduler_config.json": []byte(turboScheduler)})
	cfg := filepath.Join(t.TempDir(), "scheduler_config.json")
	require.NoError(t, os.WriteFile(cfg, []byte(turboScheduler), 0o644))
	dir := t.TempDir()
	var params []string
	var images []image.Image
	for i, model := range [][]string{
		{"-m", folder},
		{"-m", filepath.Join(kit, "sd1-tiny", "sd1-tiny-ldm.safetensors"), "--text-heads", "4", "--scheduler-config", cfg},
	} {
		out := filepath.Join(dir, []string{"folder.png", "single.png"}[i])
		r := runArgs(t, slices.Concat([]string{"txt2img", "-p", "a red apple", "-W", "64", "-H", "64",
			"--steps", "1", "--cfg", "1", "--seed", "3", "-o", out}, model, rt)...)
		require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
		img, p := pngParameters(t, out)
		params = append(params, p)
		images = append(images, img)
	}
	assert.Contains(t, params[0], "Steps: 1, Sampler: Euler, CFG scale: 1")
	assert.Equal(t, images[0], images[1], "the single file with the folder's scheduler config")
}
