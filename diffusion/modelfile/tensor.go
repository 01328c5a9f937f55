package modelfile

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"strings"
	"sync"
)

// DType is the element type of a tensor, named as in the safetensors format.
type DType uint8

// Element types. The zero value is invalid, so a forgotten dtype is caught.
// F32, F16 and BF16 are the weight types the runtime computes with; the
// others are readable so that files holding them (token ids, step counters,
// masks) open, but Float32s refuses them.
const (
	F32 DType = iota + 1
	F16
	BF16
	F64
	I64
	I32
	I8
	U8
	Bool
)

var dtypeNames = [...]string{F32: "F32", F16: "F16", BF16: "BF16", F64: "F64", I64: "I64", I32: "I32", I8: "I8", U8: "U8", Bool: "BOOL"}

var dtypeSizes = [...]int64{F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I8: 1, U8: 1, Bool: 1}

// String returns the safetensors name of the type ("F16", "BOOL", ...).
func (d DType) String() string {
	if d.valid() {
		return dtypeNames[d]
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// ParseDType is the inverse of String; it accepts any letter case.
func ParseDType(s string) (DType, error) {
	for d := F32; d <= Bool; d++ {
		if strings.EqualFold(s, dtypeNames[d]) {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown dtype %q", s)
}

// Size is the size of one element in bytes (0 for an invalid type).
func (d DType) Size() int64 {
	if d.valid() {
		return dtypeSizes[d]
	}
	return 0
}

// IsFloat reports whether d is one of the weight types F32, F16, BF16.
func (d DType) IsFloat() bool { return d == F32 || d == F16 || d == BF16 }

func (d DType) valid() bool { return d >= F32 && d <= Bool }

// Tensor is a named, dense, row-major, little-endian tensor. Data usually
// views a memory-mapped file and is then valid only until the file or model
// it came from is closed; it must not be written to.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
}

// NumElements is the product of the shape (1 for a scalar).
func (t Tensor) NumElements() int64 {
	n, _ := numElements(t.Shape)
	return n
}

// Float32s decodes F32, F16 or BF16 data into a new []float32. It copies and
// converts every element, so it is meant for tests and small tensors.
func (t Tensor) Float32s() ([]float32, error) {
	n, ok := numElements(t.Shape)
	if !ok || t.DType.Size() == 0 || int64(len(t.Data)) != n*t.DType.Size() {
		return nil, fmt.Errorf("tensor %s: %s %v does not match %d data bytes", t.Name, t.DType, t.Shape, len(t.Data))
	}
	out := make([]float32, n)
	switch t.DType {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		}
	case F16:
		table := halfTable()
		for i := range out {
			out[i] = table[binary.LittleEndian.Uint16(t.Data[2*i:])]
		}
	case BF16:
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[2*i:])) << 16)
		}
	default:
		return nil, fmt.Errorf("tensor %s: Float32s does not convert %s", t.Name, t.DType)
	}
	return out, nil
}

// maxElements bounds any element count so that count × 8 bytes cannot
// overflow an int64.
const maxElements = math.MaxInt64 / 8

// numElements multiplies the dimensions, reporting false for a negative
// dimension or a product beyond maxElements.
func numElements(shape []int64) (int64, bool) {
	n := uint64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > maxElements {
			return 0, false
		}
		n = lo
	}
	return int64(n), true
}

// halfToFloat32 converts IEEE 754 binary16 bits to float32, exactly.
// halfTable holds every binary16 value as float32 (256 KiB, made on first use): a lookup
// converts the millions of values of a weight or adapter file several times faster than
// decoding each.
var halfTable = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for h := range t {
		t[h] = halfToFloat32(uint16(h))
	}
	return &t
})

func halfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	default: // subnormal: mant × 2^-24
		f := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
}

// float32ToHalf converts to binary16, rounding to nearest even; values too
// large become ±Inf.
func float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	switch {
	case exp == 0xff: // inf or NaN (keep NaN quiet and non-zero)
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp > 142: // ≥ 2^16: overflow
		return sign | 0x7c00
	case exp >= 113: // normal half: round the 13 dropped bits to nearest even
		h := uint32(exp-112)<<10 | mant>>13
		rest := mant & 0x1fff
		if rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
			h++ // may carry into the exponent, which is still correct (up to Inf)
		}
		return sign | uint16(h)
	case exp >= 102: // subnormal half
		m := mant | 0x800000
		shift := uint32(126 - exp)
		h := m >> shift
		rest := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rest > half || (rest == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	default: // underflow to zero
		return sign
	}
}

// float32ToBF16 converts to bfloat16, rounding to nearest even.
func float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
