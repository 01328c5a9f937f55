package binding

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Library is a loaded runtime library. Its methods mirror the functions of sd.h.
type Library struct {
	path     string
	handle   uintptr
	fallback string

	// uint32_t sd_abi_version(void);
	sdAbiVersion func() uint32
	// size_t sd_sizeof_ctx_params(void); (and the other sd_sizeof_* functions)
	sdSizeofCtxParams               func() uintptr
	sdSizeofMemoryStats             func() uintptr
	sdSizeofConv2dParams            func() uintptr
	sdSizeofLinearParams            func() uintptr
	sdSizeofAttentionParams         func() uintptr
	sdSizeofTimestepEmbeddingParams func() uintptr
	sdSizeofWeight                  func() uintptr
	sdSizeofClipConfig              func() uintptr
	sdSizeofUnetConfig              func() uintptr
	sdSizeofUnetInputs              func() uintptr
	sdSizeofVaeConfig               func() uintptr
	sdSizeofTaesdConfig             func() uintptr

	// const char *sd_status_string(sd_status_t status);
	sdStatusString func(status Status) string
	// bool sd_backend_available(int32_t backend, char *reason, size_t reason_len);
	sdBackendAvailable func(backend Backend, reason *byte, reasonLen uintptr) bool

	// void sd_ctx_params_default(sd_ctx_params_t *params);
	sdCtxParamsDefault func(p *CtxParams)
	// sd_status_t sd_ctx_init(const sd_ctx_params_t *params, sd_ctx_t **out, char *err, size_t err_len);
	sdCtxInit func(p *CtxParams, out *Ctx, err *byte, errLen uintptr) Status
	// sd_status_t sd_ctx_init_shared(sd_ctx_t *share_with, const sd_ctx_params_t *params, sd_ctx_t **out,
	//                                char *err, size_t err_len);
	sdCtxInitShared func(shareWith Ctx, p *CtxParams, out *Ctx, err *byte, errLen uintptr) Status
	// void sd_ctx_free(sd_ctx_t *ctx);
	sdCtxFree func(ctx Ctx)
	// int32_t sd_ctx_backend(const sd_ctx_t *ctx);
	sdCtxBackend func(ctx Ctx) Backend
	// const char *sd_ctx_backend_description(const sd_ctx_t *ctx);
	sdCtxBackendDescription func(ctx Ctx) string
	// int32_t sd_ctx_activation_dtype(const sd_ctx_t *ctx);
	sdCtxActivationDType func(ctx Ctx) DType
	// const char *sd_ctx_last_error(const sd_ctx_t *ctx);
	sdCtxLastError func(ctx Ctx) string
	// void sd_ctx_cancel(sd_ctx_t *ctx);
	sdCtxCancel func(ctx Ctx)
	// void sd_ctx_clear_cancel(sd_ctx_t *ctx);
	sdCtxClearCancel func(ctx Ctx)
	// void sd_ctx_set_log(sd_ctx_t *ctx, sd_log_fn fn, void *user_data);
	sdCtxSetLog func(ctx Ctx, fn uintptr, userData uintptr)
	// sd_status_t sd_ctx_memory_stats(sd_ctx_t *ctx, sd_memory_stats_t *out);
	sdCtxMemoryStats func(ctx Ctx, out *MemoryStats) Status
	// void sd_ctx_trim(sd_ctx_t *ctx);
	sdCtxTrim func(ctx Ctx)
	// void sd_ctx_set_profiling(sd_ctx_t *ctx, bool enabled);
	sdCtxSetProfiling func(ctx Ctx, enabled bool)
	// size_t sd_ctx_profile_report(const sd_ctx_t *ctx, char *buf, size_t len);
	sdCtxProfileReport func(ctx Ctx, buf *byte, n uintptr) uintptr
	// void sd_ctx_profile_reset(sd_ctx_t *ctx);
	sdCtxProfileReset func(ctx Ctx)

	// size_t sd_dtype_size(int32_t dtype);
	sdDtypeSize func(dtype DType) uintptr
	// sd_status_t sd_tensor_new(sd_ctx_t *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, sd_tensor_t **out);
	sdTensorNew func(ctx Ctx, dtype DType, ndim int32, shape *int64, out *Tensor) Status
	// void sd_tensor_free(sd_ctx_t *ctx, sd_tensor_t *t);
	sdTensorFree func(ctx Ctx, t Tensor)
	// sd_status_t sd_tensor_upload(sd_ctx_t *ctx, sd_tensor_t *t, const void *src, size_t nbytes);
	sdTensorUpload func(ctx Ctx, t Tensor, src unsafe.Pointer, nbytes uintptr) Status
	// sd_status_t sd_tensor_download(sd_ctx_t *ctx, const sd_tensor_t *t, void *dst, size_t nbytes);
	sdTensorDownload func(ctx Ctx, t Tensor, dst unsafe.Pointer, nbytes uintptr) Status
	// int32_t sd_tensor_dtype(const sd_tensor_t *t);
	sdTensorDtype func(t Tensor) DType
	// int32_t sd_tensor_ndim(const sd_tensor_t *t);
	sdTensorNdim func(t Tensor) int32
	// int64_t sd_tensor_dim(const sd_tensor_t *t, int32_t axis);
	sdTensorDim func(t Tensor, axis int32) int64
	// size_t sd_tensor_nbytes(const sd_tensor_t *t);
	sdTensorNbytes func(t Tensor) uintptr

	// void sd_conv2d_params_default(sd_conv2d_params_t *p);
	sdConv2dParamsDefault func(p *Conv2DParams)
	// sd_status_t sd_op_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, const sd_tensor_t *w,
	//                          const sd_tensor_t *bias, const sd_tensor_t *residual, const sd_conv2d_params_t *p);
	sdOpConv2d func(ctx Ctx, out, x, w, bias, residual Tensor, p *Conv2DParams) Status
	// void sd_linear_params_default(sd_linear_params_t *p);
	sdLinearParamsDefault func(p *LinearParams)
	// sd_status_t sd_op_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, const sd_tensor_t *w,
	//                          const sd_tensor_t *bias, const sd_tensor_t *residual, const sd_linear_params_t *p);
	sdOpLinear func(ctx Ctx, out, x, w, bias, residual Tensor, p *LinearParams) Status
	// sd_status_t sd_op_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, const sd_tensor_t *gamma,
	//                              const sd_tensor_t *beta, int32_t groups, float eps, bool silu);
	sdOpGroupNorm func(ctx Ctx, out, x, gamma, beta Tensor, groups int32, eps float32, silu bool) Status
	// sd_status_t sd_op_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, const sd_tensor_t *gamma,
	//                              const sd_tensor_t *beta, float eps);
	sdOpLayerNorm func(ctx Ctx, out, x, gamma, beta Tensor, eps float32) Status
	// void sd_attention_params_default(sd_attention_params_t *p);
	sdAttentionParamsDefault func(p *AttentionParams)
	// sd_status_t sd_op_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q, const sd_tensor_t *k,
	//                             const sd_tensor_t *v, const sd_attention_params_t *p);
	sdOpAttention func(ctx Ctx, out, q, k, v Tensor, p *AttentionParams) Status
	// sd_status_t sd_op_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, int32_t activation);
	sdOpActivation func(ctx Ctx, out, x Tensor, act Activation) Status
	// sd_status_t sd_op_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
	sdOpGeglu func(ctx Ctx, out, x Tensor) Status
	// sd_status_t sd_op_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
	sdOpUpsampleNearest func(ctx Ctx, out, x Tensor) Status
	// sd_status_t sd_op_add(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a, const sd_tensor_t *b);
	sdOpAdd func(ctx Ctx, out, a, b Tensor) Status
	// sd_status_t sd_op_mul(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a, const sd_tensor_t *b);
	sdOpMul func(ctx Ctx, out, a, b Tensor) Status
	// sd_status_t sd_op_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a, const sd_tensor_t *b);
	sdOpConcat func(ctx Ctx, out, a, b Tensor) Status
	// sd_status_t sd_op_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
	sdOpConvert func(ctx Ctx, out, x Tensor) Status
	// void sd_timestep_embedding_params_default(sd_timestep_embedding_params_t *p);
	sdTimestepEmbeddingParamsDefault func(p *TimestepEmbeddingParams)
	// sd_status_t sd_op_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
	//                                      const sd_timestep_embedding_params_t *p);
	sdOpTimestepEmbedding func(ctx Ctx, out, t Tensor, p *TimestepEmbeddingParams) Status
	// sd_status_t sd_op_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo, float hi);
	sdOpClamp func(ctx Ctx, out, x Tensor, lo, hi float32) Status
	// sd_status_t sd_op_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit);
	sdOpTanhClamp func(ctx Ctx, out, x Tensor, limit float32) Status
	// sd_status_t sd_op_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids, const sd_tensor_t *table);
	sdOpEmbedding func(ctx Ctx, out, ids, table Tensor) Status

	// void sd_clip_config_default(sd_clip_config_t *c);
	sdClipConfigDefault func(c *CLIPConfig)
	// void sd_unet_config_default(sd_unet_config_t *c);
	sdUnetConfigDefault func(c *UNetConfig)
	// void sd_unet_inputs_default(sd_unet_inputs_t *in);
	sdUnetInputsDefault func(in *unetInputsC)
	// void sd_vae_config_default(sd_vae_config_t *c);
	sdVaeConfigDefault func(c *VAEConfig)
	// sd_status_t sd_clip_load(sd_ctx_t *ctx, const sd_clip_config_t *config, const sd_weight_t *weights,
	//                          int32_t n_weights, sd_model_t **out);
	sdClipLoad func(ctx Ctx, c *CLIPConfig, weights uintptr, n int32, out *Model) Status
	// sd_status_t sd_unet_load(sd_ctx_t *ctx, const sd_unet_config_t *config, const sd_weight_t *weights,
	//                          int32_t n_weights, sd_model_t **out);
	sdUnetLoad func(ctx Ctx, c *UNetConfig, weights uintptr, n int32, out *Model) Status
	// sd_status_t sd_vae_load(sd_ctx_t *ctx, const sd_vae_config_t *config, const sd_weight_t *weights,
	//                         int32_t n_weights, sd_model_t **out);
	sdVaeLoad func(ctx Ctx, c *VAEConfig, weights uintptr, n int32, out *Model) Status
	// void sd_model_free(sd_ctx_t *ctx, sd_model_t *model);
	sdModelFree func(ctx Ctx, m Model)
	// sd_status_t sd_model_set_weights(sd_ctx_t *ctx, sd_model_t *model, const sd_weight_t *weights,
	//                                  int32_t n_weights);
	sdModelSetWeights func(ctx Ctx, m Model, weights uintptr, n int32) Status
	// sd_status_t sd_model_weight_copied(sd_ctx_t *ctx, const sd_model_t *model, const char *name,
	//                                    int32_t dtype, bool *copied);
	sdModelWeightCopied func(ctx Ctx, m Model, name *byte, dtype DType, copied *bool) Status
	// sd_status_t sd_model_merge_weight(sd_ctx_t *ctx, sd_model_t *model, const sd_weight_t *base,
	//                                   const float *up, const float *down, int32_t rank, bool *merged);
	sdModelMergeWeight func(ctx Ctx, m Model, base uintptr, up, down *float32, rank int32, merged *bool) Status
	// sd_status_t sd_clip_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *ids, int32_t skip_layers,
	//                             bool final_norm, sd_tensor_t *hidden, sd_tensor_t *pooled);
	sdClipForward func(ctx Ctx, m Model, ids Tensor, skipLayers int32, finalNorm bool, hidden, pooled Tensor) Status
	// sd_status_t sd_clip_forward_extra(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *ids, const sd_tensor_t *extra,
	//                                   int32_t skip_layers, bool final_norm, sd_tensor_t *hidden, sd_tensor_t *pooled);
	sdClipForwardExtra func(ctx Ctx, m Model, ids, extra Tensor, skipLayers int32, finalNorm bool, hidden, pooled Tensor) Status
	// sd_status_t sd_clip_project(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *pooled, sd_tensor_t *out);
	sdClipProject func(ctx Ctx, m Model, pooled, out Tensor) Status
	// sd_status_t sd_unet_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_unet_inputs_t *in, sd_tensor_t *out);
	sdUnetForward func(ctx Ctx, m Model, in *unetInputsC, out Tensor) Status
	// sd_status_t sd_vae_decode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *z, sd_tensor_t *out);
	sdVaeDecode func(ctx Ctx, m Model, z, out Tensor) Status
	// sd_status_t sd_vae_encode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x, sd_tensor_t *mean,
	//                           sd_tensor_t *logvar);
	sdVaeEncode func(ctx Ctx, m Model, x, mean, logvar Tensor) Status

	// ControlNet (binding/controlnet.go).
	sdSizeofControlnetConfig func() uintptr
	sdSizeofControlnetInputs func() uintptr
	// void sd_controlnet_config_default(sd_controlnet_config_t *c);
	sdControlnetConfigDefault func(c *ControlNetConfig)
	// void sd_controlnet_inputs_default(sd_controlnet_inputs_t *in);
	sdControlnetInputsDefault func(in *controlNetInputsC)
	// sd_status_t sd_controlnet_load(sd_ctx_t *ctx, const sd_controlnet_config_t *config,
	//                                const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);
	sdControlnetLoad func(ctx Ctx, c *ControlNetConfig, weights uintptr, n int32, out *Model) Status
	// sd_status_t sd_controlnet_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_controlnet_inputs_t *in,
	//                                   sd_tensor_t *const *down, int32_t n_down, sd_tensor_t *mid);
	sdControlnetForward func(ctx Ctx, m Model, in *controlNetInputsC, down *Tensor, nDown int32, mid Tensor) Status

	// TAESD (binding/taesd.go).
	// void sd_taesd_config_default(sd_taesd_config_t *c);
	sdTaesdConfigDefault func(c *TAESDConfig)
	// sd_status_t sd_taesd_load(sd_ctx_t *ctx, const sd_taesd_config_t *config, const sd_weight_t *weights,
	//                           int32_t n_weights, sd_model_t **out);
	sdTaesdLoad func(ctx Ctx, c *TAESDConfig, weights uintptr, n int32, out *Model) Status
	// sd_status_t sd_taesd_decode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *z, sd_tensor_t *out);
	sdTaesdDecode func(ctx Ctx, m Model, z, out Tensor) Status
	// sd_status_t sd_taesd_encode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x, sd_tensor_t *latents);
	sdTaesdEncode func(ctx Ctx, m Model, x, latents Tensor) Status

	// ESRGAN (binding/esrgan.go).
	esrganFuncs
}

type symbol struct {
	name string
	fn   any // pointer to a func field
}

// Resolved first, so a foreign library is rejected before anything else is called.
func (l *Library) abiSymbols() []symbol {
	return []symbol{
		{"sd_abi_version", &l.sdAbiVersion},
		{"sd_sizeof_ctx_params", &l.sdSizeofCtxParams},
		{"sd_sizeof_memory_stats", &l.sdSizeofMemoryStats},
		{"sd_sizeof_conv2d_params", &l.sdSizeofConv2dParams},
		{"sd_sizeof_linear_params", &l.sdSizeofLinearParams},
		{"sd_sizeof_attention_params", &l.sdSizeofAttentionParams},
		{"sd_sizeof_timestep_embedding_params", &l.sdSizeofTimestepEmbeddingParams},
		{"sd_sizeof_weight", &l.sdSizeofWeight},
		{"sd_sizeof_clip_config", &l.sdSizeofClipConfig},
		{"sd_sizeof_unet_config", &l.sdSizeofUnetConfig},
		{"sd_sizeof_unet_inputs", &l.sdSizeofUnetInputs},
		{"sd_sizeof_vae_config", &l.sdSizeofVaeConfig},
		{"sd_sizeof_controlnet_config", &l.sdSizeofControlnetConfig},
		{"sd_sizeof_controlnet_inputs", &l.sdSizeofControlnetInputs},
		{"sd_sizeof_taesd_config", &l.sdSizeofTaesdConfig},
		{"sd_sizeof_esrgan_config", &l.sdSizeofEsrganConfig},
	}
}

func (l *Library) apiSymbols() []symbol {
	return []symbol{
		{"sd_status_string", &l.sdStatusString},
		{"sd_backend_available", &l.sdBackendAvailable},
		{"sd_ctx_params_default", &l.sdCtxParamsDefault},
		{"sd_ctx_init", &l.sdCtxInit},
		{"sd_ctx_init_shared", &l.sdCtxInitShared},
		{"sd_ctx_free", &l.sdCtxFree},
		{"sd_ctx_backend", &l.sdCtxBackend},
		{"sd_ctx_backend_description", &l.sdCtxBackendDescription},
		{"sd_ctx_activation_dtype", &l.sdCtxActivationDType},
		{"sd_ctx_last_error", &l.sdCtxLastError},
		{"sd_ctx_cancel", &l.sdCtxCancel},
		{"sd_ctx_clear_cancel", &l.sdCtxClearCancel},
		{"sd_ctx_set_log", &l.sdCtxSetLog},
		{"sd_ctx_memory_stats", &l.sdCtxMemoryStats},
		{"sd_ctx_trim", &l.sdCtxTrim},
		{"sd_ctx_set_profiling", &l.sdCtxSetProfiling},
		{"sd_ctx_profile_report", &l.sdCtxProfileReport},
		{"sd_ctx_profile_reset", &l.sdCtxProfileReset},
		{"sd_dtype_size", &l.sdDtypeSize},
		{"sd_tensor_new", &l.sdTensorNew},
		{"sd_tensor_free", &l.sdTensorFree},
		{"sd_tensor_upload", &l.sdTensorUpload},
		{"sd_tensor_download", &l.sdTensorDownload},
		{"sd_tensor_dtype", &l.sdTensorDtype},
		{"sd_tensor_ndim", &l.sdTensorNdim},
		{"sd_tensor_dim", &l.sdTensorDim},
		{"sd_tensor_nbytes", &l.sdTensorNbytes},
		{"sd_conv2d_params_default", &l.sdConv2dParamsDefault},
		{"sd_op_conv2d", &l.sdOpConv2d},
		{"sd_linear_params_default", &l.sdLinearParamsDefault},
		{"sd_op_linear", &l.sdOpLinear},
		{"sd_op_group_norm", &l.sdOpGroupNorm},
		{"sd_op_layer_norm", &l.sdOpLayerNorm},
		{"sd_attention_params_default", &l.sdAttentionParamsDefault},
		{"sd_op_attention", &l.sdOpAttention},
		{"sd_op_activation", &l.sdOpActivation},
		{"sd_op_geglu", &l.sdOpGeglu},
		{"sd_op_upsample_nearest", &l.sdOpUpsampleNearest},
		{"sd_op_add", &l.sdOpAdd},
		{"sd_op_mul", &l.sdOpMul},
		{"sd_op_concat", &l.sdOpConcat},
		{"sd_op_convert", &l.sdOpConvert},
		{"sd_timestep_embedding_params_default", &l.sdTimestepEmbeddingParamsDefault},
		{"sd_op_timestep_embedding", &l.sdOpTimestepEmbedding},
		{"sd_op_clamp", &l.sdOpClamp},
		{"sd_op_tanh_clamp", &l.sdOpTanhClamp},
		{"sd_op_embedding", &l.sdOpEmbedding},
		{"sd_clip_config_default", &l.sdClipConfigDefault},
		{"sd_unet_config_default", &l.sdUnetConfigDefault},
		{"sd_unet_inputs_default", &l.sdUnetInputsDefault},
		{"sd_vae_config_default", &l.sdVaeConfigDefault},
		{"sd_clip_load", &l.sdClipLoad},
		{"sd_unet_load", &l.sdUnetLoad},
		{"sd_vae_load", &l.sdVaeLoad},
		{"sd_model_free", &l.sdModelFree},
		{"sd_model_set_weights", &l.sdModelSetWeights},
		{"sd_model_weight_copied", &l.sdModelWeightCopied},
		{"sd_model_merge_weight", &l.sdModelMergeWeight},
		{"sd_clip_forward", &l.sdClipForward},
		{"sd_clip_forward_extra", &l.sdClipForwardExtra},
		{"sd_clip_project", &l.sdClipProject},
		{"sd_unet_forward", &l.sdUnetForward},
		{"sd_vae_decode", &l.sdVaeDecode},
		{"sd_vae_encode", &l.sdVaeEncode},
		{"sd_controlnet_config_default", &l.sdControlnetConfigDefault},
		{"sd_controlnet_inputs_default", &l.sdControlnetInputsDefault},
		{"sd_controlnet_load", &l.sdControlnetLoad},
		{"sd_controlnet_forward", &l.sdControlnetForward},
		{"sd_taesd_config_default", &l.sdTaesdConfigDefault},
		{"sd_taesd_load", &l.sdTaesdLoad},
		{"sd_taesd_decode", &l.sdTaesdDecode},
		{"sd_taesd_encode", &l.sdTaesdEncode},
		{"sd_esrgan_config_default", &l.sdEsrganConfigDefault},
		{"sd_esrgan_load", &l.sdEsrganLoad},
		{"sd_esrgan_forward", &l.sdEsrganForward},
	}
}

// checkLayouts compares the library's struct sizes with this package's mirrors.
func (l *Library) checkLayouts() error {
	sizes := []struct {
		name      string
		lib, mine uintptr
	}{
		{"sd_ctx_params_t", l.sdSizeofCtxParams(), unsafe.Sizeof(CtxParams{})},
		{"sd_memory_stats_t", l.sdSizeofMemoryStats(), unsafe.Sizeof(MemoryStats{})},
		{"sd_conv2d_params_t", l.sdSizeofConv2dParams(), unsafe.Sizeof(Conv2DParams{})},
		{"sd_linear_params_t", l.sdSizeofLinearParams(), unsafe.Sizeof(LinearParams{})},
		{"sd_attention_params_t", l.sdSizeofAttentionParams(), unsafe.Sizeof(AttentionParams{})},
		{"sd_timestep_embedding_params_t", l.sdSizeofTimestepEmbeddingParams(), unsafe.Sizeof(TimestepEmbeddingParams{})},
		{"sd_weight_t", l.sdSizeofWeight(), unsafe.Sizeof(weightC{})},
		{"sd_clip_config_t", l.sdSizeofClipConfig(), unsafe.Sizeof(CLIPConfig{})},
		{"sd_unet_config_t", l.sdSizeofUnetConfig(), unsafe.Sizeof(UNetConfig{})},
		{"sd_unet_inputs_t", l.sdSizeofUnetInputs(), unsafe.Sizeof(unetInputsC{})},
		{"sd_vae_config_t", l.sdSizeofVaeConfig(), unsafe.Sizeof(VAEConfig{})},
		{"sd_controlnet_config_t", l.sdSizeofControlnetConfig(), unsafe.Sizeof(ControlNetConfig{})},
		{"sd_controlnet_inputs_t", l.sdSizeofControlnetInputs(), unsafe.Sizeof(controlNetInputsC{})},
		{"sd_taesd_config_t", l.sdSizeofTaesdConfig(), unsafe.Sizeof(TAESDConfig{})},
		{"sd_esrgan_config_t", l.sdSizeofEsrganConfig(), unsafe.Sizeof(ESRGANConfig{})},
	}
	for _, s := range sizes {
		if s.lib != s.mine {
			return fmt.Errorf("%w: %s: %s is %d bytes in the library, %d in this binding",
				ErrABIMismatch, l.path, s.name, s.lib, s.mine)
		}
	}
	return nil
}

// Path is the file the library was loaded from (or the name the system resolved).
func (l *Library) Path() string { return l.path }

// FallbackReason says why a GPU build was not used when the CPU library was loaded
// instead; empty when no GPU build was passed over.
func (l *Library) FallbackReason() string { return l.fallback }

// ABIVersion returns sd_abi_version() of the loaded library.
func (l *Library) ABIVersion() uint32 { return l.sdAbiVersion() }

// StatusString returns sd_status_string(s).
func (l *Library) StatusString(s Status) string { return l.sdStatusString(s) }

// BackendAvailable reports whether the backend can run here, and why not.
func (l *Library) BackendAvailable(b Backend) (bool, string) {
	buf := make([]byte, 512)
	ok := l.sdBackendAvailable(b, &buf[0], uintptr(len(buf)))
	return ok, cString(buf)
}

// check turns a status into nil or an *Error carrying the context's message.
func (l *Library) check(ctx Ctx, op string, st Status) error {
	if st == StatusOK {
		return nil
	}
	msg := ""
	if ctx != 0 {
		msg = l.sdCtxLastError(ctx)
	}
	return &Error{Code: st, Op: op, Msg: msg}
}

// DefaultCtxParams returns sd_ctx_params_default's values.
func (l *Library) DefaultCtxParams() CtxParams {
	var p CtxParams
	l.sdCtxParamsDefault(&p)
	return p
}

// CtxInit creates a context; free it with CtxFree.
func (l *Library) CtxInit(p *CtxParams) (Ctx, error) {
	var ctx Ctx
	buf := make([]byte, 512)
	if st := l.sdCtxInit(p, &ctx, &buf[0], uintptr(len(buf))); st != StatusOK {
		return 0, &Error{Code: st, Op: "sd_ctx_init", Msg: cString(buf)}
	}
	return ctx, nil
}

// CtxInitShared creates a context in shareWith's share group: it runs the models loaded on
// any context of the group, on a backend of its own (p's threads, or its own GPU stream).
// p's backend and device must be shareWith's. shareWith may be in use meanwhile. Free it
// with CtxFree.
func (l *Library) CtxInitShared(shareWith Ctx, p *CtxParams) (Ctx, error) {
	var ctx Ctx
	buf := make([]byte, 512)
	if st := l.sdCtxInitShared(shareWith, p, &ctx, &buf[0], uintptr(len(buf))); st != StatusOK {
		return 0, &Error{Code: st, Op: "sd_ctx_init_shared", Msg: cString(buf)}
	}
	return ctx, nil
}

// CtxFree frees the context and everything still allocated on it; the last context of a
// share group also frees the group's models. Zero is a no-op.
func (l *Library) CtxFree(ctx Ctx) {
	if ctx == 0 {
		return
	}
	l.sdCtxFree(ctx)
	forgetLog(ctx)
}

// CtxBackend is the backend the context runs on.
func (l *Library) CtxBackend(ctx Ctx) Backend { return l.sdCtxBackend(ctx) }

// CtxBackendDescription describes the backend (CPU features or GPU name).
func (l *Library) CtxBackendDescription(ctx Ctx) string { return l.sdCtxBackendDescription(ctx) }

// CtxActivationDType is the dtype the models compute their activations in on ctx's
// backend (F32 on the CPU, F16 on CUDA): model inputs in it are used without a conversion.
func (l *Library) CtxActivationDType(ctx Ctx) DType { return l.sdCtxActivationDType(ctx) }

// CtxLastError is the message of the last failed call on ctx.
func (l *Library) CtxLastError(ctx Ctx) string { return l.sdCtxLastError(ctx) }

// CtxCancel makes running and later calls on ctx fail with ErrCancelled until
// CtxClearCancel. Safe from any goroutine.
func (l *Library) CtxCancel(ctx Ctx) { l.sdCtxCancel(ctx) }

// CtxClearCancel clears a cancellation request.
func (l *Library) CtxClearCancel(ctx Ctx) { l.sdCtxClearCancel(ctx) }

// CtxMemoryStats reports the context's backend memory use.
func (l *Library) CtxMemoryStats(ctx Ctx) (MemoryStats, error) {
	var s MemoryStats
	return s, l.check(ctx, "sd_ctx_memory_stats", l.sdCtxMemoryStats(ctx, &s))
}

// CtxTrim returns unused scratch memory to the system.
func (l *Library) CtxTrim(ctx Ctx) { l.sdCtxTrim(ctx) }

// CtxSetProfiling turns per-op timing on or off.
func (l *Library) CtxSetProfiling(ctx Ctx, enabled bool) { l.sdCtxSetProfiling(ctx, enabled) }

// CtxProfileReport returns the per-op timing table.
func (l *Library) CtxProfileReport(ctx Ctx) string {
	n := l.sdCtxProfileReport(ctx, nil, 0)
	buf := make([]byte, n+1)
	l.sdCtxProfileReport(ctx, &buf[0], uintptr(len(buf)))
	return cString(buf)
}

// CtxProfileReset clears the per-op timing counters.
func (l *Library) CtxProfileReset(ctx Ctx) { l.sdCtxProfileReset(ctx) }

// DTypeSize returns sd_dtype_size(d).
func (l *Library) DTypeSize(d DType) int { return int(l.sdDtypeSize(d)) }

// TensorNew allocates a tensor of the given dtype and shape in the context's backend
// memory; free it with TensorFree (or CtxFree).
func (l *Library) TensorNew(ctx Ctx, dtype DType, shape ...int64) (Tensor, error) {
	var t Tensor
	var shp [MaxDims]int64
	copy(shp[:], shape)
	return t, l.check(ctx, "sd_tensor_new", l.sdTensorNew(ctx, dtype, int32(len(shape)), &shp[0], &t))
}

// TensorFree frees a tensor. Zero is a no-op.
func (l *Library) TensorFree(ctx Ctx, t Tensor) {
	if t != 0 {
		l.sdTensorFree(ctx, t)
	}
}

// TensorUpload copies src (exactly the tensor's byte size) into the tensor.
func (l *Library) TensorUpload(ctx Ctx, t Tensor, src []byte) error {
	return l.check(ctx, "sd_tensor_upload", l.sdTensorUpload(ctx, t, bytesPtr(src), uintptr(len(src))))
}

// TensorDownload copies the tensor into dst (exactly its byte size).
func (l *Library) TensorDownload(ctx Ctx, t Tensor, dst []byte) error {
	return l.check(ctx, "sd_tensor_download", l.sdTensorDownload(ctx, t, bytesPtr(dst), uintptr(len(dst))))
}

// UploadFloat32 copies src into an F32 tensor of len(src) elements.
func (l *Library) UploadFloat32(ctx Ctx, t Tensor, src []float32) error {
	return l.TensorUpload(ctx, t, float32Bytes(src))
}

// DownloadFloat32 copies an F32 tensor into dst of its element count.
func (l *Library) DownloadFloat32(ctx Ctx, t Tensor, dst []float32) error {
	return l.TensorDownload(ctx, t, float32Bytes(dst))
}

// UploadInt32 copies src into an I32 tensor of len(src) elements.
func (l *Library) UploadInt32(ctx Ctx, t Tensor, src []int32) error {
	var b []byte
	if len(src) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), 4*len(src))
	}
	return l.TensorUpload(ctx, t, b)
}

// TensorDType returns the tensor's dtype.
func (l *Library) TensorDType(t Tensor) DType { return l.sdTensorDtype(t) }

// TensorShape returns the tensor's dimensions.
func (l *Library) TensorShape(t Tensor) []int64 {
	n := l.sdTensorNdim(t)
	shape := make([]int64, n)
	for i := range shape {
		shape[i] = l.sdTensorDim(t, int32(i))
	}
	return shape
}

// TensorNBytes returns the tensor's size in bytes.
func (l *Library) TensorNBytes(t Tensor) int { return int(l.sdTensorNbytes(t)) }

// DefaultConv2DParams returns sd_conv2d_params_default's values.
func (l *Library) DefaultConv2DParams() Conv2DParams {
	var p Conv2DParams
	l.sdConv2dParamsDefault(&p)
	return p
}

// OpConv2D: out = conv2d(x, w) + bias + residual (bias, residual may be 0).
func (l *Library) OpConv2D(ctx Ctx, out, x, w, bias, residual Tensor, p *Conv2DParams) error {
	return l.check(ctx, "sd_op_conv2d", l.sdOpConv2d(ctx, out, x, w, bias, residual, p))
}

// DefaultLinearParams returns sd_linear_params_default's values.
func (l *Library) DefaultLinearParams() LinearParams {
	var p LinearParams
	l.sdLinearParamsDefault(&p)
	return p
}

// OpLinear: out = x w^T + bias + residual (bias, residual may be 0).
func (l *Library) OpLinear(ctx Ctx, out, x, w, bias, residual Tensor, p *LinearParams) error {
	return l.check(ctx, "sd_op_linear", l.sdOpLinear(ctx, out, x, w, bias, residual, p))
}

// OpGroupNorm: group normalisation, optionally followed by SiLU.
func (l *Library) OpGroupNorm(ctx Ctx, out, x, gamma, beta Tensor, groups int32, eps float32, silu bool) error {
	return l.check(ctx, "sd_op_group_norm", l.sdOpGroupNorm(ctx, out, x, gamma, beta, groups, eps, silu))
}

// OpLayerNorm: layer normalisation over the last dimension.
func (l *Library) OpLayerNorm(ctx Ctx, out, x, gamma, beta Tensor, eps float32) error {
	return l.check(ctx, "sd_op_layer_norm", l.sdOpLayerNorm(ctx, out, x, gamma, beta, eps))
}

// DefaultAttentionParams returns sd_attention_params_default's values.
func (l *Library) DefaultAttentionParams() AttentionParams {
	var p AttentionParams
	l.sdAttentionParamsDefault(&p)
	return p
}

// OpAttention: multi-head scaled dot-product attention.
func (l *Library) OpAttention(ctx Ctx, out, q, k, v Tensor, p *AttentionParams) error {
	return l.check(ctx, "sd_op_attention", l.sdOpAttention(ctx, out, q, k, v, p))
}

// OpActivation: out = act(x).
func (l *Library) OpActivation(ctx Ctx, out, x Tensor, act Activation) error {
	return l.check(ctx, "sd_op_activation", l.sdOpActivation(ctx, out, x, act))
}

// OpGEGLU: out = a * gelu(gate) for x = [a, gate] along the last dimension.
func (l *Library) OpGEGLU(ctx Ctx, out, x Tensor) error {
	return l.check(ctx, "sd_op_geglu", l.sdOpGeglu(ctx, out, x))
}

// OpUpsampleNearest: nearest-neighbour resize of NCHW to out's height and width.
func (l *Library) OpUpsampleNearest(ctx Ctx, out, x Tensor) error {
	return l.check(ctx, "sd_op_upsample_nearest", l.sdOpUpsampleNearest(ctx, out, x))
}

// OpAdd: out = a + b (b broadcast over leading dims).
func (l *Library) OpAdd(ctx Ctx, out, a, b Tensor) error {
	return l.check(ctx, "sd_op_add", l.sdOpAdd(ctx, out, a, b))
}

// OpMul: out = a * b (b broadcast over leading dims).
func (l *Library) OpMul(ctx Ctx, out, a, b Tensor) error {
	return l.check(ctx, "sd_op_mul", l.sdOpMul(ctx, out, a, b))
}

// OpConcat: concatenation along dim 1.
func (l *Library) OpConcat(ctx Ctx, out, a, b Tensor) error {
	return l.check(ctx, "sd_op_concat", l.sdOpConcat(ctx, out, a, b))
}

// OpConvert: out = x converted to out's dtype.
func (l *Library) OpConvert(ctx Ctx, out, x Tensor) error {
	return l.check(ctx, "sd_op_convert", l.sdOpConvert(ctx, out, x))
}

// DefaultTimestepEmbeddingParams returns sd_timestep_embedding_params_default's values.
func (l *Library) DefaultTimestepEmbeddingParams() TimestepEmbeddingParams {
	var p TimestepEmbeddingParams
	l.sdTimestepEmbeddingParamsDefault(&p)
	return p
}

// OpTimestepEmbedding: sinusoidal timestep embedding.
func (l *Library) OpTimestepEmbedding(ctx Ctx, out, t Tensor, p *TimestepEmbeddingParams) error {
	return l.check(ctx, "sd_op_timestep_embedding", l.sdOpTimestepEmbedding(ctx, out, t, p))
}

// OpEmbedding: out = table[ids].
func (l *Library) OpEmbedding(ctx Ctx, out, ids, table Tensor) error {
	return l.check(ctx, "sd_op_embedding", l.sdOpEmbedding(ctx, out, ids, table))
}

// OpClamp: out = min(max(x, lo), hi).
func (l *Library) OpClamp(ctx Ctx, out, x Tensor, lo, hi float32) error {
	return l.check(ctx, "sd_op_clamp", l.sdOpClamp(ctx, out, x, lo, hi))
}

// DefaultCLIPConfig returns sd_clip_config_default's values (SD 1.5's text encoder).
func (l *Library) DefaultCLIPConfig() CLIPConfig {
	var c CLIPConfig
	l.sdClipConfigDefault(&c)
	return c
}

// DefaultUNetConfig returns sd_unet_config_default's values (SD 1.5's UNet).
func (l *Library) DefaultUNetConfig() UNetConfig {
	var c UNetConfig
	l.sdUnetConfigDefault(&c)
	return c
}

// DefaultUNetInputs returns sd_unet_inputs_default's values: no inputs, residual scale 1.
func (l *Library) DefaultUNetInputs() UNetInputs {
	var c unetInputsC
	l.sdUnetInputsDefault(&c)
	return UNetInputs{ResidualScale: c.residualScale}
}

// DefaultVAEConfig returns sd_vae_config_default's values (SD 1.5's VAE).
func (l *Library) DefaultVAEConfig() VAEConfig {
	var c VAEConfig
	l.sdVaeConfigDefault(&c)
	return c
}

func (l *Library) loadModel(ctx Ctx, op string, ws []Weight, load func(table uintptr, n int32, out *Model) Status) (Model, error) {
	table, err := newWeightTable(ws)
	if err != nil {
		return 0, err
	}
	defer table.free()
	var m Model
	return m, l.check(ctx, op, load(table.ptr, int32(table.n), &m))
}

// CLIPLoad loads a text encoder; the weights' data must stay valid until ModelFree.
func (l *Library) CLIPLoad(ctx Ctx, c *CLIPConfig, ws []Weight) (Model, error) {
	return l.loadModel(ctx, "sd_clip_load", ws, func(t uintptr, n int32, out *Model) Status {
		return l.sdClipLoad(ctx, c, t, n, out)
	})
}

// UNetLoad loads a UNet; the weights' data must stay valid until ModelFree.
func (l *Library) UNetLoad(ctx Ctx, c *UNetConfig, ws []Weight) (Model, error) {
	return l.loadModel(ctx, "sd_unet_load", ws, func(t uintptr, n int32, out *Model) Status {
		return l.sdUnetLoad(ctx, c, t, n, out)
	})
}

// VAELoad loads a VAE; the weights' data must stay valid until ModelFree.
func (l *Library) VAELoad(ctx Ctx, c *VAEConfig, ws []Weight) (Model, error) {
	return l.loadModel(ctx, "sd_vae_load", ws, func(t uintptr, n int32, out *Model) Status {
		return l.sdVaeLoad(ctx, c, t, n, out)
	})
}

// ModelFree frees a model, through any context of its share group. Zero is a no-op.
func (l *Library) ModelFree(ctx Ctx, m Model) {
	if m != 0 {
		l.sdModelFree(ctx, m)
	}
}

// ModelSetWeights replaces the values of loaded weights in place, each named and shaped
// as it was given to the load (dtype F32, F16 or BF16); the data must then stay valid until
// the model is freed or that weight is replaced again, unless ModelWeightCopied reports the
// weight copied. No context of the model's share
// group may run it meanwhile. An invalid entry changes nothing; a failure while replacing
// may leave some replaced (replace them all again).
func (l *Library) ModelSetWeights(ctx Ctx, m Model, ws []Weight) error {
	table, err := newWeightTable(ws)
	if err != nil {
		return err
	}
	defer table.free()
	return l.check(ctx, "sd_model_set_weights", l.sdModelSetWeights(ctx, m, table.ptr, int32(table.n)))
}

// ModelWeightCopied reports whether the model copies data of dtype given for a loaded weight
// to ModelSetWeights (converts, packs or uploads it, so that the memory is free once the
// call returned) or reads that memory in place until the weight is replaced again.
func (l *Library) ModelWeightCopied(ctx Ctx, m Model, name string, dtype DType) (bool, error) {
	c := append([]byte(name), 0)
	var copied bool
	err := l.check(ctx, "sd_model_weight_copied", l.sdModelWeightCopied(ctx, m, &c[0], dtype, &copied))
	return copied, err
}

// ModelMergeWeight gives the loaded weight base names the values base + up·down, computed in
// float32 (a low-rank adapter merged into it), when the backend merges it itself: up is
// rows x rank, down rank x cols (the weight viewed as its first dimension by the rest),
// row-major, any scale already in up. It reports false, with nothing changed, for weights the
// backend does not merge (on the CPU vectors and tables, on CUDA every weight): merge those
// on the host and call ModelSetWeights. None of the memory is read once
// it returns. Rules as ModelSetWeights.
func (l *Library) ModelMergeWeight(ctx Ctx, m Model, base Weight, up, down []float32, rank int) (bool, error) {
	if rank < 1 || len(up) == 0 || len(down) == 0 || len(up)%rank != 0 || len(down)%rank != 0 {
		return false, fmt.Errorf("sd_model_merge_weight: %s: factors of %d and %d values for rank %d", base.Name, len(up), len(down), rank)
	}
	rows, cols := int64(1), int64(1)
	if len(base.Shape) > 0 {
		rows = base.Shape[0]
		for _, d := range base.Shape[1:] {
			cols *= d
		}
	}
	if int64(len(up)) != rows*int64(rank) || int64(len(down)) != int64(rank)*cols {
		return false, fmt.Errorf("sd_model_merge_weight: %s is %v: up must be %d x %d and down %d x %d, got %d and %d values",
			base.Name, base.Shape, rows, rank, rank, cols, len(up), len(down))
	}
	table, err := newWeightTable([]Weight{base})
	if err != nil {
		return false, err
	}
	defer table.free()
	var merged bool
	err = l.check(ctx, "sd_model_merge_weight", l.sdModelMergeWeight(ctx, m, table.ptr, &up[0], &down[0], int32(rank), &merged))
	return merged, err
}

// CLIPForward runs the text encoder: hidden gets layer (layers - skipLayers), with the
// final layer norm when finalNorm; pooled (may be 0) the normed last layer at the eos.
func (l *Library) CLIPForward(ctx Ctx, m Model, ids Tensor, skipLayers int32, finalNorm bool, hidden, pooled Tensor) error {
	return l.check(ctx, "sd_clip_forward", l.sdClipForward(ctx, m, ids, skipLayers, finalNorm, hidden, pooled))
}

// CLIPForwardExtra is CLIPForward with extra (E, hidden) F32 token embeddings for this
// call (0 for none): an id vocab+i embeds as extra's row i (textual inversion).
func (l *Library) CLIPForwardExtra(ctx Ctx, m Model, ids, extra Tensor, skipLayers int32, finalNorm bool, hidden, pooled Tensor) error {
	return l.check(ctx, "sd_clip_forward_extra", l.sdClipForwardExtra(ctx, m, ids, extra, skipLayers, finalNorm, hidden, pooled))
}

// CLIPProject applies the text encoder's text_projection to pooled (B, hidden), writing
// out (B, projection_dim): CLIPTextModelWithProjection's text_embeds.
func (l *Library) CLIPProject(ctx Ctx, m Model, pooled, out Tensor) error {
	return l.check(ctx, "sd_clip_project", l.sdClipProject(ctx, m, pooled, out))
}

// UNetForward runs one UNet evaluation on in, writing out.
func (l *Library) UNetForward(ctx Ctx, m Model, in *UNetInputs, out Tensor) error {
	c := unetInputsC{
		x: in.X, t: in.T, context: in.Context, textEmbeds: in.TextEmbeds, timeIDs: in.TimeIDs,
		classLabels: in.ClassLabels, nDownResiduals: int32(len(in.DownResiduals)),
		midResidual: in.MidResidual, residualScale: in.ResidualScale,
	}
	// The library reads the residual array through the struct during the call: pinned, as
	// Go memory reached from memory passed to C must be.
	var pin runtime.Pinner
	defer pin.Unpin()
	if len(in.DownResiduals) > 0 {
		pin.Pin(&in.DownResiduals[0])
		c.downResiduals = &in.DownResiduals[0]
	}
	return l.check(ctx, "sd_unet_forward", l.sdUnetForward(ctx, m, &c, out))
}

// VAEDecode decodes raw latents.
func (l *Library) VAEDecode(ctx Ctx, m Model, z, out Tensor) error {
	return l.check(ctx, "sd_vae_decode", l.sdVaeDecode(ctx, m, z, out))
}

// VAEEncode encodes images to the latent distribution (mean or logvar may be 0).
func (l *Library) VAEEncode(ctx Ctx, m Model, x, mean, logvar Tensor) error {
	return l.check(ctx, "sd_vae_encode", l.sdVaeEncode(ctx, m, x, mean, logvar))
}

func bytesPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func float32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

// cString returns the NUL-terminated prefix of b.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
