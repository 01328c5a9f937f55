package main

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --text-heads is checked as it is parsed, on every command that opens a model.
func TestTextHeadsFlagValidation(t *testing.T) {
	values := []struct {
		name, value, msg string
	}{
		{"second encoder", "4,0", `invalid value "4,0" for flag -text-heads: "0": want a head count between 1 and 1024`},
		{"zero", "0", `invalid value "0" for flag -text-heads: "0": want a head count between 1 and 1024`},
		{"zero second", "4,0", `"0": want a head count between 1 and 1024`},
		{"too many", "1025", `"1025": want a head count between 1 and 1024`},
		{"not a number", "many", `"many": want a head count`},
		{"three", "1,2,3", "flag -text-heads: want N or N,N2"},
	}
	for _, cmd := range []string{"txt2img", "img2img", "inpaint", "info", "bench"} {
		for _, v := range values {
			t.Run(cmd+"/"+v.name, func(t *testing.T) {
				r := runArgs(t, cmd, "--text-heads", v.value)
				assert.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
				assert.Contains(t, r.stderr, "sdcli "+cmd+": ")
				assert.Contains(t, r.stderr, v.msg)
				assert.Empty(t, r.stdout)
			})
		}
	}

	// bench's random weights record their heads.
	r := runArgs(t, "bench", "--text-heads", "4", "--cache", t.TempDir())
	assert.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stderr, "sdcli bench: --text-heads and --unet-heads need -m")
}

// The kit's single file has a 32-wide text encoder, whose head count its weights do not
// record: info reads it with --text-heads, and the flag overrides a folder's config.
func TestInfoTextHeads(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	single := filepath.Join(kit, "sd1-tiny", "sd1-tiny-ldm.safetensors")
	folder := filepath.Join(kit, "sd1-tiny", "diffusers")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"single file without", []string{single}, exitError, ""},
		{"single file with", []string{"--text-heads", "4", single}, exitOK, "hidden 32, layers 4, heads 4,"},
		{"folder overridden", []string{"--text-heads", "2", folder}, exitOK, "hidden 32, layers 4, heads 2,"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, append([]string{"info"}, tt.args...)...)
			require.Equal(t, tt.code, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stdout, tt.want)
		})
	}
}

// txt2img runs the kit's single file given its text encoder's heads.
func TestTxt2ImgSingleFileTextHeads(t *testing.T) {
	_, rt := tinyModel(t)
	single := filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "sd1-tiny-ldm.safetensors")
	out := filepath.Join(t.TempDir(), "out.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", single, "--text-heads", "4", "-p", "an apple",
		"-W", "64", "-H", "64", "--steps", "2", "--sampler", "ddim", "--seed", "1", "-o", out}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Equal(t, out+"\n", r.stdout)
	assert.FileExists(t, out)
}
