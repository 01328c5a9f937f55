package diffusion

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/diffusion/tokenizer"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loadSDXLTiny loads the kit's sdxl-tiny (folder or single file) into an engine.
func loadSDXLTiny(t *testing.T, lib *binding.Library, rel string, opts ...modelfile.Option) (*engine, *modelfile.Model) {
	t.Helper()
	m, err := modelfile.Load(filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", rel), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	t.Cleanup(e.close)
	require.NoError(t, e.load(context.Background(), m))
	return e, m
}

// Both SDXL text encoders against transformers: hidden states, the pooled output at the
// EOS (argmax id for the second, whose config keeps the legacy eos_token_id 2) and the
// second's text_projection.
func TestSDXLTextEncodersMatchTransformers(t *testing.T) {
	lib := testLibrary(t)
	e, _ := loadSDXLTiny(t, lib, "diffusers")
	g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "golden.safetensors"))
	for _, tc := range []struct {
		prefix string
		net    clipNet
	}{{"te1", e.clipNet()}, {"te2", e.clipNet2()}} {
		t.Run(tc.prefix, func(t *testing.T) {
			pooled, b := assertCLIPGoldens(t, tc.net, g, tc.prefix)
			if tc.prefix == "te2" {
				refEmbeds, _ := g.floats("te2.text_embeds")
				embeds, err := tc.net.project(pooled, b)
				require.NoError(t, err)
				assertClose(t, "te2.text_embeds", embeds, refEmbeds)
			}
		})
	}
	// The first encoder has no projection: the runtime says so instead of inventing one.
	_, err := e.clipNet().project(make([]float32, 16), 1)
	require.ErrorIs(t, err, binding.ErrInvalidArgument)
}

// sdxlRun is one of the kit's whole-pipeline runs, its call read from the manifest.
type sdxlRun struct {
	file string
	seed uint64 // of init_latents: 50, the non-square run 51 (README-v2)
	req  Request
}

// sdxlRuns reads the kit's txt2img calls from sdxl-tiny/manifest.json.
func sdxlRuns(t *testing.T) []sdxlRun {
	kit := testutil.ConformanceDir(t)
	b, err := os.ReadFile(filepath.Join(kit, "sdxl-tiny", "manifest.json"))
	require.NoError(t, err)
	var man struct {
		Files map[string]struct {
			Call *struct {
				Scheduler            string  `json:"scheduler"`
				Steps                int     `json:"steps"`
				Guidance             float64 `json:"guidance_scale"`
				Height               int     `json:"height"`
				Width                int     `json:"width"`
				Prompt               string  `json:"prompt"`
				NegativePrompt       *string `json:"negative_prompt"`
				Prompt2              string  `json:"prompt_2"`
				OriginalSize         []int   `json:"original_size"` // (h, w)
				Crop                 []int   `json:"crops_coords_top_left"`
				TargetSize           []int   `json:"target_size"`
				NegativeOriginalSize []int   `json:"negative_original_size"`
				NegativeCrop         []int   `json:"negative_crops_coords_top_left"`
				NegativeTargetSize   []int   `json:"negative_target_size"`
			} `json:"call"`
		} `json:"files"`
	}
	require.NoError(t, json.Unmarshal(b, &man))
	size := func(v []int) Size {
		if v == nil {
			return Size{}
		}
		return Size{Width: v[1], Height: v[0]}
	}
	point := func(v []int) image.Point {
		if v == nil {
			return image.Point{}
		}
		return image.Point{X: v[1], Y: v[0]}
	}
	var runs []sdxlRun
	for name, f := range man.Files {
		c := f.Call
		if c == nil {
			continue
		}
		ss, ok := schedule.SamplerForClass(c.Scheduler)
		require.True(t, ok, c.Scheduler)
		req := Request{
			Prompt: c.Prompt, Prompt2: c.Prompt2, Width: c.Width, Height: c.Height, Steps: c.Steps,
			GuidanceScale: c.Guidance, Sampler: samplerOf(ss), PromptSyntax: PromptPlain,
			SizeConditioning: SizeConditioning{
				OriginalSize: size(c.OriginalSize), CropTopLeft: point(c.Crop), TargetSize: size(c.TargetSize),
				NegativeOriginalSize: size(c.NegativeOriginalSize), NegativeCropTopLeft: point(c.NegativeCrop),
				NegativeTargetSize: size(c.NegativeTargetSize),
			},
		}
		if c.NegativePrompt != nil {
			req.NegativePrompt = *c.NegativePrompt
		}
		run := sdxlRun{file: name, seed: 50, req: req}
		if name == "txt2img-euler-nonsquare.safetensors" {
			run.seed = 51
		}
		run.req.Seed = run.seed
		runs = append(runs, run)
	}
	slices.SortFunc(runs, func(a, b sdxlRun) int { return strings.Compare(a.file, b.file) })
	require.Len(t, runs, 5)
	return runs
}

// What the UNet is conditioned on in each of the kit's runs: the joined penultimate
// states, the projected pooled embeddings (zeros for the negative prompt None of the
// micro-conditioning run) and the time ids.
// Both prompt syntaxes give diffusers' conditioning for these short prompts.
func TestSDXLConditioningMatchesDiffusers(t *testing.T) {
	p := openTiny(t, "sdxl-tiny")
	for _, run := range sdxlRuns(t) {
		for _, syntax := range []PromptSyntax{PromptPlain, PromptA1111} {
			t.Run(strings.TrimSuffix(run.file, ".safetensors")+"/"+syntax.String(), func(t *testing.T) {
				g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", run.file))
				req := run.req
				req.PromptSyntax = syntax
				par, _, err := p.desc.plan(req, nil)
				require.NoError(t, err)
				cond, err := p.conditioner().condition(par, true)
				require.NoError(t, err)
				defer cond.free()
				ref, _ := g.floats("cond.prompt_embeds")
				got := make([]float32, len(ref))
				require.NoError(t, p.eng.lib.DownloadFloat32(p.eng.ctx, cond.context, got))
				assertClose(t, "cond.prompt_embeds", got, ref)
				refEmb, _ := g.floats("cond.add_text_embeds")
				assertClose(t, "cond.add_text_embeds", cond.textEmbeds, refEmb)
				refIDs, _ := g.floats("cond.add_time_ids")
				assert.Equal(t, refIDs, cond.timeIDs, "time ids")

				// The tokens, exactly: tokenizer_2 pads with "!" (id 0).
				assert.Equal(t, 0, p.padID2)
				for _, c := range []struct {
					key, prompt string
					tok         *tokenizer.Tokenizer
					pad         int
				}{
					{"cond.ids1", run.req.Prompt, p.tok, p.padID},
					{"cond.ids2", cmp.Or(run.req.Prompt2, run.req.Prompt), p.tok2, p.padID2},
					{"cond.negative_ids1", run.req.NegativePrompt, p.tok, p.padID},
					{"cond.negative_ids2", run.req.NegativePrompt, p.tok2, p.padID2},
				} {
					if _, ok := g.f.Tensor(c.key); !ok {
						continue // no negative prompt
					}
					ch, _ := c.tok.EncodePlain(c.prompt, c.pad)
					assert.Equal(t, g.ints(c.key), ch.IDs[:], c.key)
				}
			})
		}
	}
}

// The kit's five StableDiffusionXLPipeline runs through the public API, free-running
// from the seed: every step's latents within 1e-4 of max|ref|, and the image within
// 2/255 per pixel.
func TestSDXLTxt2ImgMatchesDiffusers(t *testing.T) {
	for _, source := range []string{"diffusers", "single file"} {
		p := openSDXLTiny(t, source)
		for _, run := range sdxlRuns(t) {
			t.Run(source+"/"+strings.TrimSuffix(run.file, ".safetensors"), func(t *testing.T) {
				g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", run.file))
				var steps [][]float32
				req := run.req
				req.onStep = func(step int, x []float32) { steps = append(steps, slices.Clone(x)) }
				res, err := p.Txt2Img(context.Background(), req)
				require.NoError(t, err)
				require.Len(t, steps, req.Steps)
				for i, x := range steps {
					ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
					assertClose(t, fmt.Sprintf("step%02d.latents", i), x, ref)
				}
				assertImageClose(t, res.Images[0], g)
			})
		}
	}
}

// openSDXLTiny opens the kit's sdxl-tiny from its diffusers folder or its single file
// (with the tiny model's head counts, which a single file does not record).
func openSDXLTiny(t *testing.T, source string) *Pipeline {
	t.Helper()
	if source == "diffusers" {
		return openTiny(t, "sdxl-tiny")
	}
	testLibrary(t)
	p, err := Open(filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "sdxl-tiny-single-file.safetensors"),
		WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")),
		WithModelOptions(modelfile.WithUNetHeads(2, 2, 4), modelfile.WithTextHeads(2), modelfile.WithTextHeads2(2)))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	assert.Equal(t, modelfile.FamilySDXL, p.Info().Family)
	return p
}

// sdxl-tiny's VAE (scaling_factor 0.13025, force_upcast) on raw latents and images. Its
// force_upcast reaches the runtime (F32 on the GPU; the CPU computes in F32 anyway), SD
// 1.x's, which diffusers' SD pipelines ignore, does not.
func TestSDXLVAEMatchesDiffusers(t *testing.T) {
	lib := testLibrary(t)
	e, _ := loadSDXLTiny(t, lib, "diffusers")
	assert.Equal(t, int32(1), e.vaeCfg.ForceUpcast)
	sd1, m1 := loadSD1Tiny(t, lib)
	require.True(t, m1.VAE.Config.ForceUpcast)
	assert.Equal(t, int32(0), sd1.vaeCfg.ForceUpcast)
	g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "golden.safetensors"))
	assertVAEDecodeGoldens(t, e, g)
	assertVAEEncodeGolden(t, e, g)
}

// An SDXL-Turbo-style call: one step, trailing spacing, guidance off. The UNet then gets
// one row, the positive one of the kit's conditioning, and the step is Euler's from
// sigma_max: references derived from the kit (its positive conditioning row and its
// seed-50 noise) and from the components tested above.
func TestSDXLOneStepWithoutGuidance(t *testing.T) {
	p := openTiny(t, "sdxl-tiny")
	kitRun := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "txt2img-euler.safetensors"))
	req := Request{Prompt: "a red apple on a table", Width: 64, Height: 64, Steps: 1, GuidanceScale: 1,
		Sampler: Euler, TimestepSpacing: schedule.SpacingTrailing, Seed: 50}
	par, sched, err := p.desc.plan(req, nil)
	require.NoError(t, err)
	assert.Equal(t, []float64{999}, sched.Timesteps(), "trailing spacing starts at the last training step")

	cond, err := p.conditioner().condition(par, false)
	require.NoError(t, err)
	defer cond.free()
	refCtx, cs := kitRun.floats("cond.prompt_embeds")
	per := int(cs[1] * cs[2])
	got := make([]float32, per)
	require.NoError(t, p.eng.lib.DownloadFloat32(p.eng.ctx, cond.context, got))
	assertClose(t, "positive context row", got, refCtx[per:])
	refEmb, es := kitRun.floats("cond.add_text_embeds")
	assertClose(t, "positive text_embeds row", cond.textEmbeds, refEmb[es[1]:])
	assert.Equal(t, []float32{64, 64, 0, 0, 64, 64}, cond.timeIDs)

	x, _ := kitRun.floats("init_latents")
	scale(x, float32(sched.InitNoiseSigma()))
	d := &denoiser{unet: p.eng.unetNet(), cond: cond, batch: 1, h: 8, w: 8, guidance: 1}
	eps, err := d.predict(sched.ScaleModelInput(x, 0), 999, 1)
	require.NoError(t, err)
	want, err := sched.Step(eps, 0, x, nil)
	require.NoError(t, err)

	var last []float32
	req.onStep = func(_ int, x []float32) { last = slices.Clone(x) }
	res, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	assertClose(t, "latents after the one step", last, want)
	assert.Equal(t, 1, res.Params.Steps)
}

// img2img and inpainting run on SDXL through the shared paths (the init image encoded with
// the model's VAE and its 0.13025 scaling, the SDXL conditioning). The kit has no
// diffusers reference for them: the checks are determinism and the resolved parameters.
func TestSDXLImg2ImgAndInpaintRun(t *testing.T) {
	p := openTiny(t, "sdxl-tiny")
	src := image.NewRGBA(image.Rect(0, 0, 64, 64))
	for y := 0; y < 64; y++ {
		for x := 0; x < 64; x++ {
			src.Pix[4*(y*64+x)], src.Pix[4*(y*64+x)+1], src.Pix[4*(y*64+x)+2], src.Pix[4*(y*64+x)+3] = uint8(4*x), uint8(4*y), 128, 255
		}
	}
	base := Request{Prompt: "a red apple on a table", Steps: 4, GuidanceScale: 5, Seed: 7, Prompt2: "an oil painting"}
	a, err := p.Img2Img(context.Background(), Img2ImgRequest{Request: base, Image: src, Strength: 0.5})
	require.NoError(t, err)
	b, err := p.Img2Img(context.Background(), Img2ImgRequest{Request: base, Image: src, Strength: 0.5})
	require.NoError(t, err)
	assert.Equal(t, imageCHW(a.Images[0]), imageCHW(b.Images[0]), "deterministic for a seed")
	assert.Equal(t, 0.5, a.Params.Strength)
	assert.Contains(t, a.Params.A1111(0), ", Prompt 2: an oil painting, ")
	assert.Equal(t, Size{64, 64}, a.Params.SizeConditioning.OriginalSize, "defaults to the image's size")

	mask := image.NewGray(image.Rect(0, 0, 64, 64))
	for y := 0; y < 64; y++ {
		for x := 32; x < 64; x++ {
			mask.Pix[y*64+x] = 255 // the right half is repainted
		}
	}
	res, err := p.Inpaint(context.Background(), InpaintRequest{Request: base, Image: src, Mask: mask})
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, 64, 64), res.Images[0].Bounds())
}

// A base → refiner hand-over with the same model on both sides is the plain run cut in
// two: the kit's Euler run must come out of it, at every hand-over point, and the second
// stage must start from the first's latents without new noise.
func TestTxt2ImgRefinedHandOver(t *testing.T) {
	p := openTiny(t, "sdxl-tiny")
	run := sdxlRuns(t)[4]
	require.Equal(t, "txt2img-euler.safetensors", run.file)
	g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", run.file))
	plain, err := p.Txt2Img(context.Background(), run.req)
	require.NoError(t, err)
	// 831, 665, 499, 333, 167, 1: 0.8 hands over at 200 (4 + 2 steps), 0.5 at 500 (2 + 4),
	// 0.17 at 830 (1 + 5).
	for _, c := range []struct {
		start       float64
		base, refin int
	}{{0.8, 4, 2}, {0.5, 2, 4}, {0.17, 1, 5}} {
		t.Run(fmt.Sprint(c.start), func(t *testing.T) {
			var stages []int // each call's stage length
			req := run.req
			req.Progress = func(pr Progress) { stages = append(stages, pr.Evaluations) }
			res, err := p.Txt2ImgRefined(context.Background(), req, p, c.start)
			require.NoError(t, err)
			want := append(slices.Repeat([]int{c.base}, c.base), slices.Repeat([]int{c.refin}, c.refin)...)
			assert.Equal(t, want, stages, "the calls of each stage")
			assert.Equal(t, imageCHW(plain.Images[0]), imageCHW(res.Images[0]))
			assertImageClose(t, res.Images[0], g)
		})
	}
	for _, c := range []struct {
		name    string
		req     Request
		start   float64
		wantMsg string
	}{
		{"start out of range", run.req, 1.5, "refiner start 1.5 not in (0, 1)"},
		{"nothing for the base", run.req, 0.1, "leaves the base model 0 steps and the refiner 6"},
		{"nothing for the refiner", run.req, 0.999, "leaves the base model 6 steps and the refiner 0"},
		{"two calls a step", Request{Prompt: "x", Width: 64, Height: 64, Steps: 4, Sampler: Heun}, 0.5, "makes 7 model calls for 4 steps"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := p.Txt2ImgRefined(context.Background(), c.req, p, c.start)
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), c.wantMsg)
		})
	}
}

// tinyRefiner writes random weights of SDXL's refiner layout at a few channels (one
// OpenCLIP-style encoder with its projection, five time ids), with sdxl-tiny's latent
// space (a 4-level VAE, 4 channels), and opens it.
func tinyRefiner(t *testing.T) *Pipeline {
	t.Helper()
	testLibrary(t)
	arch := modelfile.SDXL()
	arch.Refiner = true
	te := *arch.TextEncoder2
	te.HiddenSize, te.IntermediateSize, te.NumHiddenLayers, te.NumAttentionHeads, te.ProjectionDim = 32, 64, 3, 2, 24
	arch.TextEncoder, arch.TextEncoder2 = te, nil
	u := &arch.UNet
	u.SampleSize = 8
	u.BlockOutChannels, u.LayersPerBlock = []int{32, 64}, []int{1, 1}
	u.DownBlockTypes, u.UpBlockTypes = []string{"DownBlock2D", "CrossAttnDownBlock2D"}, []string{"CrossAttnUpBlock2D", "UpBlock2D"}
	u.AttentionHeads, u.TransformerLayersPerBlock, u.TimeEmbeddingDim = []int{2, 2}, []int{1, 2}, 128
	u.CrossAttentionDim, u.AdditionTimeEmbedDim = te.HiddenSize, 8
	u.ProjectionClassEmbeddingsInputDim = te.ProjectionDim + 5*u.AdditionTimeEmbedDim
	arch.VAE.BlockOutChannels, arch.VAE.LayersPerBlock = []int{32, 32, 32, 32}, 1
	dir := t.TempDir()
	require.NoError(t, modelfile.WriteRandom(context.Background(), dir, arch, modelfile.F32, 3))
	p, err := Open(dir, WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// The refiner conditions on its one encoder: the penultimate states of the prompt and
// negative prompt (given to it as diffusers does, prompt 2 ignored), its projected
// pooled output, and time ids ending with the aesthetic scores; then it takes a hand-over.
func TestSDXLRefiner(t *testing.T) {
	r := tinyRefiner(t)
	req := Request{Prompt: "a red apple on a table", NegativePrompt: "blurry", Prompt2: "ignored by the refiner",
		Width: 64, Height: 64, Steps: 6, GuidanceScale: 5, Sampler: Euler, Seed: 50,
		SizeConditioning: SizeConditioning{OriginalSize: Size{96, 128}, CropTopLeft: image.Pt(4, 8), AestheticScore: 7}}
	par, _, err := r.desc.plan(req, nil)
	require.NoError(t, err)
	cond, err := r.conditioner().condition(par, true)
	require.NoError(t, err)
	defer cond.free()
	assert.Equal(t, []float32{128, 96, 8, 4, 2.5, 128, 96, 8, 4, 7}, cond.timeIDs, "rows [negative, positive]: original (h, w), crop (top, left), score")

	clip := r.eng.clipNet()
	var ids []int32
	for _, pr := range []string{"blurry", "a red apple on a table"} {
		ch, _ := r.tok.EncodePlain(pr, 0)
		ids = append(ids, ch.IDs[:]...)
	}
	pen, pooled, err := clip.encode(ids, 2, 77, 1, false, true)
	require.NoError(t, err)
	embeds, err := clip.project(pooled, 2)
	require.NoError(t, err)
	got := make([]float32, len(pen))
	require.NoError(t, r.eng.lib.DownloadFloat32(r.eng.ctx, cond.context, got))
	assertClose(t, "refiner context", got, pen)
	assertClose(t, "refiner text_embeds", cond.textEmbeds, embeds)

	base := openTiny(t, "sdxl-tiny")
	plain, err := base.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	refined, err := base.Txt2ImgRefined(context.Background(), req, r, 0.5)
	require.NoError(t, err)
	assert.NotEqual(t, imageCHW(plain.Images[0]), imageCHW(refined.Images[0]), "the refiner ran the last steps")
	assert.Equal(t, plain.Params.Model, refined.Params.Model, "Model names the base model")
	assert.Equal(t, r.Info().Name, refined.Params.Refiner, "a folder: no hash")
	assert.Equal(t, 0.5, refined.Params.RefinerSwitchAt)
	assert.Contains(t, refined.Params.A1111(0), ", Refiner: "+r.Info().Name+", Refiner switch at: 0.5, ")
}

// Long prompts in A1111 syntax: each encoder chunks its own prompt, the shorter side is
// padded with empty chunks so the states line up, and text_embeds comes from the first
// chunk. ClipSkip 2 takes the layer below the penultimate in both encoders.
func TestSDXLConditioningChunksAndClipSkip(t *testing.T) {
	p := openTiny(t, "sdxl-tiny")
	long := strings.Repeat("a red apple on a wooden table, ", 12) // > 75 tokens
	par, _, err := p.desc.plan(Request{Prompt: long, Prompt2: "an oil painting", NegativePrompt: "blurry",
		Width: 64, Height: 64, ClipSkip: 2}, nil)
	require.NoError(t, err)
	cond, err := p.conditioner().condition(par, true)
	require.NoError(t, err)
	defer cond.free()
	got := make([]float32, 2*154*48)
	require.NoError(t, p.eng.lib.DownloadFloat32(p.eng.ctx, cond.context, got), "rows [negative, positive] of two chunks")

	// The positive row's first chunk, by hand: encoder 1 on the long prompt's first
	// chunk, encoder 2 on prompt 2, both at hidden_states[-3].
	chunks1, err := p.tok.EncodeWeighted(long, p.padID)
	require.NoError(t, err)
	require.Len(t, chunks1, 2)
	ch2, _ := p.tok2.EncodePlain("an oil painting", p.padID2)
	h1, _, err := p.eng.clipNet().encode(chunks1[0].IDs[:], 1, 77, 2, false, false)
	require.NoError(t, err)
	h2, pooled, err := p.eng.clipNet2().encode(ch2.IDs[:], 1, 77, 2, false, true)
	require.NoError(t, err)
	want := make([]float32, 0, 77*48)
	for r := 0; r < 77; r++ {
		want = append(want, h1[r*16:(r+1)*16]...)
		want = append(want, h2[r*32:(r+1)*32]...)
	}
	assertClose(t, "positive row, first chunk", got[154*48:154*48+77*48], want)
	embeds, err := p.eng.clipNet2().project(pooled, 1)
	require.NoError(t, err)
	assertClose(t, "positive text_embeds", cond.textEmbeds[24:], embeds)
}
