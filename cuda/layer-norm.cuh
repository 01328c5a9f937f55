/*
 * layer-norm.cuh - layer normalisation over the last dimension on the GPU.
 */
#ifndef SD_CUDA_LAYER_NORM_CUH
#define SD_CUDA_LAYER_NORM_CUH

#include "backend.cuh"

sd_status_t sd_cuda_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                               const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps);

#endif
