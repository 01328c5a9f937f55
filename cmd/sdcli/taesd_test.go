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

// --vae-decoder taesd:PATH decodes the kit's DDIM run with its TAESD: the image of
// txt2img-ddim-taesd within the kit's 2/255.
func TestTxt2ImgTAESDDecoder(t *testing.T) {
	model, rt := tinyModel(t)
	kit := testutil.ConformanceDir(t)
	out := filepath.Join(t.TempDir(), "apple.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple on a table", "-n", "blurry",
		"-W", "64", "-H", "64", "--steps", "6", "--cfg", "7.5", "--sampler", "ddim", "--seed", "50", "-o", out,
		"--vae-decoder", "taesd:" + filepath.Join(kit, "taesd-tiny", "diffusers")}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	img, _ := pngParameters(t, out)
	require.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())

	ref := kitImage(t, filepath.Join(kit, "taesd-tiny", "txt2img-ddim-taesd.safetensors"))
	worst := maxPixelError(t, img, ref)
	t.Logf("max |pixel - 255 ref| = %.3f", worst)
	assert.LessOrEqual(t, worst, 2.0)
}

func TestVAEDecoderFlagErrors(t *testing.T) {
	model, rt := tinyModel(t)
	for _, tc := range []struct {
		value string
		code  int
		msg   string
	}{
		{"taesd", exitUsage, "taesd:PATH"},
		{"fast", exitUsage, "taesd:PATH"},
		{"taesd:" + filepath.Join(t.TempDir(), "none"), exitError, "no such file"},
	} {
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "--steps", "1", "-o", filepath.Join(t.TempDir(), "x.png"),
			"--vae-decoder", tc.value}, rt)...)
		assert.Equal(t, tc.code, r.code, "%s: %s", tc.value, r.stderr)
		assert.Contains(t, r.stderr, tc.msg, tc.value)
	}
}

// serve --taesd opens the TAESD with the model, so a path that is none fails at start.
func TestServeTAESDFlag(t *testing.T) {
	model, rt := tinyModel(t)
	r := runArgs(t, slices.Concat([]string{"serve", "-m", model, "--addr", "127.0.0.1:0",
		"--taesd", filepath.Join(t.TempDir(), "none")}, rt)...)
	assert.Equal(t, exitError, r.code, r.stderr)
	assert.Contains(t, r.stderr, "no such file")
}
