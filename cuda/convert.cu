/*
 * convert.cu - element type conversion (F32 <-> F16 / BF16) and clamping on the GPU.
 *
 * convert: x, out same shape, any float dtype; ref: torch.Tensor.to(dtype), round to
 * nearest even (as csrc/cpu/kernels/convert.c). clamp: x, out f32/f16 of one dtype, out may be x;
 * ref: torch.clamp (csrc/cpu/kernels/elementwise.c). tanh_clamp: limit * tanh(x / limit), same
 * dtypes, ref: TAESD's Clamp (csrc/cpu/kernels/elementwise.c).
 */
#include "convert.cuh"

namespace {

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

/* x: (n) S -> out: (n) D, through float32 (exact for every pair this runtime uses). */
template <typename D, typename S> __global__ void convert_kernel(D *out, const S *x, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = sd_from_f32<D>(sd_to_f32(x[i]));
}

/* x, out: (n) T; out may be x. */
template <typename T>
__global__ void clamp_kernel(T *out, const T *x, int64_t n, float lo, float hi) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = sd_from_f32<T>(fminf(fmaxf(sd_to_f32(x[i]), lo), hi));
}

/* x, out: (n) T; out may be x. */
template <typename T>
__global__ void tanh_clamp_kernel(T *out, const T *x, int64_t n, float limit) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = sd_from_f32<T>(limit * tanhf(sd_to_f32(x[i]) / limit));
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename D, typename S>
void launch_convert(const sd_cuda_backend_t *cb, void *out, const void *x, int64_t n) {
    convert_kernel<D, S>
        <<<sd_cuda_grid(cb, n), SD_CUDA_THREADS, 0, cb->stream>>>((D *)out, (const S *)x, n);
}

template <typename D>
void launch_from(const sd_cuda_backend_t *cb, void *out, const void *x, int32_t src, int64_t n) {
    switch (src) {
    case SD_DTYPE_F16:
        launch_convert<D, __half>(cb, out, x, n);
        break;
    case SD_DTYPE_BF16:
        launch_convert<D, __nv_bfloat16>(cb, out, x, n);
        break;
    default:
        launch_convert<D, float>(cb, out, x, n);
        break;
    }
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    SD_TRY(sd_cuda_enter(ctx, "convert"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = sd_tensor_numel(x);
    if (out->dtype == x->dtype) {
        if (out->data == x->data) return SD_STATUS_OK;
        cudaError_t err =
            cudaMemcpyAsync(out->data, x->data, x->nbytes, cudaMemcpyDeviceToDevice, cb->stream);
        return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "convert");
    }
    switch (out->dtype) {
    case SD_DTYPE_F16:
        launch_from<__half>(cb, out->data, x->data, x->dtype, n);
        break;
    case SD_DTYPE_BF16:
        launch_from<__nv_bfloat16>(cb, out->data, x->data, x->dtype, n);
        break;
    default:
        launch_from<float>(cb, out->data, x->data, x->dtype, n);
        break;
    }
    return sd_cuda_check_launch(ctx, "convert");
}

sd_status_t sd_cuda_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo,
                          float hi) {
    SD_TRY(sd_cuda_enter(ctx, "clamp"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = sd_tensor_numel(x);
    const unsigned grid = sd_cuda_grid(cb, n);
    if (x->dtype == SD_DTYPE_F16)
        clamp_kernel<__half><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (__half *)out->data, (const __half *)x->data, n, lo, hi);
    else
        clamp_kernel<float><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (float *)out->data, (const float *)x->data, n, lo, hi);
    return sd_cuda_check_launch(ctx, "clamp");
}

sd_status_t sd_cuda_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit) {
    SD_TRY(sd_cuda_enter(ctx, "tanh_clamp"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = sd_tensor_numel(x);
    const unsigned grid = sd_cuda_grid(cb, n);
    if (x->dtype == SD_DTYPE_F16)
        tanh_clamp_kernel<__half><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (__half *)out->data, (const __half *)x->data, n, limit);
    else
        tanh_clamp_kernel<float><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (float *)out->data, (const float *)x->data, n, limit);
    return sd_cuda_check_launch(ctx, "tanh_clamp");
}
