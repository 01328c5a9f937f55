package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLoRAFlag(t *testing.T) {
	for _, tc := range []struct {
		in, path string
		scale    float64
		err      string
	}{
		{"a.safetensors", "a.safetensors", 1, ""},
		{"a.safetensors:0.8", "a.safetensors", 0.8, ""},
		{"dir:x/a.pt:-0.5", "dir:x/a.pt", -0.5, ""},
		{"dir:x/a.pt", "dir:x/a.pt", 1, ""},
		{"a.pt:0", "a.pt", 0, ""},
		{":0.5", "", 0, "want PATH[:SCALE]"},
		{"a.pt:NaN", "", 0, "finite"},
		{"a.pt:Inf", "", 0, "finite"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			l, err := parseLoRAFlag(tc.in)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.path, l.Path)
			assert.Equal(t, tc.scale, *l.UNetScale)
			assert.Equal(t, tc.scale, *l.TextScale)
		})
	}
	r := runArgs(t, "txt2img", "--lora", ":1")
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, `invalid value ":1" for flag -lora: want PATH[:SCALE]`)
}

// The kit's LoRA run through the command line (--lora FILE:SCALE with the kohya and the
// PEFT file, and a prompt tag with --lora-dir): diffusers' image within 2/255, and the
// PNG's parameters carry the adapter's hash as AUTOMATIC1111 writes it.
func TestTxt2ImgLoRAMatchesDiffusers(t *testing.T) {
	model, rt := tinyModel(t)
	dir := filepath.Join(testutil.ConformanceDir(t), "lora")
	ref := kitImage(t, filepath.Join(dir, "txt2img-ddim-lora-kohya-0.8.safetensors"))
	for _, tc := range []struct {
		name   string
		prompt string
		flags  []string
		hashOf string
	}{
		{"kohya", "a red apple on a table", []string{"--lora", filepath.Join(dir, "lora-kohya.safetensors") + ":0.8"}, "lora-kohya"},
		{"peft", "a red apple on a table", []string{"--lora", filepath.Join(dir, "lora-peft.safetensors") + ":0.8"}, "lora-peft"},
		{"prompt tag", "<lora:lora-kohya:0.8>a red apple on a table", []string{"--lora-dir", dir}, "lora-kohya"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "apple.png")
			r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", tc.prompt, "-n", "blurry",
				"-W", "64", "-H", "64", "--steps", "6", "--cfg", "7.5", "--sampler", "ddim", "--seed", "50", "--rng", "cpu", "-o", out}, tc.flags, rt)...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			img, params := pngParameters(t, out)
			assert.Regexp(t, regexp.MustCompile(`(?s)^`+regexp.QuoteMeta(tc.prompt)+`\n.*, Lora hashes: "`+tc.hashOf+`: [0-9a-f]{12}", `), params)
			worst := maxPixelError(t, img, ref)
			t.Logf("max |pixel - 255 ref| = %.3f", worst)
			assert.LessOrEqual(t, worst, 2.0)
		})
	}
	// A missing adapter is a request error (exit 2), with no image written.
	out := filepath.Join(t.TempDir(), "none.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "--steps", "1", "--lora", filepath.Join(dir, "none.safetensors"), "-o", out}, rt)...)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "none.safetensors")
	_, err := os.Stat(out)
	assert.True(t, os.IsNotExist(err))
}
