package diffusion

import (
	"context"
	"errors"
	"image"
	"image/color"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/rng"
	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tinyRequest is a fast request on the 64x64 tiny model.
func tinyRequest() Request {
	return Request{Prompt: "a red apple on a table", Steps: 3, Seed: 7}
}

func maxPixelDiff(a, b image.Image) float64 {
	pa, pb := imageCHW(a), imageCHW(b)
	var worst float64
	for i := range pa {
		worst = math.Max(worst, math.Abs(float64(pa[i])-float64(pb[i])))
	}
	return worst
}

func TestDefaultsAndParams(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	info := p.Info()
	assert.Equal(t, 64, info.Width)
	assert.Equal(t, DDIM, info.DefaultSampler, "the tiny model's scheduler is DDIMScheduler")
	assert.Equal(t, DeviceCPU, info.Device)
	assert.False(t, info.Inpainting)
	res, err := p.Txt2Img(context.Background(), Request{Prompt: "x", Steps: 2})
	require.NoError(t, err)
	par := res.Params
	assert.Equal(t, 64, par.Width)
	assert.Equal(t, 64, par.Height)
	assert.Equal(t, 7.5, par.GuidanceScale)
	assert.Equal(t, DDIM, par.Sampler)
	assert.Equal(t, 1, par.BatchSize)
	assert.Equal(t, "diffusers", par.Model)
	assert.Len(t, res.Timings.Steps, 2)
	assert.Positive(t, res.Timings.TextEncode)
	assert.Positive(t, res.Timings.Decode)
	assert.GreaterOrEqual(t, res.Timings.Total, res.Timings.Sampling())

	stats, err := p.MemoryStats()
	require.NoError(t, err)
	assert.Positive(t, stats.ArenaPeakBytes)
	assert.Positive(t, stats.ArenaReservedBytes)

	// The pipeline validates with the description that TestRequestValidation checks,
	// whose VAE factor is the one the runtime's VAE has.
	assert.Equal(t, p.eng.vaeNet().factor(), p.desc.vaeFactor)
	_, err = p.Txt2Img(context.Background(), Request{Width: 60})
	assert.ErrorIs(t, err, ErrInvalidRequest)
	_, err = p.Img2Img(context.Background(), Img2ImgRequest{Request: Request{Steps: 2}, Image: solidImage(64, 64, color.White), Strength: 0.01})
	assert.ErrorContains(t, err, "leaves nothing to do")
	_, err = p.Inpaint(context.Background(), InpaintRequest{Image: solidImage(64, 64, color.White)})
	assert.ErrorContains(t, err, "inpainting mask is missing")

	par.Prompt, par.NegativePrompt, par.Seed, par.ClipSkip = "an apple", "blurry", 42, 2
	par.Sampler, par.Schedule, par.RNG = DPMPP2M, schedule.SigmasKarras, rng.CUDA
	assert.Equal(t, "an apple\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, "+
		"CFG scale: 7.5, Seed: 42, Size: 64x64, Model: diffusers, Clip skip: 2, RNG: NV, Version: gosd", par.A1111(0))
}

func TestSamplerNames(t *testing.T) {
	all := Samplers()
	require.Len(t, all, int(LCM-DDPM)+1, "every sampler, auto excluded")
	for i, s := range all {
		assert.Equal(t, DDPM+Sampler(i), s)
	}
	for s := DDPM; s <= LCM; s++ {
		parsed, err := ParseSampler(s.String())
		require.NoError(t, err)
		assert.Equal(t, s, parsed)
		assert.NotEmpty(t, s.A1111Name())
	}
	s, err := ParseSampler("auto")
	require.NoError(t, err)
	assert.Equal(t, SamplerAuto, s)
	_, err = ParseSampler("dpm_fast")
	assert.Error(t, err)
	assert.Equal(t, "euler_a", EulerAncestral.String())
	assert.Equal(t, "DPM++ 2S a", DPMPP2SAncestral.A1111Name())
	assert.Equal(t, "Sampler(13)", (LCM + 1).String(), "LCM is schedule's last sampler")
	assert.Equal(t, EulerAncestral, ConfiguredSampler(modelfile.SchedulerConfig{ClassName: "EulerAncestralDiscreteScheduler"}))
	assert.Equal(t, Euler, ConfiguredSampler(modelfile.SchedulerConfig{ClassName: "FlowMatchEulerDiscreteScheduler"}))
	d, err := ParseDevice("CUDA")
	require.NoError(t, err)
	assert.Equal(t, DeviceCUDA, d)
	_, err = ParseDevice("tpu")
	assert.Error(t, err)
}

func TestCancellation(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	// Cancelled between steps (from the progress callback).
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	r := tinyRequest()
	r.Steps = 10
	r.Progress = func(pr Progress) {
		calls++
		if pr.Step == 2 {
			cancel()
		}
	}
	_, err := p.Txt2Img(ctx, r)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 2, calls, "no step runs after the cancellation")

	// Already cancelled.
	_, err = p.Txt2Img(ctx, tinyRequest())
	assert.ErrorIs(t, err, context.Canceled)

	// Inside a native call: the runtime stops at its next operation and the guard reports
	// the context's error, not the runtime's.
	ctx2, cancel2 := context.WithCancel(context.Background())
	n := 0
	err = p.guard(ctx2, func() error {
		for ; ; n++ {
			if n == 1 {
				cancel2()
			}
			if _, err := p.eng.vaeNet().decode(make([]float32, 4*8*8), 1, 8, 8); err != nil {
				return err
			}
		}
	})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, n)

	// The flag does not leak into the next call.
	res, err := p.Txt2Img(context.Background(), tinyRequest())
	require.NoError(t, err)
	assert.Len(t, res.Images, 1)
}

func TestConcurrentCallsAreSerialised(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	want := make([]image.Image, 4)
	for i := range want {
		r := tinyRequest()
		r.Seed = uint64(i)
		res, err := p.Txt2Img(context.Background(), r)
		require.NoError(t, err)
		want[i] = res.Images[0]
	}
	var wg sync.WaitGroup
	got := make([]image.Image, 4)
	errs := make([]error, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := tinyRequest()
			r.Seed = uint64(i)
			res, err := p.Txt2Img(context.Background(), r)
			errs[i] = err
			if err == nil {
				got[i] = res.Images[0]
			}
		}()
	}
	wg.Wait()
	for i := range got {
		require.NoError(t, errs[i])
		assert.Zero(t, maxPixelDiff(want[i], got[i]), "image %d", i)
	}
}

func TestBatchMatchesSingle(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	r := tinyRequest()
	single, err := p.Txt2Img(context.Background(), r)
	require.NoError(t, err)
	r.BatchSize = 2
	batch, err := p.Txt2Img(context.Background(), r)
	require.NoError(t, err)
	require.Len(t, batch.Images, 2)
	// One draw of 2 latents starts with the draw of 1 (torch's CPU generator), so the first
	// image is the single one up to batch-dependent rounding.
	assert.LessOrEqual(t, maxPixelDiff(single.Images[0], batch.Images[0]), 1.0)
	assert.Greater(t, maxPixelDiff(batch.Images[0], batch.Images[1]), 10.0, "different noise, different images")
}

func TestPromptFeatures(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	gen := func(r Request) image.Image {
		res, err := p.Txt2Img(context.Background(), r)
		require.NoError(t, err)
		return res.Images[0]
	}
	base := gen(tinyRequest())
	r := tinyRequest()
	r.Prompt = "a red (apple:1.6) on a table"
	assert.Greater(t, maxPixelDiff(base, gen(r)), 0.0, "emphasis changes the embeddings")
	r = tinyRequest()
	r.Prompt = strings.Repeat("apple, ", 60) // 120 tokens: two chunks
	long, err := p.tok.EncodeWeighted(r.Prompt, p.padID)
	require.NoError(t, err)
	require.Len(t, long, 2)
	gen(r)
	r = tinyRequest()
	r.ClipSkip = 2
	assert.Greater(t, maxPixelDiff(base, gen(r)), 0.0, "clip skip uses another layer")
	r = tinyRequest()
	r.GuidanceScale = 1 // no classifier-free guidance: one UNet batch
	assert.Greater(t, maxPixelDiff(base, gen(r)), 0.0)
	r = tinyRequest()
	r.GuidanceRescale = 0.7
	assert.Greater(t, maxPixelDiff(base, gen(r)), 0.0)
}

func TestProgressAndPreview(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	var seen []Progress
	r := tinyRequest()
	r.Sampler = Heun // two evaluations per step
	r.Preview = true
	r.Progress = func(pr Progress) { seen = append(seen, pr) }
	res, err := p.Txt2Img(context.Background(), r)
	require.NoError(t, err)
	require.Len(t, seen, 5) // 2*3 - 1
	var steps []int
	for i, pr := range seen {
		assert.Equal(t, i+1, pr.Evaluation)
		assert.Equal(t, 5, pr.Evaluations)
		assert.Equal(t, 3, pr.Steps, "progress counts sampling steps, not UNet evaluations")
		steps = append(steps, pr.Step)
		require.NotNil(t, pr.Preview)
		assert.Equal(t, image.Rect(0, 0, 8, 8), pr.Preview.Bounds())
	}
	assert.Equal(t, []int{0, 1, 1, 2, 3}, steps, "a step ends with its second evaluation")
	assert.Len(t, res.Timings.Steps, 5)
}

func solidImage(w, h int, c color.Color) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, c)
		}
	}
	return img
}

func TestImg2Img(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	src := solidImage(70, 66, color.RGBA{200, 40, 40, 255})
	var steps int
	r := tinyRequest()
	r.Steps = 10
	r.Progress = func(Progress) { steps++ }
	res, err := p.Img2Img(context.Background(), Img2ImgRequest{Request: r, Image: src, Strength: 0.5})
	require.NoError(t, err)
	assert.Equal(t, 5, steps, "strength 0.5 of 10 steps")
	assert.Equal(t, image.Rect(0, 0, 64, 64), res.Images[0].Bounds(), "size rounded down to a multiple of 8")
	assert.Equal(t, 0.5, res.Params.Strength)
	again, err := p.Img2Img(context.Background(), Img2ImgRequest{Request: r, Image: src, Strength: 0.5})
	require.NoError(t, err)
	assert.Zero(t, maxPixelDiff(res.Images[0], again.Images[0]), "deterministic for a seed")
	r.Width, r.Height = 32, 48 // resized (Lanczos) to the requested size
	res, err = p.Img2Img(context.Background(), Img2ImgRequest{Request: r, Image: src})
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 32, 48), res.Images[0].Bounds())
	assert.Equal(t, 0.8, res.Params.Strength)
}

func TestInpaint(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	src := solidImage(64, 64, color.RGBA{30, 120, 200, 255})
	black := solidImage(64, 64, color.Black)
	// Nothing masked: the result is the image through the VAE whatever the prompt.
	r := tinyRequest()
	a, err := p.Inpaint(context.Background(), InpaintRequest{Request: r, Image: src, Mask: black})
	require.NoError(t, err)
	r.Prompt = "something else entirely"
	b, err := p.Inpaint(context.Background(), InpaintRequest{Request: r, Image: src, Mask: black})
	require.NoError(t, err)
	assert.Zero(t, maxPixelDiff(a.Images[0], b.Images[0]))
	assert.Equal(t, 1.0, a.Params.Strength)

	// Outpainting: the extended area is generated.
	canvas, mask, err := ExtendCanvas(solidImage(40, 40, color.White), 8, 0, 10, 4)
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 64, 48), canvas.Bounds(), "margins rounded up to multiples of 8")
	assert.Equal(t, uint8(255), mask.GrayAt(0, 0).Y)
	assert.Equal(t, uint8(0), mask.GrayAt(20, 20).Y)
	assert.Equal(t, uint8(255), mask.GrayAt(20, 45).Y)
	out, err := p.Inpaint(context.Background(), InpaintRequest{Request: tinyRequest(), Image: canvas, Mask: mask})
	require.NoError(t, err)
	assert.Equal(t, canvas.Bounds(), out.Images[0].Bounds())
}

func TestCloseAndOpenErrors(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "idempotent")
	_, err := p.Txt2Img(context.Background(), tinyRequest())
	assert.ErrorIs(t, err, ErrClosed)
	_, err = p.MemoryStats()
	assert.ErrorIs(t, err, ErrClosed)

	kit := testutil.ConformanceDir(t)
	model := filepath.Join(kit, "sd1-tiny", "diffusers")
	_, err = Open(filepath.Join(t.TempDir(), "missing.safetensors"))
	assert.Error(t, err)
	_, err = Open(model, WithLibrary(t.TempDir()))
	assert.ErrorIs(t, err, ErrLibraryNotFound)
	lib := filepath.Join(testutil.RepoRoot(t), "build")
	_, err = Open(model, WithLibrary(lib), WithDevice(Device(9)))
	assert.ErrorIs(t, err, ErrInvalidRequest)
	_, err = Open(model, WithLibrary(lib), WithThreads(-1), WithDevice(DeviceCPU))
	assert.ErrorIs(t, err, ErrInvalidRequest)
	_, err = Open(model, WithLibrary(lib), WithDevice(DeviceCUDA))
	assert.True(t, errors.Is(err, ErrDevice) || errors.Is(err, ErrLibraryNotFound), "no GPU build here: %v", err)
}
