/*
 * sd-internal.h - definitions shared by the runtime core, the backends and the model
 * graphs. Nothing here is part of the public API.
 */
#ifndef SD_INTERNAL_H
#define SD_INTERNAL_H

#include "sd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Internal invariants only: never for anything a caller can cause. */
#define SD_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) sd_assert_fail(#cond, __FILE__, __LINE__);                                    \
    } while (0)

#ifdef __cplusplus
[[noreturn]] void sd_assert_fail(const char *cond, const char *file, int line);
#else
_Noreturn void sd_assert_fail(const char *cond, const char *file, int line);
#endif

#define SD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SD_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Propagates a non-OK status. */
#define SD_TRY(expr)                                                                               \
    do {                                                                                           \
        sd_status_t sd_try_status_ = (expr);                                                       \
        if (sd_try_status_ != SD_STATUS_OK) return sd_try_status_;                                 \
    } while (0)

typedef struct sd_backend sd_backend_t;
typedef struct sd_arena sd_arena_t;

/* ---------------------------------------------------------------------------------------
 * Tensors
 * ------------------------------------------------------------------------------------- */

typedef enum sd_tensor_kind {
    SD_TENSOR_OWNED = 0, /* data from the backend allocator, freed with the tensor */
    SD_TENSOR_ARENA = 1, /* data from the context's activation arena */
    SD_TENSOR_VIEW = 2,  /* data owned by someone else (host weights, another tensor) */
} sd_tensor_kind_t;

struct sd_tensor {
    int32_t dtype;
    int32_t ndim;
    int64_t shape[SD_MAX_DIMS];
    void *data; /* backend memory (host memory for the CPU backend) */
    size_t nbytes;
    int32_t kind;
    /* A backend's own form of a weight (e.g. pre-packed GEMM panels), made by
     * weight_from_host and freed by weight_free; NULL for other tensors. */
    void *packed;
    /* Public tensors (sd_tensor_new) are linked into the context so sd_ctx_free can free
     * what the caller leaked. */
    struct sd_tensor *prev, *next;
};

int64_t sd_tensor_numel(const sd_tensor_t *t);
bool sd_tensor_same_shape(const sd_tensor_t *a, const sd_tensor_t *b);
/* Formats "(2, 4, 64, 64) f32" into buf for error messages; returns buf. */
const char *sd_tensor_describe(const sd_tensor_t *t, char *buf, size_t len);
const char *sd_dtype_name(int32_t dtype);

/* Fills t's header (no allocation). Returns false for an invalid dtype or shape. */
bool sd_tensor_init_header(sd_tensor_t *t, int32_t dtype, int32_t ndim, const int64_t *shape);

/* Scratch tensors for model graphs: allocated from the context's arena, released with
 * sd_scratch_free (NULL is a no-op). */
sd_status_t sd_scratch_new(sd_ctx_t *ctx, int32_t dtype, int32_t ndim, const int64_t *shape,
                           sd_tensor_t **out);
void sd_scratch_free(sd_ctx_t *ctx, sd_tensor_t *t);

/* A header-only tensor over existing memory (kind VIEW): a reshape or a host buffer. */
sd_tensor_t sd_tensor_view(void *data, int32_t dtype, int32_t ndim, const int64_t *shape);

/* ---------------------------------------------------------------------------------------
 * Half-precision conversion (portable scalar versions; kernels vectorise their own)
 * ------------------------------------------------------------------------------------- */

float sd_f16_to_f32(uint16_t h);
uint16_t sd_f32_to_f16(float f);
static inline float sd_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}
uint16_t sd_f32_to_bf16(float f);

/* Converts n elements of src (F32/F16/BF16) to float32. */
void sd_convert_to_f32(float *dst, const void *src, int32_t src_dtype, int64_t n);

/* ---------------------------------------------------------------------------------------
 * Activation arena: a first-fit allocator with coalescing over large chunks of backend
 * memory. After the first forward pass of a given shape the arena holds enough memory and
 * later passes allocate nothing from the system. Deterministic: the same sequence of
 * requests gets the same addresses (needed for CUDA graph replay).
 * ------------------------------------------------------------------------------------- */

typedef struct sd_arena_block {
    size_t offset, size;
    bool used;
} sd_arena_block_t;

typedef struct sd_arena_chunk {
    void *base;
    size_t size;
    sd_arena_block_t *blocks;
    int32_t n_blocks, cap_blocks;
} sd_arena_chunk_t;

struct sd_arena {
    sd_backend_t *backend;
    size_t alignment;
    size_t min_chunk;
    sd_arena_chunk_t *chunks;
    int32_t n_chunks, cap_chunks;
    size_t in_use, peak, reserved;
    /* Counts releases of chunks: a recorded graph that used arena memory is valid only
     * while the epoch it was recorded in lasts. */
    uint64_t epoch;
};

void sd_arena_init(sd_arena_t *a, sd_backend_t *backend, size_t alignment, size_t min_chunk);
void sd_arena_destroy(sd_arena_t *a);
/* Returns NULL when the backend cannot provide memory. */
void *sd_arena_alloc(sd_arena_t *a, size_t nbytes);
void sd_arena_free(sd_arena_t *a, void *p);
/* Releases chunks with nothing in use. */
void sd_arena_trim(sd_arena_t *a);

/* ---------------------------------------------------------------------------------------
 * Backend interface. The front end (ops.c) validates every argument before calling an
 * op, so backends may assume consistent shapes and dtypes.
 * ------------------------------------------------------------------------------------- */

typedef struct sd_backend_ops {
    void (*destroy)(sd_backend_t *be);

    /* Backend memory. alloc returns NULL on failure. */
    void *(*alloc)(sd_backend_t *be, size_t nbytes);
    void (*free)(sd_backend_t *be, void *p);
    sd_status_t (*upload)(sd_ctx_t *ctx, void *dst, const void *src, size_t nbytes);
    sd_status_t (*download)(sd_ctx_t *ctx, void *dst, const void *src, size_t nbytes);

    /* Makes a weight usable by this backend from host memory that stays valid until the
     * model is freed. `role` tells what it is used as, so a backend can choose a storage
     * format (the CPU backend keeps matrices as they are and widens small vectors to F32;
     * a GPU backend uploads). The result is freed with weight_free. Both keep the context's
     * weights_bytes (backend memory held for weights) up to date. */
    sd_status_t (*weight_from_host)(sd_ctx_t *ctx, const sd_tensor_t *host, int32_t role,
                                    sd_tensor_t *out);
    void (*weight_free)(sd_ctx_t *ctx, sd_tensor_t *w);
    /* Gives a weight made by weight_from_host (with the same role) the values of `host`
     * (same shape, any weight dtype); on failure *w is unchanged or, after a device error,
     * the context is broken. A backend with recorded graphs keeps w's memory so that they
     * stay valid. */
    sd_status_t (*weight_update)(sd_ctx_t *ctx, const sd_tensor_t *host, int32_t role,
                                 sd_tensor_t *w);
    /* Whether weight_from_host and weight_update copy host data of this role and dtype
     * (convert, pack, upload) rather than read it in place afterwards. */
    bool (*weight_copies)(int32_t role, int32_t dtype);
    /* Whether weight_merge takes this weight (made by weight_from_host with this role);
     * NULL when the backend merges none. */
    bool (*weight_merges)(const sd_tensor_t *w, int32_t role);
    /* Gives such a weight the values base + up · down computed in float32: base in host
     * memory, of the weight's shape (any weight dtype) viewed as rows x cols, up (rows x
     * rank) and down (rank x cols) float32, none read after the call. On failure *w is
     * unchanged. */
    sd_status_t (*weight_merge)(sd_ctx_t *ctx, const sd_tensor_t *base, const float *up,
                                const float *down, int64_t rank, int32_t role, sd_tensor_t *w);

    sd_status_t (*conv2d)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                          const sd_tensor_t *w, const sd_tensor_t *bias,
                          const sd_tensor_t *residual, const sd_conv2d_params_t *p);
    /* Optional (NULL: not fused): out = conv2d(upsample_nearest_2x(x), w 3x3, padding 1) +
     * bias without the upsampled tensor; SD_STATUS_UNSUPPORTED, no error recorded, for a
     * shape it does not fuse. */
    sd_status_t (*conv2d_up2)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *w, const sd_tensor_t *bias);
    /* Optional (NULL: models do not work in row bands): rows [dst_row, dst_row + rows) of
     * every (n, c) plane of dst get rows [src_row, ...) of src's (4-D, same N, C and W). */
    sd_status_t (*copy_rows)(sd_ctx_t *ctx, sd_tensor_t *dst, int64_t dst_row,
                             const sd_tensor_t *src, int64_t src_row, int64_t rows);
    sd_status_t (*linear)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                          const sd_tensor_t *w, const sd_tensor_t *bias,
                          const sd_tensor_t *residual, const sd_linear_params_t *p);
    sd_status_t (*group_norm)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *gamma, const sd_tensor_t *beta, int32_t groups,
                              float eps, bool silu);
    sd_status_t (*layer_norm)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps);
    sd_status_t (*attention)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                             const sd_tensor_t *k, const sd_tensor_t *v, int32_t heads, bool causal,
                             float scale);
    sd_status_t (*activation)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              int32_t activation);
    sd_status_t (*geglu)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
    sd_status_t (*upsample_nearest)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
    /* op: 0 add, 1 mul. b is a's shape or a suffix of it (broadcast over leading dims). */
    sd_status_t (*binary)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b, int32_t op);
    sd_status_t (*concat)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b);
    sd_status_t (*clamp)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo, float hi);
    sd_status_t (*tanh_clamp)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit);
    sd_status_t (*convert)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
    sd_status_t (*timestep_embedding)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                      const sd_timestep_embedding_params_t *p);
    sd_status_t (*embedding)(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                             const sd_tensor_t *table);
    /* Waits for queued work (for profiling); NULL when ops complete synchronously. */
    sd_status_t (*synchronize)(sd_ctx_t *ctx);

    /* Whole-forward replay, optional (NULL where ops run immediately, as on the CPU).
     * graph_begin records the ops queued on the context instead of running them; recorded
     * ops must not allocate. graph_end stops recording and returns an executable graph;
     * graph_launch queues it; graph_free releases it. */
    sd_status_t (*graph_begin)(sd_ctx_t *ctx);
    sd_status_t (*graph_end)(sd_ctx_t *ctx, void **graph);
    sd_status_t (*graph_launch)(sd_ctx_t *ctx, void *graph);
    void (*graph_free)(sd_backend_t *be, void *graph);
} sd_backend_ops_t;

enum { SD_BINARY_ADD = 0, SD_BINARY_MUL = 1 };

/* Roles for weight_from_host. */
enum {
    SD_WEIGHT_VECTOR = 1, /* biases, norm scales: small, read per element */
    SD_WEIGHT_TABLE = 2,  /* embedding tables: rows gathered */
    /* Conv / linear weights (rows = output channels), and how the GEMM will use them: as
     * its A operand (conv2d, linear with channels-first output) or as its B operand
     * (linear with token output, where B = W^T). A backend may pre-pack for that use. */
    SD_WEIGHT_MATRIX_A = 3,
    SD_WEIGHT_MATRIX_B = 4,
};

struct sd_backend {
    const sd_backend_ops_t *ops;
    int32_t kind; /* sd_backend_kind_t */
    char description[256];
    /* A warning from creating the backend (e.g. n_threads clamped). No log callback can be
     * set yet, so sd_ctx_set_log delivers it to the first one. */
    char warning[192];
    size_t alignment; /* of alloc results and arena blocks */
    /* Bit mask (1 << dtype) of the activation dtypes the ops accept (inputs and outputs
     * other than weights); all activations of one call share a dtype. The CPU takes F32
     * only; a GPU backend may add F16. */
    uint32_t act_dtypes;
    /* The activation dtype model graphs use for their scratch tensors. */
    int32_t act_dtype;
};

sd_status_t sd_backend_cpu_create(const sd_ctx_params_t *p, sd_backend_t **out, char *err,
                                  size_t err_len);
#ifdef SD_WITH_CUDA
sd_status_t sd_backend_cuda_create(const sd_ctx_params_t *p, sd_backend_t **out, char *err,
                                   size_t err_len);
bool sd_backend_cuda_available(char *reason, size_t reason_len);
#endif

/* ---------------------------------------------------------------------------------------
 * Context
 * ------------------------------------------------------------------------------------- */

/* The context's fields are private to the C core (context.c, ops.c); backends, which may
 * be C++ (CUDA), use the functions below. */
#ifndef __cplusplus
#include <pthread.h>
#include <stdatomic.h>
#define SD_PROFILE_SLOTS 24

/* The contexts sharing one set of models (sd_ctx_init_shared): the models live here, not in
 * a context, and are freed with the last context of the group. Every context has its own
 * backend instance (thread pool or stream, scratch, handles) on one device, so memory that
 * one context's backend allocated for weights may be read and freed through another's. */
typedef struct sd_group {
    /* Guards refs, the model list and every model's per-context state (model.h), which
     * contexts of the group change from their own threads. */
    pthread_mutex_t lock;
    int32_t refs; /* contexts in the group */
    struct sd_model *models;
    atomic_uint_least64_t weights_bytes; /* backend memory held by the models */
    int32_t backend, device;             /* what every context of the group runs on */
} sd_group_t;

typedef struct sd_profile_slot {
    const char *name; /* static string; NULL = free slot */
    uint64_t calls, ns;
    double flops;
} sd_profile_slot_t;

struct sd_ctx {
    sd_backend_t *backend;
    bool profiling;
    sd_profile_slot_t profile[SD_PROFILE_SLOTS];
    sd_arena_t arena;
    atomic_int cancelled;
    /* A sticky device failure: every later call fails with this status and message. */
    sd_status_t broken;
    char last_error[1024];
    sd_log_fn log_fn;
    void *log_user;
    sd_tensor_t *tensors; /* live public tensors */
    sd_group_t *group;    /* the models it may run; shared with the contexts of its group */
    uint64_t tensors_bytes;
};
#endif

sd_backend_t *sd_ctx_backend_ptr(sd_ctx_t *ctx);
/* Frees every model of ctx's group (models/loader.c), as the last context of a group must. */
void sd_models_free_all(sd_ctx_t *ctx);
/* Frees what ctx keeps for each model of its group (models/loader.c); the group's lock is
 * held. */
void sd_models_forget_ctx_locked(sd_ctx_t *ctx);
/* Adds delta (may be negative) to the backend memory reported as held by the weights of
 * ctx's group. */
void sd_ctx_add_weights_bytes(sd_ctx_t *ctx, int64_t delta);

/* Records a failure on ctx (printf-style message) and returns `status`. */
sd_status_t sd_fail(sd_ctx_t *ctx, sd_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Marks the context unusable after a device failure and returns SD_STATUS_DEVICE. */
sd_status_t sd_fail_device(sd_ctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sd_log(sd_ctx_t *ctx, int32_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t sd_now_ns(void);

/* Profiling around one backend call: begin returns a timestamp (0 when disabled), end
 * adds the elapsed time and flops to the slot named `name` (a static string). */
uint64_t sd_profile_begin(sd_ctx_t *ctx);
void sd_profile_end(sd_ctx_t *ctx, const char *name, double flops, uint64_t begin);

/* Whether graph recording may be used now (a backend that supports it, profiling off). */
bool sd_ctx_graphs_enabled(sd_ctx_t *ctx);
/* The arena's epoch (see sd_arena). */
uint64_t sd_ctx_arena_epoch(sd_ctx_t *ctx);

/* SD_STATUS_CANCELLED (with the message set) when cancellation was requested, the sticky
 * device status when the context is broken, else OK. Called by every op. */
sd_status_t sd_ctx_check(sd_ctx_t *ctx);

/* The decoders' nearest 2x upsample followed by a 3x3 convolution with padding 1, fused where
 * the backend can (sd_backend_ops_t.conv2d_up2): out (N, Cout, 2H, 2W) = conv2d(up(x), w) +
 * bias for x (N, Cin, H, W), without the upsampled tensor (SD's VAE at 512²: 268 MB).
 * SD_STATUS_UNSUPPORTED, with nothing recorded, where it does not fuse: the caller then
 * upsamples and convolves. Profiled as "conv2d 3x3". */
sd_status_t sd_op_conv2d_up2(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                             const sd_tensor_t *w, const sd_tensor_t *bias);
/* Whether the backend copies row bands (sd_op_copy_rows): a decoder may then run its
 * full-resolution layers a band of rows at a time. */
bool sd_ctx_copies_rows(sd_ctx_t *ctx);
/* Rows [dst_row, dst_row + rows) of every (n, c) plane of dst (N, C, H, W) get rows
 * [src_row, src_row + rows) of src (N, C, H', W); SD_STATUS_UNSUPPORTED where the backend
 * has no copy_rows. */
sd_status_t sd_op_copy_rows(sd_ctx_t *ctx, sd_tensor_t *dst, int64_t dst_row,
                            const sd_tensor_t *src, int64_t src_row, int64_t rows);

#ifdef __cplusplus
}
#endif

#endif /* SD_INTERNAL_H */
