/*
 * sd.h - the public C API of the gosd Stable Diffusion runtime.
 *
 * Basic usage:
 *
 *     sd_ctx_params_t p;
 *     sd_ctx_params_default(&p);            // CPU backend, all cores
 *     sd_ctx_t *ctx;
 *     if (sd_ctx_init(&p, &ctx) != SD_STATUS_OK) { ... }
 *
 *     int64_t shape[4] = {1, 4, 64, 64};
 *     sd_tensor_t *x;
 *     sd_tensor_new(ctx, SD_DTYPE_F32, 4, shape, &x);
 *     sd_tensor_upload(ctx, x, host_data, sizeof host_data);
 *     ... sd_op_* (ctx, ...) or a model forward ...
 *     sd_tensor_download(ctx, x, host_data, sizeof host_data);
 *     sd_tensor_free(ctx, x);
 *     sd_ctx_free(ctx);
 *
 * Every fallible function returns sd_status_t (SD_STATUS_OK == 0, errors are negative);
 * the message of the last failure is kept on the context (sd_ctx_last_error). Nothing that
 * a caller can cause (bad shapes, bad model files, out of memory, device failure) aborts
 * the process.
 *
 * Models and contexts: a model is loaded once and run by any context of its share group
 * (the context it was loaded on and those made from it with sd_ctx_init_shared), as
 * llama.h's model and context or whisper.h's context and state. Each context has its own
 * activations, scratch memory, thread pool (CPU) or stream (GPU), cancel flag, last error,
 * log callback and recorded graphs; the group's contexts share one copy of the weights.
 *
 * Lifetimes: a tensor belongs to the context it was created on and lives until
 * sd_tensor_free or sd_ctx_free of that context. A model belongs to its share group and
 * lives until sd_model_free (through any context of the group) or until the last context
 * of the group is freed; freeing other contexts of the group leaves it usable.
 *
 * Thread safety: a context and its tensors may be used by one thread at a time. Different
 * contexts are independent and may be used concurrently, also contexts of one group
 * running the same model (a loaded model is read-only) and loading or freeing models of
 * the group; a model must not be freed while a context runs it. sd_ctx_cancel may be
 * called from any thread at any time. The process-wide functions (sd_abi_version,
 * sd_status_string, sd_sizeof_*, sd_backend_available) are thread-safe.
 *
 * Tensors are dense, contiguous, row-major (the last dimension varies fastest), of at most
 * SD_MAX_DIMS dimensions. Image-like tensors are NCHW; token sequences are (batch, tokens,
 * channels).
 */
#ifndef SD_H
#define SD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SD_API __declspec(dllexport)
#else
#define SD_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a function signature, a struct layout or an enum value changes. */
#define SD_ABI_VERSION 4
#define SD_MAX_DIMS    4

/* ---------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------- */

typedef int32_t sd_status_t;

enum {
    SD_STATUS_OK = 0,
    SD_STATUS_INVALID_ARGUMENT = -1, /* a null pointer, a bad shape, dtype or parameter */
    SD_STATUS_IO = -2,               /* reading or writing a file failed */
    SD_STATUS_BAD_MODEL = -3,        /* missing or mis-shaped weights, an invalid config */
    SD_STATUS_OUT_OF_MEMORY = -4,    /* host or device allocation failed */
    SD_STATUS_DEVICE = -5,           /* a GPU runtime error; the context is unusable after it */
    SD_STATUS_UNSUPPORTED = -6,      /* valid, but not implemented by this build or backend */
    SD_STATUS_CANCELLED = -7,        /* sd_ctx_cancel was called */
    SD_STATUS_INTERNAL = -8,         /* a bug in the runtime; please report it */
};

/* A static, human-readable name for a status ("ok", "invalid argument", ...). Never NULL;
 * unknown codes give "unknown status". */
SD_API const char *sd_status_string(sd_status_t status);

/* SD_ABI_VERSION of the library actually loaded. A binding compares it with the version
 * it was written against before calling anything else. */
SD_API uint32_t sd_abi_version(void);

/* ---------------------------------------------------------------------------------------
 * Enumerations (explicit values, append-only)
 * ------------------------------------------------------------------------------------- */

typedef enum sd_backend_kind {
    SD_BACKEND_CPU = 0,
    SD_BACKEND_CUDA = 1,
    SD_BACKEND_COUNT
} sd_backend_kind_t;

typedef enum sd_dtype {
    SD_DTYPE_F32 = 0,
    SD_DTYPE_F16 = 1,
    SD_DTYPE_BF16 = 2,
    SD_DTYPE_I32 = 3,
    SD_DTYPE_COUNT
} sd_dtype_t;

/* What a context's matrix products (linear, conv, attention) compute in. F32 is exact
 * float32 arithmetic. BF16 rounds both operands to bfloat16 (8 significant bits) and
 * accumulates in float32 (AVX512_BF16's vdpbf16ps, about twice the fp32 rate); everything
 * else (norms, activations, softmax, the epilogue's biases and residuals) stays float32. */
typedef enum sd_precision {
    SD_PRECISION_F32 = 0,
    SD_PRECISION_BF16 = 1,
    SD_PRECISION_COUNT
} sd_precision_t;

typedef enum sd_log_level {
    SD_LOG_DEBUG = 0,
    SD_LOG_INFO = 1,
    SD_LOG_WARN = 2,
    SD_LOG_ERROR = 3,
    SD_LOG_LEVEL_COUNT
} sd_log_level_t;

/* Whether this library can run the given backend on this machine (CUDA: built with CUDA
 * and a usable GPU is present). Fills `reason` (if not NULL, `reason_len` bytes, always
 * NUL-terminated) with why not. */
SD_API bool sd_backend_available(int32_t backend, char *reason, size_t reason_len);

/* ---------------------------------------------------------------------------------------
 * Context
 * ------------------------------------------------------------------------------------- */

typedef struct sd_ctx sd_ctx_t;

typedef struct sd_ctx_params {
    int32_t backend; /* sd_backend_kind_t; default SD_BACKEND_CPU */
    /* CPU threads for compute; 0 = one per CPU available to the process (its affinity
     * mask and cgroup CPU quota). More than that is clamped, with a warning logged. */
    int32_t n_threads;
    int32_t device; /* GPU ordinal for the CUDA backend; ignored by the CPU backend */
    uint32_t flags; /* reserved, must be 0 */
    /* sd_precision_t; default SD_PRECISION_F32. BF16 needs the CPU backend on a CPU with
     * AVX512_BF16 (and the avx512 kernels: not with SD_CPU_ISA=avx2|generic), else
     * sd_ctx_init returns SD_STATUS_UNSUPPORTED saying why; the CUDA backend refuses it the
     * same way (it computes in F16 already). Per context: contexts of one share group may
     * differ, the weights are stored the same way for both. */
    int32_t precision;
} sd_ctx_params_t;

SD_API void sd_ctx_params_default(sd_ctx_params_t *params);
SD_API size_t sd_sizeof_ctx_params(void);

/* Creates a context. On success *out owns the context; release it with sd_ctx_free.
 * Returns SD_STATUS_INVALID_ARGUMENT (bad params), SD_STATUS_UNSUPPORTED (backend not in
 * this build, or a precision it cannot run), SD_STATUS_DEVICE (no usable GPU),
 * SD_STATUS_OUT_OF_MEMORY. On failure *out is NULL; no context exists to hold the message, so it is
 * written to `err` if not NULL
 * (`err_len` bytes, NUL-terminated). */
SD_API sd_status_t sd_ctx_init(const sd_ctx_params_t *params, sd_ctx_t **out, char *err,
                               size_t err_len);

/* Creates a context in share_with's share group: it runs the models loaded on any context
 * of the group (and models it loads are the group's), with a backend of its own (params'
 * n_threads CPU threads, or its own stream on the GPU). params->backend, and for CUDA
 * params->device, must be share_with's (else SD_STATUS_INVALID_ARGUMENT). share_with may
 * be in use on another thread meanwhile. Otherwise as sd_ctx_init. */
SD_API sd_status_t sd_ctx_init_shared(sd_ctx_t *share_with, const sd_ctx_params_t *params,
                                      sd_ctx_t **out, char *err, size_t err_len);

/* Frees the context: its tensors still alive, its scratch memory, graphs and backend. The
 * last context of a share group also frees the group's models still alive. NULL is a
 * no-op. */
SD_API void sd_ctx_free(sd_ctx_t *ctx);

/* The backend actually in use (sd_backend_kind_t) and its description (e.g. the CPU
 * features or the GPU name); the string is valid until sd_ctx_free. */
SD_API int32_t sd_ctx_backend(const sd_ctx_t *ctx);
SD_API const char *sd_ctx_backend_description(const sd_ctx_t *ctx);

/* The dtype the models compute their activations in on this context's backend
 * (sd_dtype_t: F32 on the CPU, F16 on CUDA; -1 for NULL). Model inputs in this dtype are
 * used without a conversion, so an input that serves many calls (the text context of a
 * request) is best created in it once. */
SD_API int32_t sd_ctx_activation_dtype(const sd_ctx_t *ctx);

/* The message of the last failed call on this context ("" if none). Valid until the next
 * call on the context. */
SD_API const char *sd_ctx_last_error(const sd_ctx_t *ctx);

/* Requests cancellation: running and later calls on ctx return SD_STATUS_CANCELLED at
 * their next check (between operations) until sd_ctx_clear_cancel. Safe from any thread,
 * also while another thread is inside a call on ctx. */
SD_API void sd_ctx_cancel(sd_ctx_t *ctx);
SD_API void sd_ctx_clear_cancel(sd_ctx_t *ctx);

/* Log messages of this context go to `fn` (NULL: discarded, the default). `user_data` is
 * passed back unchanged. Called on the thread making the call that logs; `msg` is valid
 * only during the callback. The library never prints to stdout or stderr itself. A warning
 * from sd_ctx_init (n_threads clamped) goes to the first callback set, from this call. */
typedef void (*sd_log_fn)(int32_t level, const char *msg, void *user_data);
SD_API void sd_ctx_set_log(sd_ctx_t *ctx, sd_log_fn fn, void *user_data);

/* Memory statistics of the context's backend memory, in bytes. */
typedef struct sd_memory_stats {
    uint64_t tensors_bytes;        /* live tensors created through sd_tensor_new */
    uint64_t weights_bytes;        /* held by the models of the share group, counted once */
    uint64_t arena_reserved_bytes; /* scratch memory for activations, reserved */
    uint64_t arena_peak_bytes;     /* high-water mark of scratch memory in use */
} sd_memory_stats_t;

SD_API size_t sd_sizeof_memory_stats(void);
SD_API sd_status_t sd_ctx_memory_stats(sd_ctx_t *ctx, sd_memory_stats_t *out);

/* Gives reserved scratch memory that is not in use back to the system. */
SD_API void sd_ctx_trim(sd_ctx_t *ctx);

/* Op profiling: while enabled, every op's wall time (on a GPU after waiting for it, which
 * slows the run) and arithmetic are added up per op kind. The report is a text table
 * sorted by time, written to buf (len bytes, NUL-terminated, may be NULL); the return
 * value is the length of the whole table. Reset clears the counters. */
SD_API void sd_ctx_set_profiling(sd_ctx_t *ctx, bool enabled);
SD_API size_t sd_ctx_profile_report(const sd_ctx_t *ctx, char *buf, size_t len);
SD_API void sd_ctx_profile_reset(sd_ctx_t *ctx);

/* ---------------------------------------------------------------------------------------
 * Tensors in backend memory
 * ------------------------------------------------------------------------------------- */

typedef struct sd_tensor sd_tensor_t;

/* Size in bytes of one element of dtype (0 for an unknown dtype). */
SD_API size_t sd_dtype_size(int32_t dtype);

/* Allocates an uninitialised tensor in the context's backend memory. 1 <= ndim <=
 * SD_MAX_DIMS, every dim >= 1. Free with sd_tensor_free (or sd_ctx_free). */
SD_API sd_status_t sd_tensor_new(sd_ctx_t *ctx, int32_t dtype, int32_t ndim, const int64_t *shape,
                                 sd_tensor_t **out);
SD_API void sd_tensor_free(sd_ctx_t *ctx, sd_tensor_t *t);

/* Copies host memory in / out. `nbytes` must equal the tensor's byte size. */
SD_API sd_status_t sd_tensor_upload(sd_ctx_t *ctx, sd_tensor_t *t, const void *src, size_t nbytes);
SD_API sd_status_t sd_tensor_download(sd_ctx_t *ctx, const sd_tensor_t *t, void *dst,
                                      size_t nbytes);

SD_API int32_t sd_tensor_dtype(const sd_tensor_t *t);
SD_API int32_t sd_tensor_ndim(const sd_tensor_t *t);
SD_API int64_t sd_tensor_dim(const sd_tensor_t *t, int32_t axis); /* 0 if axis is out of range */
SD_API size_t sd_tensor_nbytes(const sd_tensor_t *t);

/* ---------------------------------------------------------------------------------------
 * Operations. All compute in float32; inputs and outputs are F32 unless stated, weights
 * may be F32, F16 or BF16. `out` must be allocated by the caller with the documented
 * shape; a mismatch is SD_STATUS_INVALID_ARGUMENT. Outputs must not alias inputs unless
 * stated.
 * ------------------------------------------------------------------------------------- */

typedef struct sd_conv2d_params {
    int32_t stride_h, stride_w;  /* >= 1; default 1 */
    int32_t pad_top, pad_bottom; /* zero padding rows, >= 0; default 0 */
    int32_t pad_left, pad_right; /* zero padding columns, >= 0; default 0 */
} sd_conv2d_params_t;

SD_API void sd_conv2d_params_default(sd_conv2d_params_t *p);
SD_API size_t sd_sizeof_conv2d_params(void);

/* out = conv2d(x, w) + bias + residual, as torch.nn.functional.conv2d (with padding that
 * may differ per side, as F.pad then conv2d).
 * x (N, Cin, H, W); w (Cout, Cin, KH, KW) F32/F16/BF16; bias NULL, (Cout) or (N, Cout)
 * (a per-sample bias, e.g. a time embedding); residual NULL or out's shape (may be out
 * itself); out (N, Cout, OH, OW) with OH = (H + pad_top + pad_bottom - KH) / stride_h + 1
 * and OW likewise. */
SD_API sd_status_t sd_op_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                const sd_tensor_t *w, const sd_tensor_t *bias,
                                const sd_tensor_t *residual, const sd_conv2d_params_t *p);

typedef enum sd_layout {
    SD_LAYOUT_TOKENS = 0,         /* (B, T, C): channels vary fastest */
    SD_LAYOUT_CHANNELS_FIRST = 1, /* (B, C, T...) e.g. NCHW with T = H*W */
    SD_LAYOUT_COUNT
} sd_layout_t;

typedef struct sd_linear_params {
    int32_t in_layout;  /* sd_layout_t of x; default TOKENS */
    int32_t out_layout; /* sd_layout_t of out (and residual); default TOKENS */
} sd_linear_params_t;

SD_API void sd_linear_params_default(sd_linear_params_t *p);
SD_API size_t sd_sizeof_linear_params(void);

/* out = x @ w^T + bias + residual, as torch.nn.functional.linear.
 * w (N, K) F32/F16/BF16; bias NULL or (N). With TOKENS layout x is (..., T, K) and out
 * (..., T, N); with CHANNELS_FIRST x is (B, K, T...) and out (B, N, T...), which makes a
 * 1x1 convolution and the NCHW <-> token permutations of a transformer block free.
 * residual NULL or out's shape (may be out itself). */
SD_API sd_status_t sd_op_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                const sd_tensor_t *w, const sd_tensor_t *bias,
                                const sd_tensor_t *residual, const sd_linear_params_t *p);

/* Group normalisation over (C/G, H, W) per sample and group, then per-channel affine, then
 * optionally SiLU. x and out (N, C, ...) with C divisible by groups; gamma, beta (C) or
 * NULL (1 and 0). eps > 0. out may be x. */
SD_API sd_status_t sd_op_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                    const sd_tensor_t *gamma, const sd_tensor_t *beta,
                                    int32_t groups, float eps, bool silu);

/* Layer normalisation over the last dimension C. gamma, beta (C) or NULL. out may be x. */
SD_API sd_status_t sd_op_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                    const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps);

typedef struct sd_attention_params {
    int32_t heads;  /* number of heads H; C must be divisible by H */
    int32_t causal; /* 1: query i attends to keys 0..i only (CLIP); requires Tq == Tk */
    float scale;    /* score scale; 0 = 1/sqrt(C/H) */
} sd_attention_params_t;

SD_API void sd_attention_params_default(sd_attention_params_t *p);
SD_API size_t sd_sizeof_attention_params(void);

/* Multi-head scaled dot-product attention, softmax(q k^T * scale) v per head.
 * q (B, Tq, C); k, v (B, Tk, C) (Tk may differ from Tq: cross-attention); out (B, Tq, C).
 * Heads are consecutive slices of C, as torch's MultiheadAttention / diffusers split them. */
SD_API sd_status_t sd_op_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                                   const sd_tensor_t *k, const sd_tensor_t *v,
                                   const sd_attention_params_t *p);

typedef enum sd_activation {
    SD_ACT_SILU = 0,       /* x * sigmoid(x) */
    SD_ACT_GELU = 1,       /* exact (erf) GELU */
    SD_ACT_GELU_TANH = 2,  /* tanh approximation */
    SD_ACT_QUICK_GELU = 3, /* x * sigmoid(1.702 x) (CLIP) */
    SD_ACT_LEAKY_RELU = 4, /* x >= 0 ? x : 0.2 x (ESRGAN's LeakyReLU(0.2)) */
    SD_ACT_COUNT
} sd_activation_t;

/* out = act(x), elementwise; out may be x. */
SD_API sd_status_t sd_op_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                    int32_t activation);

/* GEGLU as diffusers: x (..., 2N) is split into a = x[..., :N] and gate = x[..., N:];
 * out (..., N) = a * gelu(gate) (exact GELU). */
SD_API sd_status_t sd_op_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);

/* Nearest-neighbour resize of NCHW to out's (OH, OW), as torch.nn.functional.interpolate
 * (mode='nearest'): source index floor(dst * in / out). With OH = 2H, OW = 2W this is the
 * 2x upsampling of the UNet and VAE (diffusers passes the skip's size when latents are not
 * divisible by 8). x (N, C, H, W) -> out (N, C, OH, OW). */
SD_API sd_status_t sd_op_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);

/* out = a + b and out = a * b, elementwise. b has a's shape, or b's shape is a suffix of
 * a's and broadcasts over the leading dims (e.g. a position embedding). out may be a. */
SD_API sd_status_t sd_op_add(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                             const sd_tensor_t *b);
SD_API sd_status_t sd_op_mul(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                             const sd_tensor_t *b);

/* Concatenation along dim 1: a (N, Ca, ...), b (N, Cb, ...) -> out (N, Ca + Cb, ...). */
SD_API sd_status_t sd_op_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                                const sd_tensor_t *b);

typedef struct sd_timestep_embedding_params {
    int32_t flip_sin_to_cos;    /* 1: [cos, sin] halves (SD), 0: [sin, cos] */
    float downscale_freq_shift; /* default 1 (diffusers' function default); SD's UNet uses 0 */
    float scale;                /* multiplier on the arguments; default 1 */
    float max_period;           /* default 10000 */
} sd_timestep_embedding_params_t;

SD_API void sd_timestep_embedding_params_default(sd_timestep_embedding_params_t *p);
SD_API size_t sd_sizeof_timestep_embedding_params(void);

/* Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
 * t (N) F32 timesteps -> out (N, D); for odd D the last column is zero. */
SD_API sd_status_t sd_op_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                            const sd_timestep_embedding_params_t *p);

/* out = min(max(x, lo), hi), elementwise; out may be x. lo <= hi. */
SD_API sd_status_t sd_op_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo,
                               float hi);

/* Soft clamp to (-limit, limit): out = limit * tanh(x / limit), elementwise (TAESD's
 * decoder input, limit 3); out may be x. limit > 0 and finite. */
SD_API sd_status_t sd_op_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                    float limit);

/* Element type conversion: out = x with out's dtype (F32, F16, BF16; same shape).
 * Rounds to nearest even. */
SD_API sd_status_t sd_op_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);

/* Row gather: ids (B, T) I32 in [0, V) -> out (B, T, C) = table[ids] with table (V, C)
 * F32/F16/BF16. An id out of range is SD_STATUS_INVALID_ARGUMENT. */
SD_API sd_status_t sd_op_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                                   const sd_tensor_t *table);

/* ---------------------------------------------------------------------------------------
 * Models: the three networks of Stable Diffusion. Weights arrive as a table of named
 * tensors in host memory with diffusers' names (e.g. "down_blocks.0.resnets.0.conv1.weight";
 * text encoder names with or without the "text_model." prefix); file formats and key
 * renames are the caller's business. The table's `data` must stay valid and unchanged
 * until the model is freed (sd_model_free, or the last sd_ctx_free of its share group),
 * whichever context of the group runs it: a backend may use it in place (the CPU backend
 * keeps F16/BF16 matrices as they are and converts while computing) instead of copying.
 * Loading checks that every weight the config implies is present with the right shape and
 * that every weight given is used (SD_STATUS_BAD_MODEL naming the first one that is not).
 * ------------------------------------------------------------------------------------- */

typedef struct sd_weight {
    const char *name;           /* NUL-terminated; only read during the load call */
    int32_t dtype;              /* F32, F16 or BF16 */
    int32_t ndim;               /* 1..SD_MAX_DIMS */
    int64_t shape[SD_MAX_DIMS]; /* first ndim entries used */
    const void *data;           /* contiguous, row-major; valid until the model is freed */
} sd_weight_t;

SD_API size_t sd_sizeof_weight(void);

typedef struct sd_model sd_model_t;

#define SD_MAX_LEVELS 8

/* transformers' CLIPTextConfig. */
typedef struct sd_clip_config {
    int32_t vocab_size;    /* 49408 */
    int32_t max_positions; /* 77 */
    int32_t hidden;        /* 768 (SD 1.x), 1024 (SD 2.x) */
    int32_t intermediate;  /* 3072, 4096 */
    int32_t layers;        /* 12, 23 */
    int32_t heads;         /* 12, 16 */
    int32_t activation;    /* SD_ACT_QUICK_GELU (SD 1.x) or SD_ACT_GELU (SD 2.x) */
    float layer_norm_eps;  /* 1e-5 */
    int32_t eos_id;        /* 49407: the pooled output is taken at its first position */
    /* 0: none (CLIPTextModel, the default). > 0: CLIPTextModelWithProjection (SDXL's second
     * encoder, 1280): the weight text_projection.weight (projection_dim, hidden), without
     * bias, that sd_clip_project applies to the pooled output. */
    int32_t projection_dim;
} sd_clip_config_t;

/* How a UNet conditions its time embedding on extra inputs (sd_unet_config_t). */
typedef enum sd_unet_addition_embed {
    SD_UNET_ADDITION_NONE = 0,      /* addition_embed_type null */
    SD_UNET_ADDITION_TEXT_TIME = 1, /* "text_time" (SDXL): text_embeds and time_ids */
    SD_UNET_ADDITION_COUNT
} sd_unet_addition_embed_t;

typedef enum sd_unet_class_embed {
    SD_UNET_CLASS_NONE = 0,     /* class_embed_type and num_class_embeds null */
    SD_UNET_CLASS_TABLE = 1,    /* class_embed_type null, num_class_embeds set: nn.Embedding */
    SD_UNET_CLASS_TIMESTEP = 2, /* "timestep": the time sinusoid, then a TimestepEmbedding */
    SD_UNET_CLASS_COUNT
} sd_unet_class_embed_t;

/* diffusers' UNet2DConditionModel config, resolved per level (level 0 = highest
 * resolution). Up blocks are given in diffusers' order (deepest first). The time embedding
 * is 4 * block_out_channels[0] wide. proj_in / proj_out of the transformers may be linear
 * (use_linear_projection) or 1x1 convolutions: the weights' shapes tell. */
typedef struct sd_unet_config {
    int32_t in_channels;  /* 4, or 9 for inpainting UNets */
    int32_t out_channels; /* 4 */
    int32_t levels;       /* len(block_out_channels), 1..SD_MAX_LEVELS */
    int32_t block_out_channels[SD_MAX_LEVELS];
    int32_t layers_per_block;                  /* 2 */
    int32_t down_attention[SD_MAX_LEVELS];     /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int32_t up_attention[SD_MAX_LEVELS];       /* 1: CrossAttnUpBlock2D, 0: UpBlock2D */
    int32_t heads[SD_MAX_LEVELS];              /* attention heads per level (down order) */
    int32_t transformer_layers[SD_MAX_LEVELS]; /* per level, >= 1; the mid block uses the last
                                                * level's, up block i that of level levels-1-i */
    /* 1: UNetMidBlock2DCrossAttn (ResNet, transformer, ResNet); 0: UNetMidBlock2D as
     * UNet2DConditionModel builds it (num_layers 0, no attention: one ResNet). */
    int32_t mid_attention;
    int32_t cross_attention_dim;             /* 768, 1024 */
    int32_t norm_groups;                     /* 32 */
    float norm_eps;                          /* 1e-5 */
    int32_t flip_sin_to_cos;                 /* 1 */
    float freq_shift;                        /* 0 */
    int32_t conv_in_kernel, conv_out_kernel; /* 3 */
    /* sd_unet_addition_embed_t; default NONE. TEXT_TIME adds add_embedding (a
     * TimestepEmbedding: linear_1 projection_class_embeddings_input_dim -> time embedding,
     * SiLU, linear_2) of cat(text_embeds, sinusoid(time_ids)) to the time embedding, each of
     * the time ids through a sinusoid of addition_time_embed_dim with flip_sin_to_cos and
     * freq_shift (as diffusers' add_time_proj), the N ids of a row concatenated in order. So
     * text_embeds width + N * addition_time_embed_dim = projection_class_embeddings_input_dim
     * (SDXL base: 1280 + 6 * 256 = 2816). */
    int32_t addition_embed_type;
    int32_t addition_time_embed_dim;               /* >= 1; SDXL 256 */
    int32_t projection_class_embeddings_input_dim; /* SDXL 2816 */
    /* sd_unet_class_embed_t; default NONE. TABLE adds row class_labels of class_embedding
     * (num_class_embeds, time embedding) to the time embedding (the x4 upscaler's noise
     * level); TIMESTEP adds class_embedding (linear_1 block_out_channels[0] -> time
     * embedding, SiLU, linear_2) of the time sinusoid of class_labels. */
    int32_t class_embed_type;
    int32_t num_class_embeds; /* TABLE: the table's rows, >= 1; x4 upscaler 1000 */
    /* Per level (down order; up block i uses level levels-1-i, as diffusers reverses the
     * list; the mid block never): 1 makes attn1 of every transformer block a cross-attention
     * over the context (attn1.to_k / to_v take cross_attention_dim inputs), diffusers'
     * only_cross_attention. Default 0. */
    int32_t only_cross_attention[SD_MAX_LEVELS];
} sd_unet_config_t;

/* diffusers' AutoencoderKL config. */
typedef struct sd_vae_config {
    int32_t in_channels;     /* 3 */
    int32_t out_channels;    /* 3 */
    int32_t latent_channels; /* 4 */
    int32_t levels;          /* len(block_out_channels) */
    int32_t block_out_channels[SD_MAX_LEVELS];
    int32_t layers_per_block;    /* 2 */
    int32_t norm_groups;         /* 32 */
    int32_t mid_attention;       /* mid_block_add_attention, 1 */
    int32_t use_quant_conv;      /* 1 */
    int32_t use_post_quant_conv; /* 1 */
    /* 1: encode and decode with F32 activations even where model graphs use F16 (the
     * GPU), as diffusers' SDXL pipelines honour force_upcast: the stock SDXL VAE
     * overflows in F16. No effect on the CPU (F32 already). Default 0. */
    int32_t force_upcast;
} sd_vae_config_t;

SD_API void sd_clip_config_default(sd_clip_config_t *c); /* SD 1.5's text encoder */
SD_API void sd_unet_config_default(sd_unet_config_t *c); /* SD 1.5's UNet */
SD_API void sd_vae_config_default(sd_vae_config_t *c);   /* SD 1.5's VAE */
SD_API size_t sd_sizeof_clip_config(void);
SD_API size_t sd_sizeof_unet_config(void);
SD_API size_t sd_sizeof_vae_config(void);

/* Load a network from a weight table into ctx's share group: any context of the group may
 * run it. *out is freed with sd_model_free through any context of the group (or with the
 * group's last context). Returns SD_STATUS_BAD_MODEL for an invalid config or missing /
 * mis-shaped weights, SD_STATUS_OUT_OF_MEMORY, SD_STATUS_DEVICE. A forward on a context
 * outside the model's group is SD_STATUS_INVALID_ARGUMENT; sd_model_free through one
 * leaves the model alone (logging an error). */
SD_API sd_status_t sd_clip_load(sd_ctx_t *ctx, const sd_clip_config_t *config,
                                const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);
SD_API sd_status_t sd_unet_load(sd_ctx_t *ctx, const sd_unet_config_t *config,
                                const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);
SD_API sd_status_t sd_vae_load(sd_ctx_t *ctx, const sd_vae_config_t *config,
                               const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);
SD_API void sd_model_free(sd_ctx_t *ctx, sd_model_t *model);

/* Replaces the values of loaded weights in place (e.g. with LoRA-patched ones, or back with
 * the originals), without reloading the model: each entry names a weight given to the
 * model's load by the same name, with the same shape (dtype F32, F16 or BF16, which may
 * differ from the loaded one). Only those weights are converted again: the CPU backend
 * repacks the affected GEMM weights (a pack made F32 by F32 values stays F32, holding F16
 * or BF16 values put back exactly, so switching back and forth faults in no new memory),
 * the CUDA backend uploads them into the memory they already use (recorded graphs stay
 * valid). Each entry's `data` must then stay valid and
 * unchanged until the model is freed or that weight is replaced again, unless
 * sd_model_weight_copied says the model copied it; the data the replaced values came from
 * is no longer read once this returns.
 * Every entry is checked before anything changes: an unknown name, another shape, dtype or
 * NULL data is SD_STATUS_INVALID_ARGUMENT, a weight the load folded into another tensor (a
 * ResNet's conv1 bias, a converted position table) SD_STATUS_UNSUPPORTED, and both leave the
 * model as it was (conv / linear weights, what adapters patch, are never folded). Out of memory or
 * a device error while replacing (SD_STATUS_OUT_OF_MEMORY, SD_STATUS_DEVICE) may leave the entries
 * before the failing one replaced and the rest not: replace them all again. Not thread-safe with
 * respect to the model: no context of the group may run it (or have a forward of it queued) during
 * the call; the caller serialises. */
SD_API sd_status_t sd_model_set_weights(sd_ctx_t *ctx, sd_model_t *model,
                                        const sd_weight_t *weights, int32_t n_weights);

/* Whether the model copies the data given for the weight `name` in `dtype` to
 * sd_model_set_weights (converts, packs or uploads it: the memory is no longer read once the
 * call returns) or reads it in place until that weight is replaced again (on the CPU a
 * convolution's kernel, an F32 vector): *copied. A caller replacing many weights can pass
 * those the model copies through one reused buffer, and learn before replacing any whether
 * all can be: an unknown name is SD_STATUS_INVALID_ARGUMENT, a weight the load folded into
 * another tensor SD_STATUS_UNSUPPORTED (as sd_model_set_weights). */
SD_API sd_status_t sd_model_weight_copied(sd_ctx_t *ctx, const sd_model_t *model, const char *name,
                                          int32_t dtype, bool *copied);

/* Replaces one loaded weight, as sd_model_set_weights would with the float32 values
 * base + up · down (a low-rank adapter merged into it), when the backend computes that merge
 * itself: *merged is then true. `base` is an entry as sd_model_set_weights takes (its data is
 * not read after the call); up is rows x rank and down rank x cols, float32 row-major, with
 * the weight viewed as rows (its first dimension) x cols (the rest), any scale already in up;
 * neither is read after the call. The CPU backend merges the weights of linear layers
 * while it packs them (reading base once, never storing the merged weight unpacked) and
 * those it reads in place (convolution kernels) into float32 memory of its own. Otherwise
 * (vectors and tables; any weight on CUDA) *merged is false and nothing changed: merge on
 * the host and call sd_model_set_weights. Checks, failures and thread
 * safety as sd_model_set_weights; rank < 1 or a NULL factor is SD_STATUS_INVALID_ARGUMENT. */
SD_API sd_status_t sd_model_merge_weight(sd_ctx_t *ctx, sd_model_t *model, const sd_weight_t *base,
                                         const float *up, const float *down, int32_t rank,
                                         bool *merged);

/* ESRGAN's generator, RRDBNet as Real-ESRGAN builds it (RealESRGAN_x4plus: 23 blocks;
 * RealESRGAN_x4plus_anime_6B: 6), with Real-ESRGAN's names ("conv_first",
 * "body.0.rdb1.conv1", ..., "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last";
 * every conv 3x3 with a bias). Its x2 and x1 models pixel-unshuffle the image by 2 or 4
 * first; that is the caller's business, as are tiling and clamping. Loaded like the
 * networks above. */
typedef struct sd_esrgan_config {
    int32_t in_channels;  /* 3; 12 or 48 for x2 / x1 models (the unshuffled image) */
    int32_t out_channels; /* 3 */
    int32_t num_feat;     /* 64 */
    int32_t num_block;    /* RRDB blocks, >= 1: 23, 6 */
    int32_t num_grow_ch;  /* 32 */
} sd_esrgan_config_t;

SD_API void sd_esrgan_config_default(sd_esrgan_config_t *c); /* RealESRGAN_x4plus */
SD_API size_t sd_sizeof_esrgan_config(void);
SD_API sd_status_t sd_esrgan_load(sd_ctx_t *ctx, const sd_esrgan_config_t *config,
                                  const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);

/* Text encoder. ids (B, T) I32 with T <= max_positions. hidden (B, T, hidden) F32 receives
 * the output of layer (layers - skip_layers): skip_layers 0 is the last layer, 1 the
 * penultimate one ("clip skip 2" in A1111's numbering). With final_norm the text model's
 * final layer norm is applied to it, as diffusers' and A1111's pipelines do before the UNet
 * (skip_layers 0 then gives last_hidden_state); without, it is transformers'
 * hidden_states[-1 - skip_layers]. pooled (B, hidden) F32 or NULL: last_hidden_state at
 * the first eos_id of each row (row 0 when a row has none, as transformers' argmax). */
SD_API sd_status_t sd_clip_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *ids,
                                   int32_t skip_layers, bool final_norm, sd_tensor_t *hidden,
                                   sd_tensor_t *pooled);

/* sd_clip_forward with extra token embeddings for this call only (textual inversion):
 * extra (E, hidden) F32 or NULL (then it is sd_clip_forward); an id v in [vocab_size,
 * vocab_size + E) embeds as row v - vocab_size of extra, as if the token table had E more
 * rows; position embeddings and the layers are unchanged. An id outside [0, vocab_size + E)
 * is SD_STATUS_INVALID_ARGUMENT. extra is only read during the call; the caller keeps it. */
SD_API sd_status_t sd_clip_forward_extra(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *ids,
                                         const sd_tensor_t *extra, int32_t skip_layers,
                                         bool final_norm, sd_tensor_t *hidden, sd_tensor_t *pooled);

/* CLIPTextModelWithProjection's text_embeds: out (B, projection_dim) F32 = pooled (B, hidden)
 * F32 (sd_clip_forward's pooled output) times text_projection transposed. A model loaded
 * with projection_dim 0 is SD_STATUS_INVALID_ARGUMENT. */
SD_API sd_status_t sd_clip_project(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *pooled,
                                   sd_tensor_t *out);

/* The inputs of one UNet evaluation. The struct and the tensors it points to are only read
 * during sd_unet_forward; the caller keeps ownership. B is the batch, T the number of
 * context tokens; all tensors F32 unless stated. Start from sd_unet_inputs_default. */
typedef struct sd_unet_inputs {
    const sd_tensor_t *x;       /* (B, in_channels, H, W) latents; required */
    const sd_tensor_t *t;       /* (B) timesteps, in the scheduler's units (0..999); required */
    const sd_tensor_t *context; /* (B, T, cross_attention_dim) text embeddings; required */
    /* addition_embed_type TEXT_TIME: both required (else both must be NULL). text_embeds
     * (B, P), SDXL's pooled text embedding; time_ids (B, N) with P + N *
     * addition_time_embed_dim = projection_class_embeddings_input_dim. SDXL base's N = 6:
     * original height and width, crop top and left, target height and width, in pixels. */
    const sd_tensor_t *text_embeds;
    const sd_tensor_t *time_ids;
    /* class_embed_type TABLE: (B) I32 rows in [0, num_class_embeds), an id out of range is
     * SD_STATUS_INVALID_ARGUMENT; TIMESTEP: (B) F32 values embedded like timesteps; NONE:
     * must be NULL. */
    const sd_tensor_t *class_labels;
    /* Residuals added to the skip tensors of the down blocks (ControlNet's
     * down_block_additional_residuals): down_residuals[i] is added to skip tensor i, in the
     * order the down blocks make them (conv_in's output, then each ResNet / attention output
     * and each downsampler output of each level), so each has that skip's shape. n <= the
     * number of skips, 1 + levels * layers_per_block + (levels - 1); fewer residuals are
     * added to the first skips (as diffusers' zip). down_residuals may be NULL when n is 0. */
    const sd_tensor_t *const *down_residuals;
    int32_t n_down_residuals;
    /* NULL, or added to the mid block's output: (B, block_out_channels[levels-1], h, w) with
     * h, w the deepest level's size. */
    const sd_tensor_t *mid_residual;
    /* Every residual is multiplied by this before it is added (ControlNet's
     * conditioning_scale); default 1. Finite. */
    float residual_scale;
} sd_unet_inputs_t;

SD_API void sd_unet_inputs_default(sd_unet_inputs_t *in); /* all NULL / 0, residual_scale 1 */
SD_API size_t sd_sizeof_unet_inputs(void);

/* One UNet evaluation on `in` -> out (B, out_channels, H, W) F32. Any H, W >= 1 (sizes not
 * divisible by 2^(levels-1) follow diffusers' forward_upsample_size). With CUDA the first
 * calls of a new combination of input shapes (which inputs are given, and their shapes)
 * record a graph that later calls of that combination replay. */
SD_API sd_status_t sd_unet_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_unet_inputs_t *in,
                                   sd_tensor_t *out);

/* VAE decoder on raw latents (no scaling factor applied): z (B, latent_channels, h, w) ->
 * out (B, out_channels, h * 2^(levels-1), w * 2^(levels-1)) F32, roughly in [-1, 1]. */
SD_API sd_status_t sd_vae_decode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *z,
                                 sd_tensor_t *out);

/* VAE encoder: x (B, in_channels, H, W) F32 in [-1, 1], H and W divisible by 2^(levels-1)
 * -> mean and logvar (B, latent_channels, H / 2^(levels-1), W / 2^(levels-1)) F32 of the
 * latent distribution (logvar clamped to [-30, 20] as diffusers does). Either output may
 * be NULL. */
SD_API sd_status_t sd_vae_encode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
                                 sd_tensor_t *mean, sd_tensor_t *logvar);

/* ---------------------------------------------------------------------------------------
 * ControlNet (diffusers' ControlNetModel): a trained copy of a UNet's encoder whose
 * outputs are added to the UNet's skips and mid-block output (sd_unet_inputs_t's
 * residuals). Weights use diffusers' names: the encoder's as in a UNet (conv_in,
 * time_embedding, down_blocks, mid_block, and class_embedding / add_embedding when the
 * config has them), controlnet_cond_embedding.{conv_in, blocks.j, conv_out},
 * controlnet_down_blocks.i and controlnet_mid_block (1x1 convolutions).
 * ------------------------------------------------------------------------------------- */

typedef struct sd_controlnet_config {
    /* The encoder's config, as the UNet it was copied from; up_attention, out_channels and
     * conv_out_kernel are not used. */
    sd_unet_config_t unet;
    int32_t conditioning_channels; /* channels of the control image, 3 */
    /* conditioning_embedding_out_channels: conv_in 3x3 conditioning_channels -> c[0]; for
     * each i < cond_levels - 1 blocks.2i c[i] -> c[i] and blocks.2i+1 c[i] -> c[i+1] (3x3,
     * stride 2), SiLU after each; conv_out c[last] -> block_out_channels[0]. So the control
     * image is 2^(cond_levels-1) times the latents' size. SD 1.5: (16, 32, 96, 256). */
    int32_t cond_levels;
    int32_t cond_channels[SD_MAX_LEVELS];
} sd_controlnet_config_t;

SD_API void sd_controlnet_config_default(sd_controlnet_config_t *c); /* SD 1.5's ControlNet */
SD_API size_t sd_sizeof_controlnet_config(void);

/* Loads a ControlNet (see sd_clip_load for ownership and the status codes). */
SD_API sd_status_t sd_controlnet_load(sd_ctx_t *ctx, const sd_controlnet_config_t *config,
                                      const sd_weight_t *weights, int32_t n_weights,
                                      sd_model_t **out);

/* The inputs of one ControlNet evaluation; only read during the call, the caller keeps
 * ownership. Start from sd_controlnet_inputs_default. */
typedef struct sd_controlnet_inputs {
    /* As in sd_unet_inputs_t: x (B, in_channels, h, w), t (B), context (B, T, dim), and
     * the embedding inputs the config asks for. */
    const sd_tensor_t *x, *t, *context, *text_embeds, *time_ids, *class_labels;
    /* (B, conditioning_channels, H, W) F32, the control image in [0, 1]; H and W halved
     * cond_levels - 1 times (rounding up) must give h and w. */
    const sd_tensor_t *cond;
    float scale; /* conditioning_scale: every residual is multiplied by it; finite */
    /* 1: guess mode, down residual i also multiplied by logspace(-1, 0, n + 1)[i] for n
     * down residuals (0.1 ... ), the mid residual by its last value, 1. */
    int32_t guess_mode;
    /* The residuals go to rows [out_row, out_row + B) of the outputs, which may have more
     * rows (guess mode under classifier-free guidance runs the conditional half only). With
     * accumulate 0 those rows are overwritten and the other rows set to 0; with 1 the
     * residuals are added to those rows and the others are left alone (several
     * ControlNets summed). */
    int32_t out_row;
    int32_t accumulate;
} sd_controlnet_inputs_t;

SD_API void sd_controlnet_inputs_default(sd_controlnet_inputs_t *in); /* NULL, scale 1, 0 */
SD_API size_t sd_sizeof_controlnet_inputs(void);

/* One ControlNet evaluation. down[i] (R, C_i, h_i, w_i) F32 for the n_down = 1 + levels *
 * layers_per_block + (levels - 1) skips (the shapes of sd_unet_inputs_t's down residuals,
 * R >= out_row + B) and mid (R, block_out_channels[levels-1], h', w') F32 receive the
 * residuals, ready for sd_unet_forward with residual_scale 1. Inputs or outputs of another
 * shape or count are SD_STATUS_INVALID_ARGUMENT naming the first. Runs eagerly (no graph
 * capture on CUDA yet). */
SD_API sd_status_t sd_controlnet_forward(sd_ctx_t *ctx, sd_model_t *model,
                                         const sd_controlnet_inputs_t *in, sd_tensor_t *const *down,
                                         int32_t n_down, sd_tensor_t *mid);

/* ---------------------------------------------------------------------------------------
 * TAESD: the tiny autoencoder (madebyollin/taesd; diffusers' AutoencoderTiny), a fast
 * stand-in for the VAE that works on the same latents. Each network is a chain of 3x3
 * convolutions: Blocks (conv, ReLU, conv, ReLU, conv, plus the input, ReLU), stride-2
 * convolutions (encoder) and nearest 2x upsampling + convolution (decoder).
 * ------------------------------------------------------------------------------------- */

/* diffusers' AutoencoderTiny config. Each network has one width (as diffusers builds it,
 * the widths of its levels must be equal). Either network may be absent (its levels 0:
 * the original layout ships encoder and decoder as separate files), not both. */
typedef struct sd_taesd_config {
    int32_t in_channels;     /* 3 */
    int32_t out_channels;    /* 3 */
    int32_t latent_channels; /* 4 */
    int32_t encoder_levels;  /* len(encoder_block_out_channels), 0..SD_MAX_LEVELS; 4 */
    int32_t encoder_channels[SD_MAX_LEVELS]; /* 64 each */
    int32_t encoder_blocks[SD_MAX_LEVELS];   /* num_encoder_blocks: 1, 3, 3, 3 */
    int32_t decoder_levels;                  /* 0..SD_MAX_LEVELS; 4 */
    int32_t decoder_channels[SD_MAX_LEVELS]; /* 64 each */
    int32_t decoder_blocks[SD_MAX_LEVELS];   /* num_decoder_blocks: 3, 3, 3, 1 */
} sd_taesd_config_t;

SD_API void sd_taesd_config_default(sd_taesd_config_t *c); /* TAESD / TAESDXL (same shape) */
SD_API size_t sd_sizeof_taesd_config(void);

/* Loads the networks the config names from diffusers' names ("encoder.layers.N...",
 * "decoder.layers.N..."); the original files' indices are the caller's to rename (encoder
 * index i is encoder.layers.i, decoder index i is decoder.layers.(i-1), as its index 0 is
 * the parameter-free clamp). Ownership, lifetimes and errors as sd_vae_load. */
SD_API sd_status_t sd_taesd_load(sd_ctx_t *ctx, const sd_taesd_config_t *config,
                                 const sd_weight_t *weights, int32_t n_weights, sd_model_t **out);

/* TAESD decoder on the denoiser's latents as they are (TAESD's scaling factor is 1):
 * z (B, latent_channels, h, w) -> out (B, out_channels, h * 2^(levels-1), w * 2^(levels-1))
 * F32 in the original decoder's range, roughly [0, 1] (diffusers returns 2 out - 1). The
 * latents are soft-clamped first, 3 tanh(z / 3). SD_STATUS_INVALID_ARGUMENT without a
 * decoder. */
SD_API sd_status_t sd_taesd_decode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *z,
                                   sd_tensor_t *out);

/* TAESD encoder: x (B, in_channels, H, W) F32 in [0, 1] (the original encoder's range;
 * diffusers passes (x + 1) / 2) -> latents (B, latent_channels, ceil(H / 2^(levels-1)),
 * ceil(W / 2^(levels-1))) F32 in the denoiser's latent space (each stride-2 convolution
 * with padding 1 maps a side n to ceil(n / 2)). SD_STATUS_INVALID_ARGUMENT without an
 * encoder. */
SD_API sd_status_t sd_taesd_encode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
                                   sd_tensor_t *latents);

/* ESRGAN forward: x (B, in_channels, H, W) F32 or F16 (the image in [0, 1], unshuffled
 * for x2 / x1 models) -> out (B, out_channels, 4H, 4W), not clamped. Activation memory
 * grows with H x W (about (num_feat + 4 num_grow_ch) x H x W activations at a time, and
 * 16x that after the upsampling): tile large images. */
SD_API sd_status_t sd_esrgan_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
                                     sd_tensor_t *out);

#ifdef __cplusplus
}
#endif

#endif /* SD_H */
