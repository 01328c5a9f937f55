/*
 * timestep-embedding.cuh - sinusoidal timestep embedding on the GPU.
 */
#ifndef SD_CUDA_TIMESTEP_EMBEDDING_CUH
#define SD_CUDA_TIMESTEP_EMBEDDING_CUH

#include "backend.cuh"

sd_status_t sd_cuda_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                       const sd_timestep_embedding_params_t *p);

#endif
