/*
 * linear.c - y = x W^T + b on the CPU, with optional channels-first input or output.
 *
 * w: (N, K) f32/f16/bf16, used in place (converted while packing).
 * TOKENS x (..., T, K) -> out (..., T, N); CHANNELS_FIRST x (B, K, T...) -> out (B, N, T...).
 * ref: torch.nn.functional.linear; a channels-first side equals a 1x1 conv2d.
 *
 * Token output: C = X (rows x K) W^T, bias per column. Channels-first output computes the
 * transpose, C = W X^T (N x T per batch), so rows of C are output channels and the bias is
 * per row. Either way no permuted copy of x or out is made. A weight packed at load for
 * the side it is used on is read in that form.
 */
#include "../cpu.h"

/* W^T as the GEMM's B operand. */
static sd_gemm_b_t weight_as_b(const sd_tensor_t *w) {
    const sd_packed_weight_t *pw = w->packed;
    if (pw != NULL && pw->as_b)
        return (sd_gemm_b_t){.data = pw->data,
                             .dtype = pw->dtype,
                             .kind = SD_GEMM_B_PACKED,
                             .ld = pw->rows,
                             .packed_k = pw->k};
    return (sd_gemm_b_t){
        .data = w->data, .dtype = w->dtype, .kind = SD_GEMM_B_NK, .ld = w->shape[1]};
}

/* W as the GEMM's A operand. */
static sd_gemm_a_t weight_as_a(const sd_tensor_t *w) {
    const sd_packed_weight_t *pw = w->packed;
    return (sd_gemm_a_t){.data = w->data,
                         .dtype = w->dtype,
                         .ld = w->shape[1],
                         .packed = pw != NULL && !pw->as_b ? pw : NULL};
}

sd_status_t sd_cpu_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                          const sd_tensor_t *w, const sd_tensor_t *bias,
                          const sd_tensor_t *residual, const sd_linear_params_t *p) {
    const int64_t nout = w->shape[0], k = w->shape[1];
    const int64_t rows = sd_tensor_numel(x) / k;
    const bool x_cf = p->in_layout == SD_LAYOUT_CHANNELS_FIRST;
    const bool out_cf = p->out_layout == SD_LAYOUT_CHANNELS_FIRST;
    const float *xd = x->data;
    float *od = out->data;
    const float *rd = residual ? residual->data : NULL;
    const float *bd = bias ? bias->data : NULL;

    if (!x_cf && !out_cf) {
        sd_gemm_a_t a = {.data = xd, .dtype = SD_DTYPE_F32, .ld = k};
        sd_gemm_b_t b = weight_as_b(w);
        sd_gemm_c_t c = {.data = od,
                         .ldc = nout,
                         .group_cols = nout,
                         .alpha = 1.0f,
                         .bias_col = bd,
                         .residual = rd};
        return sd_gemm(ctx, rows, nout, k, &a, &b, &c);
    }
    /* A channels-first side has a batch axis; rows split evenly over it. */
    const int64_t batch = x->shape[0], t = rows / batch;
    for (int64_t i = 0; i < batch; i++) {
        const float *xb = xd + i * t * k;
        int64_t ob = i * t * nout;
        if (!out_cf) { /* x (K, T) channels-first -> out (T, N) */
            sd_gemm_a_t a = {.data = xb, .dtype = SD_DTYPE_F32, .col_major = true, .ld = t};
            sd_gemm_b_t b = weight_as_b(w);
            sd_gemm_c_t c = {.data = od + ob,
                             .ldc = nout,
                             .group_cols = nout,
                             .alpha = 1.0f,
                             .bias_col = bd,
                             .residual = rd ? rd + ob : NULL};
            SD_TRY(sd_gemm(ctx, t, nout, k, &a, &b, &c));
        } else { /* out (N, T) = W x_b^T */
            sd_gemm_a_t a = weight_as_a(w);
            sd_gemm_b_t b = {.data = xb,
                             .dtype = SD_DTYPE_F32,
                             .kind = x_cf ? SD_GEMM_B_KN : SD_GEMM_B_NK,
                             .ld = x_cf ? t : k};
            sd_gemm_c_t c = {.data = od + ob,
                             .ldc = t,
                             .group_cols = t,
                             .alpha = 1.0f,
                             .bias_row = bd,
                             .residual = rd ? rd + ob : NULL};
            SD_TRY(sd_gemm(ctx, nout, t, k, &a, &b, &c));
        }
    }
    return SD_STATUS_OK;
}
