/*
 * upsample.cuh - nearest-neighbour resize on the GPU.
 */
#ifndef SD_CUDA_UPSAMPLE_CUH
#define SD_CUDA_UPSAMPLE_CUH

#include "backend.cuh"

sd_status_t sd_cuda_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);

#endif
