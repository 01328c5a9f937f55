package diffusion

import "github.com/gosd/gosd/diffusion/rng"

// batchGenerator gives each image of a batch its own generator, seeded Seed+k for image
// k, as AUTOMATIC1111 seeds a batch (and diffusers with a list of generators): every draw
// of a batch-shaped buffer is split evenly, image k's share coming from its generator. So
// image k of a batch is the image a batch of one with seed Seed+k makes, and each image's
// metadata (its own seed) regenerates it.
type batchGenerator []rng.Generator

func newBatchGenerator(kind rng.Kind, seed uint64, batch int) batchGenerator {
	g := make(batchGenerator, batch)
	for k := range g {
		g[k] = rng.New(kind, seed+uint64(k))
	}
	return g
}

// Normal fills dst, a whole batch: len(dst) must be a multiple of the batch size.
func (g batchGenerator) Normal(dst []float32) {
	per := len(dst) / len(g)
	if per*len(g) != len(dst) {
		panic("diffusion: a random draw that is not batch-shaped")
	}
	for k, gen := range g {
		gen.Normal(dst[k*per : (k+1)*per])
	}
}
