package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --timestep-spacing and --prompt-syntax: offered by every generation command,
// checked as they are parsed, and passed to the request.
func TestTimestepSpacingAndPromptSyntaxFlags(t *testing.T) {
	for _, cmd := range []string{"txt2img", "img2img", "inpaint"} {
		r := runArgs(t, "help", cmd)
		require.Equal(t, exitOK, r.code)
		assert.Contains(t, r.stdout, "--timestep-spacing NAME", cmd)
		assert.Contains(t, r.stdout, "--prompt-syntax NAME", cmd)
	}
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"bad spacing", []string{"txt2img", "--timestep-spacing", "even"}, `invalid value "even" for flag -timestep-spacing: unknown timestep spacing`},
		{"bad syntax", []string{"img2img", "--prompt-syntax", "diffusers"}, `invalid value "diffusers" for flag -prompt-syntax: unknown prompt syntax`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, tt.args...)
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, tt.msg)
		})
	}

	// Each flag changes the image of a fixed seed: it reaches the request.
	model, rt := tinyModel(t)
	run := func(flags ...string) []byte {
		out := filepath.Join(t.TempDir(), "x.png")
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "(a cat)", "--steps", "2", "--seed", "1", "-o", out}, flags, rt)...)
		require.Equal(t, exitOK, r.code, "%v: %s", flags, r.stderr)
		img, err := os.ReadFile(out)
		require.NoError(t, err)
		return img
	}
	base := run()
	assert.Equal(t, base, run("--timestep-spacing", "leading", "--prompt-syntax", "a1111"), "the tiny model's config says leading")
	assert.NotEqual(t, base, run("--timestep-spacing", "trailing"))
	assert.NotEqual(t, base, run("--prompt-syntax", "plain"))
}
