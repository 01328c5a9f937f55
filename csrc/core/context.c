/* Context lifetime, errors, logging and cancellation. */
#include "sd-internal.h"

#include <string.h>
#include <time.h>

void sd_assert_fail(const char *cond, const char *file, int line) {
    fprintf(stderr, "gosd: internal invariant failed: %s (%s:%d)\n", cond, file, line);
    abort();
}

const char *sd_status_string(sd_status_t status) {
    switch (status) {
    case SD_STATUS_OK:
        return "ok";
    case SD_STATUS_INVALID_ARGUMENT:
        return "invalid argument";
    case SD_STATUS_IO:
        return "i/o error";
    case SD_STATUS_BAD_MODEL:
        return "bad model";
    case SD_STATUS_OUT_OF_MEMORY:
        return "out of memory";
    case SD_STATUS_DEVICE:
        return "device error";
    case SD_STATUS_UNSUPPORTED:
        return "unsupported";
    case SD_STATUS_CANCELLED:
        return "cancelled";
    case SD_STATUS_INTERNAL:
        return "internal error";
    default:
        return "unknown status";
    }
}

uint32_t sd_abi_version(void) {
    return SD_ABI_VERSION;
}

size_t sd_sizeof_ctx_params(void) {
    return sizeof(sd_ctx_params_t);
}
size_t sd_sizeof_memory_stats(void) {
    return sizeof(sd_memory_stats_t);
}

static void copy_message(char *dst, size_t len, const char *src) {
    if (dst == NULL || len == 0) return;
    snprintf(dst, len, "%s", src);
}

bool sd_backend_available(int32_t backend, char *reason, size_t reason_len) {
    switch (backend) {
    case SD_BACKEND_CPU:
        copy_message(reason, reason_len, "");
        return true;
    case SD_BACKEND_CUDA:
#ifdef SD_WITH_CUDA
        return sd_backend_cuda_available(reason, reason_len);
#else
        copy_message(reason, reason_len, "this library was built without CUDA (use libsd-cuda)");
        return false;
#endif
    default:
        copy_message(reason, reason_len, "unknown backend");
        return false;
    }
}

void sd_ctx_params_default(sd_ctx_params_t *params) {
    if (params == NULL) return;
    memset(params, 0, sizeof *params);
    params->backend = SD_BACKEND_CPU;
}

static sd_status_t check_params(const char *fn, const sd_ctx_params_t *params, sd_ctx_t **out,
                                char *err, size_t err_len) {
    copy_message(err, err_len, "");
    if (out == NULL) {
        snprintf(err, err_len, "%s: out is NULL", fn);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    *out = NULL;
    if (params == NULL) {
        snprintf(err, err_len, "%s: params is NULL", fn);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    if (params->n_threads < 0) {
        snprintf(err, err_len, "%s: n_threads %d is negative", fn, (int)params->n_threads);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    if (params->precision < 0 || params->precision >= SD_PRECISION_COUNT) {
        snprintf(err, err_len, "%s: unknown precision %d", fn, (int)params->precision);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    if (params->flags != 0) {
        snprintf(err, err_len, "%s: flags must be 0", fn);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    return SD_STATUS_OK;
}

static sd_group_t *group_new(const sd_ctx_params_t *params) {
    sd_group_t *g = calloc(1, sizeof *g);
    if (g == NULL) return NULL;
    if (pthread_mutex_init(&g->lock, NULL) != 0) {
        free(g);
        return NULL;
    }
    g->refs = 1;
    atomic_init(&g->weights_bytes, 0);
    g->backend = params->backend;
    g->device = params->backend == SD_BACKEND_CPU ? 0 : params->device;
    return g;
}

static void group_join(sd_group_t *g) {
    pthread_mutex_lock(&g->lock);
    g->refs++;
    pthread_mutex_unlock(&g->lock);
}

/* Drops ctx from its group; true when it was the last context, which then frees the
 * group's models and the group. */
static bool group_leave(sd_ctx_t *ctx) {
    sd_group_t *g = ctx->group;
    pthread_mutex_lock(&g->lock);
    sd_models_forget_ctx_locked(ctx);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->lock);
    return last;
}

/* A context on a new backend instance, in `group` (joined) or, when NULL, in a group of its
 * own. Params are checked. */
static sd_status_t ctx_create(const sd_ctx_params_t *params, sd_group_t *group, sd_ctx_t **out,
                              char *err, size_t err_len) {
    sd_backend_t *backend = NULL;
    sd_status_t st;
    switch (params->backend) {
    case SD_BACKEND_CPU:
        st = sd_backend_cpu_create(params, &backend, err, err_len);
        break;
    case SD_BACKEND_CUDA:
#ifdef SD_WITH_CUDA
        st = sd_backend_cuda_create(params, &backend, err, err_len);
#else
        copy_message(err, err_len, "sd_ctx_init: CUDA backend not in this build (use libsd-cuda)");
        st = SD_STATUS_UNSUPPORTED;
#endif
        break;
    default:
        snprintf(err, err_len, "sd_ctx_init: unknown backend %d", (int)params->backend);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    if (st != SD_STATUS_OK) return st;

    sd_ctx_t *ctx = calloc(1, sizeof *ctx);
    sd_group_t *g = group ? group : group_new(params);
    if (ctx == NULL || g == NULL) {
        if (g != group) free(g);
        free(ctx);
        backend->ops->destroy(backend);
        copy_message(err, err_len, "sd_ctx_init: out of host memory");
        return SD_STATUS_OUT_OF_MEMORY;
    }
    if (group) group_join(group);
    ctx->backend = backend;
    ctx->group = g;
    atomic_init(&ctx->cancelled, 0);
    sd_arena_init(&ctx->arena, backend, backend->alignment, (size_t)64 << 20);
    *out = ctx;
    return SD_STATUS_OK;
}

sd_status_t sd_ctx_init(const sd_ctx_params_t *params, sd_ctx_t **out, char *err, size_t err_len) {
    SD_TRY(check_params("sd_ctx_init", params, out, err, err_len));
    return ctx_create(params, NULL, out, err, err_len);
}

sd_status_t sd_ctx_init_shared(sd_ctx_t *share_with, const sd_ctx_params_t *params, sd_ctx_t **out,
                               char *err, size_t err_len) {
    SD_TRY(check_params("sd_ctx_init_shared", params, out, err, err_len));
    if (share_with == NULL) {
        copy_message(err, err_len, "sd_ctx_init_shared: share_with is NULL");
        return SD_STATUS_INVALID_ARGUMENT;
    }
    /* Only fields fixed at creation are read: share_with may be busy on another thread. */
    const sd_group_t *g = share_with->group;
    if (params->backend != g->backend ||
        (g->backend != SD_BACKEND_CPU && params->device != g->device)) {
        snprintf(err, err_len,
                 "sd_ctx_init_shared: backend %d device %d; the context to share with runs on "
                 "backend %d device %d",
                 (int)params->backend, (int)params->device, (int)g->backend, (int)g->device);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    return ctx_create(params, share_with->group, out, err, err_len);
}

void sd_ctx_free(sd_ctx_t *ctx) {
    if (ctx == NULL) return;
    /* Models first: their weights and this context's graphs of them live in backend memory,
     * and the last context's backend is destroyed below. */
    sd_group_t *g = ctx->group;
    bool last = group_leave(ctx);
    if (last) sd_models_free_all(ctx);
    while (ctx->tensors != NULL) sd_tensor_free(ctx, ctx->tensors);
    sd_arena_destroy(&ctx->arena);
    ctx->backend->ops->destroy(ctx->backend);
    if (last) {
        pthread_mutex_destroy(&g->lock);
        free(g);
    }
    free(ctx);
}

sd_backend_t *sd_ctx_backend_ptr(sd_ctx_t *ctx) {
    return ctx->backend;
}

void sd_ctx_add_weights_bytes(sd_ctx_t *ctx, int64_t delta) {
    /* Wraps for a negative delta: the sum stays exact. */
    atomic_fetch_add(&ctx->group->weights_bytes, (uint64_t)delta);
}

int32_t sd_ctx_backend(const sd_ctx_t *ctx) {
    return ctx ? ctx->backend->kind : -1;
}

const char *sd_ctx_backend_description(const sd_ctx_t *ctx) {
    return ctx ? ctx->backend->description : "";
}

int32_t sd_ctx_activation_dtype(const sd_ctx_t *ctx) {
    return ctx ? ctx->backend->act_dtype : -1;
}

const char *sd_ctx_last_error(const sd_ctx_t *ctx) {
    return ctx ? ctx->last_error : "";
}

void sd_ctx_cancel(sd_ctx_t *ctx) {
    if (ctx) atomic_store(&ctx->cancelled, 1);
}

void sd_ctx_clear_cancel(sd_ctx_t *ctx) {
    if (ctx) atomic_store(&ctx->cancelled, 0);
}

void sd_ctx_set_log(sd_ctx_t *ctx, sd_log_fn fn, void *user_data) {
    if (ctx == NULL) return;
    ctx->log_fn = fn;
    ctx->log_user = user_data;
    if (fn != NULL && ctx->backend->warning[0] != '\0') {
        sd_log(ctx, SD_LOG_WARN, "%s", ctx->backend->warning);
        ctx->backend->warning[0] = '\0';
    }
}

sd_status_t sd_ctx_memory_stats(sd_ctx_t *ctx, sd_memory_stats_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "memory_stats: out is NULL");
    out->tensors_bytes = ctx->tensors_bytes;
    out->weights_bytes = atomic_load(&ctx->group->weights_bytes);
    out->arena_reserved_bytes = ctx->arena.reserved;
    out->arena_peak_bytes = ctx->arena.peak;
    return SD_STATUS_OK;
}

void sd_ctx_trim(sd_ctx_t *ctx) {
    if (ctx) sd_arena_trim(&ctx->arena);
}

static void vlog(sd_ctx_t *ctx, int32_t level, const char *fmt, va_list ap) {
    if (ctx->log_fn == NULL) return;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    ctx->log_fn(level, msg, ctx->log_user);
}

void sd_log(sd_ctx_t *ctx, int32_t level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(ctx, level, fmt, ap);
    va_end(ap);
}

sd_status_t sd_fail(sd_ctx_t *ctx, sd_status_t status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
    sd_log(ctx, SD_LOG_DEBUG, "%s: %s", sd_status_string(status), ctx->last_error);
    return status;
}

sd_status_t sd_fail_device(sd_ctx_t *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
    ctx->broken = SD_STATUS_DEVICE;
    sd_log(ctx, SD_LOG_ERROR, "device error, context unusable: %s", ctx->last_error);
    return SD_STATUS_DEVICE;
}

sd_status_t sd_ctx_check(sd_ctx_t *ctx) {
    if (ctx->broken != SD_STATUS_OK) {
        /* Keep the original message; it says what broke the context. */
        return ctx->broken;
    }
    if (atomic_load_explicit(&ctx->cancelled, memory_order_relaxed)) {
        return sd_fail(ctx, SD_STATUS_CANCELLED, "cancelled");
    }
    return SD_STATUS_OK;
}

uint64_t sd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool sd_ctx_graphs_enabled(sd_ctx_t *ctx) {
    return ctx->backend->ops->graph_begin != NULL && !ctx->profiling;
}

uint64_t sd_ctx_arena_epoch(sd_ctx_t *ctx) {
    return ctx->arena.epoch;
}

void sd_ctx_set_profiling(sd_ctx_t *ctx, bool enabled) {
    if (ctx) ctx->profiling = enabled;
}

void sd_ctx_profile_reset(sd_ctx_t *ctx) {
    if (ctx) memset(ctx->profile, 0, sizeof ctx->profile);
}

uint64_t sd_profile_begin(sd_ctx_t *ctx) {
    if (!ctx->profiling) return 0;
    if (ctx->backend->ops->synchronize) ctx->backend->ops->synchronize(ctx);
    return sd_now_ns();
}

void sd_profile_end(sd_ctx_t *ctx, const char *name, double flops, uint64_t begin) {
    if (begin == 0) return;
    if (ctx->backend->ops->synchronize) ctx->backend->ops->synchronize(ctx);
    uint64_t ns = sd_now_ns() - begin;
    for (int i = 0; i < SD_PROFILE_SLOTS; i++) {
        sd_profile_slot_t *s = &ctx->profile[i];
        if (s->name == NULL) s->name = name;
        if (s->name == name || strcmp(s->name, name) == 0) {
            s->calls++;
            s->ns += ns;
            s->flops += flops;
            return;
        }
    }
}

static int by_time(const void *a, const void *b) {
    const sd_profile_slot_t *x = a, *y = b;
    return (x->ns < y->ns) - (x->ns > y->ns);
}

size_t sd_ctx_profile_report(const sd_ctx_t *ctx, char *buf, size_t len) {
    if (ctx == NULL) return 0;
    sd_profile_slot_t slots[SD_PROFILE_SLOTS];
    int n = 0;
    uint64_t total = 0;
    for (int i = 0; i < SD_PROFILE_SLOTS && ctx->profile[i].name; i++) {
        slots[n++] = ctx->profile[i];
        total += ctx->profile[i].ns;
    }
    qsort(slots, (size_t)n, sizeof *slots, by_time);
    char line[160];
    size_t used = 0;
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        int k_ = snprintf(line, sizeof line, __VA_ARGS__);                                         \
        if (buf && used < len) snprintf(buf + used, len - used, "%s", line);                       \
        used += (size_t)k_;                                                                        \
    } while (0)
    EMIT("%-24s %8s %11s %6s %9s\n", "op", "calls", "time ms", "share", "GFLOP/s");
    for (int i = 0; i < n; i++) {
        const sd_profile_slot_t *s = &slots[i];
        double ms = (double)s->ns / 1e6;
        if (s->flops > 0)
            EMIT("%-24s %8llu %11.1f %5.1f%% %9.1f\n", s->name, (unsigned long long)s->calls, ms,
                 total ? 100.0 * (double)s->ns / (double)total : 0.0,
                 s->flops / ((double)s->ns + 1));
        else
            EMIT("%-24s %8llu %11.1f %5.1f%% %9s\n", s->name, (unsigned long long)s->calls, ms,
                 total ? 100.0 * (double)s->ns / (double)total : 0.0, "-");
    }
    EMIT("%-24s %8s %11.1f\n", "total", "", (double)total / 1e6);
#undef EMIT
    return used;
}
