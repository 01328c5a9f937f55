package binding

// ESRGANConfig mirrors sd_esrgan_config_t.
type ESRGANConfig struct {
	InChannels  int32 // 3; 12 or 48 for x2 / x1 models (the pixel-unshuffled image)
	OutChannels int32
	NumFeat     int32
	NumBlock    int32
	NumGrowCh   int32
}

// esrganFuncs are the ESRGAN entry points of Library.
type esrganFuncs struct {
	// size_t sd_sizeof_esrgan_config(void);
	sdSizeofEsrganConfig func() uintptr
	// void sd_esrgan_config_default(sd_esrgan_config_t *c);
	sdEsrganConfigDefault func(c *ESRGANConfig)
	// sd_status_t sd_esrgan_load(sd_ctx_t *ctx, const sd_esrgan_config_t *config,
	//                            const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);
	sdEsrganLoad func(ctx Ctx, c *ESRGANConfig, weights uintptr, n int32, out *Model) Status
	// sd_status_t sd_esrgan_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
	//                               sd_tensor_t *out);
	sdEsrganForward func(ctx Ctx, m Model, x, out Tensor) Status
}

// DefaultESRGANConfig returns sd_esrgan_config_default's values (RealESRGAN_x4plus).
func (l *Library) DefaultESRGANConfig() ESRGANConfig {
	var c ESRGANConfig
	l.sdEsrganConfigDefault(&c)
	return c
}

// ESRGANLoad loads an ESRGAN generator; the weights' data must stay valid until ModelFree.
func (l *Library) ESRGANLoad(ctx Ctx, c *ESRGANConfig, ws []Weight) (Model, error) {
	return l.loadModel(ctx, "sd_esrgan_load", ws, func(t uintptr, n int32, out *Model) Status {
		return l.sdEsrganLoad(ctx, c, t, n, out)
	})
}

// ESRGANForward upscales x (B, in, H, W) into out (B, out, 4H, 4W).
func (l *Library) ESRGANForward(ctx Ctx, m Model, x, out Tensor) error {
	return l.check(ctx, "sd_esrgan_forward", l.sdEsrganForward(ctx, m, x, out))
}
