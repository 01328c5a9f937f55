package main

import (
	"image"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The kit's seeded upscale (guidance 7.5, 6 DDIM steps, noise level 20, seed 60) through
// the command line, against diffusers' image within 2/255 per pixel.
func TestUpscaleMatchesDiffusers(t *testing.T) {
	_, rt := tinyModel(t)
	kit := filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny")
	out := filepath.Join(t.TempDir(), "up.png")
	r := runArgs(t, slices.Concat([]string{"upscale", "-m", filepath.Join(kit, "diffusers"), "-i", filepath.Join(kit, "low_res.png"),
		"-p", "a red apple", "--noise-level", "20", "--steps", "6", "--cfg", "7.5", "--seed", "60", "--rng", "cpu", "-o", out}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Equal(t, out+"\n", r.stdout)
	assert.Contains(t, r.stderr, "upscale |")

	img, params := pngParameters(t, out)
	require.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())
	assert.Equal(t, "a red apple\nSteps: 6, Sampler: DDIM, CFG scale: 7.5, Seed: 60, Size: 64x64, Model: diffusers, Noise level: 20, RNG: CPU, Version: gosd", params)

	ref := kitImage(t, filepath.Join(kit, "upscale-ddim-g7.5-seeded.safetensors"))
	worst := maxPixelError(t, img, ref)
	t.Logf("max |pixel - 255 ref| = %.3f", worst)
	assert.LessOrEqual(t, worst, 2.0)
}

// Upscale's own mistakes are usage errors, found before or by the model's checks.
func TestUpscaleFlagValidation(t *testing.T) {
	sd1, rt := tinyModel(t)
	kit := filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny")
	low := filepath.Join(kit, "low_res.png")
	out := filepath.Join(t.TempDir(), "up.png")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no image", []string{"-m", kit, "-o", out}, exitUsage, "pass -i"},
		{"no model", []string{"-i", low, "-o", out}, exitUsage, "pass -m"},
		{"no size flags", []string{"-m", kit, "-i", low, "-W", "64", "-o", out}, exitUsage, "-W"},
		{"noise level past the model's", []string{"-m", filepath.Join(kit, "diffusers"), "-i", low, "--noise-level", "351", "-o", out}, exitUsage, "noise level 351 not in [0, 350]"},
		{"not an upscaler", []string{"-m", sd1, "-i", low, "-o", out}, exitUsage, "not an x4 upscaler"},
		{"tile too small", []string{"-m", kit, "-i", low, "--tile", "4", "-o", out}, exitUsage, "-tile"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runArgs(t, slices.Concat([]string{"upscale"}, tc.args, rt)...)
			assert.Equal(t, tc.code, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, tc.want)
		})
	}
}

// An ESRGAN file is detected: upscale runs it without prompt or sampling and writes
// AUTOMATIC1111's postprocessing fields.
func TestUpscaleESRGAN(t *testing.T) {
	_, rt := tinyModel(t)
	model := filepath.Join(testutil.RepoRoot(t), "diffusion", "testdata", "esrgan", "esrgan-x4.pth")
	low := filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny", "low_res.png")
	out := filepath.Join(t.TempDir(), "up.png")
	r := runArgs(t, slices.Concat([]string{"upscale", "-m", model, "-i", low, "-p", "ignored", "--tile", "8", "-o", out}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Equal(t, out+"\n", r.stdout)
	assert.Contains(t, r.stderr, "(ESRGAN)")
	assert.Contains(t, r.stderr, "takes no prompt")
	img, params := pngParameters(t, out)
	assert.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())
	assert.Equal(t, "Postprocess upscale by: 4, Postprocess upscaler: esrgan-x4.pth, Version: gosd", params)
}

// txt2img's hires fix: the output at the hires size with the web UI's fields; bad
// upscaler names are usage errors.
func TestTxt2ImgHires(t *testing.T) {
	model, rt := tinyModel(t)
	out := filepath.Join(t.TempDir(), "hires.png")
	esrgan := filepath.Join(testutil.RepoRoot(t), "diffusion", "testdata", "esrgan", "esrgan-x4.pth")
	for _, up := range []string{"latent", "esrgan:" + esrgan} {
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple", "-W", "64", "-H", "64", "--steps", "4",
			"--seed", "3", "--hires-scale", "1.5", "--hires-upscaler", up, "--hires-steps", "4", "--hires-strength", "0.5", "-o", out}, rt)...)
		require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
		img, params := pngParameters(t, out)
		assert.Equal(t, image.Rect(0, 0, 96, 96), img.Bounds())
		name := map[bool]string{true: "Latent", false: "esrgan-x4"}[up == "latent"]
		assert.Contains(t, params, "Size: 64x64, Model: diffusers, Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 4, Hires upscaler: "+name+", ")
	}
	for _, tc := range []struct{ args []string }{
		{[]string{"--hires-scale", "2", "--hires-upscaler", "bicubic"}},
		{[]string{"--hires-scale", "2", "--hires-upscaler", "esrgan:" + model}},
		{[]string{"--hires-scale", "0.5"}},
	} {
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-o", out}, tc.args, rt)...)
		assert.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
		assert.Contains(t, r.stderr, "hires")
	}
}
