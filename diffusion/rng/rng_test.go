package rng

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/internal/testutil"
)

// rngReference holds the kit's rng.safetensors keyed "KIND.seedS.SHAPE".
type rngReference struct {
	kind   string
	seed   uint64
	shape  string
	values []float32
}

func loadRNGReference(t *testing.T) []rngReference {
	t.Helper()
	tensors := readF32Safetensors(t, filepath.Join(testutil.ConformanceDir(t), "rng.safetensors"))
	var refs []rngReference
	for name, values := range tensors {
		parts := strings.SplitN(name, ".", 3)
		require.Len(t, parts, 3, name)
		seed, err := strconv.ParseUint(strings.TrimPrefix(parts[1], "seed"), 10, 64)
		require.NoError(t, err, name)
		r := rngReference{kind: parts[0], seed: seed, shape: parts[2]}
		r.values = values
		refs = append(refs, r)
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].name() < refs[j].name() })
	require.NotEmpty(t, refs)
	return refs
}

func (r rngReference) name() string { return fmt.Sprintf("%s.seed%d.%s", r.kind, r.seed, r.shape) }

func normals(g Generator, n int) []float32 {
	out := make([]float32, n)
	g.Normal(out)
	return out
}

// assertBitEqual compares float32 bit patterns, reporting the first mismatches.
func assertBitEqual(t *testing.T, want, got []float32, msg string) {
	t.Helper()
	require.Len(t, got, len(want), msg)
	bad := 0
	for i := range want {
		if math.Float32bits(want[i]) != math.Float32bits(got[i]) {
			if bad < 5 {
				t.Errorf("%s: element %d: got %v, want %v", msg, i, got[i], want[i])
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements differ", msg, bad, len(want))
	}
}

func TestCPUMatchesTorch(t *testing.T) {
	matched := 0
	for _, ref := range loadRNGReference(t) {
		if ref.kind != "cpu" {
			continue
		}
		t.Run(ref.name(), func(t *testing.T) {
			assertBitEqual(t, ref.values, normals(NewCPU(ref.seed), len(ref.values)), ref.name())
		})
		matched++
	}
	assert.Equal(t, 6, matched, "cpu keys in rng.safetensors")
}

// The pipeline references start from torch.randn((1,4,8,8)) on a CPU
// generator seeded 50.
func TestCPUMatchesPipelineInitLatents(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		t.Run(model, func(t *testing.T) {
			ref := readF32Safetensors(t, filepath.Join(kit, model, "txt2img-euler.safetensors"))["init_latents"]
			require.Len(t, ref, 256)
			assertBitEqual(t, ref, normals(NewCPU(50), len(ref)), "init_latents")
		})
	}
}

// Consecutive calls continue the stream: blocks of 16 never straddle calls
// whose sizes are multiples of 16, so split calls reproduce one big call.
func TestCPUConsecutiveCalls(t *testing.T) {
	for _, ref := range loadRNGReference(t) {
		if ref.kind != "cpu" || len(ref.values) != 2*4*64*64 {
			continue
		}
		for _, split := range [][]int{{16384, 16384}, {256, 32512}, {16, 48, 32704}} {
			t.Run(fmt.Sprint(ref.name(), split), func(t *testing.T) {
				g := NewCPU(ref.seed)
				var got []float32
				for _, n := range split {
					got = append(got, normals(g, n)...)
				}
				assertBitEqual(t, ref.values, got, "split calls")
			})
		}
	}
}

// Values torch prints (4 decimals) for torch.randn(n) after
// torch.manual_seed(S): sizes below 16 take the double-precision path.
func TestCPUSmallSizesMatchTorch(t *testing.T) {
	tests := []struct {
		seed uint64
		want []float64
	}{
		{0, []float64{1.5410}},
		{0, []float64{1.5410, -0.2934, -2.1788, 0.5684, -1.0845}},
		{42, []float64{0.3367, 0.1288, 0.2345, 0.2303, -1.1229}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.seed, len(tc.want)), func(t *testing.T) {
			got := normals(NewCPU(tc.seed), len(tc.want))
			for i := range tc.want {
				assert.InDelta(t, tc.want[i], got[i], 5e-5, "element %d", i)
			}
		})
	}
}

// Below 16 elements torch caches the second Box-Muller sample on the
// generator: one-element calls, a 15-element call and any split in between
// give the same sequence, and a large call in between leaves the cache alone.
func TestCPUSmallCallsShareTheCache(t *testing.T) {
	want := normals(NewCPU(7), 15)
	for _, split := range [][]int{{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 12}, {2, 0, 13}, {14, 1}} {
		g := NewCPU(7)
		var got []float32
		for _, n := range split {
			got = append(got, normals(g, n)...)
		}
		assertBitEqual(t, want, got, fmt.Sprint(split))
	}

	g := NewCPU(7)
	first := normals(g, 1) // draws 4 outputs, caches the sine half
	mid := normals(g, 16)
	second := normals(g, 1)
	assertBitEqual(t, want[:2], append(first, second...), "cache across a large call")
	h := &cpuGenerator{}
	h.engine.seed(7)
	for range 4 {
		h.engine.uint32()
	}
	assertBitEqual(t, normals(h, 16), mid, "large call after a small one")
}

// Sizes that are not a multiple of 16 recompute the last 16 elements from 16
// fresh uniforms; everything before them is the plain stream.
func TestCPUTailSizes(t *testing.T) {
	const seed = 42
	stream := normals(NewCPU(seed), 256)
	for _, n := range []int{16, 17, 20, 31, 32, 33, 47, 100, 255} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			g := NewCPU(seed)
			got := normals(g, n)
			if n%16 == 0 {
				assertBitEqual(t, stream[:n], got, "prefix")
				return
			}
			assertBitEqual(t, stream[:n-16], got[:n-16], "before the tail")
			u := &cpuGenerator{}
			u.engine.seed(seed)
			tail := make([]float32, n+16)
			for i := range tail {
				tail[i] = u.uniformFloat32()
			}
			boxMuller16(tail[n:])
			assertBitEqual(t, tail[n:], got[n-16:], "tail")
			assertBitEqual(t, normals(u, 32), normals(g, 32), "state after the call")
		})
	}
}

func TestZeroElementsLeaveTheState(t *testing.T) {
	for _, kind := range []Kind{CPU, CUDA} {
		t.Run(kind.String(), func(t *testing.T) {
			g := New(kind, 3)
			g.Normal(nil)
			assertBitEqual(t, normals(New(kind, 3), 20), normals(g, 20), "after an empty call")
		})
	}
}

// Philox on the GPU is reproduced exactly; the GPU's hardware sine is not,
// so CUDA outputs are compared with a tolerance and the exact matches counted.
func TestCUDAMatchesTorch(t *testing.T) {
	checked := 0
	for _, ref := range loadRNGReference(t) {
		if ref.kind != "cuda" {
			continue
		}
		checked++
		t.Run(ref.name(), func(t *testing.T) {
			got := normals(NewCUDA(ref.seed), len(ref.values))
			exact, maxDiff := 0, 0.0
			for i, want := range ref.values {
				if math.Float32bits(want) == math.Float32bits(got[i]) {
					exact++
				}
				maxDiff = math.Max(maxDiff, math.Abs(float64(want)-float64(got[i])))
			}
			t.Logf("%s: %d of %d bit-exact, max |diff| %.3g", ref.name(), exact, len(ref.values), maxDiff)
			assert.LessOrEqual(t, maxDiff, 1.5e-6)
			assert.Greater(t, exact, len(ref.values)/5)
		})
	}
	assert.Equal(t, 2, checked, "cuda keys in rng.safetensors")
}

// cudaExpected computes what thread t's call k contributes, from the Philox
// and Box-Muller building blocks.
func cudaExpected(seed, block, thread uint64) [4]float32 {
	out := philox4x32(philoxCounter(block, thread), [2]uint32{uint32(seed), uint32(seed >> 32)})
	var v [4]float32
	v[0], v[1] = boxMullerCurand(out[0], out[1])
	v[2], v[3] = boxMullerCurand(out[2], out[3])
	return v
}

func TestCUDALayoutAndOffsets(t *testing.T) {
	const seed = 1234
	t.Run("one thread per element, offset +4 per call", func(t *testing.T) {
		g := NewCUDA(seed)
		for call, n := range []int{1, 17, 300} {
			got := normals(g, n)
			for i := range n {
				assert.Equal(t, cudaExpected(seed, uint64(call), uint64(i))[0], got[i], "call %d element %d", call, i)
			}
		}
	})
	t.Run("capped grid", func(t *testing.T) {
		// One SM of 256 threads: one block, so each thread covers
		// elements t, t+256, t+512, t+768 per call, then the next 1024.
		g := NewCUDAOn(seed, CUDADevice{MultiProcessors: 1, MaxThreadsPerMultiProcessor: 256})
		const n = 1500
		got := normals(g, n)
		for e := range n {
			k, rest := e/1024, e%1024
			want := cudaExpected(seed, uint64(k), uint64(rest%256))[rest/256]
			assert.Equal(t, want, got[e], "element %d", e)
		}
		next := normals(g, 1) // two calls per thread above: offset advanced by 8
		assert.Equal(t, cudaExpected(seed, 2, 0)[0], next[0])
	})
	t.Run("large device equals one thread per element", func(t *testing.T) {
		h100 := CUDADevice{MultiProcessors: 132, MaxThreadsPerMultiProcessor: 2048}
		g, h := NewCUDA(seed), NewCUDAOn(seed, h100)
		for _, n := range []int{16384, 70000} {
			assertBitEqual(t, normals(g, n), normals(h, n), fmt.Sprint(n))
		}
	})
	t.Run("64-bit seed is the key", func(t *testing.T) {
		assert.NotEqual(t, normals(NewCUDA(1), 8), normals(NewCUDA(1|1<<40), 8))
		assert.Equal(t, normals(NewCPU(1), 8), normals(NewCPU(1|1<<40), 8), "the CPU generator keeps 32 bits")
	})
}

// Philox4x32-10 known-answer vectors from the Random123 distribution (kat_vectors).
func TestPhiloxKnownAnswers(t *testing.T) {
	tests := []struct {
		ctr  [4]uint32
		key  [2]uint32
		want [4]uint32
	}{
		{[4]uint32{0, 0, 0, 0}, [2]uint32{0, 0}, [4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{[4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, [2]uint32{0xffffffff, 0xffffffff}, [4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{[4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, [2]uint32{0xa4093822, 0x299f31d0}, [4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, philox4x32(tc.ctr, tc.key))
	}
}

func TestFMA32(t *testing.T) {
	exact := func(a, b, c float32) float32 {
		x := new(big.Float).SetPrec(200).SetFloat64(float64(a))
		x.Mul(x, new(big.Float).SetFloat64(float64(b)))
		x.Add(x, new(big.Float).SetFloat64(float64(c)))
		f, _ := x.Float32()
		return f
	}
	// Double-rounding traps: a*b+c lies within 2^-70 of a float32 tie, so
	// rounding it to float64 lands on the tie; the naive float32(float64 sum)
	// then rounds to even, the wrong way.
	tiny, below := float32(0x1p-24*(1+0x1p-23)), float32(1-0x1p-23)
	traps := [][3]float32{{tiny, below, 1 + 0x1p-23}, {-tiny, below, 1 + 3*0x1p-23}, {-tiny, below, -(1 + 0x1p-23)}}
	for _, c := range traps {
		naive := float32(float64(c[0])*float64(c[1]) + float64(c[2]))
		require.NotEqual(t, exact(c[0], c[1], c[2]), naive, "trap %v", c)
	}
	cases := append(traps, [3]float32{1, 1, 0x1p-24}, [3]float32{0, 5, -0.0})
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		cases = append(cases, [3]float32{
			float32(r.NormFloat64()), float32(r.NormFloat64()),
			float32(r.NormFloat64() * math.Pow(2, float64(r.IntN(60)-30))),
		})
	}
	for _, c := range cases {
		assert.Equal(t, exact(c[0], c[1], c[2]), fma32(c[0], c[1], c[2]), "fma32(%g, %g, %g)", c[0], c[1], c[2])
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		in      string
		want    Kind
		wantErr bool
	}{
		{"cpu", CPU, false},
		{"CPU", CPU, false},
		{"cuda", CUDA, false},
		{"Cuda", CUDA, false},
		{"gpu", 0, true},
		{"", 0, true},
		{" cpu", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseKind(tc.in)
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			back, err := ParseKind(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, back)
		})
	}
	var zero Kind
	assert.Equal(t, CPU, zero, "the zero Kind is the default, CPU")
	assert.Equal(t, "cpu", CPU.String())
	assert.Equal(t, "cuda", CUDA.String())
	assert.Equal(t, "Kind(7)", Kind(7).String())
	assert.Equal(t, normals(NewCPU(5), 40), normals(New(CPU, 5), 40))
	assert.Equal(t, normals(NewCUDA(5), 40), normals(New(CUDA, 5), 40))
	assert.Panics(t, func() { New(Kind(-1), 5) })
}
