package diffusion

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loraRun is the kit's LoRA pipeline call (manifest "call" of the txt2img file).
type loraRun struct {
	golden  string
	request Request
}

func kitLoRARun(t *testing.T) loraRun {
	t.Helper()
	dir := filepath.Join(testutil.ConformanceDir(t), "lora")
	const file = "txt2img-ddim-lora-kohya-0.8.safetensors"
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	require.NoError(t, err)
	var m struct {
		Files map[string]struct {
			Call struct {
				BaseModel      string  `json:"base_model"`
				Scheduler      string  `json:"scheduler"`
				Prompt         string  `json:"prompt"`
				NegativePrompt string  `json:"negative_prompt"`
				Steps          int     `json:"steps"`
				GuidanceScale  float64 `json:"guidance_scale"`
				Width          int     `json:"width"`
				Height         int     `json:"height"`
				Kwargs         struct {
					Scale float64 `json:"scale"`
				} `json:"cross_attention_kwargs"`
			} `json:"call"`
		} `json:"files"`
	}
	require.NoError(t, json.Unmarshal(raw, &m))
	c := m.Files[file].Call
	require.Equal(t, "sd1-tiny", c.BaseModel)
	require.Equal(t, "DDIMScheduler", c.Scheduler)
	require.NotZero(t, c.Kwargs.Scale)
	return loraRun{
		golden: filepath.Join(dir, file),
		request: Request{Prompt: c.Prompt, NegativePrompt: c.NegativePrompt, Width: c.Width, Height: c.Height,
			Steps: c.Steps, GuidanceScale: c.GuidanceScale, Sampler: DDIM, Seed: 50,
			LoRAs: []LoRA{{Path: filepath.Join(dir, "lora-kohya.safetensors"), Scale: c.Kwargs.Scale}}},
	}
}

// assertKitImage checks a result's steps and image against a whole-pipeline golden: every
// step's latents within the kit's tolerance, every pixel within 2/255.
func assertKitImage(t *testing.T, golden string, steps [][]float32, res *Result) {
	t.Helper()
	g := openGolden(t, golden)
	require.Len(t, steps, 6)
	for i, x := range steps {
		ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
		e := relErr(x, ref)
		t.Logf("step%02d.latents: max|diff|/max|ref| = %.2e", i, e)
		assert.LessOrEqual(t, e, conformanceTol, "step %d", i)
	}
	assertImageClose(t, res.Images[0], g)
}

func runSteps(t *testing.T, p *Pipeline, req Request) ([][]float32, *Result) {
	t.Helper()
	var steps [][]float32
	req.onStep = func(step int, x []float32) { steps = append(steps, append([]float32(nil), x...)) }
	res, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	return steps, res
}

// The kit's LoRA pipeline through Request.LoRAs, with the kohya and the PEFT file, and
// switching on one Pipeline: LoRA, no LoRA (the base weights restored: part 1's DDIM
// golden), the other format, the first again; each run must match its golden.
func TestLoRAPipelineMatchesDiffusers(t *testing.T) {
	run := kitLoRARun(t)
	kit := testutil.ConformanceDir(t)
	p := openTiny(t, "sd1-tiny")
	peft := run.request
	peft.LoRAs = []LoRA{{Path: filepath.Join(kit, "lora", "lora-peft.safetensors"), Scale: run.request.LoRAs[0].Scale}}
	base := run.request
	base.LoRAs = nil
	for _, tc := range []struct {
		name   string
		req    Request
		golden string
	}{
		{"kohya", run.request, run.golden},
		{"base", base, filepath.Join(kit, "sd1-tiny", "txt2img-ddim.safetensors")},
		{"peft", peft, run.golden},
		{"kohya again", run.request, run.golden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, res := runSteps(t, p, tc.req)
			assertKitImage(t, tc.golden, steps, res)
			require.Len(t, res.Params.LoRAs, len(tc.req.LoRAs))
			for _, l := range res.Params.LoRAs {
				assert.Len(t, l.Hash, 12)
				assert.Equal(t, 0.8, l.UNetScale)
				assert.Equal(t, 0.8, l.TextScale)
				assert.Contains(t, res.Params.A1111(0), fmt.Sprintf("Lora hashes: %q", l.Name+": "+l.Hash))
			}
		})
	}
}

// Separate scales: UNet and text encoder each patched alone differ from the base and from
// both patched, and the PEFT file at UNet 0.8 / text 0.8 is the kit's run.
func TestLoRASeparateScales(t *testing.T) {
	run := kitLoRARun(t)
	p := openTiny(t, "sd1-tiny")
	zero := 0.0
	path := run.request.LoRAs[0].Path
	image := func(l []LoRA) []uint8 {
		req := run.request
		req.LoRAs = l
		res, err := p.Txt2Img(context.Background(), req)
		require.NoError(t, err)
		return imageCHW(res.Images[0])
	}
	both := image([]LoRA{{Path: path, Scale: 0.8}})
	unetOnly := image([]LoRA{{Path: path, Scale: 0.8, TextScale: &zero}})
	textOnly := image([]LoRA{{Path: path, Scale: 0.8, UNetScale: &zero}})
	none := image(nil)
	assert.NotEqual(t, both, unetOnly)
	assert.NotEqual(t, both, textOnly)
	assert.NotEqual(t, unetOnly, textOnly)
	assert.NotEqual(t, none, unetOnly)
	assert.NotEqual(t, none, textOnly)
	assert.Equal(t, both, image([]LoRA{{Path: path, Scale: 0.8}}), "back to both: the same image")
}

// Requests that cannot apply their adapters fail with the weights as they were.
func TestLoRAErrors(t *testing.T) {
	run := kitLoRARun(t)
	kit := testutil.ConformanceDir(t)
	p := openTiny(t, "sd1-tiny")
	nan := math.NaN()
	for _, tc := range []struct {
		name  string
		loras []LoRA
		want  error
	}{
		{"no path", []LoRA{{Scale: 1}}, ErrInvalidRequest},
		{"NaN scale", []LoRA{{Path: run.request.LoRAs[0].Path, UNetScale: &nan}}, ErrInvalidRequest},
		{"missing file", []LoRA{{Path: filepath.Join(t.TempDir(), "none.safetensors")}}, ErrInvalidRequest},
		// A good adapter with one for another model: nothing is applied.
		{"another model", []LoRA{{Path: run.request.LoRAs[0].Path}, {Path: writeForeignLoRA(t)}}, lora.ErrMismatch},
		{"not an adapter", []LoRA{{Path: filepath.Join(kit, "sd1-tiny", "diffusers", "vae", "diffusion_pytorch_model.safetensors")}}, ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := run.request
			req.LoRAs = tc.loras
			_, err := p.Txt2Img(context.Background(), req)
			require.ErrorIs(t, err, tc.want)
			t.Log(err)
		})
	}
	// The kit's run still matches: nothing was half-applied.
	steps, res := runSteps(t, p, run.request)
	assertKitImage(t, run.golden, steps, res)
}

// A switch that fails after it began to change the weights leaves them marked for repair:
// the next request, with the base weights or with another set, gets exactly its own image.
func TestLoRAFailedSwitchIsRepaired(t *testing.T) {
	run := kitLoRARun(t)
	p := openTiny(t, "sd1-tiny")
	base := run.request
	base.LoRAs = nil
	res, err := p.Txt2Img(context.Background(), base)
	require.NoError(t, err)
	want := imageCHW(res.Images[0])
	steps, res := runSteps(t, p, run.request)
	assertKitImage(t, run.golden, steps, res)

	// The kit's adapter at another scale, the merge failing at one of the UNet's up
	// blocks (as when out of memory): the weights before it have changed by then.
	failed := ""
	failMerge = func(weight string) error {
		if failed == "" && strings.HasPrefix(weight, "up_blocks.") {
			failed = weight
		}
		if weight == failed {
			return errors.New("injected failure")
		}
		return nil
	}
	t.Cleanup(func() { failMerge = nil })
	req := run.request
	req.LoRAs = []LoRA{{Path: run.request.LoRAs[0].Path, Scale: 1}}
	_, err = p.Txt2Img(context.Background(), req)
	require.ErrorContains(t, err, "injected failure")
	t.Log(err)
	s := &p.eng.share.lora
	require.True(t, s.broken, "the switch failed after it began")
	assert.NotEmpty(t, s.patched[lora.UNet], "weights changed before the failure")

	res, err = p.Txt2Img(context.Background(), base)
	require.NoError(t, err)
	assert.Equal(t, want, imageCHW(res.Images[0]), "the base weights back")
	_, err = p.Txt2Img(context.Background(), req)
	require.ErrorContains(t, err, "injected failure")
	failMerge = nil
	steps, res = runSteps(t, p, run.request)
	assertKitImage(t, run.golden, steps, res)
}

// writeForeignLoRA writes a kohya adapter for a module sd1-tiny lacks (an LDM name).
func writeForeignLoRA(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "foreign.safetensors")
	zeros := func(name string, shape ...int64) modelfile.Tensor {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		return modelfile.Tensor{Name: name, DType: modelfile.F32, Shape: shape, Data: make([]byte, 4*n)}
	}
	const m = "lora_unet_input_blocks_1_1_proj_in"
	require.NoError(t, modelfile.WriteSafetensors(path, []modelfile.Tensor{
		zeros(m+".lora_down.weight", 4, 320), zeros(m+".lora_up.weight", 320, 4)}, nil))
	return path
}

// Clones share the weights and so the installed adapters: clones generating with
// different sets at once each get the image of their own set (switches wait for the
// running calls of all clones). Run with -race.
func TestLoRASwitchingAcrossClones(t *testing.T) {
	run := kitLoRARun(t)
	p := openTiny(t, "sd1-tiny")
	base := run.request
	base.LoRAs = nil
	reqs := []Request{run.request, base}
	want := make([][]uint8, len(reqs))
	for i, r := range reqs {
		res, err := p.Txt2Img(context.Background(), r)
		require.NoError(t, err)
		want[i] = imageCHW(res.Images[0])
	}
	q, err := p.Clone()
	require.NoError(t, err)
	defer q.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w, pipe := range []*Pipeline{p, q} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 4 {
				i := (w + k) % len(reqs)
				res, err := pipe.Txt2Img(context.Background(), reqs[i])
				if err != nil {
					errs <- err
					return
				}
				if got := imageCHW(res.Images[0]); !assert.Equal(t, want[i], got, "worker %d, run %d, set %d", w, k, i) {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// The runtime's own merge (ModelMergeWeight: on the CPU while it packs a linear layer's
// weight, or into float32 memory of its own for a convolution's kernel) gives the image the
// host merge gives (what CUDA uses: ModelSetWeights with merged values), up to the rounding
// of float32 sums in another order; vectors are left to the host.
func TestLoRAResidentMergeMatchesHostMerge(t *testing.T) {
	run := kitLoRARun(t)
	p := openTiny(t, "sd1-tiny")
	image := func() []uint8 {
		res, err := p.Txt2Img(context.Background(), run.request)
		require.NoError(t, err)
		return imageCHW(res.Images[0])
	}
	resident := image()
	residentMerges = false
	defer func() { residentMerges = true }()
	host := image()
	require.Len(t, resident, len(host))
	worst := 0
	for i := range host {
		worst = max(worst, int(resident[i])-int(host[i]), int(host[i])-int(resident[i]))
	}
	assert.LessOrEqual(t, worst, 1, "max |difference| in 8-bit levels")

	require.NoError(t, p.acquire(context.Background()))
	defer p.release()
	for name, want := range map[string]bool{
		"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": true,  // packed
		"down_blocks.0.resnets.0.conv1.weight":                              true,  // read in place
		"down_blocks.0.resnets.0.norm1.weight":                              false, // a vector
	} {
		base := p.model.UNet.Tensors[name]
		rows := base.Shape[0]
		cols := numel(base.Shape) / rows
		up, down := make([]float32, rows*2), make([]float32, 2*cols)
		merged, err := p.eng.lib.ModelMergeWeight(p.eng.ctx, p.eng.unet, weightOf(name, base), up, down, 2)
		require.NoError(t, err, name)
		assert.Equal(t, want, merged, name)
		_, err = p.eng.lib.ModelMergeWeight(p.eng.ctx, p.eng.unet, weightOf(name, base), up, down[1:], 2)
		assert.ErrorContains(t, err, "down", name)
	}
}

// The runtime refuses to replace a weight its load folded into another tensor (a ResNet's
// conv1 bias lives in its time-embedding bias) rather than leave it stale; the conv
// weight beside it is replaceable.
func TestSetWeightsRefusesFoldedBias(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	set := func(name string) error {
		return p.eng.lib.ModelSetWeights(p.eng.ctx, p.eng.unet, []binding.Weight{weightOf(name, p.model.UNet.Tensors[name])})
	}
	err := set("down_blocks.0.resnets.0.conv1.bias")
	require.ErrorIs(t, err, binding.ErrUnsupported)
	assert.Contains(t, err.Error(), "folded")
	require.NoError(t, set("down_blocks.0.resnets.0.conv1.weight"))
	// The question a switch asks before it changes anything gets the same answer.
	_, err = p.eng.lib.ModelWeightCopied(p.eng.ctx, p.eng.unet, "down_blocks.0.resnets.0.conv1.bias", binding.F32)
	require.ErrorIs(t, err, binding.ErrUnsupported)
	copied, err := p.eng.lib.ModelWeightCopied(p.eng.ctx, p.eng.unet, "down_blocks.0.resnets.0.conv1.weight", binding.F32)
	require.NoError(t, err)
	assert.False(t, copied, "a 3x3 kernel is read in place on the CPU")
}

// The runtime's float32 GEMM merge (merger) against diffusers' fused weights of the
// kit (fuse_lora at scale 1), for both files: within the kit's 1e-6 × max|W'|.
func TestLoRANativeMergeMatchesFusedWeights(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	dir := filepath.Join(kit, "lora")
	g := openGolden(t, filepath.Join(dir, "golden.safetensors"))
	p := openTiny(t, "sd1-tiny")
	for _, file := range []string{"lora-kohya.safetensors", "lora-peft.safetensors"} {
		t.Run(file, func(t *testing.T) {
			f, err := lora.Load(filepath.Join(dir, file))
			require.NoError(t, err)
			defer f.Close()
			worst, n := 0.0, 0
			for _, net := range []struct {
				component, prefix string
				base              map[string]modelfile.Tensor
			}{
				{lora.UNet, "merged.scale1.0.unet.", p.model.UNet.Tensors},
				{lora.TextEncoder, "merged.scale1.0.te.", p.model.TextEncoder.Tensors},
			} {
				plan, err := lora.Plan(net.base, net.component, lora.Scaled{File: f, Scale: 1})
				require.NoError(t, err)
				m := p.eng.newMerger()
				defer m.free()
				merged := map[string]modelfile.Tensor{}
				for _, pt := range plan {
					w := net.base[pt.Weight]
					dst := make([]byte, 4*numel(w.Shape))
					fs, err := lowRanks(w, pt.Updates)
					require.NoError(t, err, pt.Weight)
					require.NoError(t, m.merge(w, pt.Updates, fs, dst), pt.Weight)
					merged[pt.Weight] = modelfile.Tensor{Name: w.Name, DType: modelfile.F32, Shape: w.Shape, Data: dst}
				}
				for _, ref := range g.f.Tensors {
					name, ok := strings.CutPrefix(ref.Name, net.prefix)
					if !ok {
						continue
					}
					n++
					want, _ := g.floats(ref.Name)
					got, err := merged[name].Float32s()
					require.NoError(t, err)
					require.Len(t, got, len(want), name)
					e := relErr(got, want)
					worst = math.Max(worst, e)
					assert.LessOrEqual(t, e, 1e-6, name)
				}
			}
			assert.Equal(t, 7, n, "the kit's fused weights")
			t.Logf("merged weights: max|diff|/max|W'| = %.2e", worst)
		})
	}
}
