/*
 * upsample.cu - nearest-neighbour 2x upsampling on the GPU.
 *
 * x: (N, C, H, W) -> out: (N, C, 2H, 2W), f32/f16. ref: torch.nn.functional.interpolate(
 * scale_factor=2, mode='nearest') as diffusers' Upsample2D uses it (csrc/ops/upsample.c).
 */
#include "upsample.cuh"

namespace {

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

template <typename T> struct Pair; /* two T written as one aligned store */
template <> struct Pair<float> {
    typedef float2 type;
    static __device__ __forceinline__ float2 make(float v) { return make_float2(v, v); }
};
template <> struct Pair<__half> {
    typedef __half2 type;
    static __device__ __forceinline__ __half2 make(__half v) { return __halves2half2(v, v); }
};

/* x: (planes, h, w) T -> out: (planes, 2h, 2w) T; one thread per input element writes its
 * 2x2 block as two pairs. PAIRED: out aligned to a pair (every pair starts at an even
 * element). ref: F.interpolate(scale_factor=2, mode='nearest'). */
template <typename T, bool PAIRED>
__global__ void upsample2x_kernel(T *out, const T *x, int64_t total, int64_t h, int64_t w) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / w, xx = i - row * w; /* row = plane * h + y */
        const int64_t plane = row / h, y = row - plane * h;
        const T v = x[i];
        T *o = out + (plane * 2 * h + 2 * y) * 2 * w + 2 * xx;
        if (PAIRED) {
            typedef typename Pair<T>::type P;
            *reinterpret_cast<P *>(o) = Pair<T>::make(v);
            *reinterpret_cast<P *>(o + 2 * w) = Pair<T>::make(v);
        } else {
            o[0] = o[1] = o[2 * w] = o[2 * w + 1] = v;
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename T>
void launch(const sd_cuda_backend_t *cb, T *out, const T *x, int64_t total, int64_t h, int64_t w) {
    const unsigned grid = sd_cuda_grid(cb, total);
    if (sd_cuda_aligned(out, 2 * sizeof(T)))
        upsample2x_kernel<T, true><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, x, total, h, w);
    else
        upsample2x_kernel<T, false><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, x, total, h, w);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_upsample_nearest2x(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    SD_TRY(sd_cuda_enter(ctx, "upsample_nearest2x"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t total = sd_tensor_numel(x), h = x->shape[2], w = x->shape[3];
    if (x->dtype == SD_DTYPE_F16)
        launch(cb, (__half *)out->data, (const __half *)x->data, total, h, w);
    else
        launch(cb, (float *)out->data, (const float *)x->data, total, h, w);
    return sd_cuda_check_launch(ctx, "upsample_nearest2x");
}
