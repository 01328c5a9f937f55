/*
 * activation.cuh - elementwise activations and GEGLU on the GPU.
 */
#ifndef SD_CUDA_ACTIVATION_CUH
#define SD_CUDA_ACTIVATION_CUH

#include "backend.cuh"

sd_status_t sd_cuda_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                               int32_t activation);
sd_status_t sd_cuda_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);

#endif
