package diffusion

import (
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
)

// sdxlLoRAModule is one low-rank module of the test adapter: the diffusers weight it
// adapts in one of the model's components, and its factors.
type sdxlLoRAModule struct {
	component, weight string
	down, up          []float32 // [rank, in], [out, rank] (in = fan-in, kernel included)
	downShape         []int64
	upShape           []int64
}

const (
	sdxlLoRARank  = 4
	sdxlLoRAAlpha = 2.0
	sdxlLoRAScale = 0.8
)

// writeSDXLKohyaLoRA writes an adapter as kohya's SDXL trainer names it — UNet modules
// by the original checkpoint's names (lora_unet_input_blocks_4_1_...), lora_te1_ and
// lora_te2_ for the text encoders — for a few linear and conv weights of m, with random
// factors, and returns its path and modules.
func writeSDXLKohyaLoRA(t *testing.T, m *modelfile.Model) (string, []sdxlLoRAModule) {
	t.Helper()
	r := rand.New(rand.NewPCG(5, 6))
	targets := []struct{ component, weight string }{
		{lora.UNet, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"},
		{lora.UNet, "down_blocks.1.attentions.0.proj_in.weight"},
		{lora.UNet, "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"},
		{lora.UNet, "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"},
		{lora.UNet, "down_blocks.0.resnets.0.conv1.weight"}, // a LoCon conv module
		{lora.TextEncoder, "text_model.encoder.layers.0.self_attn.q_proj.weight"},
		{lora.TextEncoder2, "text_model.encoder.layers.0.self_attn.k_proj.weight"}, // a third of a fused in_proj in the single file
		{lora.TextEncoder2, "text_model.encoder.layers.1.mlp.fc1.weight"},
	}
	comps := map[string]map[string]modelfile.Tensor{
		lora.UNet: m.UNet.Tensors, lora.TextEncoder: m.TextEncoder.Tensors, lora.TextEncoder2: m.ExtraTextEncoders[0].Tensors,
	}
	ldmName := m.UNet.Config.LDMNames()
	var ts []modelfile.Tensor
	var mods []sdxlLoRAModule
	for _, tg := range targets {
		w, ok := comps[tg.component][tg.weight]
		require.True(t, ok, tg.weight)
		out, in := w.Shape[0], int64(1)
		for _, d := range w.Shape[1:] {
			in *= d
		}
		mod := sdxlLoRAModule{component: tg.component, weight: tg.weight,
			down: make([]float32, sdxlLoRARank*in), up: make([]float32, out*sdxlLoRARank),
			downShape: append([]int64{sdxlLoRARank}, w.Shape[1:]...), upShape: []int64{out, sdxlLoRARank}}
		if len(w.Shape) == 4 {
			mod.upShape = []int64{out, sdxlLoRARank, 1, 1}
		}
		for i := range mod.down {
			mod.down[i] = float32(r.NormFloat64() * 0.3)
		}
		for i := range mod.up {
			mod.up[i] = float32(r.NormFloat64() * 0.3)
		}
		path := strings.TrimSuffix(tg.weight, ".weight")
		prefix := map[string]string{lora.UNet: "lora_unet_", lora.TextEncoder: "lora_te1_", lora.TextEncoder2: "lora_te2_"}[tg.component]
		if tg.component == lora.UNet {
			path = ldmName(path)
			require.NotContains(t, path, "blocks.1.attentions", "an original-checkpoint name")
		}
		key := prefix + strings.ReplaceAll(path, ".", "_")
		alpha := []float32{sdxlLoRAAlpha}
		ts = append(ts, f32Tensor(key+".lora_down.weight", mod.down, mod.downShape...),
			f32Tensor(key+".lora_up.weight", mod.up, mod.upShape...), f32Tensor(key+".alpha", alpha))
		mods = append(mods, mod)
	}
	file := filepath.Join(t.TempDir(), "sdxl-style.safetensors")
	require.NoError(t, modelfile.WriteSafetensors(file, ts, nil))
	return file, mods
}

// writeMergedSDXL copies the diffusers folder src to a new folder with the modules merged
// into its weights by the LoRA formula, W' = W + scale · alpha/rank · up·down, computed
// here in float64 and stored as float32.
func writeMergedSDXL(t *testing.T, src string, mods []sdxlLoRAModule) string {
	t.Helper()
	dst := t.TempDir()
	files := map[string]string{lora.UNet: "unet/diffusion_pytorch_model.safetensors",
		lora.TextEncoder: "text_encoder/model.safetensors", lora.TextEncoder2: "text_encoder_2/model.safetensors"}
	require.NoError(t, filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		require.NoError(t, os.MkdirAll(filepath.Join(dst, filepath.Dir(rel)), 0o755))
		in, err := os.Open(path)
		require.NoError(t, err)
		defer in.Close()
		out, err := os.Create(filepath.Join(dst, rel))
		require.NoError(t, err)
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	}))
	for comp, rel := range files {
		f, err := modelfile.OpenFile(filepath.Join(src, rel))
		require.NoError(t, err)
		ts := make([]modelfile.Tensor, len(f.Tensors))
		for i, w := range f.Tensors {
			ts[i] = w
			for _, mod := range mods {
				if mod.component != comp || mod.weight != w.Name {
					continue
				}
				base, err := w.Float32s()
				require.NoError(t, err)
				out, in := int(mod.upShape[0]), len(mod.down)/sdxlLoRARank
				merged := make([]float32, len(base))
				for o := range out {
					for j := range in {
						var d float64
						for k := range sdxlLoRARank {
							d += float64(mod.up[o*sdxlLoRARank+k]) * float64(mod.down[k*in+j])
						}
						merged[o*in+j] = float32(float64(base[o*in+j]) + sdxlLoRAScale*sdxlLoRAAlpha/sdxlLoRARank*d)
					}
				}
				ts[i] = f32Tensor(w.Name, merged, w.Shape...)
			}
		}
		require.NoError(t, modelfile.WriteSafetensors(filepath.Join(dst, rel), ts, f.Metadata))
		require.NoError(t, f.Close())
	}
	return dst
}

// openMergedSDXL opens a copy of the kit's sdxl-tiny with mods merged into its files.
func openMergedSDXL(t *testing.T, mods []sdxlLoRAModule) *Pipeline {
	t.Helper()
	p, err := Open(writeMergedSDXL(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "diffusers"), mods),
		WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// An SDXL adapter as kohya's SDXL trainer writes it, on the kit's sdxl-tiny from its
// folder and from its single file: the run equals, step by step, the run of a copy of the
// model with the adapter merged into its files by the formula above (UNet, both text
// encoders), and differs clearly from the run without it.
func TestSDXLLoRAMatchesMergedModel(t *testing.T) {
	base := openSDXLTiny(t, "diffusers")
	file, mods := writeSDXLKohyaLoRA(t, base.model)
	merged := openMergedSDXL(t, mods)

	req := Request{Prompt: "a red apple on a table", NegativePrompt: "blurry", Width: 64, Height: 64, Steps: 4,
		GuidanceScale: 5, Seed: 9, Sampler: Euler}
	want, _ := runSteps(t, merged, req)
	plain, _ := runSteps(t, base, req)
	last := len(want) - 1
	changed := relErr(plain[last], want[last])
	t.Logf("the adapter changes the final latents by %.2e of max|ref|", changed)
	require.Greater(t, changed, 1e-2, "the adapter must change the result")

	for _, source := range []string{"diffusers", "single-file"} {
		t.Run(source, func(t *testing.T) {
			p := base
			if source != "diffusers" {
				p = openSDXLTiny(t, source)
			}
			lreq := req
			lreq.LoRAs = []LoRA{{Path: file, Scale: sdxlLoRAScale}}
			got, res := runSteps(t, p, lreq)
			require.Len(t, got, len(want))
			worst := 0.0
			for i := range want {
				worst = math.Max(worst, relErr(got[i], want[i]))
			}
			t.Logf("with the adapter vs the merged model: max over steps %.2e of max|ref|", worst)
			assert.LessOrEqual(t, worst, conformanceTol)
			require.Len(t, res.Params.LoRAs, 1)
			assert.Equal(t, "sdxl-style", res.Params.LoRAs[0].Name)

			again, _ := runSteps(t, p, req) // the base weights restored
			assert.LessOrEqual(t, relErr(again[last], plain[last]), 1e-6)
		})
	}
}

// A refiner hand-over with an adapter: the base model's stage runs adapted. With the
// model as its own refiner the whole run equals the merged model's hand-over.
func TestSDXLLoRAWithRefiner(t *testing.T) {
	base := openSDXLTiny(t, "diffusers")
	file, mods := writeSDXLKohyaLoRA(t, base.model)
	merged := openMergedSDXL(t, mods)
	req := Request{Prompt: "a red apple on a table", Width: 64, Height: 64, Steps: 4, GuidanceScale: 5, Seed: 9, Sampler: Euler}
	want, err := merged.Txt2ImgRefined(t.Context(), req, merged, 0.5)
	require.NoError(t, err)
	req.LoRAs = []LoRA{{Path: file, Scale: sdxlLoRAScale}}
	got, err := base.Txt2ImgRefined(t.Context(), req, base, 0.5)
	require.NoError(t, err)
	a, b := imageCHW(got.Images[0]), imageCHW(want.Images[0])
	require.Len(t, a, len(b))
	worst := 0
	for i := range a {
		worst = max(worst, int(a[i])-int(b[i]), int(b[i])-int(a[i]))
	}
	assert.LessOrEqual(t, worst, 1, "8-bit levels")
	require.Len(t, got.Params.LoRAs, 1)
	assert.Contains(t, got.Params.A1111(0), "Lora hashes: ")
}
