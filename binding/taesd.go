package binding

// TAESDConfig mirrors sd_taesd_config_t (diffusers' AutoencoderTiny config). A network
// with 0 levels is absent.
type TAESDConfig struct {
	InChannels      int32
	OutChannels     int32
	LatentChannels  int32
	EncoderLevels   int32
	EncoderChannels [MaxLevels]int32
	EncoderBlocks   [MaxLevels]int32
	DecoderLevels   int32
	DecoderChannels [MaxLevels]int32
	DecoderBlocks   [MaxLevels]int32
}

// DefaultTAESDConfig returns sd_taesd_config_default's values (TAESD / TAESDXL).
func (l *Library) DefaultTAESDConfig() TAESDConfig {
	var c TAESDConfig
	l.sdTaesdConfigDefault(&c)
	return c
}

// TAESDLoad loads a TAESD (encoder, decoder or both, as the config says) from diffusers'
// names; the weights' data must stay valid until ModelFree.
func (l *Library) TAESDLoad(ctx Ctx, c *TAESDConfig, ws []Weight) (Model, error) {
	return l.loadModel(ctx, "sd_taesd_load", ws, func(t uintptr, n int32, out *Model) Status {
		return l.sdTaesdLoad(ctx, c, t, n, out)
	})
}

// TAESDDecode decodes the denoiser's latents into images in [0, 1] (roughly).
func (l *Library) TAESDDecode(ctx Ctx, m Model, z, out Tensor) error {
	return l.check(ctx, "sd_taesd_decode", l.sdTaesdDecode(ctx, m, z, out))
}

// TAESDEncode encodes images in [0, 1] into the denoiser's latents.
func (l *Library) TAESDEncode(ctx Ctx, m Model, x, latents Tensor) error {
	return l.check(ctx, "sd_taesd_encode", l.sdTaesdEncode(ctx, m, x, latents))
}

// OpTanhClamp: out = limit * tanh(x / limit).
func (l *Library) OpTanhClamp(ctx Ctx, out, x Tensor, limit float32) error {
	return l.check(ctx, "sd_op_tanh_clamp", l.sdOpTanhClamp(ctx, out, x, limit))
}
