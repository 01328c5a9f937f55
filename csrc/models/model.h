/*
 * model.h - what the three networks share: the loaded-model object, the weight loader
 * (name lookup, shape checks, hand-over to the backend) and the building blocks written
 * once against the op API (ResNet block, spatial transformer, VAE attention, up/down
 * sampling), with a sticky-error graph context so forward code reads top to bottom.
 */
#ifndef SD_MODEL_H
#define SD_MODEL_H

#include "graph-cache.h"
#include "sd-internal.h"

enum { SD_MODEL_CLIP = 0, SD_MODEL_UNET = 1, SD_MODEL_VAE = 2 };

/* What one context keeps for one model of its group. A model is read-only once loaded, so
 * contexts may run it concurrently; what a forward changes lives here, one per context:
 * recorded graphs bake in the context's stream, arena and staging addresses. */
typedef struct sd_model_ctx_state {
    sd_ctx_t *ctx;
    sd_graph_cache_t graphs;
    struct sd_model_ctx_state *next;
} sd_model_ctx_state_t;

struct sd_model {
    int32_t kind;
    sd_group_t *group;    /* of the context that loaded it: the contexts that may run it */
    sd_tensor_t *weights; /* backend weights, freed with the model */
    int32_t n_weights, cap_weights;
    sd_tensor_t **owned; /* tensors the model made itself (backend memory), each allocated
                          * alone so pointers to them stay valid as the list grows */
    int32_t n_owned, cap_owned;
    void *net; /* clip_net_t, unet_net_t or vae_net_t */
    void (*free_net)(sd_ctx_t *ctx, void *net);
    sd_model_ctx_state_t *states; /* guarded by the group's lock */
    sd_model_t *prev, *next;      /* the group's list of live models */
};

/* SD_STATUS_INVALID_ARGUMENT (with the message "<op>: ...") unless model is a `kind` model
 * that ctx may run (loaded in ctx's group). */
sd_status_t sd_model_check(sd_ctx_t *ctx, const sd_model_t *model, int32_t kind, const char *op);

/* ctx's graph cache for model, created on first use; NULL (with the failure recorded on
 * ctx) when out of memory. Valid until the model or ctx is freed. */
sd_graph_cache_t *sd_model_graphs(sd_ctx_t *ctx, sd_model_t *model);

/* ---------------------------------------------------------------------------------------
 * Weights
 * ------------------------------------------------------------------------------------- */

typedef struct {
    const sd_tensor_t *w, *b; /* b NULL when the layer has no bias */
} sd_linear_w;

typedef sd_linear_w sd_conv_w;

typedef struct {
    const sd_tensor_t *gamma, *beta;
} sd_norm_w;

typedef struct loader loader_t;

/* Starts loading a model of `kind` from the caller's table. `strip_prefix` (or NULL) is
 * removed from table names before lookup (e.g. "text_model."); two entries naming one
 * tensor (with and without the prefix, or one name twice) are an error. */
loader_t *loader_new(sd_ctx_t *ctx, const char *what, int32_t kind, const sd_weight_t *weights,
                     int32_t n, const char *strip_prefix);
/* Ends loading: a weight of the table that no ld_* call looked up is an error
 * (SD_STATUS_BAD_MODEL naming it), so the caller's list and the graph cannot drift apart
 * unnoticed. On success waits for the backend (other contexts of the group, on other
 * streams, may use the weights at once) and hands the model over (*out, also linked into
 * the context's group so that its last sd_ctx_free frees it), else frees it and returns
 * the first error. */
sd_status_t loader_finish(loader_t *L, void *net, void (*free_net)(sd_ctx_t *, void *),
                          sd_model_t **out);
sd_status_t loader_status(const loader_t *L);
/* Records a config error (SD_STATUS_BAD_MODEL) unless one is already recorded. */
void loader_fail(loader_t *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records an out-of-memory failure. */
void loader_oom(loader_t *L);

/* Each looks up prefix + ".weight" / ".bias" and checks the shape; on a failure it records
 * the first error and returns a zeroed struct (later calls then do nothing). */
sd_linear_w ld_linear(loader_t *L, int64_t n_out, int64_t n_in, bool bias, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The same for a linear layer whose output is channels-first (its weight is the GEMM's A). */
sd_linear_w ld_linear_cf(loader_t *L, int64_t n_out, int64_t n_in, bool bias, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
sd_conv_w ld_conv(loader_t *L, int64_t c_out, int64_t c_in, int64_t k, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
sd_norm_w ld_norm(loader_t *L, int64_t c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A (rows, cols) table: kept in the file's dtype (embedding gathers). */
const sd_tensor_t *ld_table(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A (rows, cols) tensor used as an activation operand, held in the activation dtype. */
const sd_tensor_t *ld_act(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A view of rows [r0, r1) of a contiguous weight (any ndim, rows = dim 0). */
sd_tensor_t sd_rows_view(const sd_tensor_t *t, int64_t r0, int64_t r1);

/* ---------------------------------------------------------------------------------------
 * Graph context: the first failure sticks and every later step is skipped, so forward
 * code needs no error branch per op; scratch tensors are freed unconditionally.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    sd_ctx_t *ctx;
    sd_status_t st;
    int32_t act; /* activation dtype */
} graph_t;

graph_t graph_begin(sd_ctx_t *ctx);

/* Scratch activation tensor (NULL after a failure). */
sd_tensor_t *g_new(graph_t *g, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
void g_free(graph_t *g, sd_tensor_t *t);

/* Runs an op unless the graph already failed. */
#define G(g, call)                                                                                 \
    do {                                                                                           \
        if ((g)->st == SD_STATUS_OK) (g)->st = (call);                                             \
    } while (0)

/* An input in the activation dtype: x itself when it already is, else a converted scratch
 * copy (release with g_release_input). */
sd_tensor_t *g_input(graph_t *g, const sd_tensor_t *x);
void g_release_input(graph_t *g, const sd_tensor_t *x, sd_tensor_t *converted);
/* Copies (converting if needed) a scratch result into a caller's output tensor. */
void g_output(graph_t *g, sd_tensor_t *out, const sd_tensor_t *result);

/* Convenience op wrappers. */
void g_conv(graph_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_conv_w *c,
            const sd_tensor_t *bias_override, const sd_tensor_t *residual, int32_t stride,
            int32_t pad_top, int32_t pad_bottom, int32_t pad_left, int32_t pad_right);
void g_linear(graph_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_linear_w *l,
              const sd_tensor_t *residual, int32_t in_layout, int32_t out_layout);

/* ---------------------------------------------------------------------------------------
 * Blocks
 * ------------------------------------------------------------------------------------- */

/* diffusers' ResnetBlock2D (pre-norm, SiLU, time embedding added after conv1). */
typedef struct {
    int64_t c_in, c_out;
    sd_norm_w norm1, norm2;
    sd_conv_w conv1, conv2, shortcut; /* shortcut.w NULL when c_in == c_out */
    sd_linear_w temb; /* temb.w NULL without a time embedding (VAE); temb.b includes conv1's */
} resnet_w;

void ld_resnet(loader_t *L, resnet_w *r, int64_t c_in, int64_t c_out, int64_t temb_dim,
               const char *prefix);
/* Returns a new (B, c_out, H, W) tensor; temb_silu is SiLU(temb) (B, temb_dim) or NULL. */
sd_tensor_t *g_resnet(graph_t *g, const resnet_w *r, const sd_tensor_t *x,
                      const sd_tensor_t *temb_silu, int32_t groups, float eps);

/* diffusers' BasicTransformerBlock inside Transformer2DModel. */
typedef struct {
    sd_norm_w norm1, norm2, norm3;
    sd_linear_w q1, k1, v1, o1, q2, k2, v2, o2, ff1, ff2;
} tblock_w;

typedef struct {
    int64_t channels, heads, ff_inner;
    int32_t only_cross; /* attn1 attends to the context too (diffusers' only_cross_attention) */
    sd_norm_w norm;
    sd_linear_w proj_in, proj_out;
    int32_t n_blocks;
    tblock_w *blocks;
} transformer_w;

void ld_transformer(loader_t *L, transformer_w *t, int64_t channels, int64_t heads,
                    int64_t context_dim, int32_t n_blocks, int32_t only_cross, const char *prefix);
void free_transformer(transformer_w *t);
/* x (B, C, H, W), context (B, T, context_dim) -> new (B, C, H, W). */
sd_tensor_t *g_transformer(graph_t *g, const transformer_w *t, const sd_tensor_t *x,
                           const sd_tensor_t *context, int32_t groups);

/* The VAE's single-head mid-block attention with a residual connection. */
typedef struct {
    int64_t channels;
    sd_norm_w norm;
    sd_linear_w q, k, v, o;
} vae_attn_w;

void ld_vae_attention(loader_t *L, vae_attn_w *a, int64_t channels, const char *prefix);
sd_tensor_t *g_vae_attention(graph_t *g, const vae_attn_w *a, const sd_tensor_t *x, int32_t groups,
                             float eps);

/* Nearest resize to (oh, ow) then a 3x3 conv (diffusers' Upsample2D). New tensor. */
sd_tensor_t *g_upsample(graph_t *g, const sd_conv_w *conv, const sd_tensor_t *x, int64_t oh,
                        int64_t ow);

#endif /* SD_MODEL_H */
