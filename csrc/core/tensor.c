/* Tensors: headers, public allocation and transfer, scratch tensors, dtype conversion. */
#include "sd-internal.h"

#include <math.h>
#include <string.h>

size_t sd_dtype_size(int32_t dtype) {
    switch (dtype) {
    case SD_DTYPE_F32:
        return 4;
    case SD_DTYPE_F16:
        return 2;
    case SD_DTYPE_BF16:
        return 2;
    case SD_DTYPE_I32:
        return 4;
    default:
        return 0;
    }
}

const char *sd_dtype_name(int32_t dtype) {
    switch (dtype) {
    case SD_DTYPE_F32:
        return "f32";
    case SD_DTYPE_F16:
        return "f16";
    case SD_DTYPE_BF16:
        return "bf16";
    case SD_DTYPE_I32:
        return "i32";
    default:
        return "invalid-dtype";
    }
}

int64_t sd_tensor_numel(const sd_tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

bool sd_tensor_same_shape(const sd_tensor_t *a, const sd_tensor_t *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *sd_tensor_describe(const sd_tensor_t *t, char *buf, size_t len) {
    if (t == NULL) {
        snprintf(buf, len, "NULL");
        return buf;
    }
    size_t n = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < t->ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (n < len) snprintf(buf + n, len - n, ") %s", sd_dtype_name(t->dtype));
    return buf;
}

/* Largest tensor accepted: 2^40 bytes keeps every size computation far from overflow. */
#define SD_MAX_TENSOR_BYTES ((int64_t)1 << 40)

bool sd_tensor_init_header(sd_tensor_t *t, int32_t dtype, int32_t ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    size_t es = sd_dtype_size(dtype);
    if (es == 0 || ndim < 1 || ndim > SD_MAX_DIMS || shape == NULL) return false;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1 || shape[i] > SD_MAX_TENSOR_BYTES) return false;
        n *= shape[i];
        if (n > SD_MAX_TENSOR_BYTES / (int64_t)es) return false;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = (size_t)n * es;
    return true;
}

static sd_status_t bad_shape(sd_ctx_t *ctx, const char *op, int32_t dtype, int32_t ndim,
                             const int64_t *shape) {
    if (sd_dtype_size(dtype) == 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: invalid dtype %d", op, (int)dtype);
    if (ndim < 1 || ndim > SD_MAX_DIMS)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: ndim %d not in [1, %d]", op, (int)ndim,
                       SD_MAX_DIMS);
    if (shape == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: shape is NULL", op);
    return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                   "%s: invalid shape (every dim must be >= 1 and the size below 2^40 bytes)", op);
}

sd_status_t sd_tensor_new(sd_ctx_t *ctx, int32_t dtype, int32_t ndim, const int64_t *shape,
                          sd_tensor_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "tensor_new: out is NULL");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    sd_tensor_t hdr;
    if (!sd_tensor_init_header(&hdr, dtype, ndim, shape))
        return bad_shape(ctx, "tensor_new", dtype, ndim, shape);
    sd_tensor_t *t = malloc(sizeof *t);
    if (t == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "tensor_new: out of host memory");
    *t = hdr;
    t->data = ctx->backend->ops->alloc(ctx->backend, t->nbytes);
    if (t->data == NULL) {
        free(t);
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "tensor_new: cannot allocate %zu bytes",
                       hdr.nbytes);
    }
    t->kind = SD_TENSOR_OWNED;
    t->prev = NULL;
    t->next = ctx->tensors;
    if (ctx->tensors) ctx->tensors->prev = t;
    ctx->tensors = t;
    ctx->tensors_bytes += t->nbytes;
    *out = t;
    return SD_STATUS_OK;
}

void sd_tensor_free(sd_ctx_t *ctx, sd_tensor_t *t) {
    if (ctx == NULL || t == NULL) return;
    if (t->prev)
        t->prev->next = t->next;
    else
        ctx->tensors = t->next;
    if (t->next) t->next->prev = t->prev;
    ctx->tensors_bytes -= t->nbytes;
    ctx->backend->ops->free(ctx->backend, t->data);
    free(t);
}

sd_status_t sd_tensor_upload(sd_ctx_t *ctx, sd_tensor_t *t, const void *src, size_t nbytes) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    if (t == NULL || src == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "tensor_upload: NULL tensor or source");
    if (nbytes != t->nbytes)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "tensor_upload: %zu bytes given, tensor holds %zu", nbytes, t->nbytes);
    return ctx->backend->ops->upload(ctx, t->data, src, nbytes);
}

sd_status_t sd_tensor_download(sd_ctx_t *ctx, const sd_tensor_t *t, void *dst, size_t nbytes) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    if (t == NULL || dst == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "tensor_download: NULL tensor or destination");
    if (nbytes != t->nbytes)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "tensor_download: %zu bytes asked, tensor holds %zu", nbytes, t->nbytes);
    return ctx->backend->ops->download(ctx, dst, t->data, nbytes);
}

int32_t sd_tensor_dtype(const sd_tensor_t *t) {
    return t ? t->dtype : -1;
}
int32_t sd_tensor_ndim(const sd_tensor_t *t) {
    return t ? t->ndim : 0;
}
int64_t sd_tensor_dim(const sd_tensor_t *t, int32_t axis) {
    if (t == NULL || axis < 0 || axis >= t->ndim) return 0;
    return t->shape[axis];
}
size_t sd_tensor_nbytes(const sd_tensor_t *t) {
    return t ? t->nbytes : 0;
}

sd_status_t sd_scratch_new(sd_ctx_t *ctx, int32_t dtype, int32_t ndim, const int64_t *shape,
                           sd_tensor_t **out) {
    *out = NULL;
    sd_tensor_t hdr;
    if (!sd_tensor_init_header(&hdr, dtype, ndim, shape))
        return bad_shape(ctx, "scratch", dtype, ndim, shape);
    sd_tensor_t *t = malloc(sizeof *t);
    if (t == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    *t = hdr;
    t->data = sd_arena_alloc(&ctx->arena, t->nbytes);
    if (t->data == NULL) {
        free(t);
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY,
                       "cannot allocate %zu bytes of activation memory", hdr.nbytes);
    }
    t->kind = SD_TENSOR_ARENA;
    *out = t;
    return SD_STATUS_OK;
}

void sd_scratch_free(sd_ctx_t *ctx, sd_tensor_t *t) {
    if (t == NULL) return;
    SD_ASSERT(t->kind == SD_TENSOR_ARENA);
    sd_arena_free(&ctx->arena, t->data);
    free(t);
}

sd_tensor_t sd_tensor_view(void *data, int32_t dtype, int32_t ndim, const int64_t *shape) {
    sd_tensor_t t;
    bool ok = sd_tensor_init_header(&t, dtype, ndim, shape);
    SD_ASSERT(ok);
    t.data = data;
    t.kind = SD_TENSOR_VIEW;
    return t;
}

/* IEEE half <-> single, round to nearest even, with subnormals, infinities and NaN. */
float sd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while ((mant & 0x400) == 0);
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | mant << 13;
    } else {
        bits = sign | (exp + 112) << 23 | mant << 13;
    }
    union {
        uint32_t u;
        float f;
    } v = {bits};
    return v.f;
}

uint16_t sd_f32_to_f16(float f) {
    union {
        float f;
        uint32_t u;
    } v = {f};
    uint32_t x = v.u;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0);
    if (absx >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: overflow */
    if (absx < 0x38800000u) {                      /* below the smallest normal half */
        if (absx < 0x33000000u) return sign;       /* rounds to zero */
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t half = r >> 13;
    uint32_t rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return sign | (uint16_t)half;
}

uint16_t sd_f32_to_bf16(float f) {
    union {
        float f;
        uint32_t u;
    } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet nan */
    uint32_t rounding = 0x7fff + ((v.u >> 16) & 1);
    return (uint16_t)((v.u + rounding) >> 16);
}

void sd_convert_to_f32(float *dst, const void *src, int32_t src_dtype, int64_t n) {
    switch (src_dtype) {
    case SD_DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case SD_DTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = sd_f16_to_f32(s[i]);
        break;
    }
    case SD_DTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = sd_bf16_to_f32(s[i]);
        break;
    }
    default:
        SD_ASSERT(!"sd_convert_to_f32: unsupported dtype");
    }
}
