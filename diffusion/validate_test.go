package diffusion

import (
	"image"
	"image/color"
	"math"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/rng"
	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// describeDir describes the model in dir from its files, as Open does, without the
// native library.
func describeDir(t *testing.T, dir string, opts ...modelfile.Option) modelDesc {
	t.Helper()
	m, err := modelfile.Load(dir, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	d, err := describe(m)
	require.NoError(t, err)
	return d
}

// describeKit describes one of the conformance kit's diffusers folders (skipping
// without the kit).
func describeKit(t *testing.T, model string) modelDesc {
	t.Helper()
	return describeDir(t, filepath.Join(testutil.ConformanceDir(t), model, "diffusers"))
}

// Requests are checked against the model's description alone: these run without the
// runtime library.
func TestRequestValidation(t *testing.T) {
	d := describeKit(t, "sd1-tiny")
	cases := []struct {
		name string
		edit func(*Request)
		msg  string
	}{
		{"width not a multiple of 8", func(r *Request) { r.Width = 60 }, "multiples of 8"},
		{"height too small", func(r *Request) { r.Height = 4 }, "multiples of 8"},
		{"too large", func(r *Request) { r.Width = MaxSide + 8 }, "between 8 and 4096"},
		{"negative steps", func(r *Request) { r.Steps = -1 }, "steps -1"},
		{"too many steps", func(r *Request) { r.Steps = MaxSteps + 1 }, "steps 1001"},
		{"negative guidance", func(r *Request) { r.GuidanceScale = -2 }, "guidance scale"},
		{"NaN guidance", func(r *Request) { r.GuidanceScale = math.NaN() }, "guidance scale"},
		{"rescale above 1", func(r *Request) { r.GuidanceRescale = 1.5 }, "guidance rescale"},
		{"unknown sampler", func(r *Request) { r.Sampler = Sampler(99) }, "unknown sampler"},
		{"eta above 1", func(r *Request) { r.Eta = 2 }, "eta"},
		{"eta with euler", func(r *Request) { r.Sampler = Euler; r.Eta = 0.5 }, "invalid request"},
		{"unknown spacing", func(r *Request) { r.TimestepSpacing = schedule.TimestepSpacing(9) }, "unknown timestep spacing"},
		{"unknown prompt syntax", func(r *Request) { r.PromptSyntax = PromptSyntax(9) }, "unknown prompt syntax"},
		{"negative batch", func(r *Request) { r.BatchSize = -1 }, "batch size"},
		{"clip skip beyond the layers", func(r *Request) { r.ClipSkip = 5 }, "clip skip 5"},
		{"unknown rng", func(r *Request) { r.RNG = rng.Kind(7) }, "unknown RNG"},
		{"unknown schedule", func(r *Request) { r.Sampler = Euler; r.Schedule = schedule.SigmaSchedule(9) }, "invalid request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tinyRequest()
			tc.edit(&r)
			_, _, err := d.plan(r, nil)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}

	img := image.NewRGBA(image.Rect(0, 0, 64, 64))
	img2img := func(req Img2ImgRequest) error {
		r, init, err := d.img2img(req)
		if err == nil {
			_, _, err = d.plan(r, init)
		}
		return err
	}
	assert.ErrorIs(t, img2img(Img2ImgRequest{Request: tinyRequest()}), ErrInvalidRequest, "no image")
	assert.ErrorIs(t, img2img(Img2ImgRequest{Request: tinyRequest(), Image: img, Strength: 1.5}), ErrInvalidRequest)
	err := img2img(Img2ImgRequest{Request: tinyRequest(), Image: img, Strength: 0.01})
	assert.ErrorIs(t, err, ErrInvalidRequest)
	assert.ErrorContains(t, err, "leaves nothing to do")
	err = img2img(Img2ImgRequest{Request: tinyRequest(), Image: image.NewRGBA(image.Rect(0, 0, 5, 5))})
	assert.ErrorIs(t, err, ErrInvalidRequest)
	assert.ErrorContains(t, err, "smaller than 8 pixels")
	assert.NoError(t, img2img(Img2ImgRequest{Request: tinyRequest(), Image: img}))

	_, _, err = d.inpaint(InpaintRequest{Request: tinyRequest(), Image: img})
	assert.ErrorIs(t, err, ErrInvalidRequest, "no mask")
	r, init, err := d.inpaint(InpaintRequest{Request: tinyRequest(), Image: img, Mask: img})
	require.NoError(t, err)
	par, _, err := d.plan(r, init)
	require.NoError(t, err)
	assert.Equal(t, 1.0, par.Strength, "inpainting defaults to strength 1")
}

// The description is what Open reports and validates against: sizes from the UNet's
// sample size times the VAE's downsampling, the text encoder's depth, the configured
// sampler and the prediction type.
func TestModelDescription(t *testing.T) {
	sd1 := describeKit(t, "sd1-tiny")
	assert.Equal(t, 8, sd1.vaeFactor)
	assert.Equal(t, 64, sd1.info.Width)
	assert.Equal(t, 64, sd1.info.Height)
	assert.Equal(t, 4, sd1.info.TextLayers)
	assert.Equal(t, DDIM, sd1.info.DefaultSampler)
	assert.Equal(t, schedule.PredictEpsilon, sd1.info.Prediction)
	assert.False(t, sd1.info.Inpainting)
	assert.Equal(t, "diffusers", sd1.info.Name)
	par, _, err := sd1.plan(Request{}, nil)
	require.NoError(t, err)
	assert.Equal(t, Params{Width: 64, Height: 64, Steps: 20, GuidanceScale: 7.5, Sampler: DDIM,
		TimestepSpacing: schedule.SpacingLeading, BatchSize: 1, Model: "diffusers"}, par, "the defaults")

	sd2 := describeKit(t, "sd2-tiny-v")
	assert.Equal(t, schedule.PredictV, sd2.info.Prediction)
	assert.Equal(t, schedule.PredictV, sd2.sched.PredictionType, "the samplers get the model's prediction")
	overridden := describeDir(t, filepath.Join(testutil.ConformanceDir(t), "sd2-tiny-v", "diffusers"),
		modelfile.WithPredictionType(schedule.PredictSample))
	assert.Equal(t, schedule.PredictSample, overridden.info.Prediction)
	assert.Equal(t, schedule.PredictSample, overridden.sched.PredictionType)
}

// Two text encoders are run only as SDXL's conditioning, with a UNet that fits them;
// anything else is refused, not run on part of its conditioning.
func TestModelDescriptionChecksTextEncoders(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	cases := []struct {
		name, folder string
		edit         func(m *modelfile.Model)
		wantErr      error
		wantMsg      string
	}{
		{"second encoder without text_time", "sd1-tiny", func(m *modelfile.Model) {
			m.ExtraTextEncoders = []modelfile.NamedTextEncoder{{Name: "text_encoder_2", Component: m.TextEncoder}}
		}, ErrUnsupported, "needs a UNet with text_time added conditioning"},
		{"three encoders", "sdxl-tiny", func(m *modelfile.Model) {
			m.ExtraTextEncoders = append(m.ExtraTextEncoders, m.ExtraTextEncoders[0])
		}, ErrUnsupported, "3 text encoders"},
		{"context width", "sdxl-tiny", func(m *modelfile.Model) { m.UNet.Config.CrossAttentionDim = 40 },
			ErrBadModel, "attends to 40-wide states, the text encoders give 16 + 32"},
		{"add embedding width", "sdxl-tiny", func(m *modelfile.Model) { m.ExtraTextEncoders[0].Config.ProjectionDim = 20 },
			ErrBadModel, "takes 120 inputs, not text_embeds 20 + 6 time ids x 16"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := modelfile.Load(filepath.Join(kit, c.folder, "diffusers"))
			require.NoError(t, err)
			defer m.Close()
			c.edit(m)
			_, err = describe(m)
			require.ErrorIs(t, err, c.wantErr)
			assert.Contains(t, err.Error(), c.wantMsg)
		})
	}
}

// SDXL's request fields: defaults, checks, and refusal on a one-encoder model.
func TestResolveSDXLFields(t *testing.T) {
	sdxl := describeKit(t, "sdxl-tiny")
	sd1 := describeKit(t, "sd1-tiny")
	par, _, err := sdxl.plan(Request{Width: 64, Height: 96, SizeConditioning: SizeConditioning{CropTopLeft: image.Pt(16, 8)}}, nil)
	require.NoError(t, err)
	assert.Equal(t, SizeConditioning{
		OriginalSize: Size{64, 96}, CropTopLeft: image.Pt(16, 8), TargetSize: Size{64, 96},
		NegativeOriginalSize: Size{64, 96}, NegativeCropTopLeft: image.Pt(16, 8), NegativeTargetSize: Size{64, 96},
		AestheticScore: 6, NegativeAestheticScore: 2.5,
	}, par.SizeConditioning, "the negative row repeats the positive one")
	assert.Equal(t, "sdxl", sdxl.info.Family.String())
	assert.Equal(t, 2, sdxl.clipSkipMax, "both encoders' layers (3 and 10) less the penultimate default")

	cases := []struct {
		name    string
		d       modelDesc
		req     Request
		wantMsg string
	}{
		{"prompt 2 on sd1", sd1, Request{Prompt2: "x"}, "need an SDXL model"},
		{"size conditioning on sd1", sd1, Request{SizeConditioning: SizeConditioning{TargetSize: Size{64, 64}}}, "need an SDXL model"},
		{"half a size", sdxl, Request{SizeConditioning: SizeConditioning{OriginalSize: Size{Width: 64}}}, "original size 64x0"},
		{"huge size", sdxl, Request{SizeConditioning: SizeConditioning{TargetSize: Size{1 << 20, 64}}}, "target size 1048576x64"},
		{"negative crop", sdxl, Request{SizeConditioning: SizeConditioning{CropTopLeft: image.Pt(-1, 0)}}, "crop top-left (-1, 0)"},
		{"one negative size", sdxl, Request{SizeConditioning: SizeConditioning{NegativeOriginalSize: Size{32, 32}}}, "set both or neither"},
		{"negative crop alone", sdxl, Request{SizeConditioning: SizeConditioning{NegativeCropTopLeft: image.Pt(4, 4)}}, "negative crop needs"},
		{"clip skip", sdxl, Request{ClipSkip: 3}, "clip skip 3 not in [0, 2]"},
		{"aesthetic score", sdxl, Request{SizeConditioning: SizeConditioning{NegativeAestheticScore: -1}}, "aesthetic score -1 not in [0, 1000]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := c.d.plan(c.req, nil)
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), c.wantMsg)
		})
	}
}

// A class-conditioned UNet outside an x4 upscaler pipeline (its model_index.json makes it
// one) has no pipeline: refused with the reason rather than failing at the first UNet call.
func TestModelDescriptionRefusesConditionedUNets(t *testing.T) {
	m, err := modelfile.Load(filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny", "diffusers"))
	require.NoError(t, err)
	defer m.Close()
	m.Upscaler = nil
	_, err = describe(m)
	require.ErrorIs(t, err, ErrUnsupported)
	assert.Contains(t, err.Error(), `7 input channels, class embedding "table"`)
}

// The demo model's VAE downsamples by 4: sides stay multiples of 8, and an image's own
// size rounds down to one.
func TestModelDescriptionSmallVAE(t *testing.T) {
	d := describeDir(t, filepath.Join(testutil.RepoRoot(t), "models", "gosd-emoji"))
	assert.Equal(t, 4, d.vaeFactor)
	assert.Equal(t, 8, d.sizeUnit())
	assert.Equal(t, 64, d.info.Width)
	_, _, err := d.plan(Request{Width: 68, Height: 64}, nil)
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "multiples of 8")
	r, _, err := d.img2img(Img2ImgRequest{Image: solidImage(68, 68, color.White)})
	require.NoError(t, err)
	assert.Equal(t, [2]int{64, 64}, [2]int{r.Width, r.Height})
}
