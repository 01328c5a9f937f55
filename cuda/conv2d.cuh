/*
 * conv2d.cuh - convolution as an implicit GEMM on the GPU, also serving linear layers that
 * cuBLASLt does not take (mixed activation / weight dtypes).
 */
#ifndef SD_CUDA_CONV2D_CUH
#define SD_CUDA_CONV2D_CUH

#include "backend.cuh"

/* out[n, co, p] = sum_k w[co, k] * B[k, (n, p)] + bias[n*bias_n_stride + co] + residual[same]
 * where k = (ci, ky, kx) runs over Cin*KH*KW, p = oy*OW + ox over the output pixels, and
 * B[k, (n, oy, ox)] = x[n, ci, oy*stride_h - pad_top + ky, ox*stride_w - pad_left + kx]
 * (zero outside the image). Tensors are addressed through element strides, so the same
 * kernels read NCHW images and (B, T, K) token rows (a 1x1 "convolution" over a 1 x T image).
 * w is (Cout, K) row-major, contiguous. */
typedef struct sd_cuda_igemm {
    const void *x;
    const void *w;
    int32_t w_dtype;
    const void *bias; /* NULL or F32 or act_dtype */
    int32_t bias_dtype;
    int64_t bias_n_stride; /* 0: one bias per channel; Cout: per sample and channel */
    const void *residual;  /* NULL or addressed like out (may be out) */
    void *out;
    int32_t act_dtype; /* of x, residual and out: F32 or F16 */
    int32_t batch, cin, h, w_, kh, kw, oh, ow;
    int32_t cout;
    int32_t stride_h, stride_w, pad_top, pad_left;
    int64_t x_sn, x_sc, x_sh, x_sw; /* element strides of x */
    int64_t o_sn, o_sc, o_sp;       /* of out: sample, channel, output pixel */
} sd_cuda_igemm_t;

sd_status_t sd_cuda_igemm_run(sd_ctx_t *ctx, const sd_cuda_igemm_t *g);

sd_status_t sd_cuda_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                           const sd_tensor_t *w, const sd_tensor_t *bias,
                           const sd_tensor_t *residual, const sd_conv2d_params_t *p);

#endif
