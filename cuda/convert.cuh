/*
 * convert.cuh - element type conversion and clamping on the GPU.
 */
#ifndef SD_CUDA_CONVERT_CUH
#define SD_CUDA_CONVERT_CUH

#include "backend.cuh"

sd_status_t sd_cuda_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
sd_status_t sd_cuda_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit);
sd_status_t sd_cuda_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo,
                          float hi);

#endif
