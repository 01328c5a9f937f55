package binding

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTAESDConfigAndErrors(t *testing.T) {
	lib := loadCPU(t)
	ctx := newCtx(t, lib)
	c := lib.DefaultTAESDConfig()
	assert.Equal(t, int32(4), c.LatentChannels)
	assert.Equal(t, [MaxLevels]int32{64, 64, 64, 64}, c.DecoderChannels)
	assert.Equal(t, [MaxLevels]int32{3, 3, 3, 1}, c.DecoderBlocks)
	assert.Equal(t, [MaxLevels]int32{1, 3, 3, 3}, c.EncoderBlocks)

	_, err := lib.TAESDLoad(ctx, &c, nil)
	require.ErrorIs(t, err, ErrBadModel)
	assert.Contains(t, err.Error(), "encoder.layers.0.weight")
	none := c
	none.EncoderLevels, none.DecoderLevels = 0, 0
	_, err = lib.TAESDLoad(ctx, &none, nil)
	require.ErrorIs(t, err, ErrBadModel)
	assert.Contains(t, err.Error(), "neither an encoder nor a decoder")
	uneven := c
	uneven.DecoderChannels[2] = 32
	_, err = lib.TAESDLoad(ctx, &uneven, nil)
	require.ErrorIs(t, err, ErrBadModel)
	assert.Contains(t, err.Error(), "one width")

	// Forwards refuse a model that is no TAESD (here none at all).
	z, err := lib.TensorNew(ctx, F32, 1, 4, 2, 2)
	require.NoError(t, err)
	out, err := lib.TensorNew(ctx, F32, 1, 3, 16, 16)
	require.NoError(t, err)
	require.ErrorIs(t, lib.TAESDDecode(ctx, 0, z, out), ErrInvalidArgument)
	require.ErrorIs(t, lib.TAESDEncode(ctx, 0, out, z), ErrInvalidArgument)
}

func TestOpTanhClamp(t *testing.T) {
	lib := loadCPU(t)
	ctx := newCtx(t, lib)
	x := []float32{-100, -3, -1, 0, 0.5, 3, 1e30}
	tx, err := lib.TensorNew(ctx, F32, int64(len(x)))
	require.NoError(t, err)
	require.NoError(t, lib.UploadFloat32(ctx, tx, x))
	require.NoError(t, lib.OpTanhClamp(ctx, tx, tx, 3))
	got := make([]float32, len(x))
	require.NoError(t, lib.DownloadFloat32(ctx, tx, got))
	for i, v := range x {
		assert.InDelta(t, 3*math.Tanh(float64(v)/3), got[i], 1e-6, "x=%g", v)
	}
	require.ErrorIs(t, lib.OpTanhClamp(ctx, tx, tx, 0), ErrInvalidArgument)
}
