// Package rng reproduces PyTorch's standard normal random numbers, so that a
// seed gives the same initial latents (and sampler noise) as other Stable
// Diffusion tools:
//
//   - CPU matches torch.randn(shape, generator=torch.Generator().manual_seed(S))
//     (mt19937), what diffusers users get with a CPU generator;
//   - CUDA matches the same on torch.Generator("cuda") (Philox4x32-10 with
//     curand's Box-Muller and PyTorch's launch layout), what most web UIs use.
//
// CPU is the zero Kind and the default: diffusers' documentation recommends a
// CPU generator for reproducible results, because it gives the same numbers
// on every machine, with or without a GPU, and the pipeline uses it unless
// told otherwise. Choose CUDA to reproduce an image made with GPU noise.
//
// A Generator advances exactly as torch's does: consecutive Normal calls give
// what consecutive torch.randn calls with the same generator give, so the
// initial latents followed by one call per ancestral-sampler step reproduce
// the reference sequence when the calls have the same sizes in the same order.
// Generators are not safe for concurrent use.
package rng

import (
	"fmt"
	"strings"
)

// Generator fills slices with standard normal samples.
type Generator interface {
	// Normal fills dst like torch.randn with len(dst) elements (the shape
	// does not matter, only the element count) and advances the state.
	Normal(dst []float32)
}

// Kind selects the generator family.
type Kind int

const (
	// CPU is torch's CPU generator (mt19937); the default.
	CPU Kind = iota
	// CUDA is torch's CUDA generator (Philox4x32-10).
	CUDA
)

var kindNames = [...]string{CPU: "cpu", CUDA: "cuda"}

// String returns "cpu" or "cuda".
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// ParseKind parses "cpu" or "cuda" (any case).
func ParseKind(s string) (Kind, error) {
	for k, name := range kindNames {
		if strings.EqualFold(s, name) {
			return Kind(k), nil
		}
	}
	return 0, fmt.Errorf("rng: unknown generator kind %q (want cpu or cuda)", s)
}

// New returns a generator of the given kind seeded like torch's
// manual_seed(seed). It panics on a Kind that is neither CPU nor CUDA.
func New(kind Kind, seed uint64) Generator {
	switch kind {
	case CPU:
		return NewCPU(seed)
	case CUDA:
		return NewCUDA(seed)
	}
	panic(fmt.Sprintf("rng: New with unknown %v", kind))
}
