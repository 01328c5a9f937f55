/*
 * linear.cuh - linear layers on the GPU: cuBLASLt for matching activation and weight
 * dtypes, the implicit-GEMM kernels of conv2d.cu for the rest.
 */
#ifndef SD_CUDA_LINEAR_CUH
#define SD_CUDA_LINEAR_CUH

#include "backend.cuh"

/* Per-context cuBLASLt state (the algorithm cache); called by backend create / destroy. */
cublasStatus_t sd_cuda_linear_init(sd_cuda_backend_t *cb);
void sd_cuda_linear_destroy(sd_cuda_backend_t *cb);

sd_status_t sd_cuda_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                           const sd_tensor_t *w, const sd_tensor_t *bias,
                           const sd_tensor_t *residual, const sd_linear_params_t *p);

#endif
