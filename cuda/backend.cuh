/*
 * backend.cuh - the CUDA backend's state and what every op file shares: the backend
 * struct, error checks, dtype conversion, vector loads and warp reductions.
 *
 * Error tiers (STYLE.md): the front end (ops.c) has validated shapes and dtypes before a
 * backend op runs; what is left for an op to report is a shape this backend does not
 * implement (SD_STATUS_UNSUPPORTED, through sd_fail) and CUDA failures. Every CUDA or
 * cuBLAS error from an op goes through sd_fail_device, which marks the context unusable:
 * after a failed launch or a kernel fault the stream's contents are unknown.
 */
#ifndef SD_CUDA_BACKEND_CUH
#define SD_CUDA_BACKEND_CUH

#include "sd-internal.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

struct sd_cuda_lt_cache; /* linear.cu: cuBLASLt algorithms by problem */

typedef struct sd_cuda_backend {
    sd_backend_t base;
    int device;
    int sm_count;
    int cc_major, cc_minor;
    int smem_optin;      /* most dynamic shared memory a block may opt in to, bytes */
    cudaStream_t stream; /* every op of the context runs on it, in order */
    cublasLtHandle_t lt;
    void *lt_workspace; /* cuBLASLt workspace, preallocated so matmuls never allocate */
    size_t lt_workspace_bytes;
    /* Small per-context device scratch (group-norm partial statistics, a linear bias
     * converted to f16). Ops use it one after another on the stream, so one buffer serves
     * all of them without synchronisation. */
    void *scratch;
    size_t scratch_bytes;
    /* Deferred caller errors found on the device (an embedding id out of range): words
     * {flag, position, id, rows}, copied to err_host and checked at each download. */
    int32_t *err_dev;
    int32_t *err_host; /* pinned */
    struct sd_cuda_lt_cache *lt_cache;
} sd_cuda_backend_t;

static inline sd_cuda_backend_t *sd_cuda(sd_ctx_t *ctx) {
    return (sd_cuda_backend_t *)sd_ctx_backend_ptr(ctx);
}

/* Makes the context's device current for the calling thread (a thread may drive contexts
 * on several GPUs). Returns the CUDA error, cudaSuccess normally. */
cudaError_t sd_cuda_set_device(const sd_cuda_backend_t *cb);

/* Reports a CUDA error from `what` through sd_fail_device (the context becomes unusable). */
sd_status_t sd_cuda_fail(sd_ctx_t *ctx, cudaError_t err, const char *what);

/* Checks that the kernels just launched by `what` were accepted (cudaGetLastError); a
 * launch error or an earlier kernel's sticky fault is a device failure. */
static inline sd_status_t sd_cuda_check_launch(sd_ctx_t *ctx, const char *what) {
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, what);
}

/* Entry of every op: the device current, no error pending. A non-sticky error left on this
 * thread by someone else (a library, the caller's own CUDA code) is cleared so the launch
 * check after our kernels does not blame them for it; a sticky error cannot be cleared and
 * fails that check. */
static inline sd_status_t sd_cuda_enter(sd_ctx_t *ctx, const char *op) {
    (void)cudaGetLastError();
    cudaError_t err = sd_cuda_set_device(sd_cuda(ctx));
    return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, op);
}

/* Threads per block of the simple elementwise kernels, and a grid for n work items that
 * grid-stride loops cover without launching more blocks than the GPU can hold. */
#define SD_CUDA_THREADS 256
static inline unsigned sd_cuda_grid(const sd_cuda_backend_t *cb, int64_t items) {
    int64_t blocks = (items + SD_CUDA_THREADS - 1) / SD_CUDA_THREADS;
    int64_t cap = (int64_t)cb->sm_count * 16;
    if (blocks > cap) blocks = cap;
    return (unsigned)(blocks < 1 ? 1 : blocks);
}

static inline bool sd_cuda_aligned(const void *p, size_t bytes) {
    return ((uintptr_t)p % bytes) == 0;
}

/* ---------------------------------------------------------------------------------------
 * Device helpers
 * ------------------------------------------------------------------------------------- */

#ifdef __CUDACC__

static __device__ __forceinline__ float sd_to_f32(float x) {
    return x;
}
static __device__ __forceinline__ float sd_to_f32(__half x) {
    return __half2float(x);
}
static __device__ __forceinline__ float sd_to_f32(__nv_bfloat16 x) {
    return __bfloat162float(x);
}

template <typename T> static __device__ __forceinline__ T sd_from_f32(float x);
template <> __device__ __forceinline__ float sd_from_f32<float>(float x) {
    return x;
}
template <> __device__ __forceinline__ __half sd_from_f32<__half>(float x) {
    return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 sd_from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

/* 16 bytes of T: 4 floats or 8 halves, loaded and stored as one vector. */
template <typename T> struct sd_vec {
    static constexpr int N = 16 / (int)sizeof(T);
    union {
        uint4 u;
        T v[N];
    };
};

template <typename T> static __device__ __forceinline__ sd_vec<T> sd_load_vec(const T *p) {
    sd_vec<T> r;
    r.u = *reinterpret_cast<const uint4 *>(p);
    return r;
}
template <typename T>
static __device__ __forceinline__ void sd_store_vec(T *p, const sd_vec<T> &v) {
    *reinterpret_cast<uint4 *>(p) = v.u;
}

static __device__ __forceinline__ float sd_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float sd_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif /* __CUDACC__ */

#endif /* SD_CUDA_BACKEND_CUH */
