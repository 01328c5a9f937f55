package main

import (
	"image"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --vae-tiling forces tiling (the kit model's tiles are 64 px, so a 128 px image is
// tiled); the tiled image differs from the untiled one.
func TestVAETilingFlag(t *testing.T) {
	model, rt := tinyModel(t)
	dir := t.TempDir()
	var imgs []image.Image
	for _, flag := range []string{"--vae-tiling=off", "--vae-tiling"} {
		out := filepath.Join(dir, "x.png")
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a cat", "-W", "128", "-H", "128",
			"--steps", "1", "--seed", "1", "-o", out, flag}, rt)...)
		require.Equal(t, exitOK, r.code, "%s: %s", flag, r.stderr)
		img, _ := pngParameters(t, out)
		require.Equal(t, image.Rect(0, 0, 128, 128), img.Bounds())
		imgs = append(imgs, img)
	}
	assert.NotEqual(t, imgs[0], imgs[1])

	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "--steps", "1", "-o", filepath.Join(dir, "y.png"),
		"--vae-tiling=sometimes"}, rt)...)
	assert.Equal(t, exitUsage, r.code, r.stderr)
	assert.Contains(t, r.stderr, "want auto, on or off")
}
