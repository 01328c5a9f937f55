/*
 * elementwise.cu - add, multiply (with suffix broadcasting) and channel concatenation on
 * the GPU.
 *
 * add/mul: a, out any shape; b a's shape or a suffix of it, f32/f16, computed in float32
 * (f32 results are bit-identical to the CPU's). ref: torch broadcasting of trailing dims.
 * concat: (N, Ca, ...) + (N, Cb, ...) -> (N, Ca + Cb, ...), ref: torch.cat along dim 1 (the
 * UNet's skip connections). As csrc/cpu/kernels/elementwise.c.
 */
#include "elementwise.cuh"

namespace {

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

template <int OP> __device__ __forceinline__ float apply(float a, float b) {
    return OP == SD_BINARY_ADD ? a + b : a * b;
}

/* out, a: (n) T; b: (nb) T with n a multiple of nb, b[i % nb] pairs with a[i]; out may be
 * a (or b when nb == n). VEC: nb a multiple of the vector width (so a vector never wraps
 * around b) and all pointers 16-byte aligned. ref: torch.add / torch.mul broadcasting. */
template <typename T, int OP, bool VEC>
__global__ void binary_kernel(T *out, const T *a, const T *b, int64_t n, int64_t nb) {
    constexpr int V = VEC ? sd_vec<T>::N : 1;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < n / V; it += stride) {
        const int64_t i = it * V, bi = nb == n ? i : i % nb;
        if (VEC) {
            const sd_vec<T> av = sd_load_vec(a + i), bv = sd_load_vec(b + bi);
            sd_vec<T> o;
#pragma unroll
            for (int e = 0; e < V; e++)
                o.v[e] = sd_from_f32<T>(apply<OP>(sd_to_f32(av.v[e]), sd_to_f32(bv.v[e])));
            sd_store_vec(out + i, o);
        } else {
            out[i] = sd_from_f32<T>(apply<OP>(sd_to_f32(a[i]), sd_to_f32(b[bi])));
        }
    }
}

/* a: (n, sa) T, b: (n, sb) T -> out: (n, sa + sb) T, per sample a's elements then b's.
 * VEC: sa and sb multiples of the vector width, all pointers 16-byte aligned.
 * ref: torch.cat(dim=1). */
template <typename T, bool VEC>
__global__ void concat_kernel(T *out, const T *a, const T *b, int64_t n, int64_t sa, int64_t sb) {
    constexpr int V = VEC ? sd_vec<T>::N : 1;
    const int64_t row = sa + sb, items = n * row / V;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < items; it += stride) {
        const int64_t i = it * V, s = i / row, r = i - s * row;
        const T *src = r < sa ? a + s * sa + r : b + s * sb + (r - sa);
        if (VEC)
            sd_store_vec(out + i, sd_load_vec(src));
        else
            out[i] = *src;
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename T, int OP>
void launch_binary(const sd_cuda_backend_t *cb, T *out, const T *a, const T *b, int64_t n,
                   int64_t nb) {
    constexpr int V = sd_vec<T>::N;
    const bool vec =
        nb % V == 0 && sd_cuda_aligned(out, 16) && sd_cuda_aligned(a, 16) && sd_cuda_aligned(b, 16);
    const unsigned grid = sd_cuda_grid(cb, vec ? n / V : n);
    if (vec)
        binary_kernel<T, OP, true><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, a, b, n, nb);
    else
        binary_kernel<T, OP, false><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, a, b, n, nb);
}

template <typename T>
void launch_binary_op(const sd_cuda_backend_t *cb, T *out, const T *a, const T *b, int64_t n,
                      int64_t nb, int32_t op) {
    if (op == SD_BINARY_ADD)
        launch_binary<T, SD_BINARY_ADD>(cb, out, a, b, n, nb);
    else
        launch_binary<T, SD_BINARY_MUL>(cb, out, a, b, n, nb);
}

template <typename T>
void launch_concat(const sd_cuda_backend_t *cb, T *out, const T *a, const T *b, int64_t n,
                   int64_t sa, int64_t sb) {
    constexpr int V = sd_vec<T>::N;
    const bool vec = sa % V == 0 && sb % V == 0 && sd_cuda_aligned(out, 16) &&
                     sd_cuda_aligned(a, 16) && sd_cuda_aligned(b, 16);
    const unsigned grid = sd_cuda_grid(cb, n * (sa + sb) / (vec ? V : 1));
    if (vec)
        concat_kernel<T, true><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, a, b, n, sa, sb);
    else
        concat_kernel<T, false><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, a, b, n, sa, sb);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_binary(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                           const sd_tensor_t *b, int32_t op) {
    SD_TRY(sd_cuda_enter(ctx, op == SD_BINARY_ADD ? "add" : "mul"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = sd_tensor_numel(a), nb = sd_tensor_numel(b);
    if (a->dtype == SD_DTYPE_F16)
        launch_binary_op(cb, (__half *)out->data, (const __half *)a->data, (const __half *)b->data,
                         n, nb, op);
    else
        launch_binary_op(cb, (float *)out->data, (const float *)a->data, (const float *)b->data, n,
                         nb, op);
    return sd_cuda_check_launch(ctx, op == SD_BINARY_ADD ? "add" : "mul");
}

sd_status_t sd_cuda_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                           const sd_tensor_t *b) {
    SD_TRY(sd_cuda_enter(ctx, "concat"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = a->shape[0], sa = sd_tensor_numel(a) / n, sb = sd_tensor_numel(b) / n;
    if (a->dtype == SD_DTYPE_F16)
        launch_concat(cb, (__half *)out->data, (const __half *)a->data, (const __half *)b->data, n,
                      sa, sb);
    else
        launch_concat(cb, (float *)out->data, (const float *)a->data, (const float *)b->data, n, sa,
                      sb);
    return sd_cuda_check_launch(ctx, "concat");
}
