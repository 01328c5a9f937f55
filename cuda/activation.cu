/*
 * activation.cu - elementwise activations and GEGLU on the GPU.
 *
 * x, out: any shape, f32/f16, contiguous; computed in float32. ref: torch.nn.functional.silu,
 * gelu (approximate 'none' and 'tanh'), transformers' quick_gelu (x * sigmoid(1.702 x)),
 * leaky_relu with slope 0.2 (ESRGAN) and diffusers' GEGLU (the projection split in halves a, gate
 * along the last dim; a * gelu(gate)), as csrc/cpu/kernels/activation.c. The formulas are the CPU
 * kernels' ones, written so both tails keep their relative accuracy: GELU through erfc, the
 * sigmoids as x / (1 + exp(-t)).
 */
#include "activation.cuh"

namespace {

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

struct Silu {
    __device__ __forceinline__ float operator()(float x) const { return x / (1.0f + expf(-x)); }
};
struct Gelu { /* x * Phi(x) = x * erfc(-x / sqrt 2) / 2 */
    __device__ __forceinline__ float operator()(float x) const {
        return x * (0.5f * erfcf(-0.70710678118654752f * x));
    }
};
struct GeluTanh { /* 0.5 x (1 + tanh(u)) = x * sigmoid(2u) */
    __device__ __forceinline__ float operator()(float x) const {
        const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return x / (1.0f + expf(-2.0f * u));
    }
};
struct QuickGelu {
    __device__ __forceinline__ float operator()(float x) const {
        return x / (1.0f + expf(-1.702f * x));
    }
};
struct LeakyRelu { /* ESRGAN's LeakyReLU(negative_slope=0.2) */
    __device__ __forceinline__ float operator()(float x) const { return x >= 0.0f ? x : 0.2f * x; }
};

/* x, out: (n) T (out may be x); VEC: both 16-byte aligned. ref: the activation F. */
template <typename T, typename F, bool VEC>
__global__ void map_kernel(T *out, const T *x, int64_t n, F f) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t done = 0;
    if (VEC) {
        constexpr int V = sd_vec<T>::N;
        const int64_t nv = n / V;
        for (int64_t iv = i; iv < nv; iv += stride) {
            sd_vec<T> v = sd_load_vec(x + iv * V);
#pragma unroll
            for (int e = 0; e < V; e++) v.v[e] = sd_from_f32<T>(f(sd_to_f32(v.v[e])));
            sd_store_vec(out + iv * V, v);
        }
        done = nv * V;
    }
    for (int64_t j = done + i; j < n; j += stride) out[j] = sd_from_f32<T>(f(sd_to_f32(x[j])));
}

/* x: (rows, 2*width) T -> out: (rows, width) T, out[r, c] = x[r, c] * gelu(x[r, width + c]).
 * VEC: width a multiple of the vector width, both pointers 16-byte aligned. ref: diffusers
 * GEGLU. */
template <typename T, bool VEC>
__global__ void geglu_kernel(T *out, const T *x, int64_t rows, int64_t width) {
    const Gelu gelu;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    constexpr int V = VEC ? sd_vec<T>::N : 1;
    const int64_t items = rows * width / V;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < items; it += stride) {
        const int64_t i = it * V, r = i / width, c = i - r * width;
        const T *a = x + r * 2 * width + c, *gate = a + width;
        if (VEC) {
            const sd_vec<T> av = sd_load_vec(a), gv = sd_load_vec(gate);
            sd_vec<T> o;
#pragma unroll
            for (int e = 0; e < V; e++)
                o.v[e] = sd_from_f32<T>(sd_to_f32(av.v[e]) * gelu(sd_to_f32(gv.v[e])));
            sd_store_vec(out + i, o);
        } else {
            out[i] = sd_from_f32<T>(sd_to_f32(*a) * gelu(sd_to_f32(*gate)));
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename T, typename F>
void launch_map(const sd_cuda_backend_t *cb, T *out, const T *x, int64_t n, F f) {
    constexpr int V = sd_vec<T>::N;
    const bool vec = sd_cuda_aligned(out, 16) && sd_cuda_aligned(x, 16);
    const unsigned grid = sd_cuda_grid(cb, vec ? (n + V - 1) / V : n);
    if (vec)
        map_kernel<T, F, true><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, x, n, f);
    else
        map_kernel<T, F, false><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, x, n, f);
}

template <typename T>
void launch_activation(const sd_cuda_backend_t *cb, T *out, const T *x, int64_t n, int32_t act) {
    switch (act) {
    case SD_ACT_SILU:
        launch_map(cb, out, x, n, Silu());
        break;
    case SD_ACT_GELU:
        launch_map(cb, out, x, n, Gelu());
        break;
    case SD_ACT_GELU_TANH:
        launch_map(cb, out, x, n, GeluTanh());
        break;
    case SD_ACT_LEAKY_RELU:
        launch_map(cb, out, x, n, LeakyRelu());
        break;
    default:
        launch_map(cb, out, x, n, QuickGelu());
        break;
    }
}

template <typename T>
void launch_geglu(const sd_cuda_backend_t *cb, T *out, const T *x, int64_t rows, int64_t width) {
    constexpr int V = sd_vec<T>::N;
    const bool vec = width % V == 0 && sd_cuda_aligned(out, 16) && sd_cuda_aligned(x, 16);
    const unsigned grid = sd_cuda_grid(cb, rows * width / (vec ? V : 1));
    if (vec)
        geglu_kernel<T, true><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, x, rows, width);
    else
        geglu_kernel<T, false><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(out, x, rows, width);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                               int32_t activation) {
    SD_TRY(sd_cuda_enter(ctx, "activation"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = sd_tensor_numel(x);
    if (x->dtype == SD_DTYPE_F16)
        launch_activation(cb, (__half *)out->data, (const __half *)x->data, n, activation);
    else
        launch_activation(cb, (float *)out->data, (const float *)x->data, n, activation);
    return sd_cuda_check_launch(ctx, "activation");
}

sd_status_t sd_cuda_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    SD_TRY(sd_cuda_enter(ctx, "geglu"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t width = out->shape[out->ndim - 1], rows = sd_tensor_numel(out) / width;
    if (x->dtype == SD_DTYPE_F16)
        launch_geglu(cb, (__half *)out->data, (const __half *)x->data, rows, width);
    else
        launch_geglu(cb, (float *)out->data, (const float *)x->data, rows, width);
    return sd_cuda_check_launch(ctx, "geglu");
}
