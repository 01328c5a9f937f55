package diffusion

import (
	"errors"
	"fmt"
	"image"
	"math"
	"strings"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// Decoder chooses the network that decodes the final latents into the image.
type Decoder int

const (
	// DecoderVAE is the model's own AutoencoderKL (the default).
	DecoderVAE Decoder = iota
	// DecoderTAESD is the tiny autoencoder given with WithTAESD: a fraction of the VAE's
	// time and memory, at a visible loss of detail.
	DecoderTAESD
)

var decoderNames = []string{"vae", "taesd"}

func (d Decoder) String() string {
	if d >= 0 && int(d) < len(decoderNames) {
		return decoderNames[d]
	}
	return fmt.Sprintf("Decoder(%d)", int(d))
}

// WithTAESD loads a TAESD (madebyollin/taesd; TAESDXL for SDXL-latent models) beside the
// model: a diffusers AutoencoderTiny folder, a folder with the original taesd_encoder /
// taesd_decoder files, or one such file. It then draws every Progress.Preview (at full
// resolution, instead of the linear latent approximation), and decodes the final image
// of requests with Decoder DecoderTAESD. Its latents must be the model's (channels and
// downsampling factor), else Open fails with ErrBadModel.
func WithTAESD(path string) Option { return func(o *openOptions) { o.taesd = path } }

// taesdNet is a loaded TAESD (encoder, decoder or both).
type taesdNet struct {
	lib   *binding.Library
	ctx   binding.Ctx
	model binding.Model
	cfg   binding.TAESDConfig
}

func (e *engine) taesdNet() taesdNet { return taesdNet{e.lib, e.ctx, e.taesd, e.taesdCfg} }

// loadTAESD hands t's networks to the runtime; t must stay open until the engine's share
// is released.
func (e *engine) loadTAESD(t *modelfile.TAESD) error {
	c := t.Config
	cfg := binding.TAESDConfig{
		InChannels: int32(c.InChannels), OutChannels: int32(c.OutChannels), LatentChannels: int32(c.LatentChannels),
		EncoderLevels: int32(len(c.EncoderBlockOutChannels)), DecoderLevels: int32(len(c.DecoderBlockOutChannels)),
	}
	for i := range c.EncoderBlockOutChannels {
		cfg.EncoderChannels[i], cfg.EncoderBlocks[i] = int32(c.EncoderBlockOutChannels[i]), int32(c.NumEncoderBlocks[i])
	}
	for i := range c.DecoderBlockOutChannels {
		cfg.DecoderChannels[i], cfg.DecoderBlocks[i] = int32(c.DecoderBlockOutChannels[i]), int32(c.NumDecoderBlocks[i])
	}
	ws, err := e.weights(t.Tensors)
	if err != nil {
		return err
	}
	m, err := e.lib.TAESDLoad(e.ctx, &cfg, ws)
	if err != nil {
		return err
	}
	e.taesd, e.taesdCfg = m, cfg
	return nil
}

func (n taesdNet) factor() int { return 1 << (max(n.cfg.DecoderLevels, n.cfg.EncoderLevels) - 1) }

// decode decodes latents z (batch, latent, h, w) into images (batch, out, f*h, f*w) in
// the original decoder's range, about [0, 1].
func (n taesdNet) decode(z []float32, batch, h, w int) ([]float32, error) {
	if n.cfg.DecoderLevels == 0 {
		return nil, fmt.Errorf("%w: the TAESD has no decoder", ErrInvalidRequest)
	}
	s := &scope{lib: n.lib, ctx: n.ctx}
	defer s.done()
	f := 1 << (n.cfg.DecoderLevels - 1)
	tz, err := s.f32(z, int64(batch), int64(n.cfg.LatentChannels), int64(h), int64(w))
	if err != nil {
		return nil, err
	}
	out, err := s.f32(nil, int64(batch), int64(n.cfg.OutChannels), int64(h*f), int64(w*f))
	if err != nil {
		return nil, err
	}
	if err := n.lib.TAESDDecode(n.ctx, n.model, tz, out); err != nil {
		return nil, err
	}
	return s.read(out, batch*int(n.cfg.OutChannels)*h*f*w*f)
}

// encode encodes images x (batch, in, H, W) in [0, 1] into latents (batch, latent,
// ceil(H/f), ceil(W/f)).
func (n taesdNet) encode(x []float32, batch, h, w int) ([]float32, error) {
	if n.cfg.EncoderLevels == 0 {
		return nil, fmt.Errorf("%w: the TAESD has no encoder", ErrInvalidRequest)
	}
	s := &scope{lib: n.lib, ctx: n.ctx}
	defer s.done()
	lh, lw := h, w
	for i := int32(1); i < n.cfg.EncoderLevels; i++ {
		lh, lw = (lh+1)/2, (lw+1)/2
	}
	tx, err := s.f32(x, int64(batch), int64(n.cfg.InChannels), int64(h), int64(w))
	if err != nil {
		return nil, err
	}
	tl, err := s.f32(nil, int64(batch), int64(n.cfg.LatentChannels), int64(lh), int64(lw))
	if err != nil {
		return nil, err
	}
	if err := n.lib.TAESDEncode(n.ctx, n.model, tx, tl); err != nil {
		return nil, err
	}
	return s.read(tl, batch*int(n.cfg.LatentChannels)*lh*lw)
}

// taesdCodec is TAESD as diffusers' AutoencoderTiny presents it: images in [-1, 1], the
// encoder fed (x + 1) / 2 and the decoder's output mapped to 2 y - 1; latents scaled by
// the config's scaling and shift factors (1 and 0 for TAESD: the denoiser's latents are
// the network's).
type taesdCodec struct {
	net          taesdNet
	scale, shift float64
}

func newTAESDCodec(net taesdNet, cfg modelfile.TAESDConfig) taesdCodec {
	return taesdCodec{net: net, scale: cfg.ScalingFactor, shift: cfg.ShiftFactor}
}

func (c taesdCodec) factor() int   { return c.net.factor() }
func (c taesdCodec) channels() int { return int(c.net.cfg.LatentChannels) }

// encode is deterministic: the distribution is the encoder's output with zero variance
// (logvar -Inf, so sampling returns it exactly).
func (c taesdCodec) encode(x []float32, batch, h, w int) (latentDist, error) {
	in := make([]float32, len(x))
	for k, v := range x {
		in[k] = (v + 1) / 2
	}
	z, err := c.net.encode(in, batch, h, w)
	if err != nil {
		return latentDist{}, err
	}
	logvar := make([]float32, len(z))
	for k := range logvar {
		logvar[k] = float32(math.Inf(-1))
	}
	return latentDist{mean: z, logvar: logvar, scale: c.scale, shift: c.shift}, nil
}

func (c taesdCodec) decode(latents []float32, batch, h, w int) ([]float32, error) {
	z := make([]float32, len(latents))
	for k, v := range latents {
		z[k] = float32(float64(v)/c.scale + c.shift)
	}
	y, err := c.net.decode(z, batch, h, w)
	for k, v := range y {
		y[k] = 2*v - 1
	}
	return y, err
}

// checkTAESD refuses a TAESD whose latents are not the model's.
func checkTAESD(t *modelfile.TAESD, m *modelfile.Model) error {
	c := t.Config
	lat, f := m.VAE.Config.LatentChannels, 1<<(len(m.VAE.Config.BlockOutChannels)-1)
	if c.LatentChannels != lat || c.Factor() != f {
		return fmt.Errorf("%w: the TAESD works on %d latent channels at 1/%d size, the model on %d at 1/%d (TAESDXL, TAESD3 ... belong to other model families)",
			ErrBadModel, c.LatentChannels, c.Factor(), lat, f)
	}
	if !c.HasDecoder() {
		return fmt.Errorf("%w: the TAESD at %s has no decoder (give the taesd_decoder file or a folder with it)", ErrBadModel, t.Path)
	}
	return nil
}

// taesdCodec is the pipeline's TAESD as a codec; ok is false without one.
func (p *Pipeline) taesdCodec() (taesdCodec, bool) {
	if p.taesd == nil {
		return taesdCodec{}, false
	}
	return newTAESDCodec(p.eng.taesdNet(), p.taesd.Config), true
}

// taesdPreview decodes the first image of the batch, x (latent channels, h, w) in the
// denoiser's space, with TAESD into an image of the final size.
func (p *Pipeline) taesdPreview(c taesdCodec, x []float32, h, w int) (image.Image, error) {
	pix, err := c.decode(x, 1, h, w)
	if err != nil {
		return nil, err
	}
	f := c.factor()
	return toImages(pix, 1, h*f, w*f)[0], nil
}

// ParseVAEDecoder parses sdcli's --vae-decoder value: "vae" (the model's own) or
// "taesd:PATH".
func ParseVAEDecoder(s string) (d Decoder, path string, err error) {
	if strings.EqualFold(s, "vae") || s == "" {
		return DecoderVAE, "", nil
	}
	if kind, p, ok := strings.Cut(s, ":"); ok && strings.EqualFold(kind, "taesd") && p != "" {
		return DecoderTAESD, p, nil
	}
	return 0, "", errors.New(`want "vae" or "taesd:PATH" (a TAESD folder or file)`)
}
