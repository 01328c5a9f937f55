package rng

import "math"

// Bit-exact float32 emulation of the log and sincos that PyTorch's AVX2
// normal kernel uses (aten/src/ATen/native/cpu/avx_mathfun.h, Cephes
// polynomials), including the fused multiply-adds GCC forms from its
// separate multiply and add intrinsics when building with -mfma (the
// official x86-64 builds do). fma32 marks each fused operation; every other
// product is rounded on its own, which the explicit float32 conversions
// guarantee on targets where Go itself would fuse.

const (
	sqrtHalf = float32(0.707106781186547524)
	logP0    = float32(7.0376836292e-2)
	logQ1    = float32(-2.12194440e-4)
	logQ2    = float32(0.693359375)

	fourOverPi = float32(1.27323954473516)
	minusDP1   = float32(-0.78515625)
	minusDP2   = float32(-2.4187564849853515625e-4)
	minusDP3   = float32(-3.77489497744594108e-8)
	cosP0      = float32(2.443315711809948e-005)
	cosP1      = float32(-1.388731625493765e-003)
	cosP2      = float32(4.166664568298827e-002)
	sinP0      = float32(-1.9515295891e-4)
	sinP1      = float32(8.3321608736e-3)
	sinP2      = float32(-1.6666654611e-1)
)

var logP = [...]float32{
	-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
	-1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
}

// logAVX2 is log256_ps for one positive normal float32.
func logAVX2(x float32) float32 {
	bits := math.Float32bits(x)
	e := float32(int32(bits>>23)-0x7f) + 1
	m := math.Float32frombits(bits&^0x7f800000 | 0x3f000000) // mantissa in [0.5, 1)
	if m < sqrtHalf {
		e--
		m = (m - 1) + m
	} else {
		m--
	}
	z := float32(m * m)
	y := logP0
	for _, p := range logP {
		y = fma32(y, m, p)
	}
	y = fma32(float32(y*m), z, float32(e*logQ1))
	y -= float32(z * 0.5)
	m += y
	return fma32(e, logQ2, m)
}

// sincosAVX2 is sincos256_ps for one float32 x >= 0.
func sincosAVX2(x float32) (sin, cos float32) {
	j := int32(float32(x * fourOverPi))
	j = (j + 1) &^ 1
	y := float32(j)
	x = fma32(y, minusDP1, x)
	x = fma32(y, minusDP2, x)
	x = fma32(y, minusDP3, x)
	z := float32(x * x)

	c := fma32(fma32(cosP0, z, cosP1), z, cosP2)
	c = fma32(float32(c*z), z, -float32(z*0.5)) + 1
	s := fma32(fma32(sinP0, z, sinP1), z, sinP2)
	s = fma32(x, float32(s*z), x)

	// Octants 1, 2 (mod 4) swap the polynomials; the kernel selects with
	// masks and additions, hence the + 0.
	if j&2 == 0 {
		sin, cos = s+0, c+0
	} else {
		sin, cos = c+0, s+0
	}
	if j&4 != 0 {
		sin = -sin
	}
	if (j-2)&4 == 0 {
		cos = -cos
	}
	return sin, cos
}

// sqrt32 is the correctly rounded float32 square root (vsqrtps, sqrtf).
func sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }

// fma32 returns a*b+c rounded once to float32, like a hardware fused
// multiply-add. The product is exact in float64; the sum is rounded to
// float64 and then to float32, which can round twice only when the float64
// sum lies exactly halfway between two float32 values, and there the sign of
// the error of the first rounding decides.
func fma32(a, b, c float32) float32 {
	p := float64(float64(a) * float64(b))
	s := p + float64(c)
	r := float32(s)
	// Two-sum: err is the exact error of s = p + c.
	bv := s - p
	err := (p - (s - bv)) + (float64(c) - bv)
	if err == 0 || float64(r) == s {
		return r
	}
	other := math.Nextafter32(r, float32(math.Copysign(math.Inf(1), s-float64(r))))
	if s-float64(r) != float64(other)-s {
		return r // not a tie: the first rounding cannot have changed the result
	}
	return float32(math.Nextafter(s, math.Copysign(math.Inf(1), err)))
}
