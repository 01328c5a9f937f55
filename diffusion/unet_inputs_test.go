package diffusion

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kitDir returns a folder of the conformance kit, skipping when it is absent.
func kitDir(t *testing.T, name string) string {
	dir := filepath.Join(testutil.ConformanceDir(t), name)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s not in the conformance kit: %v", name, err)
	}
	return dir
}

// loadSD1Tiny loads part 1's sd1-tiny into a CPU engine.
func loadSD1Tiny(t *testing.T, lib *binding.Library) (*engine, *modelfile.Model) {
	m, err := modelfile.Load(filepath.Join(kitDir(t, "sd1-tiny"), "diffusers"))
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	t.Cleanup(e.close)
	require.NoError(t, e.load(context.Background(), m))
	return e, m
}

// The base UNet with ControlNet residuals added, against diffusers' UNet2DConditionModel
// called with down_block_additional_residuals and mid_block_additional_residual.
func TestUNetControlResidualsMatchDiffusers(t *testing.T) {
	dir := kitDir(t, "controlnet-tiny")
	lib := testLibrary(t)
	e, _ := loadSD1Tiny(t, lib)
	g := openGolden(t, filepath.Join(dir, "golden.safetensors"))

	residuals := func(prefix string) (down [][]float32, mid []float32) {
		for i := 0; i < 12; i++ {
			d, _ := g.floats(fmt.Sprintf("%s.down%d", prefix, i))
			down = append(down, d)
		}
		mid, _ = g.floats(prefix + ".mid")
		return down, mid
	}
	inputs := func(prefix string) *unetInputs {
		x, xs := g.floats(prefix + ".x")
		ts, _ := g.floats(prefix + ".t")
		c, cs := g.floats(prefix + ".context")
		return &unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts, context: c, tokens: int(cs[1]), residualScale: 1}
	}
	cases := []struct {
		name, in, res string
		scale         float32
		ref           string
	}{
		{"with control", "cn", "cn", 1, "unet_with_control.out"},
		{"with control 0.6", "cn", "cn06", 1, "unet_with_control06.out"},
		// cn06's residuals are cn's times 0.6, so the scale gives the same sums.
		{"residual scale 0.6", "cn", "cn", 0.6, "unet_with_control06.out"},
		{"without control", "cn", "", 1, "unet_without_control.out"},
		{"non-square", "cn_ns", "cn_ns", 1, "unet_with_control_ns.out"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := inputs(tc.in)
			if tc.res != "" {
				in.downResiduals, in.midResidual = residuals(tc.res)
			}
			in.residualScale = tc.scale
			got, err := e.unetNet().eval(in)
			require.NoError(t, err)
			ref, _ := g.floats(tc.ref)
			assertClose(t, tc.ref, got, ref)
		})
	}

	// Fewer down residuals go to the first skips (diffusers zips them); more are refused.
	in := inputs("cn")
	in.downResiduals, _ = residuals("cn")
	in.downResiduals = append(in.downResiduals, in.downResiduals[0])
	_, err := e.unetNet().eval(in)
	require.ErrorIs(t, err, ErrInvalidRequest)
	in.downResiduals = in.downResiduals[:1]
	_, err = e.unetNet().eval(in)
	require.NoError(t, err)
}

// kitUNet loads the UNet of a kit folder's diffusers pipeline on its own, its runtime
// config made from its config.json as Open makes it.
func kitUNet(t *testing.T, lib *binding.Library, folder string) *engine {
	dir := filepath.Join(kitDir(t, folder), "diffusers", "unet")
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	require.NoError(t, err)
	mc, err := modelfile.ParseUNetConfig(b)
	require.NoError(t, err)
	cfg, err := unetConfig(mc)
	require.NoError(t, err)
	f, err := modelfile.OpenSafetensors(filepath.Join(dir, "diffusion_pytorch_model.safetensors"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	tensors := map[string]modelfile.Tensor{}
	for _, ten := range f.Tensors {
		tensors[ten.Name] = ten
	}
	return loadUNet(t, lib, cfg, tensors)
}

// loadUNet makes a CPU engine holding only a UNet of the given config and weights.
func loadUNet(t *testing.T, lib *binding.Library, cfg binding.UNetConfig, tensors map[string]modelfile.Tensor) *engine {
	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	t.Cleanup(e.close)
	ws, err := e.weights(tensors)
	require.NoError(t, err)
	e.unet, err = lib.UNetLoad(e.ctx, &cfg, ws)
	require.NoError(t, err)
	e.unetCfg = cfg
	return e
}

// SDXL's added conditioning (text_embeds and time_ids through add_embedding) against
// diffusers' UNet2DConditionModel with added_cond_kwargs.
func TestUNetTextTimeMatchesDiffusers(t *testing.T) {
	dir := kitDir(t, "sdxl-tiny")
	e := kitUNet(t, testLibrary(t), "sdxl-tiny")
	g := openGolden(t, filepath.Join(dir, "golden.safetensors"))
	for _, u := range []string{"unet0", "unet1"} {
		x, xs := g.floats(u + ".x")
		ts, _ := g.floats(u + ".t")
		c, cs := g.floats(u + ".context")
		te, _ := g.floats(u + ".text_embeds")
		ids, _ := g.floats(u + ".time_ids")
		ref, _ := g.floats(u + ".out")
		got, err := e.unetNet().eval(&unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts,
			context: c, tokens: int(cs[1]), textEmbeds: te, timeIDs: ids, residualScale: 1})
		require.NoError(t, err)
		assertClose(t, u, got, ref)
	}

	// Without its added conditioning this UNet cannot run.
	x, xs := g.floats("unet0.x")
	ts, _ := g.floats("unet0.t")
	c, cs := g.floats("unet0.context")
	_, err := e.unetNet().eval(&unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts, context: c, tokens: int(cs[1]), residualScale: 1})
	assert.ErrorIs(t, err, binding.ErrInvalidArgument)
}

// The x4 upscaler's UNet: 7 input channels, the noise level through a class-embedding
// table, and only_cross_attention [true, true, true, false] (attn1 attends to the text in
// those levels), against diffusers' UNet2DConditionModel with class_labels.
func TestUpscalerUNetMatchesDiffusers(t *testing.T) {
	dir := kitDir(t, "upscaler-tiny")
	e := kitUNet(t, testLibrary(t), "upscaler-tiny")
	require.Equal(t, [binding.MaxLevels]int32{1, 1, 1, 0}, e.unetCfg.OnlyCrossAttention)
	g := openGolden(t, filepath.Join(dir, "golden.safetensors"))
	for _, u := range []string{"unet0", "unet1"} {
		x, xs := g.floats(u + ".x")
		ts, _ := g.floats(u + ".t")
		c, cs := g.floats(u + ".context")
		var labels []float32
		for _, l := range g.ints(u + ".class_labels") {
			labels = append(labels, float32(l))
		}
		ref, _ := g.floats(u + ".out")
		got, err := e.unetNet().eval(&unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts,
			context: c, tokens: int(cs[1]), classLabels: labels, residualScale: 1})
		require.NoError(t, err)
		assertClose(t, u, got, ref)
	}
}

// f32Tensor wraps float32 values as a weight.
func f32Tensor(name string, v []float32, shape ...int64) modelfile.Tensor {
	return modelfile.Tensor{Name: name, DType: modelfile.F32, Shape: shape,
		Data: unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))}
}

// sinusoid is diffusers' get_timestep_embedding(v, d, flip_sin_to_cos=True,
// downscale_freq_shift=0) for one value, computed here in float64.
func sinusoid(v float64, d int) []float64 {
	half := d / 2
	out := make([]float64, d)
	for k := 0; k < half; k++ {
		a := v * math.Exp(-math.Log(10000)*float64(k)/float64(half))
		out[k], out[half+k] = math.Cos(a), math.Sin(a)
	}
	return out
}

// mlp is diffusers' TimestepEmbedding: w2 silu(w1 x + b1) + b2, with row-major (out, in)
// weights.
func mlp(x []float64, w1, b1, w2, b2 []float32) []float64 {
	dense := func(x []float64, w, b []float32) []float64 {
		out := make([]float64, len(b))
		for i := range out {
			s := float64(b[i])
			for j, xj := range x {
				s += float64(w[i*len(x)+j]) * xj
			}
			out[i] = s
		}
		return out
	}
	h := dense(x, w1, b1)
	for i, v := range h {
		h[i] = v / (1 + math.Exp(-v))
	}
	return dense(h, w2, b2)
}

// Class labels and SDXL-style added conditioning on sd1-tiny's UNet with random extra
// weights. The reference is independent of how the runtime computes them: every extra
// embedding is a vector added to the time embedding before its SiLU, which is what
// time_embedding.linear_2's bias is; so the reference is the plain UNet with that vector,
// computed here in float64 for each sample, added to the bias, run one sample at a time.
func TestUNetClassAndAddedEmbeddings(t *testing.T) {
	lib := testLibrary(t)
	base, m := loadSD1Tiny(t, lib)
	g := openGolden(t, filepath.Join(kitDir(t, "sd1-tiny"), "golden.safetensors"))
	x, xs := g.floats("unet0.x")
	ts, _ := g.floats("unet0.t")
	c, cs := g.floats("unet0.context")
	batch, h, w, tokens := int(xs[0]), int(xs[2]), int(xs[3]), int(cs[1])
	require.Equal(t, 2, batch)
	c0 := int(base.unetCfg.BlockOutChannels[0])
	temb := 4 * c0
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int, scale float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = scale * (2*rng.Float32() - 1)
		}
		return v
	}
	bias, err := m.UNet.Tensors["time_embedding.linear_2.bias"].Float32s()
	require.NoError(t, err)

	const nClasses, timeDim, nIDs, textDim = 7, 8, 3, 5
	type mlpW struct{ w1, b1, w2, b2 []float32 }
	newMLP := func(in int) mlpW {
		return mlpW{random(temb*in, 1/float32(math.Sqrt(float64(in)))), random(temb, 0.5),
			random(temb*temb, 1/float32(math.Sqrt(float64(temb)))), random(temb, 0.5)}
	}
	table := random(nClasses*temb, 1)
	classMLP, addMLP := newMLP(c0), newMLP(textDim+nIDs*timeDim)
	labels := []float32{3, 6}
	timestepLabels := []float32{20, 350}
	text := random(batch*textDim, 1)
	ids := []float32{64, 96, 0, 8, 1024, 16}

	cases := []struct {
		name  string
		setup func(cfg *binding.UNetConfig, ws map[string]modelfile.Tensor, in *unetInputs)
		extra func(row int) []float64 // what sample row adds to the time embedding
	}{
		{"class table", func(cfg *binding.UNetConfig, ws map[string]modelfile.Tensor, in *unetInputs) {
			cfg.ClassEmbedType, cfg.NumClassEmbeds = binding.UNetClassTable, nClasses
			ws["class_embedding.weight"] = f32Tensor("class_embedding.weight", table, nClasses, int64(temb))
			in.classLabels = labels
		}, func(row int) []float64 {
			out := make([]float64, temb)
			for i := range out {
				out[i] = float64(table[int(labels[row])*temb+i])
			}
			return out
		}},
		{"class timestep", func(cfg *binding.UNetConfig, ws map[string]modelfile.Tensor, in *unetInputs) {
			cfg.ClassEmbedType = binding.UNetClassTimestep
			ws["class_embedding.linear_1.weight"] = f32Tensor("class_embedding.linear_1.weight", classMLP.w1, int64(temb), int64(c0))
			ws["class_embedding.linear_1.bias"] = f32Tensor("class_embedding.linear_1.bias", classMLP.b1, int64(temb))
			ws["class_embedding.linear_2.weight"] = f32Tensor("class_embedding.linear_2.weight", classMLP.w2, int64(temb), int64(temb))
			ws["class_embedding.linear_2.bias"] = f32Tensor("class_embedding.linear_2.bias", classMLP.b2, int64(temb))
			in.classLabels = timestepLabels
		}, func(row int) []float64 {
			return mlp(sinusoid(float64(timestepLabels[row]), c0), classMLP.w1, classMLP.b1, classMLP.w2, classMLP.b2)
		}},
		{"text_time", func(cfg *binding.UNetConfig, ws map[string]modelfile.Tensor, in *unetInputs) {
			cfg.AdditionEmbedType, cfg.AdditionTimeEmbedDim = binding.UNetAdditionTextTime, timeDim
			cfg.ProjectionClassEmbeddingsInputDim = textDim + nIDs*timeDim
			ws["add_embedding.linear_1.weight"] = f32Tensor("add_embedding.linear_1.weight", addMLP.w1, int64(temb), int64(textDim+nIDs*timeDim))
			ws["add_embedding.linear_1.bias"] = f32Tensor("add_embedding.linear_1.bias", addMLP.b1, int64(temb))
			ws["add_embedding.linear_2.weight"] = f32Tensor("add_embedding.linear_2.weight", addMLP.w2, int64(temb), int64(temb))
			ws["add_embedding.linear_2.bias"] = f32Tensor("add_embedding.linear_2.bias", addMLP.b2, int64(temb))
			in.textEmbeds, in.timeIDs = text, ids
		}, func(row int) []float64 {
			var v []float64
			for _, e := range text[row*textDim : (row+1)*textDim] {
				v = append(v, float64(e))
			}
			for _, id := range ids[row*nIDs : (row+1)*nIDs] {
				v = append(v, sinusoid(float64(id), timeDim)...)
			}
			return mlp(v, addMLP.w1, addMLP.b1, addMLP.w2, addMLP.b2)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base.unetCfg
			ws := map[string]modelfile.Tensor{}
			for k, v := range m.UNet.Tensors {
				ws[k] = v
			}
			in := &unetInputs{x: x, batch: batch, h: h, w: w, t: ts, context: c, tokens: tokens, residualScale: 1}
			tc.setup(&cfg, ws, in)
			got, err := loadUNet(t, lib, cfg, ws).unetNet().eval(in)
			require.NoError(t, err)

			per := len(got) / batch
			for row := 0; row < batch; row++ {
				extra := tc.extra(row)
				folded := make([]float32, temb)
				for i := range folded {
					folded[i] = float32(float64(bias[i]) + extra[i])
				}
				ref := map[string]modelfile.Tensor{}
				for k, v := range m.UNet.Tensors {
					ref[k] = v
				}
				ref["time_embedding.linear_2.bias"] = f32Tensor("time_embedding.linear_2.bias", folded, int64(temb))
				xr := x[row*len(x)/batch : (row+1)*len(x)/batch]
				cr := c[row*len(c)/batch : (row+1)*len(c)/batch]
				want, err := loadUNet(t, lib, base.unetCfg, ref).unetNet().eval(&unetInputs{x: xr, batch: 1, h: h, w: w, t: ts[row : row+1], context: cr, tokens: tokens, residualScale: 1})
				require.NoError(t, err)
				assertClose(t, fmt.Sprintf("%s row %d", tc.name, row), got[row*per:(row+1)*per], want)
			}
			// The same weights without the extra input are refused, not run unconditioned.
			plain := &unetInputs{x: x, batch: batch, h: h, w: w, t: ts, context: c, tokens: tokens, residualScale: 1}
			_, err = loadUNet(t, lib, cfg, ws).unetNet().eval(plain)
			assert.ErrorIs(t, err, binding.ErrInvalidArgument)
		})
	}
}

// mid_attention 0 is diffusers' UNetMidBlock2D as UNet2DConditionModel builds it: one
// ResNet. Reference: the cross-attention mid block with its transformer and its second
// ResNet made identities (proj_out and conv2 zero: each then only adds its input back).
func TestUNetMidBlockWithoutAttention(t *testing.T) {
	lib := testLibrary(t)
	base, m := loadSD1Tiny(t, lib)
	g := openGolden(t, filepath.Join(kitDir(t, "sd1-tiny"), "golden.safetensors"))
	x, xs := g.floats("unet0.x")
	ts, _ := g.floats("unet0.t")
	c, cs := g.floats("unet0.context")
	in := &unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts, context: c, tokens: int(cs[1]), residualScale: 1}

	identity, single := map[string]modelfile.Tensor{}, map[string]modelfile.Tensor{}
	for k, v := range m.UNet.Tensors {
		identity[k] = v
		if !strings.HasPrefix(k, "mid_block.attentions.0.") && !strings.HasPrefix(k, "mid_block.resnets.1.") {
			single[k] = v
		}
	}
	for _, k := range []string{"mid_block.attentions.0.proj_out", "mid_block.resnets.1.conv2"} {
		for _, p := range []string{".weight", ".bias"} {
			ten := identity[k+p]
			identity[k+p] = f32Tensor(k+p, make([]float32, ten.NumElements()), ten.Shape...)
		}
	}
	want, err := loadUNet(t, lib, base.unetCfg, identity).unetNet().eval(in)
	require.NoError(t, err)
	cfg := base.unetCfg
	cfg.MidAttention = 0
	got, err := loadUNet(t, lib, cfg, single).unetNet().eval(in)
	require.NoError(t, err)
	assertClose(t, "mid block without attention", got, want)
}
