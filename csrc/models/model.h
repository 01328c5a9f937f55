/*
 * model.h - what every network shares below its graph: the loaded-model object (its
 * lifetime in a share group, the state each context keeps for it) and the weight loader
 * (name lookup, shape checks, hand-over to the backend). blocks.h builds on it.
 */
#ifndef SD_MODEL_H
#define SD_MODEL_H

#include "graph-cache.h"
#include "sd-internal.h"

enum {
    SD_MODEL_CLIP = 0,
    SD_MODEL_UNET = 1,
    SD_MODEL_VAE = 2,
    SD_MODEL_CONTROLNET = 3,
    SD_MODEL_TAESD = 4,
    SD_MODEL_ESRGAN = 5
};

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
    /* Per weight: the name and shape it was given by (the caller's table), and its role, so
     * that sd_model_set_weights can find and convert it again. */
    struct sd_weight_origin {
        char *name;
        int32_t role, ndim;
        bool folded; /* values copied into a tensor made at load (ld_sum, ld_act) */
        int64_t shape[SD_MAX_DIMS];
    } * origins;
    int32_t n_weights, cap_weights;
    sd_tensor_t **owned; /* tensors the model made itself (backend memory), each allocated
                          * alone so pointers to them stay valid as the list grows */
    int32_t n_owned, cap_owned;
    void
        *net; /* clip_net_t, unet_net_t, vae_net_t, controlnet_net_t, taesd_net_t or esrgan_net_t */
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
/* The same without a bias (b NULL). */
sd_conv_w ld_conv_no_bias(loader_t *L, int64_t c_out, int64_t c_in, int64_t k, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
sd_norm_w ld_norm(loader_t *L, int64_t c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A (rows, cols) table: kept in the file's dtype (embedding gathers). */
const sd_tensor_t *ld_table(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* a + b (F32 vectors of one shape, e.g. two loaded biases), a tensor of the model. */
const sd_tensor_t *ld_sum(loader_t *L, const sd_tensor_t *a, const sd_tensor_t *b);
/* A (rows, cols) tensor used as an activation operand, held in the activation dtype. */
const sd_tensor_t *ld_act(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A (n) tensor of the model holding host values, in the activation dtype (an operand of
 * elementwise ops, e.g. a scale broadcast over a (numel, 1) view). */
const sd_tensor_t *ld_const(loader_t *L, int64_t n, const float *values);

/* A view of rows [r0, r1) of a contiguous weight (any ndim, rows = dim 0). */
sd_tensor_t sd_rows_view(const sd_tensor_t *t, int64_t r0, int64_t r1);

#endif /* SD_MODEL_H */
