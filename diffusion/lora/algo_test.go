package lora

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func f32Tensor(name string, shape []int64, v []float32) modelfile.Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return modelfile.Tensor{Name: name, DType: modelfile.F32, Shape: shape, Data: b}
}

// randT is a tensor of uniform values in [-1, 1); its float64 copy is the
// reference's input.
type randT struct {
	t modelfile.Tensor
	v []float64
}

func newRand(rng *rand.Rand, name string, shape ...int64) randT {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v32 := make([]float32, n)
	v := make([]float64, n)
	for i := range v32 {
		v32[i] = float32(rng.Float64()*2 - 1)
		v[i] = float64(v32[i])
	}
	return randT{f32Tensor(name, shape, v32), v}
}

func scalar(name string, x float32) modelfile.Tensor { return f32Tensor(name, nil, []float32{x}) }

// fromTensors builds an in-memory File as Load would from these tensors.
func fromTensors(t *testing.T, ts ...modelfile.Tensor) *File {
	t.Helper()
	f, err := parse("test.safetensors", ts)
	require.NoError(t, err)
	f.f = &modelfile.File{} // stands for the open mapping
	return f
}

// checkMerge applies f to one weight and compares with want, the merged
// weight computed in the test from the definitions.
func checkMerge(t *testing.T, f *File, w randT, scale float64, want []float64) {
	t.Helper()
	targets := map[string]modelfile.Tensor{w.t.Name: w.t}
	got, err := f.Apply(targets, UNet, scale)
	require.NoError(t, err)
	require.Len(t, got, 1)
	gv := decoded(t, got[w.t.Name])
	worst := 0.0
	for i := range want {
		worst = math.Max(worst, math.Abs(float64(gv[i])-want[i]))
	}
	assert.LessOrEqual(t, worst, 1e-6*maxAbs(want), "max|diff| %.3g", worst)
	assert.Equal(t, w.t.Data, f32Tensor("", nil, toF32(w.v)).Data, "the base weight is untouched")
}

func toF32(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// plus returns base + s·d.
func plus(base []float64, s float64, d []float64) []float64 {
	out := make([]float64, len(base))
	for i := range base {
		out[i] = base[i] + s*d[i]
	}
	return out
}

func TestLoHaLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const out, in, r = 6, 5, 3
	w := newRand(rng, "m.weight", out, in)
	w1a, w1b := newRand(rng, "m.hada_w1_a", out, r), newRand(rng, "m.hada_w1_b", r, in)
	w2a, w2b := newRand(rng, "m.hada_w2_a", out, r), newRand(rng, "m.hada_w2_b", r, in)
	f := fromTensors(t, w1a.t, w1b.t, w2a.t, w2b.t, scalar("m.alpha", 2))
	require.Equal(t, LoHa, f.Modules[0].Kind)
	// ΔW[o, i] = (Σ_k w1a[o,k] w1b[k,i]) · (Σ_k w2a[o,k] w2b[k,i]) · alpha/r
	d := make([]float64, out*in)
	for o := range out {
		for i := range in {
			var p1, p2 float64
			for k := range r {
				p1 += w1a.v[o*r+k] * w1b.v[k*in+i]
				p2 += w2a.v[o*r+k] * w2b.v[k*in+i]
			}
			d[o*in+i] = p1 * p2 * 2.0 / r
		}
	}
	checkMerge(t, f, w, 0.7, plus(w.v, 0.7, d))
}

// tuckerRef is F[o, i, y, x] = Σ_{p,q} core[p, q, y, x] · a[p, o] · b[q, i].
func tuckerRef(core []float64, a, b []float64, r, out, in, kk int) []float64 {
	f := make([]float64, out*in*kk)
	for o := range out {
		for i := range in {
			for yx := range kk {
				var s float64
				for p := range r {
					for q := range r {
						s += core[(p*r+q)*kk+yx] * a[p*out+o] * b[q*in+i]
					}
				}
				f[(o*in+i)*kk+yx] = s
			}
		}
	}
	return f
}

func TestLoHaTuckerConv(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const out, in, r, kh, kw = 4, 3, 2, 3, 3
	w := newRand(rng, "c.weight", out, in, kh, kw)
	t1, t2 := newRand(rng, "c.hada_t1", r, r, kh, kw), newRand(rng, "c.hada_t2", r, r, kh, kw)
	w1a, w1b := newRand(rng, "c.hada_w1_a", r, out), newRand(rng, "c.hada_w1_b", r, in)
	w2a, w2b := newRand(rng, "c.hada_w2_a", r, out), newRand(rng, "c.hada_w2_b", r, in)
	f := fromTensors(t, t1.t, t2.t, w1a.t, w1b.t, w2a.t, w2b.t, scalar("c.alpha", 1))
	f1 := tuckerRef(t1.v, w1a.v, w1b.v, r, out, in, kh*kw)
	f2 := tuckerRef(t2.v, w2a.v, w2b.v, r, out, in, kh*kw)
	d := make([]float64, len(f1))
	for i := range d {
		d[i] = f1[i] * f2[i] * 1.0 / r
	}
	checkMerge(t, f, w, 1, plus(w.v, 1, d))
}

func TestLoConTuckerMid(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const out, in, r, kk = 5, 4, 3, 9
	w := newRand(rng, "c.weight", out, in, 3, 3)
	up := newRand(rng, "c.lora_up.weight", out, r, 1, 1)
	mid := newRand(rng, "c.lora_mid.weight", r, r, 3, 3)
	down := newRand(rng, "c.lora_down.weight", r, in, 1, 1)
	f := fromTensors(t, up.t, mid.t, down.t, scalar("c.alpha", 1.5))
	// ΔW[o, i, y, x] = Σ_{n,m} up[o, n] · mid[n, m, y, x] · down[m, i]
	d := make([]float64, out*in*kk)
	for o := range out {
		for i := range in {
			for yx := range kk {
				var s float64
				for n := range r {
					for m := range r {
						s += up.v[o*r+n] * mid.v[(n*r+m)*kk+yx] * down.v[m*in+i]
					}
				}
				d[(o*in+i)*kk+yx] = s * 1.5 / r
			}
		}
	}
	checkMerge(t, f, w, 0.5, plus(w.v, 0.5, d))
}

func TestLoConConv(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const out, in, r, kk = 4, 3, 2, 9
	w := newRand(rng, "c.weight", out, in, 3, 3)
	up := newRand(rng, "c.lora_up.weight", out, r, 1, 1)
	down := newRand(rng, "c.lora_down.weight", r, in, 3, 3)
	f := fromTensors(t, up.t, down.t) // no alpha: alpha = rank
	d := make([]float64, out*in*kk)
	for o := range out {
		for j := range in * kk {
			for k := range r {
				d[o*in*kk+j] += up.v[o*r+k] * down.v[k*in*kk+j]
			}
		}
	}
	checkMerge(t, f, w, 1, plus(w.v, 1, d))
}

// kronRef is ΔW[a·o2 + b, c·i2 + d, yx] = w1[a, c] · w2[b, d, yx].
func kronRef(w1 []float64, o1, i1 int, w2 []float64, o2, i2, kk int) []float64 {
	in := i1 * i2
	d := make([]float64, o1*o2*in*kk)
	for a := range o1 {
		for b := range o2 {
			for c := range i1 {
				for e := range i2 {
					for yx := range kk {
						d[((a*o2+b)*in+c*i2+e)*kk+yx] = w1[a*i1+c] * w2[(b*i2+e)*kk+yx]
					}
				}
			}
		}
	}
	return d
}

func TestLoKrFactoredLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	const o1, i1, o2, i2, r = 2, 3, 4, 5, 2
	w := newRand(rng, "l.weight", o1*o2, i1*i2)
	w1 := newRand(rng, "l.lokr_w1", o1, i1)
	w2a, w2b := newRand(rng, "l.lokr_w2_a", o2, r), newRand(rng, "l.lokr_w2_b", r, i2)
	f := fromTensors(t, w1.t, w2a.t, w2b.t, scalar("l.alpha", 4))
	w2 := make([]float64, o2*i2)
	for b := range o2 {
		for e := range i2 {
			for k := range r {
				w2[b*i2+e] += w2a.v[b*r+k] * w2b.v[k*i2+e]
			}
		}
	}
	d := kronRef(w1.v, o1, i1, w2, o2, i2, 1)
	for i := range d {
		d[i] *= 4.0 / r // factored: alpha / rank, rank = lokr_w2_b.shape[0]
	}
	checkMerge(t, f, w, 0.8, plus(w.v, 0.8, d))
}

func TestLoKrFullConvIgnoresAlpha(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	const o1, i1, o2, i2, kk = 2, 2, 3, 4, 9
	w := newRand(rng, "c.weight", o1*o2, i1*i2, 3, 3)
	w1 := newRand(rng, "c.lokr_w1", o1, i1)
	w2 := newRand(rng, "c.lokr_w2", o2, i2, 3, 3)
	// Neither factor is decomposed: no rank, so the update is unscaled.
	f := fromTensors(t, w1.t, w2.t, scalar("c.alpha", 8))
	checkMerge(t, f, w, 1, plus(w.v, 1, kronRef(w1.v, o1, i1, w2.v, o2, i2, kk)))
}

func TestLoKrTuckerConv(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	const o1, i1, o2, i2, r, kk = 2, 3, 3, 2, 2, 9
	w := newRand(rng, "c.weight", o1*o2, i1*i2, 3, 3)
	w1a, w1b := newRand(rng, "c.lokr_w1_a", o1, r), newRand(rng, "c.lokr_w1_b", r, i1)
	t2 := newRand(rng, "c.lokr_t2", r, r, 3, 3)
	w2a, w2b := newRand(rng, "c.lokr_w2_a", r, o2), newRand(rng, "c.lokr_w2_b", r, i2)
	f := fromTensors(t, w1a.t, w1b.t, t2.t, w2a.t, w2b.t, scalar("c.alpha", 1))
	w1 := make([]float64, o1*i1)
	for a := range o1 {
		for c := range i1 {
			for k := range r {
				w1[a*i1+c] += w1a.v[a*r+k] * w1b.v[k*i1+c]
			}
		}
	}
	w2 := tuckerRef(t2.v, w2a.v, w2b.v, r, o2, i2, kk)
	d := kronRef(w1, o1, i1, w2, o2, i2, kk)
	for i := range d {
		d[i] *= 1.0 / r // rank = lokr_w1_b.shape[0]
	}
	checkMerge(t, f, w, 1, plus(w.v, 1, d))
}

// doraRef is W + s·(W_d − W), W_d = m · V / (‖V‖ + ε), V = W + c·ΔW, the
// norm per output row (perRow) or per input channel over (out, kh, kw).
func doraRef(w, d, m []float64, c, s float64, out, in, kk int, perRow bool) []float64 {
	cols := in * kk
	v := plus(w, c, d)
	norm := make([]float64, len(m))
	for o := range out {
		for i := range in {
			for yx := range kk {
				x := v[o*cols+i*kk+yx]
				if perRow {
					norm[o] += x * x
				} else {
					norm[i] += x * x
				}
			}
		}
	}
	res := make([]float64, len(w))
	for o := range out {
		for i := range in {
			for yx := range kk {
				j := o*cols + i*kk + yx
				k := i
				if perRow {
					k = o
				}
				wd := m[k] * v[j] / (math.Sqrt(norm[k]) + 0x1p-23)
				res[j] = w[j] + s*(wd-w[j])
			}
		}
	}
	return res
}

func TestDoRA(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	const out, in, r = 5, 4, 2
	t.Run("linear, magnitude per output row", func(t *testing.T) {
		w := newRand(rng, "l.weight", out, in)
		up, down := newRand(rng, "l.lora_up.weight", out, r), newRand(rng, "l.lora_down.weight", r, in)
		mag := newRand(rng, "l.dora_scale", out, 1)
		f := fromTensors(t, up.t, down.t, mag.t, scalar("l.alpha", 1))
		require.True(t, f.Modules[0].DoRA)
		d := make([]float64, out*in)
		for o := range out {
			for i := range in {
				for k := range r {
					d[o*in+i] += up.v[o*r+k] * down.v[k*in+i]
				}
			}
		}
		for _, s := range []float64{1, 0.4} {
			checkMerge(t, f, w, s, doraRef(w.v, d, mag.v, 0.5, s, out, in, 1, true))
		}
		checkMerge(t, f, w, 0, w.v)
	})
	t.Run("LoHa conv, magnitude per input channel", func(t *testing.T) {
		const kk = 9
		w := newRand(rng, "c.weight", out, in, 3, 3)
		w1a, w1b := newRand(rng, "c.hada_w1_a", out, r), newRand(rng, "c.hada_w1_b", r, in*kk)
		w2a, w2b := newRand(rng, "c.hada_w2_a", out, r), newRand(rng, "c.hada_w2_b", r, in*kk)
		mag := newRand(rng, "c.dora_scale", 1, in, 1, 1)
		f := fromTensors(t, w1a.t, w1b.t, w2a.t, w2b.t, mag.t, scalar("c.alpha", 4))
		d := make([]float64, out*in*kk)
		for o := range out {
			for j := range in * kk {
				var p1, p2 float64
				for k := range r {
					p1 += w1a.v[o*r+k] * w1b.v[k*in*kk+j]
					p2 += w2a.v[o*r+k] * w2b.v[k*in*kk+j]
				}
				d[o*in*kk+j] = p1 * p2
			}
		}
		checkMerge(t, f, w, 0.9, doraRef(w.v, d, mag.v, 2, 0.9, out, in, kk, false))
	})
}

// Merged weights keep the base weight's dtype, rounded once.
func TestMergeKeepsDType(t *testing.T) {
	for _, dt := range []modelfile.DType{modelfile.F16, modelfile.BF16, modelfile.F32} {
		w := modelfile.Tensor{Name: "m.weight", DType: dt, Shape: []int64{1, 1}}
		w.Data, _ = encode([]float64{1}, dt)
		f := fromTensors(t, f32Tensor("m.lora_up.weight", []int64{1, 1}, []float32{1}),
			f32Tensor("m.lora_down.weight", []int64{1, 1}, []float32{1.0 / 3}))
		got, err := f.Apply(map[string]modelfile.Tensor{"m.weight": w}, UNet, 1)
		require.NoError(t, err)
		assert.Equal(t, dt, got["m.weight"].DType)
		v := decoded(t, got["m.weight"])
		want := map[modelfile.DType]float32{modelfile.F16: 1.333, modelfile.BF16: 1.3359375, modelfile.F32: float32(4.0 / 3)}[dt]
		assert.InDelta(t, want, v[0], 1e-3, dt.String())

		wide, err := MergeAs(modelfile.F32, map[string]modelfile.Tensor{"m.weight": w}, UNet, Scaled{f, 1})
		require.NoError(t, err)
		assert.Equal(t, modelfile.F32, wide["m.weight"].DType, "MergeAs stores the asked dtype")
		assert.InDelta(t, 4.0/3, decoded(t, wide["m.weight"])[0], 1e-7, dt.String())

		_, err = MergeAs(modelfile.I64, map[string]modelfile.Tensor{"m.weight": w}, UNet, Scaled{f, 1})
		assert.ErrorContains(t, err, "I64")
	}
}

// half and bfloat16 round to nearest even: every finite value round-trips,
// and a value halfway between two neighbours goes to the even one.
func TestRounding(t *testing.T) {
	dec := func(dt modelfile.DType, h uint16) float64 {
		v, err := modelfile.Tensor{DType: dt, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint16(nil, h)}.Float32s()
		require.NoError(t, err)
		return float64(v[0])
	}
	for _, c := range []struct {
		dt    modelfile.DType
		round func(float64) uint16
		inf   uint16
	}{{modelfile.F16, half, 0x7c00}, {modelfile.BF16, bfloat16, 0x7f80}} {
		for h := range uint16(0x7fff) {
			x := dec(c.dt, h)
			if math.IsInf(x, 0) || math.IsNaN(x) {
				continue
			}
			require.Equal(t, h, c.round(x), "%s %#04x", c.dt, h)
			require.Equal(t, h|0x8000, c.round(-x), "%s -%#04x", c.dt, h)
			next := dec(c.dt, h+1)
			if math.IsInf(next, 0) {
				require.Equal(t, c.inf, c.round(x+(x-dec(c.dt, h-1))/2), "%s: halfway to Inf", c.dt)
				continue
			}
			mid := (x + next) / 2
			want := h
			if h&1 == 1 {
				want = h + 1
			}
			require.Equal(t, want, c.round(mid), "%s: halfway above %#04x", c.dt, h)
			require.Equal(t, h, c.round(mid-(next-x)/8), "%s: below halfway", c.dt)
		}
	}
}
