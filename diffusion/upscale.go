package diffusion

import (
	"context"
	"fmt"
	"image"
	"slices"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/schedule"
)

// UpscaleRequest asks an x4 upscaler (Stable Diffusion's stable-diffusion-x4-upscaler,
// diffusers' StableDiffusionUpscalePipeline) for Image at four times its size, the detail
// generated under the prompt's guidance.
//
// The embedded Request carries the prompt, negative prompt, steps, guidance, sampler,
// seed, RNG, batch size, progress and the rest with their usual defaults (the model's
// own scheduler: v-prediction DDIM for the released upscaler). Its Width and Height must
// be 0: the output is the image's size (rounded down to a multiple of 4) times 4.
type UpscaleRequest struct {
	Request
	// Image is the low-resolution picture. Sides that are not a multiple of the
	// upscaler's factor are resized down to one (bicubic, as diffusers).
	Image image.Image
	// NoiseLevel is how much noise the low-resolution image gets before the UNet sees
	// it, in steps of the model's low-res scheduler, in [0, max_noise_level] (350 for
	// the released model): more noise lets the model change more. The zero value is the
	// default, DefaultNoiseLevel (diffusers' 20); NoNoise asks for level 0.
	NoiseLevel int
	// Tile bounds memory for large images: the UNet runs on overlapping tiles of at
	// most Tile x Tile low-resolution pixels (a quarter of a side overlapping, the
	// predictions blended with linear ramps) and the VAE decodes tiles of half that (at
	// least 64). A
	// Tile at least the image's sides runs it whole, as diffusers. 0: twice the UNet's
	// sample size (256 for the released model); otherwise at least MinTile.
	Tile int

	// latents, for tests: the initial latents instead of drawn ones (diffusers'
	// latents argument; the low-res noise is still drawn first).
	latents []float32
}

// Noise levels of UpscaleRequest.
const (
	DefaultNoiseLevel = 20
	NoNoise           = -1 // noise level 0
)

// MinTile is the smallest UpscaleRequest.Tile.
const MinTile = 8

// minVAETile is the smallest side of the decoder's tiles, in latent pixels.
const minVAETile = 64

// upscalerDesc is what an x4 upscaler adds to the model description.
type upscalerDesc struct {
	maxNoiseLevel int
	lowRes        *schedule.TrainingSchedule // noises the low-res image
}

// upscaleInit is the start of an Upscale call: the resolved noise level and, in tests,
// given initial latents.
type upscaleInit struct {
	noiseLevel    int
	tile, vaeTile tiling
	latents       []float32
}

// describeUpscaler checks that the model is an x4 upscaler the pipeline can run: a UNet
// taking the latents and the 3 channels of the noised low-res image, told the noise
// level through a class-embedding table long enough for every level.
func describeUpscaler(m *modelfile.Model) (*upscalerDesc, error) {
	u, lat := m.UNet.Config, m.VAE.Config.LatentChannels
	if u.ClassEmbedType != modelfile.ClassTable || u.AdditionEmbedType != "" || u.InChannels != lat+3 {
		return nil, fmt.Errorf("%w: an x4 upscaler's UNet takes %d latent and 3 image channels and the noise level through a class table; this one has %d input channels, class embedding %q and addition embedding %q",
			ErrBadModel, lat, u.InChannels, u.ClassEmbedType, u.AdditionEmbedType)
	}
	up := m.Upscaler
	if up.MaxNoiseLevel >= u.NumClassEmbeds {
		return nil, fmt.Errorf("%w: max_noise_level %d does not index the UNet's %d class embeddings", ErrBadModel, up.MaxNoiseLevel, u.NumClassEmbeds)
	}
	cfg, err := schedule.ParseConfig(up.LowResScheduler.Raw)
	if err != nil {
		return nil, fmt.Errorf("%w: low_res_scheduler: %v", ErrBadModel, err)
	}
	lowRes, err := schedule.NewTrainingSchedule(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: low_res_scheduler: %v", ErrBadModel, err)
	}
	if up.MaxNoiseLevel >= lowRes.NumTimesteps() {
		return nil, fmt.Errorf("%w: max_noise_level %d is not a timestep of the low-res scheduler (%d)", ErrBadModel, up.MaxNoiseLevel, lowRes.NumTimesteps())
	}
	return &upscalerDesc{maxNoiseLevel: up.MaxNoiseLevel, lowRes: lowRes}, nil
}

// upscale checks an Upscale request and splits it into the generation (its size the
// output's) and its start.
func (d *modelDesc) upscale(req UpscaleRequest) (Request, *initImage, error) {
	if d.upscaler == nil {
		return Request{}, nil, invalid("%s is not an x4 upscaler", d.info.Name)
	}
	if err := checkImage("upscale image", req.Image); err != nil {
		return Request{}, nil, err
	}
	level := req.NoiseLevel
	switch {
	case level == 0:
		level = min(DefaultNoiseLevel, d.upscaler.maxNoiseLevel)
	case level == NoNoise:
		level = 0
	case level < 0 || level > d.upscaler.maxNoiseLevel:
		return Request{}, nil, invalid("noise level %d not in [0, %d] (the model's max_noise_level)", level, d.upscaler.maxNoiseLevel)
	}
	r := req.Request
	f := d.vaeFactor
	if r.Width != 0 || r.Height != 0 {
		return Request{}, nil, invalid("an upscale's size is its image's times %d: leave Width and Height 0", f)
	}
	// diffusers' VaeImageProcessor rounds the input down to a multiple of the factor.
	b := req.Image.Bounds()
	w, h := b.Dx()/f*f, b.Dy()/f*f
	if w == 0 || h == 0 {
		return Request{}, nil, invalid("image %dx%d is smaller than %d pixels", b.Dx(), b.Dy(), f)
	}
	if w*f > MaxSide || h*f > MaxSide {
		return Request{}, nil, invalid("image %dx%d upscales to %dx%d, over %d pixels a side", w, h, w*f, h*f, MaxSide)
	}
	r.Width, r.Height = w*f, h*f
	tile := req.Tile
	switch {
	case tile == 0:
		tile = 2 * d.info.Width / f // twice the UNet's sample size
	case tile < MinTile:
		return Request{}, nil, invalid("tile %d: at least %d pixels", tile, MinTile)
	}
	up := &upscaleInit{noiseLevel: level, latents: req.latents}
	if w > tile || h > tile {
		// Decoding costs more memory per latent pixel than the UNet but little per
		// call: at least 64 latent pixels a side, so small tiles do not multiply calls.
		vae := max(tile/2, minVAETile)
		up.tile, up.vaeTile = tiling{tile, tile / 4}, tiling{vae, vae / 4}
	}
	return r, &initImage{image: req.Image, upscale: up}, nil
}

// Upscale generates Image at the upscaler's factor (4) times its size, as diffusers'
// StableDiffusionUpscalePipeline: the low-res image, noised to the noise level by the
// low-res scheduler, is 3 more UNet input channels and the level its class label. Each
// image k of a batch draws, from its generator seeded Seed+k, the low-res noise then the
// initial latents, as diffusers does, so seed and CPU RNG reproduce diffusers' image.
// The model must be an x4 upscaler (ModelInfo.Upscaler).
func (p *Pipeline) Upscale(ctx context.Context, req UpscaleRequest) (*Result, error) {
	r, init, err := p.desc.upscale(req)
	if err != nil {
		return nil, err
	}
	return p.generate(ctx, r, init)
}

// prepareUpscale is the start of an upscale on latents (b, c, lh, lw), the low-res
// image's own size: the image in [-1, 1] noised by the low-res scheduler as the extra
// UNet channels (b, 3, lh, lw), the noise level as class labels, and the initial
// latents. Draws, per image: low-res noise, then the latents.
func (p *Pipeline) prepareUpscale(par Params, sched schedule.Scheduler, init *initImage, gen batchGenerator, lh, lw int) start {
	b, hw := par.BatchSize, lh*lw
	img := imageTensorWith(init.image, lw, lh, bicubicFilter)
	level := init.upscale.noiseLevel
	noise := make([]float32, b*3*hw)
	gen.Normal(noise)
	noised := make([]float32, 0, len(noise))
	for k := 0; k < b; k++ {
		noised = append(noised, p.desc.upscaler.lowRes.AddNoise(img, noise[k*3*hw:(k+1)*3*hw], level)...)
	}
	x := slices.Clone(init.upscale.latents)
	if x == nil {
		x = make([]float32, b*p.eng.vaeNet().latentChannels()*hw)
		gen.Normal(x)
	}
	scale(x, float32(sched.InitNoiseSigma()))
	labels := make([]float32, b)
	for k := range labels {
		labels[k] = float32(level)
	}
	return start{x: x, extra: noised, classLabels: labels, tile: init.upscale.tile, vaeTile: init.upscale.vaeTile}
}
