/*
 * layer-norm.cu - layer normalisation over the last dimension on the GPU.
 *
 * x, out: (..., C) f32/f16; gamma, beta: (C) f32 or NULL. ref: torch.nn.LayerNorm (biased
 * variance, eps inside the square root), as csrc/cpu/kernels/layer-norm.c.
 *
 * One warp per row, three passes over the row (mean, squared deviations from it, then the
 * normalised output): the same two-pass statistics as the CPU op, and rows of SD's sizes
 * (320..1280 channels) stay in L1 between passes.
 */
#include "layer-norm.cuh"

namespace {

#define LN_WARPS 8

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

/* x, out: (rows, c) T (out may be x); gamma, beta: (c) f32 or NULL. VEC: c a multiple of
 * the 16-byte vector width and both pointers 16-byte aligned. ref: torch.nn.LayerNorm. */
template <typename T, bool VEC>
__global__ void __launch_bounds__(LN_WARPS * 32)
    layer_norm_kernel(const T *x, T *out, const float *gamma, const float *beta, int64_t rows,
                      int64_t c, float eps) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return; /* whole warps: the shuffles below stay full */
    const T *xr = x + row * c;
    T *yr = out + row * c;
    constexpr int V = VEC ? sd_vec<T>::N : 1;

    /* Calls f(index, value) for every element the lane owns. */
    auto for_each = [&](auto f) {
        if (VEC) {
            for (int64_t i = (int64_t)lane * V; i < c; i += 32 * V) {
                const sd_vec<T> v = sd_load_vec(xr + i);
#pragma unroll
                for (int e = 0; e < V; e++) f(i + e, sd_to_f32(v.v[e]));
            }
        } else {
            for (int64_t i = lane; i < c; i += 32) f(i, sd_to_f32(xr[i]));
        }
    };

    float sum = 0.0f;
    for_each([&](int64_t, float v) { sum += v; });
    const float mean = sd_warp_sum(sum) / (float)c;
    float sq = 0.0f;
    for_each([&](int64_t, float v) { sq += (v - mean) * (v - mean); });
    const float var = sd_warp_sum(sq) / (float)c;
    const float rstd = (float)(1.0 / sqrt((double)var + (double)eps));

    auto norm = [&](int64_t i, float v) {
        float y = (v - mean) * rstd;
        if (gamma) y *= gamma[i];
        if (beta) y += beta[i];
        return y;
    };
    /* The reads above finished in every lane (the shuffles synchronised the warp), so
     * writing in place is safe. */
    if (VEC) {
        for (int64_t i = (int64_t)lane * V; i < c; i += 32 * V) {
            sd_vec<T> v = sd_load_vec(xr + i);
#pragma unroll
            for (int e = 0; e < V; e++) v.v[e] = sd_from_f32<T>(norm(i + e, sd_to_f32(v.v[e])));
            sd_store_vec(yr + i, v);
        }
    } else {
        for (int64_t i = lane; i < c; i += 32) yr[i] = sd_from_f32<T>(norm(i, sd_to_f32(xr[i])));
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename T>
void launch(const sd_tensor_t *x, sd_tensor_t *out, const float *gamma, const float *beta,
            int64_t rows, int64_t c, float eps, cudaStream_t stream) {
    const unsigned grid = (unsigned)((rows + LN_WARPS - 1) / LN_WARPS);
    const bool vec =
        c % sd_vec<T>::N == 0 && sd_cuda_aligned(x->data, 16) && sd_cuda_aligned(out->data, 16);
    if (vec)
        layer_norm_kernel<T, true><<<grid, LN_WARPS * 32, 0, stream>>>(
            (const T *)x->data, (T *)out->data, gamma, beta, rows, c, eps);
    else
        layer_norm_kernel<T, false><<<grid, LN_WARPS * 32, 0, stream>>>(
            (const T *)x->data, (T *)out->data, gamma, beta, rows, c, eps);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                               const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps) {
    SD_TRY(sd_cuda_enter(ctx, "layer_norm"));
    const int64_t c = x->shape[x->ndim - 1], rows = sd_tensor_numel(x) / c;
    if ((rows + LN_WARPS - 1) / LN_WARPS > INT32_MAX)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED, "layer_norm: too many rows");
    const float *g = gamma ? (const float *)gamma->data : NULL;
    const float *b = beta ? (const float *)beta->data : NULL;
    cudaStream_t stream = sd_cuda(ctx)->stream;
    if (x->dtype == SD_DTYPE_F16)
        launch<__half>(x, out, g, b, rows, c, eps, stream);
    else
        launch<float>(x, out, g, b, rows, c, eps, stream);
    return sd_cuda_check_launch(ctx, "layer_norm");
}
