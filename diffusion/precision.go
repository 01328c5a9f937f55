package diffusion

import (
	"fmt"
	"strings"

	"github.com/gosd/gosd/binding"
)

// Precision is what the networks' matrix products (linear layers, convolutions,
// attention) compute in.
type Precision int

const (
	// PrecisionFP32 is exact float32 arithmetic: the default, and what the conformance
	// tests hold to 1e-4.
	PrecisionFP32 Precision = iota
	// PrecisionBF16 rounds both operands of every product to bfloat16 and accumulates in
	// float32 (AVX512_BF16's vdpbf16ps, about twice the float32 rate); norms, activations,
	// softmax, biases and residuals stay float32. CPU only: Open fails with ErrUnsupported
	// on a CPU without AVX512_BF16 and on a GPU (which computes in float16 already).
	PrecisionBF16
)

var precisionNames = []string{"fp32", "bf16"}

func (p Precision) String() string {
	if p >= 0 && int(p) < len(precisionNames) {
		return precisionNames[p]
	}
	return fmt.Sprintf("Precision(%d)", int(p))
}

// ParsePrecision parses "fp32" or "bf16" (any case).
func ParsePrecision(s string) (Precision, error) {
	for i, n := range precisionNames {
		if strings.EqualFold(s, n) {
			return Precision(i), nil
		}
	}
	return 0, fmt.Errorf("unknown precision %q (want %s)", s, strings.Join(precisionNames, ", "))
}

// WithPrecision sets the compute precision (default PrecisionFP32).
func WithPrecision(p Precision) Option { return func(o *openOptions) { o.precision = p } }

// runtimePrecision maps p to the runtime's value; unknown ones are ErrInvalidRequest.
func runtimePrecision(p Precision) (binding.Precision, error) {
	switch p {
	case PrecisionFP32:
		return binding.PrecisionF32, nil
	case PrecisionBF16:
		return binding.PrecisionBF16, nil
	}
	return 0, fmt.Errorf("%w: unknown precision %d", ErrInvalidRequest, int(p))
}
