package rng

import "math"

// cpuGenerator is torch's CPU generator: mt19937 plus the cached second
// sample of its double-precision Box-Muller.
type cpuGenerator struct {
	engine        mt19937
	nextNormal    float64
	hasNextNormal bool
}

// NewCPU returns a generator matching torch.Generator().manual_seed(seed) on
// the CPU. torch keeps only the low 32 bits of the seed for mt19937.
func NewCPU(seed uint64) Generator {
	g := &cpuGenerator{}
	g.engine.seed(uint32(seed))
	return g
}

// Normal follows torch's CPU normal kernel (aten/src/ATen/native/cpu/
// DistributionTemplates.h, normal_kernel), which takes one of two paths by
// size:
//
//   - fewer than 16 elements: each element is a double-precision Box-Muller
//     sample from two 53-bit uniforms, rounded to float32; every second
//     sample is the cached sine half of the previous pair, and the cache
//     lives on across calls;
//   - 16 or more: one 24-bit float uniform per element, then Box-Muller on
//     blocks of 16 (u1 from the first 8, u2 from the last 8); when the size
//     is not a multiple of 16 the last 16 elements are drawn again from 16
//     fresh uniforms and recomputed.
//
// The second path is the AVX2 kernel PyTorch's x86-64 builds run on any CPU
// with AVX2 (AVX-512 CPUs too: that kernel is not dispatched to AVX-512),
// reproduced bit for bit by boxMuller16. PyTorch builds without AVX2
// (aarch64, Apple silicon) compute the same formula with the C library's
// float logf/cosf/sinf instead and may differ in the last bit of some
// elements.
func (g *cpuGenerator) Normal(dst []float32) {
	n := len(dst)
	if n < 16 {
		for i := range dst {
			// + 0 turns -0 into +0, as torch's "* std + mean" does.
			dst[i] = float32(g.normalFloat64() + 0)
		}
		return
	}
	for i := range dst {
		dst[i] = g.uniformFloat32()
	}
	for i := 0; i+16 <= n; i += 16 {
		boxMuller16(dst[i : i+16])
	}
	if n%16 != 0 {
		tail := dst[n-16:]
		for i := range tail {
			tail[i] = g.uniformFloat32()
		}
		boxMuller16(tail)
	}
}

// uniformFloat32 is torch's uniform_real_distribution<float>(0, 1): the low
// 24 bits of one output, scaled to [0, 1).
func (g *cpuGenerator) uniformFloat32() float32 {
	return float32(g.engine.uint32()&(1<<24-1)) * 0x1p-24
}

// uniformFloat64 is uniform_real_distribution<double>(0, 1): the low 53 bits
// of a 64-bit draw, scaled to [0, 1).
func (g *cpuGenerator) uniformFloat64() float64 {
	return float64(g.engine.uint64()&(1<<53-1)) * 0x1p-53
}

// normalFloat64 is torch's normal_distribution<double>: Box-Muller returning
// the cosine half and caching the sine half for the next call.
func (g *cpuGenerator) normalFloat64() float64 {
	if g.hasNextNormal {
		g.hasNextNormal = false
		return g.nextNormal
	}
	u1 := g.uniformFloat64()
	u2 := g.uniformFloat64()
	r := math.Sqrt(-2 * math.Log1p(-u2))
	theta := 2 * math.Pi * u1
	g.nextNormal, g.hasNextNormal = r*math.Sin(theta), true
	return r * math.Cos(theta)
}

// boxMuller16 turns 16 uniforms in [0, 1) into 16 normals in place, exactly as
// PyTorch's normal_fill_16_AVX2 computes them: u1 = 1 - d[j] and u2 = d[j+8]
// give d[j] = r cos θ and d[j+8] = r sin θ with r = sqrt(-2 log u1) and
// θ = 2π u2, using float32 arithmetic and the avx_mathfun polynomials.
func boxMuller16(d []float32) {
	twoPi := float32(2 * math.Pi)
	for j := range 8 {
		u1 := 1 - d[j]
		u2 := d[j+8]
		radius := sqrt32(-2 * logAVX2(u1))
		sin, cos := sincosAVX2(twoPi * u2)
		// + 0: the kernel's final fmadd(n, std=1, mean=0) turns -0 into +0.
		d[j] = float32(radius*cos) + 0
		d[j+8] = float32(radius*sin) + 0
	}
}
