/*
 * conv2d.c - 2-D convolution on the CPU as one implicit GEMM over the whole batch.
 *
 * x: (N, Cin, H, W) f32; w: (Cout, Cin, KH, KW) f32/f16/bf16; out: (N, Cout, OH, OW) f32.
 * ref: torch.nn.functional.conv2d (groups=1, dilation=1) after F.pad with zeros (padding
 * may differ per side: diffusers' VAE downsampler pads (0, 1, 0, 1)).
 *
 * out[n] = W (Cout x Cin*KH*KW) x im2col(x[n]): the weights are the packed A operand
 * (converted to f32 while packing), the im2col matrix is packed straight from the image,
 * and the batch is folded into the GEMM's columns (one column group per image). Bias,
 * per-sample bias (time embedding) and the residual are added in the GEMM epilogue.
 * 3x3 stride-1 convolutions with enough channels and tiles go to winograd.c instead.
 */
#include "../cpu.h"

sd_status_t sd_cpu_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                          const sd_tensor_t *w, const sd_tensor_t *bias,
                          const sd_tensor_t *residual, const sd_conv2d_params_t *p) {
    const int64_t n = x->shape[0], cin = x->shape[1], h = x->shape[2], wd = x->shape[3];
    const int64_t cout = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    const int64_t oh = out->shape[2], ow = out->shape[3], ohw = oh * ow;
    const int64_t k = cin * kh * kw;
    if (sd_cpu_winograd_applies(x, w, p, oh, ow))
        return sd_cpu_conv2d_winograd(ctx, out, x, w, bias, residual, p, false);

    const sd_packed_weight_t *pw = w->packed;
    sd_gemm_a_t a = {
        .data = w->data, .dtype = w->dtype, .ld = k, .packed = pw != NULL && !pw->as_b ? pw : NULL};
    sd_gemm_b_t b = {
        .data = x->data,
        .dtype = SD_DTYPE_F32,
        .kind = SD_GEMM_B_IM2COL,
        .conv = {.cin = cin,
                 .h = h,
                 .w = wd,
                 .kh = kh,
                 .kw = kw,
                 .oh = oh,
                 .ow = ow,
                 .stride_h = p->stride_h,
                 .stride_w = p->stride_w,
                 .pad_top = p->pad_top,
                 .pad_left = p->pad_left,
                 .image_stride = cin * h * wd},
    };
    sd_gemm_c_t c = {
        .data = out->data,
        .ldc = ohw,
        .group_cols = ohw,
        .group_stride = cout * ohw,
        .alpha = 1.0f,
        .bias_row = bias ? bias->data : NULL,
        .bias_row_group_stride = bias && bias->ndim == 2 ? cout : 0,
        .residual = residual ? residual->data : NULL,
    };
    return sd_gemm(ctx, cout, n * ohw, k, &a, &b, &c);
}

sd_status_t sd_cpu_conv2d_up2(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *w, const sd_tensor_t *bias) {
    sd_conv2d_params_t p;
    sd_conv2d_params_default(&p);
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    if (!sd_cpu_winograd_applies(x, w, &p, out->shape[2], out->shape[3]))
        return SD_STATUS_UNSUPPORTED;
    return sd_cpu_conv2d_winograd(ctx, out, x, w, bias, NULL, &p, true);
}
