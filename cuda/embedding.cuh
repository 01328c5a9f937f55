/*
 * embedding.cuh - row gather (token embeddings) on the GPU.
 */
#ifndef SD_CUDA_EMBEDDING_CUH
#define SD_CUDA_EMBEDDING_CUH

#include "backend.cuh"

sd_status_t sd_cuda_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                              const sd_tensor_t *table);

#endif
