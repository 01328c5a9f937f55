package diffusion

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/stretchr/testify/require"
)

// The x4 upscaler's VAE (3 levels, factor 4; the goldens are of raw latents, its 0.08333
// scaling is the codec's), its SD 2.x-style text encoder and the low-res scheduler's
// noise augmentation against the kit's goldens (the UNet's are in
// TestUpscalerUNetMatchesDiffusers).
func TestUpscalerComponentsMatchDiffusers(t *testing.T) {
	dir := kitDir(t, "upscaler-tiny")
	lib := testLibrary(t)
	m, err := modelfile.Load(filepath.Join(dir, "diffusers"))
	require.NoError(t, err)
	defer m.Close()
	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	defer e.close()
	require.NoError(t, e.load(context.Background(), m))
	g := openGolden(t, filepath.Join(dir, "golden.safetensors"))

	require.Equal(t, 4, e.vaeNet().factor())
	for _, d := range []string{"vae.decode", "vae.decode2"} {
		z, zs := g.floats(d + ".z")
		ref, _ := g.floats(d + ".out")
		got, err := e.vaeNet().decode(z, int(zs[0]), int(zs[2]), int(zs[3]))
		require.NoError(t, err)
		assertClose(t, d, got, ref)
	}

	ids := g.ints("clip.ids")
	refLast, ls := g.floats("clip.last_hidden_state")
	hidden, pooled, err := e.clipNet().encode(ids, int(ls[0]), int(ls[1]), 0, true, true)
	require.NoError(t, err)
	assertClose(t, "clip.last_hidden_state", hidden, refLast)
	refPooled, _ := g.floats("clip.pooled")
	assertClose(t, "clip.pooled", pooled, refPooled)
	refPen, _ := g.floats("clip.penultimate_hidden_state")
	pen, _, err := e.clipNet().encode(ids, int(ls[0]), int(ls[1]), 1, false, false)
	require.NoError(t, err)
	assertClose(t, "clip.penultimate_hidden_state", pen, refPen)

	require.NotNil(t, m.Upscaler)
	cfg, err := schedule.ParseConfig(m.Upscaler.LowResScheduler.Raw)
	require.NoError(t, err)
	lowRes, err := schedule.NewTrainingSchedule(cfg)
	require.NoError(t, err)
	refACP, _ := g.floats("low_res.alphas_cumprod")
	assertClose(t, "low_res.alphas_cumprod", lowRes.AlphasCumprod(), refACP)
	x, _ := g.floats("low_res.add_noise.x")
	noise, _ := g.floats("low_res.add_noise.noise")
	for _, level := range []struct {
		key string
		t   int
	}{{"low_res.add_noise.t20", 20}, {"low_res.add_noise.t350", 350}} {
		ref, _ := g.floats(level.key)
		assertClose(t, level.key, lowRes.AddNoise(x, noise, level.t), ref)
	}
}
