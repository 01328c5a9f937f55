package rng

import (
	"math"
	"math/bits"
)

// cudaGenerator is torch's CUDA generator: a seed and a Philox offset that
// every kernel launch advances.
type cudaGenerator struct {
	seed   uint64
	offset uint64 // Philox offset per thread, in 32-bit outputs (a multiple of 4)
	// maxBlocks caps the launch grid as PyTorch does on a given GPU; 0 means
	// the grid always has one thread per element.
	maxBlocks uint64
}

// CUDADevice names the two device properties that shape PyTorch's launch of
// its random kernels, as cudaDeviceProp reports them.
type CUDADevice struct {
	MultiProcessors             int // multiProcessorCount
	MaxThreadsPerMultiProcessor int // maxThreadsPerMultiProcessor
}

// NewCUDA returns a generator matching torch.Generator("cuda").manual_seed(seed)
// (all 64 bits of the seed are the Philox key) for tensors small enough that
// PyTorch launches one thread per element, which on any current GPU covers
// SD 1.x/2.x latents: up to 256 × multiProcessorCount ×
// maxThreadsPerMultiProcessor/256 elements, e.g. 43,008 on a 28-SM RTX 3060
// and 270,336 on an H100. Larger tensors depend on the GPU: see NewCUDAOn.
func NewCUDA(seed uint64) Generator { return &cudaGenerator{seed: seed} }

// NewCUDAOn is NewCUDA laid out for a particular GPU, for tensors larger than
// one thread per element can cover on it (e.g. SDXL latents on small GPUs).
// Zero properties mean no cap, as NewCUDA.
func NewCUDAOn(seed uint64, dev CUDADevice) Generator {
	blocksPerSM := max(dev.MaxThreadsPerMultiProcessor/cudaBlockSize, 0)
	return &cudaGenerator{seed: seed, maxBlocks: uint64(max(dev.MultiProcessors, 0) * blocksPerSM)}
}

// PyTorch's grid-stride random kernels (aten/src/ATen/native/cuda/
// DistributionTemplates.h) run blocks of 256 threads; each curand_normal4
// call yields 4 normals and advances the thread's Philox offset by 4.
const (
	cudaBlockSize  = 256
	normalsPerCall = 4
)

// Normal reproduces torch's CUDA normal kernel. The launch has ceil(n/256)
// blocks of 256 threads (capped on a given GPU), T threads in all. Thread t runs curand_init(seed, subsequence t, offset) and calls
// curand_normal4 k = 0, 1, ... times; call k fills elements k·4T + i·T + t
// for i = 0..3 (those below n). The generator's offset then grows by 4 per
// call a thread made. Without the cap, T >= n: element t is the first of the
// four normals of thread t, and every call advances the offset by 4.
func (g *cudaGenerator) Normal(dst []float32) {
	n := uint64(len(dst))
	if n == 0 {
		return
	}
	blocks := (n + cudaBlockSize - 1) / cudaBlockSize
	if g.maxBlocks > 0 {
		blocks = min(blocks, g.maxBlocks)
	}
	threads := blocks * cudaBlockSize
	calls := (n-1)/(threads*normalsPerCall) + 1
	key := [2]uint32{uint32(g.seed), uint32(g.seed >> 32)}
	for t := range threads {
		for k := range calls {
			first := k*threads*normalsPerCall + t
			if first >= n {
				break
			}
			out := philox4x32(philoxCounter(g.offset/4+k, t), key)
			var normals [4]float32
			normals[0], normals[1] = boxMullerCurand(out[0], out[1])
			if first+2*threads < n {
				normals[2], normals[3] = boxMullerCurand(out[2], out[3])
			}
			for i := range uint64(normalsPerCall) {
				if e := first + i*threads; e < n {
					// + 0: torch's "* std + mean" turns -0 into +0.
					dst[e] = normals[i] + 0
				}
			}
		}
	}
	g.offset += calls * normalsPerCall
}

// philoxCounter is the 128-bit Philox counter of curand's state after
// curand_init(seed, subsequence, offset): the low 64 bits count blocks of 4
// outputs along the sequence, the high 64 bits select the subsequence.
func philoxCounter(block, subsequence uint64) [4]uint32 {
	return [4]uint32{uint32(block), uint32(block >> 32), uint32(subsequence), uint32(subsequence >> 32)}
}

// philox4x32 is Philox4x32-10 (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC'11) as curand implements it.
func philox4x32(ctr [4]uint32, key [2]uint32) [4]uint32 {
	const (
		m0, m1 = 0xD2511F53, 0xCD9E8D57
		w0, w1 = 0x9E3779B9, 0xBB67AE85
	)
	for round := range 10 {
		if round > 0 {
			key[0] += w0
			key[1] += w1
		}
		hi0, lo0 := bits.Mul32(m0, ctr[0])
		hi1, lo1 := bits.Mul32(m1, ctr[2])
		ctr = [4]uint32{hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0}
	}
	return ctr
}

// curand's constants: CURAND_2POW32_INV and CURAND_2POW32_INV_2PI, the
// latter a float product in curand's header.
var (
	twoPow32Inv    = float32(2.3283064e-10)
	twoPow32Inv2Pi = twoPow32Inv * float32(6.2831855)
	// invTwoPi scales radians to revolutions before the GPU's sine unit.
	invTwoPi = float32(1 / (2 * math.Pi))
)

// boxMullerCurand is curand's _curand_box_muller on the device: from two
// 32-bit outputs x, y it returns (s·sin v, s·cos v) with
// u = x·2⁻³² + 2⁻³³, v = y·2π·2⁻³² + π·2⁻³², s = sqrt(-2 log u).
//
// Everything up to s is exact float32 arithmetic (the compiler fuses the
// multiply-adds; logf is taken as correctly rounded, which CUDA's is to
// within 1 ulp). sin and cos come from __sincosf, the GPU's special function
// unit: it reduces v·(1/2π) rounded toward zero, which is reproduced, then
// evaluates an undocumented hardware approximation (absolute error about
// 2⁻²¹), which is replaced here by the exact value rounded to float32. About
// a fifth of the outputs match the GPU bit for bit and all are within
// 1.5e-6 (see the tests).
func boxMullerCurand(x, y uint32) (float32, float32) {
	u := fma32(float32(x), twoPow32Inv, twoPow32Inv/2)
	v := fma32(float32(y), twoPow32Inv2Pi, twoPow32Inv2Pi/2)
	s := sqrt32(-2 * float32(math.Log(float64(u))))
	turns := float64(v) * float64(invTwoPi) // exact
	t := float32(turns)
	if float64(t) > turns {
		t = math.Nextafter32(t, 0)
	}
	sin, cos := math.Sincos(2 * math.Pi * float64(t))
	return float32(sin) * s, float32(cos) * s
}
