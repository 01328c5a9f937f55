package lora

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kitLoRA is the conformance kit's lora/ folder with its base model, skipped
// when either is absent.
type kitLoRA struct {
	dir    string
	model  *modelfile.Model
	golden *modelfile.File
	rank   int
	alpha  float64
	counts map[string]int // modules per component
}

func openKit(t *testing.T) *kitLoRA {
	t.Helper()
	kit := testutil.ConformanceDir(t)
	dir := filepath.Join(kit, "lora")
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Skipf("kit has no lora/: %v", err)
	}
	var man struct {
		Files map[string]struct {
			UNetModules int `json:"unet_modules"`
			TEModules   int `json:"te_modules"`
		} `json:"files"`
		Models struct {
			BaseModel string  `json:"base_model"`
			Rank      int     `json:"rank"`
			Alpha     float64 `json:"alpha"`
		} `json:"models"`
	}
	require.NoError(t, json.Unmarshal(raw, &man))
	base := filepath.Join(kit, man.Models.BaseModel, "diffusers")
	if _, err := os.Stat(base); err != nil {
		t.Skipf("base model %s absent: %v", man.Models.BaseModel, err)
	}
	m, err := modelfile.Load(base)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	g, err := modelfile.OpenSafetensors(filepath.Join(dir, "golden.safetensors"))
	require.NoError(t, err)
	t.Cleanup(func() { g.Close() })
	k := man.Files["lora-kohya.safetensors"]
	return &kitLoRA{dir: dir, model: m, golden: g, rank: man.Models.Rank, alpha: man.Models.Alpha,
		counts: map[string]int{UNet: k.UNetModules, TextEncoder: k.TEModules}}
}

func (k *kitLoRA) targets(component string) map[string]modelfile.Tensor {
	if component == UNet {
		return k.model.UNet.Tensors
	}
	return k.model.TextEncoder.Tensors
}

// asF32 converts a component's weights to float32 tensors, so that a merge
// into them shows the arithmetic without the float16 rounding of storage.
func asF32(t *testing.T, ts map[string]modelfile.Tensor) map[string]modelfile.Tensor {
	out := make(map[string]modelfile.Tensor, len(ts))
	for name, x := range ts {
		v, err := x.Float32s()
		require.NoError(t, err)
		out[name] = f32Tensor(name, x.Shape, v)
	}
	return out
}

func decoded(t *testing.T, x modelfile.Tensor) []float32 {
	t.Helper()
	v, err := x.Float32s()
	require.NoError(t, err)
	return v
}

// refMerge is the kit's formula, W + s·(alpha/r)·up@down, written out with
// the kohya file's own tensors (down [r, in(, kh, kw)], up [out, r(, 1, 1)]).
func refMerge(t *testing.T, f *File, m *Module, base []float32, s float64) []float64 {
	down, up := m.tensors["lora_down.weight"], m.tensors["lora_up.weight"]
	if m.tensors["lora_A.weight"].Data != nil {
		down, up = m.tensors["lora_A.weight"], m.tensors["lora_B.weight"]
	}
	d, u := decoded(t, down), decoded(t, up)
	r := int(down.Shape[0])
	cols := len(d) / r
	out := len(u) / r
	c := 1.0
	if m.HasAlpha {
		c = m.Alpha / float64(r)
	}
	require.Len(t, base, out*cols, "%s in %s", m.Key, f.Path)
	w := make([]float64, len(base))
	for o := range out {
		for j := range cols {
			var acc float64
			for k := range r {
				acc += float64(u[o*r+k]) * float64(d[k*cols+j])
			}
			w[o*cols+j] = float64(base[o*cols+j]) + s*c*acc
		}
	}
	return w
}

func maxAbs[T float32 | float64](v []T) float64 {
	var m float64
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	return m
}

func TestKitMergedWeights(t *testing.T) {
	k := openKit(t)
	for _, file := range []string{"lora-kohya.safetensors", "lora-peft.safetensors"} {
		t.Run(file, func(t *testing.T) {
			f, err := Load(filepath.Join(k.dir, file))
			require.NoError(t, err)
			defer f.Close()
			require.NoError(t, f.CheckComponents(UNet, TextEncoder))
			assert.Len(t, f.Modules, k.counts[UNet]+k.counts[TextEncoder])
			for _, m := range f.Modules {
				assert.Equal(t, LoRA, m.Kind, m.Key)
				if strings.HasPrefix(file, "lora-kohya") {
					assert.True(t, m.HasAlpha, m.Key)
					assert.Equal(t, k.alpha, m.Alpha, m.Key)
				}
			}
			for _, comp := range []string{UNet, TextEncoder} {
				names, err := f.Targets(k.targets(comp), comp)
				require.NoError(t, err, "every module matches a weight")
				assert.Len(t, names, k.counts[comp], comp)
			}

			// Golden fused weights, stored back as float16 (the base model's
			// dtype): within 2e-7 × max|W'| plus half a float16 ulp.
			worstStored, worstF32 := 0.0, 0.0
			for _, comp := range []string{UNet, TextEncoder} {
				prefix := map[string]string{UNet: "merged.scale1.0.unet.", TextEncoder: "merged.scale1.0.te."}[comp]
				stored, err := f.Apply(k.targets(comp), comp, 1.0)
				require.NoError(t, err)
				assert.Len(t, stored, k.counts[comp])
				exact, err := f.Apply(asF32(t, k.targets(comp)), comp, 1.0)
				require.NoError(t, err)
				n := 0
				for _, g := range k.golden.Tensors {
					name, ok := strings.CutPrefix(g.Name, prefix)
					if !ok {
						continue
					}
					n++
					ref := decoded(t, g)
					got, ok := stored[name]
					require.True(t, ok, "%s patched", name)
					assert.Equal(t, modelfile.F16, got.DType)
					assert.Equal(t, g.Shape, got.Shape)
					gv, ev := decoded(t, got), decoded(t, exact[name])
					scale := maxAbs(ref)
					for i := range ref {
						e := math.Abs(float64(ev[i]) - float64(ref[i]))
						worstF32 = math.Max(worstF32, e/scale)
						require.LessOrEqual(t, e, 2e-7*scale, "%s[%d] in float32", name, i)
						ulp := math.Abs(float64(ref[i])) * 0x1p-11
						s := math.Abs(float64(gv[i]) - float64(ref[i]))
						worstStored = math.Max(worstStored, s/scale)
						require.LessOrEqual(t, s, 2e-7*scale+math.Max(ulp, 0x1p-25), "%s[%d] as float16", name, i)
					}
				}
				assert.Positive(t, n, "golden has merged %s weights", comp)
			}
			t.Logf("merged weights vs fuse_lora: float32 %.2e, stored float16 %.2e (× max|W'|)", worstF32, worstStored)
		})
	}
}

// Every module at scale 0.6 (and 1.0) against the formula, computed here.
func TestKitFormulaAllModules(t *testing.T) {
	k := openKit(t)
	for _, file := range []string{"lora-kohya.safetensors", "lora-peft.safetensors"} {
		f, err := Load(filepath.Join(k.dir, file))
		require.NoError(t, err)
		defer f.Close()
		for _, s := range []float64{0.6, 1.0} {
			worst := 0.0
			for _, comp := range []string{UNet, TextEncoder} {
				targets := asF32(t, k.targets(comp))
				got, err := f.Apply(targets, comp, s)
				require.NoError(t, err)
				bs, err := f.resolve(targets, comp, nil)
				require.NoError(t, err)
				for _, b := range bs {
					ref := refMerge(t, f, b.module, decoded(t, targets[b.weight]), s)
					gv := decoded(t, got[b.weight])
					scale := maxAbs(ref)
					for i := range ref {
						e := math.Abs(float64(gv[i])-ref[i]) / scale
						worst = math.Max(worst, e)
					}
				}
			}
			t.Logf("%s scale %.1f: all modules vs formula %.2e × max|W'|", file, s, worst)
			assert.LessOrEqual(t, worst, 2e-7, "%s scale %v", file, s)
		}
	}
}

// The two files are one adapter: 0.6 of one plus 0.4 of the other is the
// adapter at 1.0, and scales of UNet and text encoder are independent calls.
func TestKitMergeSeveral(t *testing.T) {
	k := openKit(t)
	kohya, err := Load(filepath.Join(k.dir, "lora-kohya.safetensors"))
	require.NoError(t, err)
	defer kohya.Close()
	peft, err := Load(filepath.Join(k.dir, "lora-peft.safetensors"))
	require.NoError(t, err)
	defer peft.Close()
	targets := asF32(t, k.model.UNet.Tensors)
	whole, err := kohya.Apply(targets, UNet, 1.0)
	require.NoError(t, err)
	mixed, err := Merge(targets, UNet, Scaled{kohya, 0.6}, Scaled{peft, 0.4})
	require.NoError(t, err)
	require.Equal(t, len(whole), len(mixed))
	for name, w := range whole {
		ref, got := decoded(t, w), decoded(t, mixed[name])
		scale := maxAbs(ref)
		for i := range ref {
			require.LessOrEqual(t, math.Abs(float64(got[i]-ref[i])), 1e-6*scale, name)
		}
	}
	none, err := kohya.Apply(k.model.TextEncoder.Tensors, TextEncoder, 0)
	require.NoError(t, err)
	for name, w := range none {
		assert.Equal(t, k.model.TextEncoder.Tensors[name].Data, w.Data, "scale 0 reproduces %s bit for bit", name)
	}
}

// An adapter made for SDXL (kohya names of SDXL modules, a second text
// encoder) is refused on an SD 1.5 model, naming what does not fit.
func TestKitSDXLAdapterOnSD1(t *testing.T) {
	k := openKit(t)
	down := f32Tensor("", []int64{4, 64}, make([]float32, 4*64))
	up := f32Tensor("", []int64{64, 4}, make([]float32, 64*4))
	var ts []modelfile.Tensor
	for _, key := range []string{
		"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", // the LDM names kohya's SDXL trainer writes
		"lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k",
		"lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
		"lora_te2_text_model_encoder_layers_9_mlp_fc1",
	} {
		d, u := down, up
		d.Name, u.Name = key+".lora_down.weight", key+".lora_up.weight"
		ts = append(ts, d, u)
	}
	path := filepath.Join(t.TempDir(), "sdxl-lora.safetensors")
	require.NoError(t, modelfile.WriteSafetensors(path, ts, nil))
	f, err := Load(path)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, []string{UNet, TextEncoder, TextEncoder2}, f.Components())
	err = f.CheckComponents(UNet, TextEncoder)
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "lora_te2_text_model_encoder_layers_9_mlp_fc1")
	_, err = f.Apply(k.model.UNet.Tensors, UNet, 1)
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q")
	assert.ErrorContains(t, err, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k")
	_, err = f.Apply(k.model.TextEncoder.Tensors, TextEncoder, 1)
	assert.ErrorIs(t, err, ErrMismatch, "a 64-wide update on the 32-wide q_proj")
	assert.ErrorContains(t, err, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
}
