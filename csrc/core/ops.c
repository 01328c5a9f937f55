/* Public operations: argument validation, cancellation check, dispatch to the backend.
 * Backends receive only consistent shapes and dtypes. */
#include "sd-internal.h"

#include <math.h>

#define FLOAT_DTYPES ((1u << SD_DTYPE_F32) | (1u << SD_DTYPE_F16) | (1u << SD_DTYPE_BF16))
#define F32_ONLY     (1u << SD_DTYPE_F32)
#define I32_ONLY     (1u << SD_DTYPE_I32)
/* Activations: what the backend accepts (F32 everywhere, F16 on a GPU). */
#define ACT (ctx->backend->act_dtypes)

void sd_conv2d_params_default(sd_conv2d_params_t *p) {
    if (p) *p = (sd_conv2d_params_t){.stride_h = 1, .stride_w = 1};
}
size_t sd_sizeof_conv2d_params(void) {
    return sizeof(sd_conv2d_params_t);
}

void sd_linear_params_default(sd_linear_params_t *p) {
    if (p) *p = (sd_linear_params_t){.in_layout = SD_LAYOUT_TOKENS, .out_layout = SD_LAYOUT_TOKENS};
}
size_t sd_sizeof_linear_params(void) {
    return sizeof(sd_linear_params_t);
}

void sd_attention_params_default(sd_attention_params_t *p) {
    if (p) *p = (sd_attention_params_t){.heads = 1, .causal = 0, .scale = 0.0f};
}
size_t sd_sizeof_attention_params(void) {
    return sizeof(sd_attention_params_t);
}

void sd_timestep_embedding_params_default(sd_timestep_embedding_params_t *p) {
    if (p)
        *p = (sd_timestep_embedding_params_t){.flip_sin_to_cos = 1,
                                              .downscale_freq_shift = 1.0f,
                                              .scale = 1.0f,
                                              .max_period = 10000.0f};
}
size_t sd_sizeof_timestep_embedding_params(void) {
    return sizeof(sd_timestep_embedding_params_t);
}

/* Calls the backend, timing it when profiling is on. */
#define DISPATCH(ctx, name, flops, call)                                                           \
    do {                                                                                           \
        uint64_t t0_ = sd_profile_begin(ctx);                                                      \
        sd_status_t st_ = (call);                                                                  \
        sd_profile_end(ctx, name, t0_ ? (flops) : 0.0, t0_);                                       \
        return st_;                                                                                \
    } while (0)

/* Entry check shared by every op: a context, not cancelled, not broken. */
#define OP_ENTER(ctx)                                                                              \
    do {                                                                                           \
        if ((ctx) == NULL) return SD_STATUS_INVALID_ARGUMENT;                                      \
        SD_TRY(sd_ctx_check(ctx));                                                                 \
    } while (0)

static sd_status_t check(sd_ctx_t *ctx, const char *op, const char *name, const sd_tensor_t *t,
                         bool required, uint32_t dtypes, int32_t ndim_min, int32_t ndim_max) {
    if (t == NULL) {
        if (!required) return SD_STATUS_OK;
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: %s is NULL", op, name);
    }
    char buf[96];
    if (((1u << t->dtype) & dtypes) == 0 || t->dtype < 0 || t->dtype >= SD_DTYPE_COUNT)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: %s %s has an unsupported dtype", op,
                       name, sd_tensor_describe(t, buf, sizeof buf));
    if (t->ndim < ndim_min || t->ndim > ndim_max)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: %s %s must have %d..%d dims", op, name,
                       sd_tensor_describe(t, buf, sizeof buf), (int)ndim_min, (int)ndim_max);
    return SD_STATUS_OK;
}

/* All activation tensors of a call share one dtype. */
static sd_status_t same_act_dtype(sd_ctx_t *ctx, const char *op, const sd_tensor_t *ref,
                                  const sd_tensor_t *const *others, int n) {
    for (int i = 0; i < n; i++)
        if (others[i] != NULL && others[i]->dtype != ref->dtype)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: activations mix dtypes %s and %s",
                           op, sd_dtype_name(ref->dtype), sd_dtype_name(others[i]->dtype));
    return SD_STATUS_OK;
}

static sd_status_t shape_error(sd_ctx_t *ctx, const char *op, const char *what,
                               const sd_tensor_t *got, const char *expected) {
    char buf[96];
    return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: %s is %s, expected %s", op, what,
                   sd_tensor_describe(got, buf, sizeof buf), expected);
}

static bool is_vector_of(const sd_tensor_t *t, int64_t n) {
    return t->ndim == 1 && t->shape[0] == n;
}

static sd_status_t no_alias(sd_ctx_t *ctx, const char *op, const sd_tensor_t *out,
                            const sd_tensor_t *in, const char *name) {
    if (in != NULL && in->data == out->data)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: out must not alias %s", op, name);
    return SD_STATUS_OK;
}

sd_status_t sd_op_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                         const sd_tensor_t *w, const sd_tensor_t *bias, const sd_tensor_t *residual,
                         const sd_conv2d_params_t *p) {
    static const char op[] = "conv2d";
    OP_ENTER(ctx);
    if (p == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: params is NULL", op);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 4, 4));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 4, 4));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    SD_TRY(check(ctx, op, "w", w, true, FLOAT_DTYPES, 4, 4));
    SD_TRY(check(ctx, op, "bias", bias, false, F32_ONLY | ACT, 1, 2));
    SD_TRY(check(ctx, op, "residual", residual, false, ACT, 4, 4));
    SD_TRY(same_act_dtype(ctx, op, out, (const sd_tensor_t *[]){x, residual}, 2));
    if (p->stride_h < 1 || p->stride_w < 1 || p->pad_top < 0 || p->pad_bottom < 0 ||
        p->pad_left < 0 || p->pad_right < 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: stride (%d, %d) must be >= 1 and padding (%d, %d, %d, %d) >= 0", op,
                       (int)p->stride_h, (int)p->stride_w, (int)p->pad_top, (int)p->pad_bottom,
                       (int)p->pad_left, (int)p->pad_right);
    int64_t n = x->shape[0], cin = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t cout = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    char buf[96];
    if (w->shape[1] != cin) {
        snprintf(buf, sizeof buf, "(Cout, %lld, KH, KW) for x with %lld channels", (long long)cin,
                 (long long)cin);
        return shape_error(ctx, op, "w", w, buf);
    }
    int64_t ph = h + p->pad_top + p->pad_bottom, pw = wd + p->pad_left + p->pad_right;
    if (ph < kh || pw < kw)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: kernel %lldx%lld larger than the padded %lldx%lld input", op,
                       (long long)kh, (long long)kw, (long long)ph, (long long)pw);
    int64_t oh = (ph - kh) / p->stride_h + 1;
    int64_t ow = (pw - kw) / p->stride_w + 1;
    if (out->shape[0] != n || out->shape[1] != cout || out->shape[2] != oh || out->shape[3] != ow) {
        snprintf(buf, sizeof buf, "(%lld, %lld, %lld, %lld)", (long long)n, (long long)cout,
                 (long long)oh, (long long)ow);
        return shape_error(ctx, op, "out", out, buf);
    }
    if (bias != NULL && !is_vector_of(bias, cout) &&
        !(bias->ndim == 2 && bias->shape[0] == n && bias->shape[1] == cout)) {
        snprintf(buf, sizeof buf, "(%lld) or (%lld, %lld)", (long long)cout, (long long)n,
                 (long long)cout);
        return shape_error(ctx, op, "bias", bias, buf);
    }
    if (residual != NULL && !sd_tensor_same_shape(residual, out))
        return shape_error(ctx, op, "residual", residual, "out's shape");
    SD_TRY(no_alias(ctx, op, out, x, "x"));
    SD_TRY(no_alias(ctx, op, out, bias, "bias"));
    static const char *names[] = {"conv2d 1x1", "conv2d 3x3", "conv2d 3x3 stride 2",
                                  "conv2d other"};
    const char *name = kh == 1 && kw == 1                                           ? names[0]
                       : kh == 3 && kw == 3 && p->stride_h == 1 && p->stride_w == 1 ? names[1]
                       : kh == 3 && kw == 3 && p->stride_h == 2 && p->stride_w == 2 ? names[2]
                                                                                    : names[3];
    DISPATCH(ctx, name, 2.0 * (double)sd_tensor_numel(out) * (double)(cin * kh * kw),
             ctx->backend->ops->conv2d(ctx, out, x, w, bias, residual, p));
}

sd_status_t sd_op_conv2d_up2(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                             const sd_tensor_t *w, const sd_tensor_t *bias) {
    static const char op[] = "conv2d (upsampled input)";
    OP_ENTER(ctx);
    if (ctx->backend->ops->conv2d_up2 == NULL) return SD_STATUS_UNSUPPORTED;
    SD_TRY(check(ctx, op, "out", out, true, ACT, 4, 4));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 4, 4));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    SD_TRY(check(ctx, op, "w", w, true, FLOAT_DTYPES, 4, 4));
    SD_TRY(check(ctx, op, "bias", bias, false, F32_ONLY | ACT, 1, 1));
    const int64_t cout = w->shape[0], cin = x->shape[1];
    if (w->shape[1] != cin || w->shape[2] != 3 || w->shape[3] != 3)
        return shape_error(ctx, op, "w", w, "(Cout, x's channels, 3, 3)");
    if (out->shape[0] != x->shape[0] || out->shape[1] != cout || out->shape[2] != 2 * x->shape[2] ||
        out->shape[3] != 2 * x->shape[3])
        return shape_error(ctx, op, "out", out, "(N, Cout, 2H, 2W) of x (N, Cin, H, W)");
    if (bias != NULL && !is_vector_of(bias, cout))
        return shape_error(ctx, op, "bias", bias, "(Cout)");
    SD_TRY(no_alias(ctx, op, out, x, "x"));
    const uint64_t t0 = sd_profile_begin(ctx);
    const sd_status_t st = ctx->backend->ops->conv2d_up2(ctx, out, x, w, bias);
    if (st != SD_STATUS_UNSUPPORTED)
        sd_profile_end(ctx, "conv2d 3x3",
                       t0 ? 2.0 * (double)sd_tensor_numel(out) * (double)(cin * 9) : 0.0, t0);
    return st;
}

bool sd_ctx_copies_rows(sd_ctx_t *ctx) {
    return ctx->backend->ops->copy_rows != NULL;
}

sd_status_t sd_op_copy_rows(sd_ctx_t *ctx, sd_tensor_t *dst, int64_t dst_row,
                            const sd_tensor_t *src, int64_t src_row, int64_t rows) {
    static const char op[] = "copy_rows";
    OP_ENTER(ctx);
    if (ctx->backend->ops->copy_rows == NULL) return SD_STATUS_UNSUPPORTED;
    SD_TRY(check(ctx, op, "dst", dst, true, ACT, 4, 4));
    SD_TRY(check(ctx, op, "src", src, true, ACT, 4, 4));
    SD_TRY(same_act_dtype(ctx, op, dst, &src, 1));
    if (src->shape[0] != dst->shape[0] || src->shape[1] != dst->shape[1] ||
        src->shape[3] != dst->shape[3])
        return shape_error(ctx, op, "src", src, "dst's (N, C, ., W)");
    if (rows < 0 || dst_row < 0 || src_row < 0 || dst_row + rows > dst->shape[2] ||
        src_row + rows > src->shape[2])
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: rows [%lld, +%lld) of src (%lld) to [%lld, ...) of dst (%lld)", op,
                       (long long)src_row, (long long)rows, (long long)src->shape[2],
                       (long long)dst_row, (long long)dst->shape[2]);
    SD_TRY(no_alias(ctx, op, dst, src, "src"));
    DISPATCH(ctx, "copy_rows", 0,
             ctx->backend->ops->copy_rows(ctx, dst, dst_row, src, src_row, rows));
}

sd_status_t sd_op_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                         const sd_tensor_t *w, const sd_tensor_t *bias, const sd_tensor_t *residual,
                         const sd_linear_params_t *p) {
    static const char op[] = "linear";
    OP_ENTER(ctx);
    if (p == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: params is NULL", op);
    if (p->in_layout < 0 || p->in_layout >= SD_LAYOUT_COUNT || p->out_layout < 0 ||
        p->out_layout >= SD_LAYOUT_COUNT)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: invalid layout (%d, %d)", op,
                       (int)p->in_layout, (int)p->out_layout);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    SD_TRY(check(ctx, op, "w", w, true, FLOAT_DTYPES, 2, 2));
    SD_TRY(check(ctx, op, "bias", bias, false, F32_ONLY, 1, 1));
    SD_TRY(check(ctx, op, "residual", residual, false, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, (const sd_tensor_t *[]){x, residual}, 2));
    int64_t nout = w->shape[0], k = w->shape[1];
    char buf[128];
    /* Channel axis: last for TOKENS, 1 for CHANNELS_FIRST (which needs a batch axis). */
    if (p->in_layout == SD_LAYOUT_CHANNELS_FIRST && x->ndim < 2)
        return shape_error(ctx, op, "x", x, "(B, K, T...) for the channels-first layout");
    if (p->out_layout == SD_LAYOUT_CHANNELS_FIRST && out->ndim < 2)
        return shape_error(ctx, op, "out", out, "(B, N, T...) for the channels-first layout");
    int xc = p->in_layout == SD_LAYOUT_TOKENS ? x->ndim - 1 : 1;
    if (x->shape[xc] != k) {
        snprintf(buf, sizeof buf, "%lld channels on axis %d (w is (%lld, %lld))", (long long)k, xc,
                 (long long)nout, (long long)k);
        return shape_error(ctx, op, "x", x, buf);
    }
    /* Rows: the batch axis (channels-first) times the token axes. */
    int64_t x_rows = sd_tensor_numel(x) / k;
    int oc = p->out_layout == SD_LAYOUT_TOKENS ? out->ndim - 1 : 1;
    if (out->shape[oc] != nout || sd_tensor_numel(out) / nout != x_rows) {
        snprintf(buf, sizeof buf, "%lld rows of %lld channels on axis %d", (long long)x_rows,
                 (long long)nout, oc);
        return shape_error(ctx, op, "out", out, buf);
    }
    if (p->in_layout == SD_LAYOUT_CHANNELS_FIRST || p->out_layout == SD_LAYOUT_CHANNELS_FIRST) {
        /* Both sides must agree on the batch size so rows map one to one. */
        int64_t xb = x->shape[0], ob = out->shape[0];
        if (p->in_layout == SD_LAYOUT_TOKENS && x->ndim < 2)
            return shape_error(ctx, op, "x", x, "a batch axis when out is channels-first");
        if (p->out_layout == SD_LAYOUT_TOKENS && out->ndim < 2)
            return shape_error(ctx, op, "out", out, "a batch axis when x is channels-first");
        if (xb != ob) {
            snprintf(buf, sizeof buf, "batch %lld like x", (long long)xb);
            return shape_error(ctx, op, "out", out, buf);
        }
    }
    if (bias != NULL && !is_vector_of(bias, nout)) {
        snprintf(buf, sizeof buf, "(%lld)", (long long)nout);
        return shape_error(ctx, op, "bias", bias, buf);
    }
    if (residual != NULL && !sd_tensor_same_shape(residual, out))
        return shape_error(ctx, op, "residual", residual, "out's shape");
    SD_TRY(no_alias(ctx, op, out, x, "x"));
    DISPATCH(ctx, "linear", 2.0 * (double)x_rows * (double)k * (double)nout,
             ctx->backend->ops->linear(ctx, out, x, w, bias, residual, p));
}

static sd_status_t check_affine(sd_ctx_t *ctx, const char *op, const sd_tensor_t *gamma,
                                const sd_tensor_t *beta, int64_t c) {
    SD_TRY(check(ctx, op, "gamma", gamma, false, F32_ONLY, 1, 1));
    SD_TRY(check(ctx, op, "beta", beta, false, F32_ONLY, 1, 1));
    char buf[32];
    snprintf(buf, sizeof buf, "(%lld)", (long long)c);
    if (gamma != NULL && !is_vector_of(gamma, c)) return shape_error(ctx, op, "gamma", gamma, buf);
    if (beta != NULL && !is_vector_of(beta, c)) return shape_error(ctx, op, "beta", beta, buf);
    return SD_STATUS_OK;
}

static sd_status_t check_eps(sd_ctx_t *ctx, const char *op, float eps) {
    if (!(eps > 0.0f) || !isfinite(eps))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: eps %g must be positive", op,
                       (double)eps);
    return SD_STATUS_OK;
}

sd_status_t sd_op_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                             const sd_tensor_t *gamma, const sd_tensor_t *beta, int32_t groups,
                             float eps, bool silu) {
    static const char op[] = "group_norm";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 2, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 2, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    if (!sd_tensor_same_shape(out, x)) return shape_error(ctx, op, "out", out, "x's shape");
    int64_t c = x->shape[1];
    if (groups < 1 || c % groups != 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: %lld channels not divisible into %d groups", op, (long long)c,
                       (int)groups);
    SD_TRY(check_eps(ctx, op, eps));
    SD_TRY(check_affine(ctx, op, gamma, beta, c));
    DISPATCH(ctx, silu ? "group_norm+silu" : "group_norm", 0,
             ctx->backend->ops->group_norm(ctx, out, x, gamma, beta, groups, eps, silu));
}

sd_status_t sd_op_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                             const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps) {
    static const char op[] = "layer_norm";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    if (!sd_tensor_same_shape(out, x)) return shape_error(ctx, op, "out", out, "x's shape");
    SD_TRY(check_eps(ctx, op, eps));
    SD_TRY(check_affine(ctx, op, gamma, beta, x->shape[x->ndim - 1]));
    DISPATCH(ctx, "layer_norm", 0, ctx->backend->ops->layer_norm(ctx, out, x, gamma, beta, eps));
}

sd_status_t sd_op_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                            const sd_tensor_t *k, const sd_tensor_t *v,
                            const sd_attention_params_t *p) {
    static const char op[] = "attention";
    OP_ENTER(ctx);
    if (p == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: params is NULL", op);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 3, 3));
    SD_TRY(check(ctx, op, "q", q, true, ACT, 3, 3));
    SD_TRY(check(ctx, op, "k", k, true, ACT, 3, 3));
    SD_TRY(check(ctx, op, "v", v, true, ACT, 3, 3));
    SD_TRY(same_act_dtype(ctx, op, out, (const sd_tensor_t *[]){q, k, v}, 3));
    int64_t b = q->shape[0], tq = q->shape[1], c = q->shape[2], tk = k->shape[1];
    char buf[96];
    snprintf(buf, sizeof buf, "(%lld, Tk, %lld) like q's batch and channels", (long long)b,
             (long long)c);
    if (k->shape[0] != b || k->shape[2] != c) return shape_error(ctx, op, "k", k, buf);
    if (!sd_tensor_same_shape(v, k)) return shape_error(ctx, op, "v", v, "k's shape");
    if (!sd_tensor_same_shape(out, q)) return shape_error(ctx, op, "out", out, "q's shape");
    if (p->heads < 1 || c % p->heads != 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: %lld channels not divisible into %d heads", op, (long long)c,
                       (int)p->heads);
    if (p->causal != 0 && p->causal != 1)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: causal must be 0 or 1", op);
    if (p->causal && tq != tk)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: causal attention needs as many keys as queries (%lld vs %lld)", op,
                       (long long)tk, (long long)tq);
    if (!isfinite(p->scale) || p->scale < 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: scale %g must be >= 0 and finite", op,
                       (double)p->scale);
    SD_TRY(no_alias(ctx, op, out, q, "q"));
    SD_TRY(no_alias(ctx, op, out, k, "k"));
    SD_TRY(no_alias(ctx, op, out, v, "v"));
    float scale = p->scale != 0 ? p->scale : 1.0f / sqrtf((float)(c / p->heads));
    DISPATCH(ctx, tq == tk ? "attention self" : "attention cross",
             4.0 * (double)b * (double)tq * (double)tk * (double)c,
             ctx->backend->ops->attention(ctx, out, q, k, v, p->heads, p->causal != 0, scale));
}

sd_status_t sd_op_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                             int32_t activation) {
    static const char op[] = "activation";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    if (!sd_tensor_same_shape(out, x)) return shape_error(ctx, op, "out", out, "x's shape");
    if (activation < 0 || activation >= SD_ACT_COUNT)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: unknown activation %d", op,
                       (int)activation);
    DISPATCH(ctx, "activation", 0, ctx->backend->ops->activation(ctx, out, x, activation));
}

sd_status_t sd_op_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    static const char op[] = "geglu";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    int64_t c2 = x->shape[x->ndim - 1];
    bool ok = c2 % 2 == 0 && out->ndim == x->ndim && out->shape[out->ndim - 1] * 2 == c2;
    for (int i = 0; ok && i < x->ndim - 1; i++) ok = out->shape[i] == x->shape[i];
    if (!ok)
        return shape_error(ctx, op, "out", out, "x's shape with the last dim halved (x's even)");
    SD_TRY(no_alias(ctx, op, out, x, "x"));
    DISPATCH(ctx, "geglu", 0, ctx->backend->ops->geglu(ctx, out, x));
}

sd_status_t sd_op_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    static const char op[] = "upsample_nearest";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 4, 4));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 4, 4));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    if (out->shape[0] != x->shape[0] || out->shape[1] != x->shape[1])
        return shape_error(ctx, op, "out", out, "x's (N, C, ...)");
    SD_TRY(no_alias(ctx, op, out, x, "x"));
    DISPATCH(ctx, "upsample_nearest", 0, ctx->backend->ops->upsample_nearest(ctx, out, x));
}

static sd_status_t binary(sd_ctx_t *ctx, const char *op, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b, int32_t kind) {
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "a", a, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "b", b, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, (const sd_tensor_t *[]){a, b}, 2));
    if (!sd_tensor_same_shape(out, a)) return shape_error(ctx, op, "out", out, "a's shape");
    bool suffix = b->ndim <= a->ndim;
    for (int i = 0; suffix && i < b->ndim; i++)
        suffix = b->shape[b->ndim - 1 - i] == a->shape[a->ndim - 1 - i];
    if (!suffix) return shape_error(ctx, op, "b", b, "a's shape or a suffix of it");
    if (b->data == out->data && !sd_tensor_same_shape(a, b))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: out must not alias a broadcast b", op);
    DISPATCH(ctx, kind == SD_BINARY_ADD ? "add" : "mul", 0,
             ctx->backend->ops->binary(ctx, out, a, b, kind));
}

sd_status_t sd_op_add(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a, const sd_tensor_t *b) {
    return binary(ctx, "add", out, a, b, SD_BINARY_ADD);
}

sd_status_t sd_op_mul(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a, const sd_tensor_t *b) {
    return binary(ctx, "mul", out, a, b, SD_BINARY_MUL);
}

sd_status_t sd_op_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                         const sd_tensor_t *b) {
    static const char op[] = "concat";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 2, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "a", a, true, ACT, 2, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "b", b, true, ACT, 2, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, (const sd_tensor_t *[]){a, b}, 2));
    bool ok = a->ndim == b->ndim && out->ndim == a->ndim && a->shape[0] == b->shape[0] &&
              out->shape[0] == a->shape[0] && out->shape[1] == a->shape[1] + b->shape[1];
    for (int i = 2; ok && i < a->ndim; i++)
        ok = a->shape[i] == b->shape[i] && out->shape[i] == a->shape[i];
    if (!ok)
        return shape_error(ctx, op, "out", out,
                           "(N, Ca + Cb, ...) with a and b agreeing on the other dims");
    SD_TRY(no_alias(ctx, op, out, a, "a"));
    SD_TRY(no_alias(ctx, op, out, b, "b"));
    DISPATCH(ctx, "concat", 0, ctx->backend->ops->concat(ctx, out, a, b));
}

sd_status_t sd_op_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo, float hi) {
    static const char op[] = "clamp";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    if (!sd_tensor_same_shape(out, x)) return shape_error(ctx, op, "out", out, "x's shape");
    if (!(lo <= hi))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: bounds [%g, %g] are not ordered", op,
                       (double)lo, (double)hi);
    DISPATCH(ctx, "clamp", 0, ctx->backend->ops->clamp(ctx, out, x, lo, hi));
}

sd_status_t sd_op_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit) {
    static const char op[] = "tanh_clamp";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, ACT, 1, SD_MAX_DIMS));
    SD_TRY(same_act_dtype(ctx, op, out, &x, 1));
    if (!sd_tensor_same_shape(out, x)) return shape_error(ctx, op, "out", out, "x's shape");
    if (!(limit > 0) || !isfinite(limit))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: limit %g must be > 0 and finite", op,
                       (double)limit);
    DISPATCH(ctx, "tanh_clamp", 0, ctx->backend->ops->tanh_clamp(ctx, out, x, limit));
}

sd_status_t sd_op_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    static const char op[] = "convert";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, FLOAT_DTYPES, 1, SD_MAX_DIMS));
    SD_TRY(check(ctx, op, "x", x, true, FLOAT_DTYPES, 1, SD_MAX_DIMS));
    if (!sd_tensor_same_shape(out, x)) return shape_error(ctx, op, "out", out, "x's shape");
    if (out->data == x->data && out->dtype != x->dtype)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: out must not alias x", op);
    DISPATCH(ctx, "convert", 0, ctx->backend->ops->convert(ctx, out, x));
}

sd_status_t sd_op_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                     const sd_timestep_embedding_params_t *p) {
    static const char op[] = "timestep_embedding";
    OP_ENTER(ctx);
    if (p == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: params is NULL", op);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 2, 2));
    SD_TRY(check(ctx, op, "t", t, true, F32_ONLY, 1, 1));
    if (out->shape[0] != t->shape[0])
        return shape_error(ctx, op, "out", out, "(N, D) with N = len(t)");
    if (out->shape[1] < 2)
        return shape_error(ctx, op, "out", out, "an embedding dim of at least 2");
    int64_t half = out->shape[1] / 2;
    if (!isfinite(p->downscale_freq_shift) || (float)half - p->downscale_freq_shift == 0.0f ||
        !isfinite(p->scale) || !(p->max_period > 0) || !isfinite(p->max_period))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: invalid params (freq shift %g, scale %g, max period %g)", op,
                       (double)p->downscale_freq_shift, (double)p->scale, (double)p->max_period);
    DISPATCH(ctx, "timestep_embedding", 0, ctx->backend->ops->timestep_embedding(ctx, out, t, p));
}

sd_status_t sd_op_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                            const sd_tensor_t *table) {
    static const char op[] = "embedding";
    OP_ENTER(ctx);
    SD_TRY(check(ctx, op, "out", out, true, ACT, 3, 3));
    SD_TRY(check(ctx, op, "ids", ids, true, I32_ONLY, 2, 2));
    SD_TRY(check(ctx, op, "table", table, true, FLOAT_DTYPES, 2, 2));
    if (out->shape[0] != ids->shape[0] || out->shape[1] != ids->shape[1] ||
        out->shape[2] != table->shape[1])
        return shape_error(ctx, op, "out", out, "(B, T, C) for ids (B, T) and table (V, C)");
    DISPATCH(ctx, "embedding", 0, ctx->backend->ops->embedding(ctx, out, ids, table));
}
