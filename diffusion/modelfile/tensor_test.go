package modelfile

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDTypeNames(t *testing.T) {
	for d := F32; d <= Bool; d++ {
		t.Run(d.String(), func(t *testing.T) {
			got, err := ParseDType(d.String())
			require.NoError(t, err)
			assert.Equal(t, d, got)
			assert.Positive(t, d.Size())
		})
	}
	_, err := ParseDType("F8_E4M3")
	assert.ErrorContains(t, err, "F8_E4M3")
	assert.Equal(t, "DType(0)", DType(0).String())
	assert.Zero(t, DType(0).Size())
}

func TestHalfConversionRoundTripsEveryValue(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := halfToFloat32(uint16(h))
		if f != f { // NaN: any NaN back is fine
			assert.True(t, uint16(h)&0x7c00 == 0x7c00 && uint16(h)&0x3ff != 0)
			continue
		}
		require.Equal(t, uint16(h), float32ToHalf(f), "half bits %#04x = %g", h, f)
	}
}

func TestFloat32ToHalfRounding(t *testing.T) {
	cases := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00},
		{-2, 0xc000},
		{65504, 0x7bff},
		{65520, 0x7c00},                       // halfway to the next step rounds up to Inf
		{1 + 1.0/2048, 0x3c00},                // halfway between 1 and next, ties to even (down)
		{1 + 3.0/2048, 0x3c02},                // halfway, ties to even (up)
		{float32(math.Ldexp(1, -24)), 0x0001}, // smallest subnormal
		{float32(math.Ldexp(1, -25)), 0x0000}, // half of it ties to even zero
		{float32(math.Ldexp(1.5, -25)), 0x0001},
		{float32(math.Inf(-1)), 0xfc00},
		{1e-10, 0},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, float32ToHalf(c.in), "%g", c.in)
	}
}

func TestFloat32ToBF16(t *testing.T) {
	assert.Equal(t, uint16(0x3f80), float32ToBF16(1))
	assert.Equal(t, uint16(0x3f80), float32ToBF16(math.Float32frombits(0x3f808000))) // tie to even
	assert.Equal(t, uint16(0x3f82), float32ToBF16(math.Float32frombits(0x3f818000)))
	assert.True(t, float32ToBF16(float32(math.NaN()))&0x7f != 0)
}

func TestFloat32s(t *testing.T) {
	f32 := make([]byte, 8)
	binary.LittleEndian.PutUint32(f32, math.Float32bits(1.5))
	binary.LittleEndian.PutUint32(f32[4:], math.Float32bits(-3))
	cases := []struct {
		name    string
		tensor  Tensor
		want    []float32
		wantErr string
	}{
		{"f32", Tensor{DType: F32, Shape: []int64{2}, Data: f32}, []float32{1.5, -3}, ""},
		{"f16", Tensor{DType: F16, Shape: []int64{2, 1}, Data: []byte{0x00, 0x3e, 0x00, 0xc2}}, []float32{1.5, -3}, ""},
		{"bf16", Tensor{DType: BF16, Shape: []int64{2}, Data: []byte{0xc0, 0x3f, 0x40, 0xc0}}, []float32{1.5, -3}, ""},
		{"scalar", Tensor{DType: F16, Data: []byte{0x00, 0x3c}}, []float32{1}, ""},
		{"empty", Tensor{DType: F32, Shape: []int64{0, 5}, Data: []byte{}}, []float32{}, ""},
		{"int", Tensor{Name: "ids", DType: I64, Shape: []int64{1}, Data: make([]byte, 8)}, nil, "ids: Float32s does not convert I64"},
		{"short", Tensor{Name: "w", DType: F32, Shape: []int64{3}, Data: f32}, nil, "w: F32 [3] does not match 8 data bytes"},
		{"negative", Tensor{Name: "w", DType: F32, Shape: []int64{-1}, Data: f32}, nil, "does not match"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.tensor.Float32s()
			if c.wantErr != "" {
				assert.ErrorContains(t, err, c.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestNumElements(t *testing.T) {
	cases := []struct {
		shape []int64
		want  int64
		ok    bool
	}{
		{nil, 1, true},
		{[]int64{2, 3, 4}, 24, true},
		{[]int64{0, 1 << 62}, 0, true},
		{[]int64{1 << 31, 1 << 31}, 1 << 62, false}, // beyond maxElements
		{[]int64{1 << 32, 1 << 32, 1 << 32}, 0, false},
		{[]int64{3, -1}, 0, false},
	}
	for _, c := range cases {
		n, ok := numElements(c.shape)
		assert.Equal(t, c.ok, ok, "%v", c.shape)
		if c.ok {
			assert.Equal(t, c.want, n, "%v", c.shape)
		}
	}
}

// Every binary16 value converts to the float32 its definition gives: (-1)^s · 2^(e-15) ·
// (1 + m/1024) for normal exponents, (-1)^s · m · 2^-24 for subnormals, ±Inf, NaN.
func TestFloat32sConvertsEveryHalf(t *testing.T) {
	data := make([]byte, 2<<16)
	for h := range 1 << 16 {
		binary.LittleEndian.PutUint16(data[2*h:], uint16(h))
	}
	got, err := Tensor{Name: "all", DType: F16, Shape: []int64{1 << 16}, Data: data}.Float32s()
	require.NoError(t, err)
	for h := range 1 << 16 {
		sign, exp, mant := h>>15, (h>>10)&0x1f, h&0x3ff
		var want float64
		switch {
		case exp == 0x1f && mant != 0:
			assert.True(t, math.IsNaN(float64(got[h])), "%#04x", h)
			continue
		case exp == 0x1f:
			want = math.Inf(1)
		case exp == 0:
			want = math.Ldexp(float64(mant), -24)
		default:
			want = math.Ldexp(1+float64(mant)/1024, exp-15)
		}
		if sign == 1 {
			want = -want
		}
		if !assert.Equal(t, float32(want), got[h], "%#04x", h) {
			return
		}
		assert.Equal(t, math.Signbit(want), math.Signbit(float64(got[h])), "%#04x sign", h)
	}
}
