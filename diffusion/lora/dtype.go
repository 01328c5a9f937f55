package lora

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/gosd/gosd/diffusion/modelfile"
)

// floats decodes a float tensor into float64s.
func floats(t modelfile.Tensor) ([]float64, error) {
	v, err := t.Float32s()
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out, nil
}

// encode rounds values to dtype, to nearest with ties to even. F16 and BF16
// round from the float64 directly: going through float32 would round twice.
func encode(v []float64, dtype modelfile.DType) ([]byte, error) {
	switch dtype {
	case modelfile.F32:
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(x)))
		}
		return b, nil
	case modelfile.F16:
		b := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], half(x))
		}
		return b, nil
	case modelfile.BF16:
		b := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], bfloat16(x))
		}
		return b, nil
	}
	return nil, fmt.Errorf("cannot store a patched weight as %s", dtype)
}

// half rounds x to IEEE binary16, to nearest with ties to even; beyond the
// largest half (65504, plus half an ulp) it is ±Inf.
func half(x float64) uint16 {
	var sign uint16
	if math.Signbit(x) {
		sign, x = 0x8000, -x
	}
	switch {
	case math.IsNaN(x):
		return 0x7e00
	case x >= 65520:
		return sign | 0x7c00
	case x < 0x1p-14: // subnormal: a multiple of 2^-24
		return sign | uint16(math.RoundToEven(x*0x1p24))
	}
	frac, exp := math.Frexp(x)         // x = frac · 2^exp, frac in [0.5, 1)
	m := math.RoundToEven(frac * 2048) // 11 significant bits
	if m == 2048 {
		m, exp = 1024, exp+1
	}
	// exp−1 is the unbiased exponent of the leading bit; bias 15.
	return sign | uint16(exp-1+15)<<10 | uint16(m)&0x3ff
}

// bfloat16 rounds x to bfloat16, to nearest with ties to even.
func bfloat16(x float64) uint16 {
	if math.IsNaN(x) {
		return 0x7fc0
	}
	var sign uint16
	if math.Signbit(x) {
		sign, x = 0x8000, -x
	}
	if x >= 0x1.ffp127 { // halfway above the largest bfloat16 (0x1.fep127)
		return sign | 0x7f80
	}
	if x < 0x1p-126 { // subnormal: a multiple of 2^-133
		return sign | uint16(math.RoundToEven(x*0x1p133))
	}
	frac, exp := math.Frexp(x)
	m := math.RoundToEven(frac * 256) // 8 significant bits
	if m == 256 {
		m, exp = 128, exp+1
	}
	return sign | uint16(exp-1+127)<<7 | uint16(m)&0x7f
}
