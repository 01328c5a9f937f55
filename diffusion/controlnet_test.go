package diffusion

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// controlNetLayouts are the kit's two files of the same ControlNet.
var controlNetLayouts = []struct{ name, path string }{
	{"diffusers", "diffusers"},
	{"single file", "controlnet-tiny-ldm.safetensors"},
}

// kitControlNet opens the ControlNet's base model and loads the ControlNet from layout.
func kitControlNet(t *testing.T, layout string) (*Pipeline, *ControlNet) {
	dir := kitDir(t, "controlnet-tiny")
	var manifest struct {
		Models map[string]struct {
			BaseModel string `json:"base_model"`
		} `json:"models"`
	}
	b, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "manifest-v2-control-upscale.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &manifest))
	p := openTiny(t, manifest.Models["controlnet-tiny"].BaseModel)
	cn, err := p.LoadControlNet(filepath.Join(dir, layout))
	require.NoError(t, err)
	t.Cleanup(func() { cn.Close() })
	return p, cn
}

// The ControlNet's residuals against diffusers' ControlNetModel forward, from both layouts:
// scale 1, scale 0.6, guess mode, and a non-square latent.
func TestControlNetMatchesDiffusers(t *testing.T) {
	for _, layout := range controlNetLayouts {
		t.Run(layout.name, func(t *testing.T) {
			p, cn := kitControlNet(t, layout.path)
			g := openGolden(t, filepath.Join(kitDir(t, "controlnet-tiny"), "golden.safetensors"))
			cases := []struct {
				in, out string
				scale   float32
				guess   bool
			}{
				{"cn", "cn", 1, false},
				{"cn", "cn06", 0.6, false},
				{"cn", "cn_guess", 1, true},
				{"cn_ns", "cn_ns", 1, false},
			}
			for _, tc := range cases {
				t.Run(tc.out, func(t *testing.T) {
					down, mid := runControlNet(t, p, cn, g, tc.in, tc.scale, tc.guess, 0, false, nil)
					for i, d := range down {
						ref, _ := g.floats(fmt.Sprintf("%s.down%d", tc.out, i))
						assertClose(t, fmt.Sprintf("%s.down%d", tc.out, i), d, ref)
					}
					ref, _ := g.floats(tc.out + ".mid")
					assertClose(t, tc.out+".mid", mid, ref)
				})
			}
		})
	}
}

// runControlNet runs cn on the golden inputs prefix.* into outputs with extra rows before
// the batch (outRow), optionally accumulating onto initial values; it returns the outputs.
func runControlNet(t *testing.T, p *Pipeline, cn *ControlNet, g *goldenFile, prefix string, scale float32, guess bool, outRow int, accumulate bool, initial [][]float32) (down [][]float32, mid []float32) {
	lib, ctx := p.eng.lib, p.eng.ctx
	s := &scope{lib: lib, ctx: ctx}
	defer s.done()
	tensor := func(name string) binding.Tensor {
		v, shape := g.floats(prefix + "." + name)
		tt, err := s.f32(v, shape...)
		require.NoError(t, err)
		return tt
	}
	in := lib.DefaultControlNetInputs()
	in.X, in.T, in.Context, in.Cond = tensor("x"), tensor("t"), tensor("context"), tensor("cond")
	in.Scale, in.GuessMode, in.OutRow, in.Accumulate = scale, guess, int32(outRow), accumulate
	xs := lib.TensorShape(in.X)
	shapes, midShape := unetSkipShapes(&p.eng.unetCfg, xs[0]+int64(outRow), xs[2], xs[3])
	var outs []binding.Tensor
	for i, sh := range append(shapes, midShape) {
		var data []float32
		if initial != nil {
			data = initial[i]
		}
		o, err := s.f32(data, sh[:]...)
		require.NoError(t, err)
		outs = append(outs, o)
	}
	require.NoError(t, lib.ControlNetForward(ctx, cn.model, &in, outs[:len(shapes)], outs[len(shapes)]))
	for i, o := range outs {
		sh := append(shapes, midShape)[i]
		v, err := s.read(o, int(sh[0]*sh[1]*sh[2]*sh[3]))
		require.NoError(t, err)
		if i < len(shapes) {
			down = append(down, v)
		} else {
			mid = v
		}
	}
	return down, mid
}

// Rows after out_row get the residuals, the rows before are zeroed (or, accumulating,
// left as they were plus nothing): what guess mode under guidance and several ControlNets
// rely on.
func TestControlNetOutputRows(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	g := openGolden(t, filepath.Join(kitDir(t, "controlnet-tiny"), "golden.safetensors"))
	ref, refMid := runControlNet(t, p, cn, g, "cn", 1, false, 0, false, nil)

	// Overwrite into rows 1..2 of 3: row 0 becomes 0 whatever was there.
	shapes, midShape := unetSkipShapes(&p.eng.unetCfg, 3, 8, 8)
	var ones [][]float32
	for _, sh := range append(shapes, midShape) {
		v := make([]float32, sh[0]*sh[1]*sh[2]*sh[3])
		for k := range v {
			v[k] = 1
		}
		ones = append(ones, v)
	}
	down, mid := runControlNet(t, p, cn, g, "cn", 1, false, 1, false, ones)
	for i, d := range append(down, mid) {
		want := append(ref, refMid)[i]
		per := len(want) / 2
		assert.Equal(t, make([]float32, per), d[:per], "row 0 of output %d", i)
		assert.Equal(t, want, d[per:], "rows 1-2 of output %d", i)
	}
	// Accumulating: row 0 keeps its ones, rows 1-2 get 1 + residual.
	down, mid = runControlNet(t, p, cn, g, "cn", 1, false, 1, true, ones)
	for i, d := range append(down, mid) {
		want := append(ref, refMid)[i]
		per := len(want) / 2
		for k := 0; k < per; k++ {
			require.Equal(t, float32(1), d[k])
		}
		for k, w := range want {
			require.InDelta(t, 1+w, d[per+k], 1e-6)
		}
	}
}

// Bad inputs to the native forward are refused with a message, never a crash.
func TestControlNetForwardRejectsBadInputs(t *testing.T) {
	p, cn := kitControlNet(t, "diffusers")
	lib, ctx := p.eng.lib, p.eng.ctx
	s := &scope{lib: lib, ctx: ctx}
	defer s.done()
	mk := func(shape ...int64) binding.Tensor {
		tt, err := s.f32(nil, shape...)
		require.NoError(t, err)
		return tt
	}
	x, tt, c := mk(1, 4, 8, 8), mk(1), mk(1, 77, 32)
	shapes, midShape := unetSkipShapes(&p.eng.unetCfg, 1, 8, 8)
	var down []binding.Tensor
	for _, sh := range shapes {
		down = append(down, mk(sh[:]...))
	}
	mid := mk(midShape[:]...)
	cases := []struct {
		name string
		edit func(in *binding.ControlNetInputs, down *[]binding.Tensor)
	}{
		{"cond of the wrong size", func(in *binding.ControlNetInputs, _ *[]binding.Tensor) { in.Cond = mk(1, 3, 32, 32) }},
		{"cond of the wrong channels", func(in *binding.ControlNetInputs, _ *[]binding.Tensor) { in.Cond = mk(1, 1, 64, 64) }},
		{"missing cond", func(in *binding.ControlNetInputs, _ *[]binding.Tensor) { in.Cond = 0 }},
		{"too few outputs", func(_ *binding.ControlNetInputs, d *[]binding.Tensor) { *d = (*d)[:11] }},
		{"output rows short of out_row", func(in *binding.ControlNetInputs, _ *[]binding.Tensor) { in.OutRow = 1 }},
		{"non-finite scale", func(in *binding.ControlNetInputs, _ *[]binding.Tensor) { in.Scale = float32(math.Inf(1)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := lib.DefaultControlNetInputs()
			in.X, in.T, in.Context, in.Cond = x, tt, c, mk(1, 3, 64, 64)
			d := append([]binding.Tensor(nil), down...)
			tc.edit(&in, &d)
			err := lib.ControlNetForward(ctx, cn.model, &in, d, mid)
			require.ErrorIs(t, err, binding.ErrInvalidArgument)
		})
	}
}

// kitCall is a pipeline run's entry in the kit's manifest.
type kitCall struct {
	Call struct {
		Scale float64 `json:"controlnet_conditioning_scale"`
		Start float64 `json:"control_guidance_start"`
		End   float64 `json:"control_guidance_end"`
		Guess bool    `json:"guess_mode"`
	} `json:"call"`
	Spread float64 `json:"float64_spread"`
}

// kitControlCall reads the manifest's call of controlnet-<run>.safetensors.
func kitControlCall(t *testing.T, run string) kitCall {
	var manifest struct {
		Files map[string]kitCall `json:"files"`
	}
	b, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "manifest-v2-control-upscale.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &manifest))
	call, ok := manifest.Files["controlnet-tiny/controlnet-"+run+".safetensors"]
	require.True(t, ok, run)
	return call
}

// The kit's whole StableDiffusionControlNetPipeline runs through the public API, from the
// seed, with either layout of the ControlNet.
func TestControlNetPipelineMatchesDiffusers(t *testing.T) {
	runs := []struct {
		name    string
		sampler Sampler
		guess   bool
	}{{"ddim", DDIM, false}, {"euler", Euler, false}, {"ddim-guess", DDIM, true}}
	for _, layout := range controlNetLayouts {
		for _, run := range runs {
			t.Run(layout.name+"/"+run.name, func(t *testing.T) {
				p, cn := kitControlNet(t, layout.path)
				dir := kitDir(t, "controlnet-tiny")
				g := openGolden(t, filepath.Join(dir, "controlnet-"+run.name+".safetensors"))
				img, err := os.Open(filepath.Join(dir, "control.png"))
				require.NoError(t, err)
				control, _, err := image.Decode(img)
				img.Close()
				require.NoError(t, err)
				// control.png / 255 is the kit's control_image.
				ci, _ := g.floats("control_image")
				assert.Equal(t, ci, controlImage(control, 64, 64))

				call := kitControlCall(t, run.name)
				require.Equal(t, run.guess, call.Call.Guess)
				tol := math.Max(1e-4, 4*call.Spread)
				// The scale each evaluation got (0: the ControlNet is not run).
				perStep, _ := g.floats("controlnet_scale_per_step")
				window := controlRun{par: ControlParams{Start: call.Call.Start, End: call.Call.End}}
				for i, want := range perStep {
					got := float32(0)
					if window.active(i, len(perStep)) {
						got = float32(call.Call.Scale)
					}
					assert.Equal(t, want, got, "scale at step %d", i)
				}

				req := kitRequest(run.sampler)
				req.Controls = []Control{{Model: cn, Image: control, Scale: call.Call.Scale, Start: call.Call.Start,
					End: call.Call.End, GuessMode: call.Call.Guess}}
				var steps [][]float32
				req.onStep = func(step int, x []float32) { steps = append(steps, append([]float32(nil), x...)) }
				res, err := p.Txt2Img(context.Background(), req)
				require.NoError(t, err)
				require.Len(t, steps, 6)
				for i, x := range steps {
					ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
					e := relErr(x, ref)
					t.Logf("step%02d.latents: %.2e (tolerance %.1e)", i, e, tol)
					assert.LessOrEqual(t, e, tol, "step %d", i)
				}
				assertImageClose(t, res.Images[0], g)
				require.Len(t, res.Params.Controls, 1)
				assert.Equal(t, ControlParams{Model: layout.path, ModelHash: res.Params.Controls[0].ModelHash, Scale: call.Call.Scale,
					Start: call.Call.Start, End: call.Call.End, GuessMode: call.Call.Guess}, res.Params.Controls[0])
			})
		}
	}
}

// A real-shaped SD 1.5 ControlNet (random weights) in the original single-file layout,
// written here as lllyasviel's control_v11p_sd15_* files are laid out, loads into the
// runtime and runs on a small latent.
func TestSD15ControlNetSingleFileRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 720 MB ControlNet")
	}
	lib := testLibrary(t)
	path := filepath.Join(t.TempDir(), "control_random_sd15.safetensors")
	require.NoError(t, modelfile.WriteRandomControlNet(context.Background(), path, modelfile.SD15ControlNetConfig(), modelfile.F16, 1))
	f, err := modelfile.LoadControlNet(path)
	require.NoError(t, err)
	defer f.Close()
	want := modelfile.SD15ControlNetConfig()
	assert.Equal(t, want, f.Config)

	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	defer e.close()
	uc, err := unetConfig(f.Config.UNetConfig)
	require.NoError(t, err)
	cfg := controlNetConfig(f.Config, uc)
	assert.Equal(t, lib.DefaultControlNetConfig().CondChannels, cfg.CondChannels, "the runtime's default is SD 1.5's")
	ws, err := e.weights(f.Tensors)
	require.NoError(t, err)
	m, err := lib.ControlNetLoad(e.ctx, &cfg, ws)
	require.NoError(t, err)
	defer lib.ModelFree(e.ctx, m)

	s := &scope{lib: lib, ctx: e.ctx}
	defer s.done()
	rnd := rand.New(rand.NewPCG(1, 2))
	randn := func(shape ...int64) binding.Tensor {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rnd.NormFloat64())
		}
		tt, err := s.f32(v, shape...)
		require.NoError(t, err)
		return tt
	}
	in := lib.DefaultControlNetInputs()
	in.X, in.Context, in.Cond = randn(2, 4, 8, 8), randn(2, 77, 768), randn(2, 3, 64, 64)
	in.T, err = s.f32([]float32{999, 1}, 2)
	require.NoError(t, err)
	shapes, mid := unetSkipShapes(&uc, 2, 8, 8)
	require.Len(t, shapes, 12)
	var outs []binding.Tensor
	for _, sh := range append(shapes, mid) {
		o, err := s.f32(nil, sh[:]...)
		require.NoError(t, err)
		outs = append(outs, o)
	}
	require.NoError(t, lib.ControlNetForward(e.ctx, m, &in, outs[:12], outs[12]))
	for i, o := range outs {
		sh := append(shapes, mid)[i]
		v, err := s.read(o, int(sh[0]*sh[1]*sh[2]*sh[3]))
		require.NoError(t, err)
		require.NoError(t, checkFinite(fmt.Sprintf("residual %d", i), v))
		assert.Greater(t, maxAbs(v), 0.0, "residual %d", i)
	}
}

func maxAbs(v []float32) float64 {
	var m float64
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	return m
}

// Every step of the kit's ControlNet pipelines restarted from diffusers' latents of the
// previous step: the ControlNet, the UNet with its residuals under guidance and the
// scheduler step reproduce the next latents.
func TestControlNetStepsMatchDiffusers(t *testing.T) {
	for _, run := range []struct {
		name    string
		sampler Sampler
	}{{"ddim", DDIM}, {"euler", Euler}, {"ddim-guess", DDIM}} {
		t.Run(run.name, func(t *testing.T) {
			p, cn := kitControlNet(t, "diffusers")
			g := openGolden(t, filepath.Join(kitDir(t, "controlnet-tiny"), "controlnet-"+run.name+".safetensors"))
			call := kitControlCall(t, run.name)
			req := kitRequest(run.sampler)
			req.Controls = []Control{{Model: cn, Image: kitControlImage(t), Scale: call.Call.Scale, Start: call.Call.Start,
				End: call.Call.End, GuessMode: call.Call.Guess}}
			par, sched, err := p.desc.plan(req, nil)
			require.NoError(t, err)
			par.Controls, err = p.checkControls(req.Controls, 64, 64)
			require.NoError(t, err)
			cond, err := p.conditioner().condition(par, true)
			require.NoError(t, err)
			defer cond.free()
			d := &denoiser{unet: p.eng.unetNet(), cond: cond, batch: 1, h: 8, w: 8, guidance: 7.5}
			d.control, err = p.newControls(req.Controls, par.Controls, cond, 1, 64, 64, true)
			require.NoError(t, err)
			defer d.control.free()
			d.control.total = len(sched.Timesteps())

			assertTeacherForcedSteps(t, d, sched, g)
		})
	}
}
