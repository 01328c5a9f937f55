package diffusion

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
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
	assertVAEDecodeGoldens(t, e, g)

	assertCLIPGoldens(t, e.clipNet(), g, "clip")

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

// kitSpread is the float64_spread the kit's part-2 manifest records for a file.
func kitSpread(t *testing.T, rel string) float64 {
	b, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "manifest-v2-control-upscale.json"))
	require.NoError(t, err)
	var manifest struct {
		Files map[string]struct {
			Spread float64 `json:"float64_spread"`
		} `json:"files"`
	}
	require.NoError(t, json.Unmarshal(b, &manifest))
	f, ok := manifest.Files[rel]
	require.True(t, ok, "manifest entry %s", rel)
	return f.Spread
}

// upscaleRuns are the kit's StableDiffusionUpscalePipeline runs: "a red apple", 6 steps,
// noise level 20, generator seed 60 (the low-res noise, then the latents when none are
// passed); g7.5 and g0 pass init_latents (seed 50). Guidance 0 and 1 both turn
// classifier-free guidance off, in diffusers as here (Request's 0 means its default).
var upscaleRuns = []struct {
	file          string
	guidance      float64
	passedLatents bool
}{
	{"upscale-ddim-g7.5", 7.5, true},
	{"upscale-ddim-g0", 1, true},
	{"upscale-ddim-g7.5-seeded", 7.5, false},
}

func kitLowRes(t *testing.T) image.Image {
	f, err := os.Open(filepath.Join(kitDir(t, "upscaler-tiny"), "low_res.png"))
	require.NoError(t, err)
	defer f.Close()
	img, err := DecodeImage(f, "low_res.png")
	require.NoError(t, err)
	return img
}

// The whole pipeline through the public API against diffusers, from the seed: the
// preprocessed and noised low-res image and the initial latents, every step's latents
// within the kit's pipeline tolerance, the image within 2/255 per pixel.
func TestUpscaleMatchesDiffusers(t *testing.T) {
	dir := kitDir(t, "upscaler-tiny")
	low := kitLowRes(t)
	for _, run := range upscaleRuns {
		t.Run(run.file, func(t *testing.T) {
			p := openTiny(t, "upscaler-tiny")
			require.True(t, p.Info().Upscaler)
			g := openGolden(t, filepath.Join(dir, run.file+".safetensors"))
			tol := math.Max(conformanceTol, 4*kitSpread(t, "upscaler-tiny/"+run.file+".safetensors"))
			req := UpscaleRequest{Request: Request{Prompt: "a red apple", Steps: 6, GuidanceScale: run.guidance, Seed: 60}, Image: low}
			if run.passedLatents {
				req.latents, _ = g.floats("init_latents")
			}

			// The start: low_res.png / 255 in [-1, 1], its noise, the latents.
			r, init, err := p.desc.upscale(req)
			require.NoError(t, err)
			par, sched, err := p.desc.plan(r, init)
			require.NoError(t, err)
			assert.Equal(t, [2]int{64, 64}, [2]int{par.Width, par.Height})
			refT, _ := g.floats("timesteps")
			for i, ts := range sched.Timesteps() {
				assert.InDelta(t, refT[i], ts, 0, "timestep %d", i)
			}
			st := p.prepareUpscale(par, sched, init, newBatchGenerator(par.RNG, par.Seed, 1), 16, 16)
			lowRes, _ := g.floats("low_res_image")
			for k, v := range imageTensorWith(low, 16, 16, bicubicFilter) {
				require.InDelta(t, 2*lowRes[k]-1, v, 1e-6)
			}
			refNoised, _ := g.floats("noised_low_res")
			assertClose(t, "noised_low_res", st.extra, refNoised)
			refInit, _ := g.floats("init_latents")
			assertClose(t, "init_latents", st.x, refInit)
			assert.Equal(t, []float32{20}, st.classLabels)

			var steps [][]float32
			req.onStep = func(_ int, x []float32) { steps = append(steps, slices.Clone(x)) }
			res, err := p.Upscale(context.Background(), req)
			require.NoError(t, err)
			require.Len(t, steps, 6)
			for i, x := range steps {
				ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
				e := relErr(x, ref)
				t.Logf("step%02d.latents: %.2e (tolerance %.1e)", i, e, tol)
				assert.LessOrEqual(t, e, tol, "step %d", i)
			}
			assertImageClose(t, res.Images[0], g)
			assert.Equal(t, 4, res.Params.UpscaleFactor)
			assert.Equal(t, 20, res.Params.NoiseLevel)
			assert.Contains(t, res.Params.A1111(0), "Noise level: 20")
		})
	}
}

// Upscale requests are checked before any work, against the model's description.
func TestUpscaleRequestValidation(t *testing.T) {
	d := describeKit(t, "upscaler-tiny")
	require.True(t, d.info.Upscaler)
	require.False(t, d.info.Inpainting)
	img := solidImage(16, 16, color.White)
	cases := []struct {
		name      string
		req       UpscaleRequest
		wantErr   string
		wantSize  [2]int
		wantLevel int
	}{
		{name: "defaults", req: UpscaleRequest{Image: img}, wantSize: [2]int{64, 64}, wantLevel: DefaultNoiseLevel},
		{name: "no noise", req: UpscaleRequest{Image: img, NoiseLevel: NoNoise}, wantSize: [2]int{64, 64}, wantLevel: 0},
		{name: "max noise", req: UpscaleRequest{Image: img, NoiseLevel: 350}, wantSize: [2]int{64, 64}, wantLevel: 350},
		{name: "sides rounded down to 4", req: UpscaleRequest{Image: solidImage(23, 18, color.White)}, wantSize: [2]int{80, 64}, wantLevel: 20},
		{name: "noise over max", req: UpscaleRequest{Image: img, NoiseLevel: 351}, wantErr: "noise level 351 not in [0, 350]"},
		{name: "negative noise", req: UpscaleRequest{Image: img, NoiseLevel: -2}, wantErr: "noise level -2"},
		{name: "no image", req: UpscaleRequest{}, wantErr: "upscale image"},
		{name: "typed nil image", req: UpscaleRequest{Image: (*image.RGBA)(nil)}, wantErr: "upscale image"},
		{name: "too small", req: UpscaleRequest{Image: solidImage(3, 16, color.White)}, wantErr: "smaller than 4"},
		{name: "output over MaxSide", req: UpscaleRequest{Image: solidImage(1028, 16, color.White)}, wantErr: "upscales to 4112x64"},
		{name: "size given", req: UpscaleRequest{Request: Request{Width: 64}, Image: img}, wantErr: "leave Width and Height 0"},
		{name: "bad steps", req: UpscaleRequest{Request: Request{Steps: -1}, Image: img}, wantErr: "steps"},
		{name: "tile too small", req: UpscaleRequest{Image: img, Tile: 7}, wantErr: "tile 7: at least 8"},
		{name: "negative tile", req: UpscaleRequest{Image: img, Tile: -1}, wantErr: "tile -1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, init, err := d.upscale(tc.req)
			if err == nil {
				var par Params
				par, _, err = d.plan(r, init)
				if err == nil {
					assert.Equal(t, tc.wantSize, [2]int{par.Width, par.Height})
					assert.Equal(t, tc.wantLevel, par.NoiseLevel)
					assert.Equal(t, 4, par.UpscaleFactor)
				}
			}
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}

	// Images larger than the tile (default: twice the UNet's sample size, 32 here) run in
	// tiles overlapping by a quarter, the VAE in tiles of half the size, at least 64.
	for _, tc := range []struct {
		w, tile       int
		unet, decoder tiling
	}{
		{32, 0, tiling{}, tiling{}},
		{36, 0, tiling{32, 8}, tiling{64, 16}},
		{36, 64, tiling{}, tiling{}},
		{16, 8, tiling{8, 2}, tiling{64, 16}},
		{256, 200, tiling{200, 50}, tiling{100, 25}},
	} {
		_, init, err := d.upscale(UpscaleRequest{Image: solidImage(tc.w, 16, color.White), Tile: tc.tile})
		require.NoError(t, err)
		assert.Equal(t, tc.unet, init.upscale.tile, "width %d tile %d", tc.w, tc.tile)
		assert.Equal(t, tc.decoder, init.upscale.vaeTile, "width %d tile %d", tc.w, tc.tile)
	}

	// The generation calls refuse an upscaler, Upscale refuses other models.
	_, _, err := d.plan(Request{}, nil)
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "use Upscale")
	_, _, err = d.img2img(Img2ImgRequest{Image: img})
	require.NoError(t, err)
	r, init, _ := d.img2img(Img2ImgRequest{Image: img})
	_, _, err = d.plan(r, init)
	assert.ErrorIs(t, err, ErrInvalidRequest)
	sd := describeKit(t, "sd1-tiny")
	_, _, err = sd.upscale(UpscaleRequest{Image: img})
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "not an x4 upscaler")
}

// A broken upscaler is refused at open with the reason.
func TestDescribeUpscalerRefusesBrokenModels(t *testing.T) {
	m, err := modelfile.Load(filepath.Join(kitDir(t, "upscaler-tiny"), "diffusers"))
	require.NoError(t, err)
	defer m.Close()
	good := *m.Upscaler
	cases := []struct {
		name    string
		change  func(m *modelfile.Model)
		wantErr string
	}{
		{"noise levels beyond the class table", func(m *modelfile.Model) { m.Upscaler.MaxNoiseLevel = 1000 }, "does not index"},
		{"a 4-channel UNet", func(m *modelfile.Model) { m.UNet.Config.InChannels = 4 }, "4 input channels"},
		{"broken low-res scheduler", func(m *modelfile.Model) {
			m.Upscaler.LowResScheduler.Raw = []byte(`{"beta_start": 0.5, "beta_end": 0.1}`)
		}, "low_res_scheduler"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up, unet := good, m.UNet.Config
			m.Upscaler = &up
			defer func() { m.UNet.Config = unet }()
			tc.change(m)
			_, err := describe(m)
			require.ErrorIs(t, err, ErrBadModel)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

// A tile that covers the image runs it once: the same image as without tiling. Smaller
// tiles run the UNet in blended tiles; an image wider than the default tile and than the
// decoder's (64 latent pixels) upscales to its full size through both.
func TestUpscaleTiled(t *testing.T) {
	p := openTiny(t, "upscaler-tiny")
	low := kitLowRes(t)
	run := func(img image.Image, tile int) image.Image {
		res, err := p.Upscale(context.Background(), UpscaleRequest{
			Request: Request{Prompt: "a red apple", Steps: 3, Seed: 60}, Image: img, Tile: tile})
		require.NoError(t, err)
		return res.Images[0]
	}
	whole := imageCHW(run(low, 0))
	assert.Equal(t, whole, imageCHW(run(low, 16)), "one tile covering the image")
	tiled := imageCHW(run(low, 8))
	ref := make([]float32, len(whole))
	for k, v := range whole {
		ref[k] = float32(v) / 255
	}
	// Random weights make no picture: the difference only shows that tiles ran.
	t.Logf("16x16 in 8x8 tiles vs whole: PSNR %.1f dB", psnr(tiled, ref))
	assert.NotEqual(t, whole, tiled)

	const ww, wh = 136, 24
	wide := imageTensorWith(low, ww, wh, bicubicFilter) // in [-1, 1]
	src := image.NewRGBA(image.Rect(0, 0, ww, wh))
	for y := 0; y < wh; y++ {
		for x := 0; x < ww; x++ {
			var c [3]uint8
			for ch := range c {
				c[ch] = uint8(math.Round(float64(wide[ch*ww*wh+y*ww+x]+1) / 2 * 255))
			}
			src.Set(x, y, color.RGBA{c[0], c[1], c[2], 255})
		}
	}
	big := run(src, 0)
	assert.Equal(t, image.Rect(0, 0, 4*ww, 4*wh), big.Bounds())
}

// Image k of a batch is the image a batch of one makes with seed Seed+k (each image's
// generator draws its own low-res noise and latents), up to the batch-dependent rounding
// of the UNet's GEMMs: one level at most.
func TestUpscaleBatchSeeds(t *testing.T) {
	p := openTiny(t, "upscaler-tiny")
	req := UpscaleRequest{Request: Request{Prompt: "a red apple", Steps: 2, Seed: 60, BatchSize: 2}, Image: kitLowRes(t)}
	batch, err := p.Upscale(context.Background(), req)
	require.NoError(t, err)
	require.Len(t, batch.Images, 2)
	for k := range 2 {
		single := req
		single.BatchSize, single.Seed = 1, 60+uint64(k)
		res, err := p.Upscale(context.Background(), single)
		require.NoError(t, err)
		assert.LessOrEqual(t, maxPixelDiff(res.Images[0], batch.Images[k]), 1.0, "image %d", k)
	}
	assert.Greater(t, maxPixelDiff(batch.Images[0], batch.Images[1]), 10.0, "different seeds, different images")
}
