package diffusion

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gosd/gosd/diffusion/control"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kitControlImage is the kit's control.png.
func kitControlImage(t *testing.T) image.Image {
	f, err := os.Open(filepath.Join(kitDir(t, "controlnet-tiny"), "control.png"))
	require.NoError(t, err)
	defer f.Close()
	img, _, err := image.Decode(f)
	require.NoError(t, err)
	return img
}

// runLatents runs txt2img and returns the latents after every step.
func runLatents(t *testing.T, p *Pipeline, req Request) ([][]float32, *Result) {
	var steps [][]float32
	req.onStep = func(step int, x []float32) { steps = append(steps, append([]float32(nil), x...)) }
	res, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	return steps, res
}

func TestControlNetRequestChecks(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	img := kitControlImage(t)
	closed, err := p.LoadControlNet(filepath.Join(kitDir(t, "controlnet-tiny"), "diffusers"))
	require.NoError(t, err)
	require.NoError(t, closed.Close())
	require.NoError(t, closed.Close(), "idempotent")
	other := openTiny(t, "sd1-tiny")
	foreign, err := other.LoadControlNet(filepath.Join(kitDir(t, "controlnet-tiny"), "diffusers"))
	require.NoError(t, err)
	defer foreign.Close()

	cases := []struct {
		name string
		c    Control
	}{
		{"no model", Control{Image: img}},
		{"no image", Control{Model: cn}},
		{"typed nil image", Control{Model: cn, Image: (*image.RGBA)(nil)}},
		{"negative scale", Control{Model: cn, Image: img, Scale: -1}},
		{"NaN scale", Control{Model: cn, Image: img, Scale: math.NaN()}},
		{"start after end", Control{Model: cn, Image: img, Start: 0.6, End: 0.5}},
		{"end past 1", Control{Model: cn, Image: img, End: 1.5}},
		{"negative start", Control{Model: cn, Image: img, Start: -0.1}},
		{"closed ControlNet", Control{Model: closed, Image: img}},
		{"another Pipeline's ControlNet", Control{Model: foreign, Image: img}},
		{"image and condition", Control{Model: cn, Image: img, Condition: make([]float32, 3*64*64)}},
		{"condition of another size", Control{Model: cn, Condition: make([]float32, 3*64*32)}},
		{"non-finite condition", Control{Model: cn, Condition: append(make([]float32, 3*64*64-1), float32(math.Inf(-1)))}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := tinyRequest()
			req.Width, req.Height = 64, 64
			req.Controls = []Control{{Model: cn, Image: img}, tc.c}
			_, err := p.Txt2Img(context.Background(), req)
			require.ErrorIs(t, err, ErrInvalidRequest)
		})
	}
}

// Controls of a request: a window that no evaluation falls in leaves the run exactly as
// without ControlNet (and the ControlNet is not run); two Controls sum their residuals;
// clones run the ControlNet their parent loaded.
func TestControlNetSemantics(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	img := kitControlImage(t)
	req := kitRequest(DDIM)
	plain, _ := runLatents(t, p, req)

	req.Controls = []Control{{Model: cn, Image: img, Scale: 0.8, Start: 0.9}}
	outside, _ := runLatents(t, p, req)
	assert.Equal(t, plain, outside, "no evaluation i with i/6 >= 0.9 and (i+1)/6 <= 1")

	req.Controls = []Control{{Model: cn, Image: img, Scale: 0.8}}
	one, res := runLatents(t, p, req)
	assert.Greater(t, relErr(one[5], plain[5]), 0.01, "the ControlNet changes the run")
	assert.Equal(t, ControlParams{Model: "diffusers", Scale: 0.8, End: 1}, res.Params.Controls[0])

	half := Control{Model: cn, Image: img, Scale: 0.4}
	req.Controls = []Control{half, half}
	two, _ := runLatents(t, p, req)
	for i := range one {
		assert.LessOrEqual(t, relErr(two[i], one[i]), 1e-5, "step %d: 0.4 + 0.4 is 0.8", i)
	}

	// Guess mode and a normal Control together: the guess-mode one writes the prompt's
	// rows only, the other adds to every row.
	req.Controls = []Control{{Model: cn, Image: img, GuessMode: true}, half}
	_, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)

	// The same control image as values.
	req.Controls = []Control{{Model: cn, Condition: controlImage(img, 64, 64), Scale: 0.8}}
	asValues, _ := runLatents(t, p, req)
	assert.Equal(t, one, asValues)

	// A model taking BGR gets the channels reversed: the same as the RGB model given the
	// reversed image.
	dir := kitDir(t, "controlnet-tiny")
	bgrDir := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join(dir, "diffusers", "config.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(bgrDir, "config.json"), bytes.Replace(cfg, []byte(`"rgb"`), []byte(`"bgr"`), 1), 0o644))
	require.NoError(t, os.Symlink(filepath.Join(dir, "diffusers", "diffusion_pytorch_model.safetensors"), filepath.Join(bgrDir, "diffusion_pytorch_model.safetensors")))
	bgr, err := p.LoadControlNet(bgrDir)
	require.NoError(t, err)
	defer bgr.Close()
	req.Controls = []Control{{Model: bgr, Image: img, Scale: 0.8}}
	fromBGR, _ := runLatents(t, p, req)
	req.Controls = []Control{{Model: cn, Condition: reverseChannels(controlImage(img, 64, 64), 64*64), Scale: 0.8}}
	reversed, _ := runLatents(t, p, req)
	assert.Equal(t, reversed, fromBGR)
	assert.NotEqual(t, one, fromBGR)

	// Image k of a batch is the image a batch of one makes with seed+k, ControlNet included.
	req.Controls = []Control{{Model: cn, Image: img, Scale: 0.8, GuessMode: true}}
	req.BatchSize, req.onStep = 2, nil
	batch, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	req.BatchSize, req.Seed = 1, req.Seed+1
	single, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	assert.LessOrEqual(t, maxPixelDiff(batch.Images[1], single.Images[0]), 1.0)
	req.Seed--

	clone, err := p.Clone()
	require.NoError(t, err)
	defer clone.Close()
	req.Controls = []Control{{Model: cn, Image: img, Scale: 0.8}}
	fromClone, _ := runLatents(t, clone, req)
	assert.Equal(t, one, fromClone)
}

// img2img and inpainting take Controls too; the control image is resized to the output.
func TestControlNetImg2ImgAndInpaint(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	img := kitControlImage(t)
	big := image.NewRGBA(image.Rect(0, 0, 128, 96)) // resized to 64x64
	for y := 0; y < 96; y++ {
		for x := 0; x < 128; x++ {
			big.Set(x, y, img.At(x/2, y*2/3))
		}
	}
	src := solidImage(64, 64, color.RGBA{200, 40, 40, 255})
	mask := solidImage(64, 64, color.White)
	r := tinyRequest()
	r.Steps = 4
	runs := []struct {
		name string
		run  func(Request) (*Result, error)
	}{
		{"img2img", func(r Request) (*Result, error) {
			return p.Img2Img(context.Background(), Img2ImgRequest{Request: r, Image: src, Strength: 0.75})
		}},
		{"inpaint", func(r Request) (*Result, error) {
			return p.Inpaint(context.Background(), InpaintRequest{Request: r, Image: src, Mask: mask})
		}},
	}
	for _, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			without, err := run.run(r)
			require.NoError(t, err)
			rc := r
			rc.Controls = []Control{{Model: cn, Image: big}}
			with, err := run.run(rc)
			require.NoError(t, err)
			again, err := run.run(rc)
			require.NoError(t, err)
			assert.Greater(t, maxPixelDiff(with.Images[0], without.Images[0]), 2.0)
			assert.Zero(t, maxPixelDiff(with.Images[0], again.Images[0]))
		})
	}

	// The inpainting ControlNet's condition: -1 where the mask is set.
	half := solidImage(64, 64, color.Black)
	for y := 0; y < 32; y++ {
		for x := 0; x < 64; x++ {
			half.Set(x, y, color.White)
		}
	}
	cond, w, h, err := control.InpaintCondition(src, half)
	require.NoError(t, err)
	require.Equal(t, 64, w)
	require.Equal(t, 64, h)
	rc := r
	rc.Controls = []Control{{Model: cn, Condition: cond}}
	res, err := p.Inpaint(context.Background(), InpaintRequest{Request: rc, Image: src, Mask: half})
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 64, 64), res.Images[0].Bounds())
}

func TestControlParamsA1111(t *testing.T) {
	cases := []struct {
		name string
		c    ControlParams
		want string
	}{
		{"canny", ControlParams{Model: "control_v11p_sd15_canny.pth", ModelHash: "d14c016b", Preprocessor: "canny",
			PreprocessorParams: []float64{100, 200}, Scale: 1, End: 1},
			"Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Just Resize, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"},
		{"folder, guess mode", ControlParams{Model: "sd-controlnet-depth", Scale: 0.55, Start: 0.1, End: 0.9, GuessMode: true},
			"Module: none, Model: sd-controlnet-depth, Weight: 0.55, Resize Mode: Just Resize, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, Control Mode: ControlNet is more important"},
		{"a folder with a dot", ControlParams{Model: "controlnet-v1.1", Scale: 1, End: 1},
			"Module: none, Model: controlnet-v1.1, Weight: 1.0, Resize Mode: Just Resize, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"},
		{"separators in the name", ControlParams{Model: "a,b:c.safetensors", ModelHash: "01234567", Scale: 2, End: 1},
			"Module: none, Model: a_b_c [01234567], Weight: 2.0, Resize Mode: Just Resize, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.c.A1111())
		})
	}
	p := Params{Prompt: "a cat", Steps: 20, Sampler: DDIM, GuidanceScale: 7, Width: 512, Height: 512,
		Controls: []ControlParams{cases[1].c, cases[0].c}}
	assert.Equal(t, "a cat\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 0, Size: 512x512, RNG: CPU, "+
		`ControlNet 0: "`+cases[1].want+`", ControlNet 1: "`+cases[0].want+`", Version: gosd`, p.A1111(0))
}

// legacyModelHash against Python's hashlib on the kit's single file (2.7 MB): sha256 of
// bytes 1 MiB .. 1 MiB + 64 KiB; a folder has none.
func TestLegacyModelHash(t *testing.T) {
	dir := kitDir(t, "controlnet-tiny")
	assert.Equal(t, "8707c190", legacyModelHash(filepath.Join(dir, "controlnet-tiny-ldm.safetensors")))
	assert.Equal(t, "", legacyModelHash(filepath.Join(dir, "diffusers")))
	small := filepath.Join(t.TempDir(), "small.safetensors")
	require.NoError(t, os.WriteFile(small, []byte("tiny"), 0o644))
	assert.Equal(t, "e3b0c442", legacyModelHash(small), "shorter than 1 MiB: the hash of nothing")
}

// A ControlNet made for another base model is refused at load, naming both.
func TestControlNetForAnotherModel(t *testing.T) {
	p := openTiny(t, "sd2-tiny-v") // 48-wide text embeddings; controlnet-tiny's are 32
	_, err := p.LoadControlNet(filepath.Join(kitDir(t, "controlnet-tiny"), "controlnet-tiny-ldm.safetensors"))
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.ErrorContains(t, err, "text width 32, 4 input channels) does not fit this model (channels [32 64 64 64], 2 layers, text width 48")
	_, err = p.LoadControlNet(filepath.Join(t.TempDir(), "missing.safetensors"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// Close waits for a request running the ControlNet (here on a clone, whose context runs it
// while the loading Pipeline is free), then later requests are refused.
func TestControlNetCloseWaitsForRequests(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	clone, err := p.Clone()
	require.NoError(t, err)
	defer clone.Close()
	req := tinyRequest()
	req.Width, req.Height = 64, 64
	req.Controls = []Control{{Model: cn, Image: kitControlImage(t)}}
	inStep, resume := make(chan struct{}), make(chan struct{})
	req.Progress = func(pr Progress) {
		if pr.Evaluation == 1 {
			close(inStep)
			<-resume
		}
	}
	done := make(chan error)
	go func() {
		_, err := clone.Txt2Img(context.Background(), req)
		done <- err
	}()
	<-inStep
	closed := make(chan error)
	go func() { closed <- cn.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a request ran the ControlNet")
	case <-time.After(200 * time.Millisecond):
	}
	close(resume)
	require.NoError(t, <-done)
	require.NoError(t, <-closed)
	req.Progress = nil
	_, err = clone.Txt2Img(context.Background(), req)
	require.ErrorIs(t, err, ErrInvalidRequest)
}

// A ControlNet outlives the Pipeline that loaded it while a clone is open.
func TestControlNetOutlivesItsPipeline(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	clone, err := p.Clone()
	require.NoError(t, err)
	defer clone.Close()
	require.NoError(t, p.Close())
	req := tinyRequest()
	req.Width, req.Height = 64, 64
	req.Controls = []Control{{Model: cn, Image: kitControlImage(t)}}
	_, err = clone.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	require.NoError(t, cn.Close())
	_, err = clone.Txt2Img(context.Background(), req)
	require.ErrorIs(t, err, ErrInvalidRequest)
	_, err = p.LoadControlNet(filepath.Join(kitDir(t, "controlnet-tiny"), "diffusers"))
	require.ErrorIs(t, err, ErrClosed)
}
