/*
 * elementwise.cuh - add / multiply with suffix broadcasting and channel concatenation on
 * the GPU.
 */
#ifndef SD_CUDA_ELEMENTWISE_CUH
#define SD_CUDA_ELEMENTWISE_CUH

#include "backend.cuh"

sd_status_t sd_cuda_binary(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                           const sd_tensor_t *b, int32_t op);
sd_status_t sd_cuda_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                           const sd_tensor_t *b);

#endif
