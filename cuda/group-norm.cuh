/*
 * group-norm.cuh - group normalisation (optionally fused with SiLU) on the GPU.
 */
#ifndef SD_CUDA_GROUP_NORM_CUH
#define SD_CUDA_GROUP_NORM_CUH

#include "backend.cuh"

sd_status_t sd_cuda_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                               const sd_tensor_t *gamma, const sd_tensor_t *beta, int32_t groups,
                               float eps, bool silu);

#endif
