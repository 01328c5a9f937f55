package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ControlNet flags are checked before any model is opened.
func TestControlNetFlagValidation(t *testing.T) {
	dir := t.TempDir()
	model := t.TempDir()
	out := filepath.Join(dir, "out.png")
	cn, img := filepath.Join(dir, "cn"), filepath.Join(dir, "c.png")
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"image before --controlnet", []string{"--control-image", img, "--controlnet", cn}, "flag -control-image: --control-image applies to a ControlNet: give --controlnet PATH first"},
		{"guess mode before --controlnet", []string{"--guess-mode", "--controlnet", cn}, "--guess-mode applies to a ControlNet"},
		{"no control image", []string{"--controlnet", cn}, "--controlnet " + cn + " needs --control-image"},
		{"second without image", []string{"--controlnet", cn, "--control-image", img, "--controlnet", cn + "2"}, "--controlnet " + cn + "2 needs --control-image"},
		{"negative scale", []string{"--controlnet", cn, "--control-scale", "-1"}, `invalid value "-1" for flag -control-scale: want a number in [0, 100]`},
		{"start above 1", []string{"--controlnet", cn, "--control-start", "1.5"}, "flag -control-start: want a number in [0, 1]"},
		{"end not a number", []string{"--controlnet", cn, "--control-end", "late"}, "flag -control-end: want a number in [0, 1]"},
		{"start after end", []string{"--controlnet", cn, "--control-image", img, "--control-start", "0.6", "--control-end", "0.4"}, "--control-start 0.6 must be below --control-end 0.4"},
		{"unknown preprocessor", []string{"--controlnet", cn, "--control-preprocess", "depth"}, "want none, canny, invert or inpaint"},
		{"canny thresholds without canny", []string{"--controlnet", cn, "--control-image", img, "--canny", "50,100"}, "--canny is for --control-preprocess canny"},
		{"bad canny thresholds", []string{"--controlnet", cn, "--canny", "50"}, "want two comma-separated integers LOW,HIGH"},
		{"inpaint condition in txt2img", []string{"--controlnet", cn, "--control-preprocess", "inpaint"}, "--control-preprocess inpaint is for sdcli inpaint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-o", out}, tt.args)...)
			assert.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, tt.msg)
			assert.NoFileExists(t, out)
		})
	}
}

// The kit's controlnet-ddim and controlnet-ddim-guess runs through the command line,
// checked against diffusers' images, and what the PNG records (the hash is A1111's legacy
// model_hash, computed with Python's hashlib: sha256 of the 64 KiB at 1 MiB).
func TestTxt2ImgControlNetMatchesDiffusers(t *testing.T) {
	model, rt := tinyModel(t)
	kit := filepath.Join(testutil.ConformanceDir(t), "controlnet-tiny")
	if _, err := os.Stat(kit); err != nil {
		t.Skipf("controlnet-tiny not in the kit: %v", err)
	}
	runs := []struct {
		name, controlnet string
		extra            []string
		params           string
	}{
		{"ddim", "controlnet-tiny-ldm.safetensors", nil,
			`ControlNet 0: "Module: none, Model: controlnet-tiny-ldm [8707c190], Weight: 0.8, Resize Mode: Just Resize, Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, Control Mode: Balanced"`},
		{"ddim-guess", "diffusers", []string{"--guess-mode"},
			`ControlNet 0: "Module: none, Model: diffusers, Weight: 0.8, Resize Mode: Just Resize, Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, Control Mode: ControlNet is more important"`},
	}
	for _, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "apple.png")
			args := slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple on a table", "-n", "blurry",
				"-W", "64", "-H", "64", "--steps", "6", "--cfg", "7.5", "--sampler", "ddim", "--seed", "50", "--rng", "cpu",
				"--controlnet", filepath.Join(kit, run.controlnet), "--control-image", filepath.Join(kit, "control.png"),
				"--control-scale", "0.8", "--control-end", "0.8"}, run.extra, []string{"-o", out}, rt)
			r := runArgs(t, args...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)

			img, params := pngParameters(t, out)
			ref := kitImage(t, filepath.Join(kit, "controlnet-"+run.name+".safetensors"))
			worst := maxPixelError(t, img, ref)
			t.Logf("max |pixel - 255 ref| = %.3f", worst)
			assert.LessOrEqual(t, worst, 2.0, "2/255 per pixel")

			assert.Contains(t, params, ", Model: diffusers, RNG: CPU, "+run.params+", Version: gosd")
		})
	}
}

// The canny preprocessor's edges go to the ControlNet; the PNG records the module and its
// thresholds; --control-scale 0 leaves the ControlNet out.
func TestTxt2ImgControlNetPreprocess(t *testing.T) {
	model, rt := tinyModel(t)
	kit := filepath.Join(testutil.ConformanceDir(t), "controlnet-tiny")
	if _, err := os.Stat(kit); err != nil {
		t.Skipf("controlnet-tiny not in the kit: %v", err)
	}
	dir := t.TempDir()
	gen := func(name string, extra ...string) string {
		out := filepath.Join(dir, name+".png")
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a cat", "-W", "64", "-H", "64", "--steps", "3",
			"--seed", "1", "--controlnet", filepath.Join(kit, "diffusers"), "--control-image", filepath.Join(kit, "control.png")},
			extra, []string{"-o", out}, rt)...)
		require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
		_, params := pngParameters(t, out)
		return params
	}
	params := gen("canny", "--control-preprocess", "canny", "--canny", "50,120", "--control-start", "0.25")
	assert.Contains(t, params, `ControlNet 0: "Module: canny, Model: diffusers, Weight: 1.0, Resize Mode: Just Resize, Threshold A: 50.0, Threshold B: 120.0, Guidance Start: 0.25, Guidance End: 1.0, `)
	params = gen("off", "--control-scale", "0")
	assert.NotContains(t, params, "ControlNet 0")

	// sdcli inpaint makes the inpainting ControlNet's condition from -i and the mask.
	inpaint := func(extra ...string) runResult {
		return runArgs(t, slices.Concat([]string{"inpaint", "-m", model, "-p", "a cat", "--steps", "2", "--seed", "1",
			"-i", filepath.Join(kit, "control.png"), "--outpaint", "0,0,8,0", "--controlnet", filepath.Join(kit, "diffusers")},
			extra, []string{"-o", filepath.Join(dir, "inpaint.png")}, rt)...)
	}
	r := inpaint("--control-preprocess", "inpaint")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	_, params = pngParameters(t, filepath.Join(dir, "inpaint.png"))
	assert.Contains(t, params, `ControlNet 0: "Module: inpaint_only, Model: diffusers, `)
	r = inpaint("--control-preprocess", "inpaint", "--control-image", filepath.Join(kit, "control.png"))
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "drop --control-image")
	r = inpaint("--control-preprocess", "inpaint", "-W", "64")
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, "--control-preprocess inpaint: the image is 72x64; it needs an output of the image's size")
}
