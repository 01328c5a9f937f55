package diffusion

import (
	"errors"
	"fmt"
	"image"
	"math"
	"path/filepath"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/rng"
	"github.com/gosd/gosd/diffusion/schedule"
)

// modelDesc is what a request is checked against. It is derived from the model's config
// files alone, so that validation is a pure function of the request and the model, the
// same whether or not the native library is there (and testable without it).
type modelDesc struct {
	info      ModelInfo       // Device and Backend are left for Open to fill in
	sched     schedule.Config // the parsed scheduler_config.json
	vaeFactor int             // image pixels per latent pixel
	// sdxl: two text encoders and text_time added conditioning (Prompt2, micro-
	// conditioning); clipSkipMax is then the largest ClipSkip both encoders allow.
	sdxl        bool
	clipSkipMax int
	upscaler    *upscalerDesc // the x4 upscaler's noise augmentation; nil for other models
}

// describe reads the model's description from its configs.
func describe(m *modelfile.Model) (modelDesc, error) {
	// Raw carries prediction_type too: modelfile writes WithPredictionType's value and
	// the family default of single files into it.
	sched, err := schedule.ParseConfig(m.Scheduler.Raw)
	if err != nil {
		return modelDesc{}, fmt.Errorf("%w: scheduler config: %v", ErrBadModel, err)
	}
	// Conditioning runs one text encoder, or SDXL's two with their added conditioning; a
	// model that needs more is refused rather than run on part of its conditioning.
	sdxl := len(m.ExtraTextEncoders) > 0 || m.RequiresAestheticsScore
	clipSkipMax := m.TextEncoder.Config.NumHiddenLayers
	if sdxl {
		if err := checkSDXL(m); err != nil {
			return modelDesc{}, err
		}
		// SDXL already takes the penultimate layer; ClipSkip k >= 2 drops k - 1 more.
		for _, te := range m.ExtraTextEncoders {
			clipSkipMax = min(clipSkipMax, te.Config.NumHiddenLayers)
		}
		clipSkipMax--
	}
	// A UNet conditioned on more than text and latents needs its own pipeline: the x4
	// upscaler's (noise level and low-resolution image) has one, others are refused.
	var up *upscalerDesc
	if m.Upscaler != nil {
		if up, err = describeUpscaler(m); err != nil {
			return modelDesc{}, err
		}
	} else if u := m.UNet.Config; u.ClassEmbedType != "" || (u.AdditionEmbedType != "" && !sdxl) || (u.InChannels != 4 && u.InChannels != 9) {
		return modelDesc{}, fmt.Errorf("%w: a UNet with %d input channels, class embedding %q and addition embedding %q (an SDXL-style model, or an x4 upscaler without its pipeline's model_index.json) has no pipeline yet", ErrUnsupported, u.InChannels, u.ClassEmbedType, u.AdditionEmbedType)
	}
	// Each VAE level but the last halves the image (the runtime's VAE is built from the
	// same config; modelfile checks that it has at least one level).
	f := 1 << (len(m.VAE.Config.BlockOutChannels) - 1)
	side := m.UNet.Config.SampleSize * f
	return modelDesc{
		info: ModelInfo{
			Name:           filepath.Base(filepath.Clean(m.Path)),
			Path:           m.Path,
			Family:         m.Family,
			Prediction:     m.Scheduler.PredictionType,
			Width:          side,
			Height:         side,
			DefaultSampler: ConfiguredSampler(m.Scheduler),
			TextLayers:     m.TextEncoder.Config.NumHiddenLayers,
			Inpainting:     up == nil && m.UNet.Config.InChannels == 9,
			Upscaler:       up != nil,
			Summary:        m.Summary(),
		},
		sched:       sched,
		vaeFactor:   f,
		sdxl:        sdxl,
		clipSkipMax: clipSkipMax,
		upscaler:    up,
	}, nil
}

// sizeUnit is what image sides must be a multiple of: 8, as diffusers requires of Stable
// Diffusion, and the VAE's downsampling factor when that is larger.
func (d *modelDesc) sizeUnit() int { return max(8, d.vaeFactor) }

// img2img checks an img2img request and splits it into the generation and its start.
func (d *modelDesc) img2img(req Img2ImgRequest) (Request, *initImage, error) {
	if err := checkImage("img2img image", req.Image); err != nil {
		return Request{}, nil, err
	}
	strength, err := resolveStrength(req.Strength, 0.8)
	if err != nil {
		return Request{}, nil, err
	}
	r, err := d.defaultSizeFrom(req.Request, req.Image)
	if err != nil {
		return Request{}, nil, err
	}
	return r, &initImage{image: req.Image, strength: strength}, nil
}

// inpaint checks an inpainting request and splits it into the generation and its start.
func (d *modelDesc) inpaint(req InpaintRequest) (Request, *initImage, error) {
	if err := checkImage("inpainting image", req.Image); err != nil {
		return Request{}, nil, err
	}
	if err := checkImage("inpainting mask", req.Mask); err != nil {
		return Request{}, nil, err
	}
	strength, err := resolveStrength(req.Strength, 1)
	if err != nil {
		return Request{}, nil, err
	}
	r, err := d.defaultSizeFrom(req.Request, req.Image)
	if err != nil {
		return Request{}, nil, err
	}
	return r, &initImage{image: req.Image, mask: req.Mask, strength: strength}, nil
}

// defaultSizeFrom sizes a request like its image (rounded down to a multiple of the
// size unit, and scaled to fit MaxSide).
func (d *modelDesc) defaultSizeFrom(r Request, img image.Image) (Request, error) {
	b := img.Bounds()
	u := d.sizeUnit()
	if b.Dx() < u || b.Dy() < u {
		return r, invalid("image %dx%d is smaller than %d pixels", b.Dx(), b.Dy(), u)
	}
	// An image larger than MaxSide is scaled down as a whole, keeping its shape.
	w, h := b.Dx(), b.Dy()
	if long := max(w, h); long > MaxSide {
		w, h = max(w*MaxSide/long, u), max(h*MaxSide/long, u)
	}
	if r.Width == 0 {
		r.Width = w / u * u
	}
	if r.Height == 0 {
		r.Height = h / u * u
	}
	return r, nil
}

// plan validates a generation (init is nil for txt2img) and returns what it will run
// with: the resolved parameters and the sampler's scheduler.
func (d *modelDesc) plan(req Request, init *initImage) (Params, schedule.Scheduler, error) {
	par, err := d.resolve(req)
	if err != nil {
		return par, nil, err
	}
	if init != nil {
		par.Strength = init.strength
		if init.upscale != nil {
			par.UpscaleFactor, par.NoiseLevel = d.vaeFactor, init.upscale.noiseLevel
		}
	}
	if d.info.Inpainting && (init == nil || init.mask == nil) {
		return par, nil, invalid("%s is an inpainting model: use Inpaint", d.info.Name)
	}
	if d.upscaler != nil && (init == nil || init.upscale == nil) {
		return par, nil, invalid("%s is an x4 upscaler: use Upscale", d.info.Name)
	}
	if init != nil && init.upscale != nil && (len(req.Controls) > 0 || req.Decoder != DecoderVAE) {
		return par, nil, invalid("an upscale takes no ControlNets and decodes with the upscaler's VAE")
	}
	if req.Hires != nil && len(req.Controls) > 0 {
		return par, nil, invalid("ControlNets are not supported with the hires fix yet")
	}
	sched, err := schedule.New(d.sched, schedule.Options{
		Sampler: par.Sampler.scheduleSampler(), Sigmas: par.Schedule, Eta: par.Eta, Spacing: par.TimestepSpacing,
	}, par.Steps)
	if errors.Is(err, schedule.ErrInvalidConfig) {
		// The model's own scheduler config is broken (e.g. a backwards beta range
		// that the sampler's class defaults complete), whatever was asked.
		return par, nil, fmt.Errorf("%w: scheduler config: %v", ErrBadModel, err)
	}
	if err != nil {
		return par, nil, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
	}
	if init != nil && init.upscale == nil && sched.StartIndex(par.Strength) >= len(sched.Timesteps()) {
		return par, nil, invalid("strength %g with %d steps leaves nothing to do", par.Strength, par.Steps)
	}
	if req.Hires != nil {
		if init != nil {
			return par, nil, invalid("the hires fix is a second pass of Txt2Img")
		}
		if _, err := d.planHires(req.Hires, &par); err != nil {
			return par, nil, err
		}
	}
	return par, sched, nil
}

// resolve fills defaults and validates a request against the model.
func (d *modelDesc) resolve(r Request) (Params, error) {
	par := Params{
		Prompt:          r.Prompt,
		NegativePrompt:  r.NegativePrompt,
		Prompt2:         r.Prompt2,
		NegativePrompt2: r.NegativePrompt2,
		Width:           r.Width,
		Height:          r.Height,
		Steps:           r.Steps,
		GuidanceScale:   r.GuidanceScale,
		GuidanceRescale: r.GuidanceRescale,
		Sampler:         r.Sampler,
		Schedule:        r.Schedule,
		Eta:             r.Eta,
		TimestepSpacing: r.TimestepSpacing,
		PromptSyntax:    r.PromptSyntax,
		Seed:            r.Seed,
		RNG:             r.RNG,
		BatchSize:       r.BatchSize,
		ClipSkip:        r.ClipSkip,
		Model:           d.info.Name,
	}
	u := d.sizeUnit()
	if par.Width == 0 {
		par.Width = d.info.Width
	}
	if par.Height == 0 {
		par.Height = d.info.Height
	}
	if par.Width < u || par.Height < u || par.Width > MaxSide || par.Height > MaxSide ||
		par.Width%u != 0 || par.Height%u != 0 {
		return par, invalid("size %dx%d: width and height must be multiples of %d between %d and %d", par.Width, par.Height, u, u, MaxSide)
	}
	if par.Steps == 0 {
		par.Steps = 20
	}
	if par.Steps < 1 || par.Steps > MaxSteps {
		return par, invalid("steps %d not in [1, %d]", par.Steps, MaxSteps)
	}
	if par.GuidanceScale == 0 {
		par.GuidanceScale = 7.5
	}
	if math.IsNaN(par.GuidanceScale) || math.IsInf(par.GuidanceScale, 0) || par.GuidanceScale < 0 || par.GuidanceScale > 100 {
		return par, invalid("guidance scale %g not in [0, 100]", par.GuidanceScale)
	}
	if !(par.GuidanceRescale >= 0 && par.GuidanceRescale <= 1) {
		return par, invalid("guidance rescale %g not in [0, 1]", par.GuidanceRescale)
	}
	if !par.Sampler.valid() {
		return par, invalid("unknown sampler %d", int(par.Sampler))
	}
	if par.Sampler == SamplerAuto {
		par.Sampler = d.info.DefaultSampler
	}
	if !(par.Eta >= 0 && par.Eta <= 1) {
		return par, invalid("eta %g not in [0, 1]", par.Eta)
	}
	if par.TimestepSpacing < schedule.SpacingDefault || par.TimestepSpacing > schedule.SpacingLinspace {
		return par, invalid("unknown timestep spacing %d", int(par.TimestepSpacing))
	}
	if par.TimestepSpacing == schedule.SpacingDefault {
		par.TimestepSpacing = d.sched.Spacing(par.Sampler.scheduleSampler())
	}
	if !par.PromptSyntax.valid() {
		return par, invalid("unknown prompt syntax %d", int(par.PromptSyntax))
	}
	if par.BatchSize == 0 {
		par.BatchSize = 1
	}
	if par.BatchSize < 1 || par.BatchSize > MaxBatchSize {
		return par, invalid("batch size %d not in [1, %d]", par.BatchSize, MaxBatchSize)
	}
	if par.ClipSkip < 0 || par.ClipSkip > d.clipSkipMax {
		return par, invalid("clip skip %d not in [0, %d]", par.ClipSkip, d.clipSkipMax)
	}
	if d.sdxl {
		var err error
		if par.SizeConditioning, err = resolveSizeConditioning(r.SizeConditioning, par.Width, par.Height); err != nil {
			return par, err
		}
	} else if r.Prompt2 != "" || r.NegativePrompt2 != "" || r.SizeConditioning != (SizeConditioning{}) {
		return par, invalid("prompt 2, negative prompt 2 and size conditioning need an SDXL model (two text encoders); %s has one", d.info.Name)
	}
	if par.RNG != rng.CPU && par.RNG != rng.CUDA {
		return par, invalid("unknown RNG %d", int(par.RNG))
	}
	return par, nil
}

func resolveStrength(s, def float64) (float64, error) {
	if s == 0 {
		return def, nil
	}
	if !(s > 0 && s <= 1) {
		return 0, invalid("strength %g not in (0, 1]", s)
	}
	return s, nil
}
