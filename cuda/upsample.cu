/*
 * upsample.cu - nearest-neighbour resize on the GPU.
 *
 * x: (N, C, H, W) -> out: (N, C, OH, OW), f32/f16. ref: torch.nn.functional.interpolate(
 * mode='nearest') as diffusers' Upsample2D uses it (csrc/cpu/kernels/upsample.c): the 2x case has
 * its own kernel; other sizes use source index floor(dst * (in / out)) with the scale in
 * float, as torch and the CPU op compute it.
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

/* x: (planes, h, w) T -> out: (planes, oh, ow) T; one thread per output element. */
template <typename T>
__global__ void resize_kernel(T *out, const T *x, int64_t total, int64_t h, int64_t w, int64_t oh,
                              int64_t ow, float sy, float sx) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t row = i / ow, xx = i - row * ow; /* row = plane * oh + y */
        const int64_t plane = row / oh, y = row - plane * oh;
        const int64_t iy = min((int64_t)((float)y * sy), h - 1);
        const int64_t ix = min((int64_t)((float)xx * sx), w - 1);
        out[i] = x[(plane * h + iy) * w + ix];
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

template <typename T>
void launch_resize(const sd_cuda_backend_t *cb, T *out, const T *x, int64_t planes, int64_t h,
                   int64_t w, int64_t oh, int64_t ow) {
    const int64_t total = planes * oh * ow;
    resize_kernel<T><<<sd_cuda_grid(cb, total), SD_CUDA_THREADS, 0, cb->stream>>>(
        out, x, total, h, w, oh, ow, (float)h / (float)oh, (float)w / (float)ow);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    SD_TRY(sd_cuda_enter(ctx, "upsample_nearest"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t total = sd_tensor_numel(x), h = x->shape[2], w = x->shape[3];
    const int64_t oh = out->shape[2], ow = out->shape[3], planes = x->shape[0] * x->shape[1];
    const bool twice = oh == 2 * h && ow == 2 * w;
    if (x->dtype == SD_DTYPE_F16) {
        if (twice)
            launch(cb, (__half *)out->data, (const __half *)x->data, total, h, w);
        else
            launch_resize(cb, (__half *)out->data, (const __half *)x->data, planes, h, w, oh, ow);
    } else {
        if (twice)
            launch(cb, (float *)out->data, (const float *)x->data, total, h, w);
        else
            launch_resize(cb, (float *)out->data, (const float *)x->data, planes, h, w, oh, ow);
    }
    return sd_cuda_check_launch(ctx, "upsample_nearest");
}
