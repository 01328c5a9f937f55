package diffusion

import (
	"context"
	"image"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// torch.nn.functional.interpolate(x, size=(4, 5), mode="bilinear", align_corners=False)
// of a 2x3 plane, printed by torch 1.13.
func TestResizeBilinearMatchesTorch(t *testing.T) {
	got := resizeBilinear([]float32{1, 2, 4, 3, 5, 9}, 1, 2, 3, 4, 5)
	want := []float32{1, 1.4, 2, 3.2, 4, 1.5, 2, 2.75, 4.25, 5.25, 2.5, 3.2, 4.25, 6.35, 7.75, 3, 3.8, 5, 7.4, 9}
	require.Len(t, got, len(want))
	for k := range want {
		assert.InDelta(t, want[k], got[k], 1e-6, "at %d", k)
	}
	// Same size: the plane itself.
	assert.Equal(t, []float32{1, 2, 4, 3, 5, 9}, resizeBilinear([]float32{1, 2, 4, 3, 5, 9}, 1, 2, 3, 2, 3))
}

func TestHiresValidation(t *testing.T) {
	d := describeKit(t, "sd1-tiny")
	base := Request{Width: 64, Height: 64, Steps: 10}
	cases := []struct {
		name    string
		hires   Hires
		wantErr string
	}{
		{"scale 1", Hires{Scale: 1}, "hires scale 1 not in (1, 4]"},
		{"scale 5", Hires{Scale: 5}, "hires scale 5"},
		{"bad strength", Hires{Scale: 2, Strength: 1.5}, "strength 1.5"},
		{"bad steps", Hires{Scale: 2, Steps: -1}, "hires steps -1"},
		{"too few steps for the strength", Hires{Scale: 2, Steps: 1, Strength: 0.01}, "leaves nothing to do"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			r.Hires = &tc.hires
			_, _, err := d.plan(r, nil)
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
	r := base
	r.Hires = &Hires{Scale: 1.5}
	par, _, err := d.plan(r, nil)
	require.NoError(t, err)
	assert.Equal(t, 0.7, par.Strength)
	assert.Equal(t, 1.5, par.HiresScale)
	assert.Contains(t, par.A1111(0), "Size: 64x64, Model: diffusers, Denoising strength: 0.7, Hires upscale: 1.5, Hires upscaler: Latent, ")
	r.Hires = &Hires{Scale: 2, Steps: 6, Strength: 0.5}
	par, _, err = d.plan(r, nil)
	require.NoError(t, err)
	assert.Contains(t, par.A1111(0), "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 6, Hires upscaler: Latent")

	// Hires is a txt2img pass.
	i2i, init, err := d.img2img(Img2ImgRequest{Request: Request{Hires: &Hires{Scale: 2}}, Image: solidImage(64, 64, image.White.C)})
	require.NoError(t, err)
	_, _, err = d.plan(i2i, init)
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "second pass of Txt2Img")
}

// The latent hires fix continues the first pass (its steps are plain txt2img's) and
// repaints at twice the size.
func TestHiresLatent(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	req := Request{Prompt: "a red apple", Width: 64, Height: 64, Steps: 4, Seed: 7, BatchSize: 2}
	var plain [][]float32
	req.onStep = func(_ int, x []float32) { plain = append(plain, slices.Clone(x)) }
	_, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)

	var steps [][]float32
	req.onStep = func(_ int, x []float32) { steps = append(steps, slices.Clone(x)) }
	req.Hires = &Hires{Scale: 2, Steps: 4, Strength: 0.5}
	res, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	require.Len(t, steps, 4+2) // the second pass runs half of its 4 steps
	assert.Equal(t, plain, steps[:4])
	assert.Len(t, steps[4], 2*4*16*16)
	require.Len(t, res.Images, 2)
	assert.Equal(t, image.Rect(0, 0, 128, 128), res.Images[0].Bounds())
	assert.Equal(t, 64, res.Params.Width)
	assert.Contains(t, res.Params.A1111(1), "Seed: 8, Size: 64x64")
}

// With an ESRGAN upscaler the hires fix is exactly: txt2img, the ESRGAN's upscale, then
// img2img of it at the target size with the hires steps and strength and the same seed.
func TestHiresESRGANIsImg2ImgOfTheUpscale(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	e := openESRGAN(t, filepath.Join(esrganData(t), "esrgan-x4.pth"))
	ctx := context.Background()
	req := Request{Prompt: "a red apple", Width: 64, Height: 64, Steps: 4, Seed: 11}
	first, err := p.Txt2Img(ctx, req)
	require.NoError(t, err)
	big, err := e.Upscale(ctx, ESRGANRequest{Image: first.Images[0]})
	require.NoError(t, err)
	i2i := req
	i2i.Width, i2i.Height, i2i.Steps = 128, 128, 6
	want, err := p.Img2Img(ctx, Img2ImgRequest{Request: i2i, Image: big, Strength: 0.6})
	require.NoError(t, err)

	req.Hires = &Hires{Scale: 2, Upscaler: e, Steps: 6, Strength: 0.6}
	got, err := p.Txt2Img(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, imageCHW(want.Images[0]), imageCHW(got.Images[0]))
	assert.Contains(t, got.Params.A1111(0), "Hires upscale: 2, Hires steps: 6, Hires upscaler: esrgan-x4")
}
