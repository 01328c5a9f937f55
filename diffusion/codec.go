package diffusion

import (
	"math"

	"github.com/gosd/gosd/diffusion/modelfile"
)

// codec maps images to the latent space the denoiser works in and back: the VAE today,
// TAESD later. Latents on the codec's Go side are always the denoiser's (scaled) ones;
// what the network itself sees, and the factors between the two, stay inside the codec.
type codec interface {
	// factor is the ratio of image to latent size; channels the latent channels.
	factor() int
	channels() int
	// encode encodes images x (batch, 3, H, W) in [-1, 1] into their latent
	// distribution.
	encode(x []float32, batch, h, w int) (latentDist, error)
	// decode decodes latents (batch, channels, h, w) into images (batch, 3, f*h, f*w) in
	// [-1, 1].
	decode(latents []float32, batch, h, w int) ([]float32, error)
}

// latentDist is a diagonal Gaussian over the network's raw latents with the affine map to
// the denoiser's: scaled = (raw - shift) * scale.
type latentDist struct {
	mean, logvar []float32
	scale, shift float64
}

// sample draws scaled latents for len(eps)/len(mean) images, image k from
// eps[k*len(mean):]: as diffusers' retrieve_latents(sample_mode="sample") followed by the
// pipeline's scaling, in float64 as torch computes std = exp(0.5 * logvar).
func (d latentDist) sample(eps []float32) []float32 {
	out := make([]float32, len(eps))
	for k := range out {
		m := k % len(d.mean)
		std := math.Exp(0.5 * float64(d.logvar[m]))
		z := float64(d.mean[m]) + std*float64(eps[k])
		out[k] = float32((z - d.shift) * d.scale)
	}
	return out
}

// vaeCodec is the model's AutoencoderKL with its config's scaling_factor and
// shift_factor, tiled or not (tiling.go).
type vaeCodec struct {
	vae          vaeNet
	scale, shift float64
	tiling       vaeTiling // zero: never
}

func newVAECodec(vae vaeNet, cfg modelfile.VAEConfig) vaeCodec {
	return vaeCodec{vae: vae, scale: cfg.ScalingFactor, shift: cfg.ShiftFactor}
}

func (c vaeCodec) factor() int   { return c.vae.factor() }
func (c vaeCodec) channels() int { return c.vae.latentChannels() }

func (c vaeCodec) encode(x []float32, batch, h, w int) (latentDist, error) {
	encode := c.vae.encode
	if c.tiling.use(c.tiling.enc, batch, h, w, h, w) {
		encode = c.encodeTiled
	}
	mean, logvar, err := encode(x, batch, h, w)
	return latentDist{mean: mean, logvar: logvar, scale: c.scale, shift: c.shift}, err
}

// decode undoes the scaling, latents / scaling_factor + shift_factor, as diffusers, and
// runs the decoder.
func (c vaeCodec) decode(latents []float32, batch, h, w int) ([]float32, error) {
	z := make([]float32, len(latents))
	for k, v := range latents {
		z[k] = float32(float64(v)/c.scale + c.shift)
	}
	if f := c.factor(); c.tiling.use(c.tiling.dec, batch, h, w, h*f, w*f) {
		return c.decodeTiled(z, batch, h, w)
	}
	return c.vae.decode(z, batch, h, w)
}
