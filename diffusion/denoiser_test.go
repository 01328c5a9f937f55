package diffusion

import (
	"context"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The denoiser assembles a UNet call from the latents: the extra channels after each
// sample's latents, the batch doubled for guidance (uncond first), one timestep per row,
// and the request's context as the native tensor it is, not a host copy to upload.
func TestDenoiserInputs(t *testing.T) {
	const b, lc, h, w = 2, 2, 1, 2
	x := []float32{1, 2, 3, 4, 5, 6, 7, 8} // (2, 2, 1, 2)
	extra := []float32{-1, -2, -3, -4}     // (2, 1, 1, 2)
	want := []float32{1, 2, 3, 4, -1, -2, 5, 6, 7, 8, -3, -4}
	d := &denoiser{unet: unetNet{cfg: binding.UNetConfig{InChannels: lc + 1}},
		cond: &conditioning{context: 42}, batch: b, h: h, w: w, guidance: 7.5, extra: extra}
	in := d.inputs(x, 981)
	assert.Equal(t, append(append([]float32{}, want...), want...), in.x, "uncond and cond rows")
	assert.Equal(t, 2*b, in.batch)
	assert.Equal(t, []float32{981, 981, 981, 981}, in.t)
	assert.Equal(t, binding.Tensor(42), in.contextTensor)
	assert.Nil(t, in.context)
	assert.Equal(t, float32(1), in.residualScale)

	d.guidance, d.extra = 1, nil // no guidance: one row per sample, the latents as they are
	in = d.inputs(x, 1)
	assert.Equal(t, x, in.x)
	assert.Equal(t, b, in.batch)
	assert.Len(t, in.t, b)
}

// The conditioning lives for one request: after a call the pipeline holds the same
// native tensors as after the one before (the UNet's reused input buffers), none of the
// context uploads.
func TestConditioningIsFreedAfterTheRequest(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	held := func() uint64 {
		_, err := p.Txt2Img(context.Background(), tinyRequest())
		require.NoError(t, err)
		s, err := p.MemoryStats()
		require.NoError(t, err)
		return s.TensorsBytes
	}
	first := held()
	assert.Equal(t, first, held())
}
