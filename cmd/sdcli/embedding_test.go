package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeTI writes an AUTOMATIC1111-style embedding (emb_params, n x width) and returns
// its short hash (the first 12 hex digits of the file's SHA-256).
func writeTI(t *testing.T, path string, n, width int) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	data := make([]byte, 4*n*width)
	for i := 0; i < n*width; i++ {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i%7)/7-0.4))
	}
	require.NoError(t, modelfile.WriteSafetensors(path, []modelfile.Tensor{{Name: "emb_params", DType: modelfile.F32, Shape: []int64{int64(n), int64(width)}, Data: data}}, nil))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:12]
}

// --embedding-dir: an embedding named in the negative prompt changes the image and the
// PNG's parameters carry its hash as AUTOMATIC1111 writes it; one of the wrong width is
// a request error naming the file.
func TestTxt2ImgEmbeddingDir(t *testing.T) {
	model, rt := tinyModel(t)
	dir := t.TempDir()
	hash := writeTI(t, filepath.Join(dir, "neg", "bad-hands.safetensors"), 2, 32) // sd1-tiny's text encoder is 32 wide
	writeTI(t, filepath.Join(dir, "wide.safetensors"), 1, 48)
	run := func(neg string, flags ...string) (int, string, string) {
		out := filepath.Join(t.TempDir(), "apple.png")
		r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple", "-n", neg,
			"-W", "64", "-H", "64", "--steps", "2", "--seed", "50", "-o", out}, flags, rt)...)
		return r.code, r.stderr, out
	}
	code, stderr, with := run("blurry, bad-hands", "--embedding-dir", dir)
	require.Equal(t, exitOK, code, "stderr: %s", stderr)
	img, params := pngParameters(t, with)
	assert.Contains(t, params, `TI hashes: "bad-hands: `+hash+`"`)
	code, stderr, without := run("blurry, bad-hands")
	require.Equal(t, exitOK, code, "stderr: %s", stderr)
	img0, params0 := pngParameters(t, without)
	assert.NotContains(t, params0, "TI hashes")
	assert.NotEqual(t, img, img0, "the embedding changes the image")

	code, stderr, out := run("wide", "--embedding-dir", dir)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "wide.safetensors has 48-wide vectors")
	_, err := os.Stat(out)
	assert.True(t, os.IsNotExist(err))
}
