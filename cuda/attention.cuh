/*
 * attention.cuh - multi-head scaled dot-product attention on the GPU (flash attention).
 */
#ifndef SD_CUDA_ATTENTION_CUH
#define SD_CUDA_ATTENTION_CUH

#include "backend.cuh"

/* Raises the dynamic shared memory limit of the attention kernels on the context's device
 * (called once by backend create, with the device current). */
cudaError_t sd_cuda_attention_setup(sd_cuda_backend_t *cb);

sd_status_t sd_cuda_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                              const sd_tensor_t *k, const sd_tensor_t *v, int32_t heads,
                              bool causal, float scale);

#endif
