package lora

import (
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func seq(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i)
	}
	return v
}

func TestLoadEmbedding(t *testing.T) {
	t.Run("A1111 emb_params", func(t *testing.T) {
		e, err := LoadEmbedding(writeFile(t, "my-style.safetensors", f32Tensor("emb_params", []int64{2, 32}, seq(64))))
		require.NoError(t, err)
		assert.Equal(t, "my-style", e.Token)
		v := e.Vectors[TextEncoder]
		assert.Equal(t, 2, v.N)
		assert.Equal(t, 32, v.Width)
		assert.Equal(t, seq(64)[32:], v.Row(1))
		assert.Len(t, e.Vectors, 1)
	})
	t.Run("SDXL clip_l and clip_g", func(t *testing.T) {
		e, err := LoadEmbedding(writeFile(t, "xl.safetensors",
			f32Tensor("clip_g", []int64{3, 32}, seq(96)), f32Tensor("clip_l", []int64{3, 16}, seq(48))))
		require.NoError(t, err)
		assert.Equal(t, Vectors{3, 16, seq(48)}, e.Vectors[TextEncoder])
		assert.Equal(t, Vectors{3, 32, seq(96)}, e.Vectors[TextEncoder2])
	})
	t.Run("one tensor named by its token", func(t *testing.T) {
		e, err := LoadEmbedding(writeFile(t, "cat-toy.safetensors", f32Tensor("<cat-toy>", []int64{16}, seq(16))))
		require.NoError(t, err)
		assert.Equal(t, "cat-toy", e.Token, "bound to the file name")
		assert.Equal(t, Vectors{1, 16, seq(16)}, e.Vectors[TextEncoder])
	})
	t.Run("errors", func(t *testing.T) {
		_, err := LoadEmbedding(writeFile(t, "a.safetensors", f32Tensor("clip_l", []int64{2, 16}, seq(32)), f32Tensor("clip_g", []int64{3, 32}, seq(96))))
		assert.ErrorIs(t, err, modelfile.ErrBadModel, "vector counts differ")
		_, err = LoadEmbedding(writeFile(t, "b.safetensors", f32Tensor("x", []int64{2}, seq(2)), f32Tensor("y", []int64{2}, seq(2))))
		assert.ErrorIs(t, err, modelfile.ErrUnsupported)
		assert.ErrorContains(t, err, "x, y")
		_, err = LoadEmbedding(writeFile(t, "c.safetensors", f32Tensor("emb_params", []int64{1, 2, 3}, seq(6))))
		assert.ErrorIs(t, err, modelfile.ErrBadModel, "a 3-D embedding")
	})
}
