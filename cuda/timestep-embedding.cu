/*
 * timestep-embedding.cu - sinusoidal timestep embedding on the GPU.
 *
 * t: (N) f32 -> out: (N, D) f32/f16. ref: diffusers.models.embeddings.get_timestep_embedding,
 * as csrc/cpu/kernels/timestep-embedding.c: freq_f = exp(-ln(max_period) * f / (D/2 - shift)),
 * argument scale * (t * freq_f), halves [sin, cos] ([cos, sin] with flip_sin_to_cos), a zero
 * column for odd D.
 *
 * The float32 steps are the CPU op's, in its order and without contraction (the host passes
 * -ln(max_period) and D/2 - shift already rounded to float as the CPU computes them). exp,
 * sin and cos are evaluated in double and rounded once, which gives the correctly rounded
 * float32 value that the host's expf/sinf/cosf return, not CUDA's 1-2 ulp float versions: at
 * t = 999 one ulp of the frequency moves the argument by ~6e-5 rad.
 */
#include "timestep-embedding.cuh"

namespace {

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

/* t: (n) f32 -> out: (n, d) T. ref: get_timestep_embedding (see the file comment). */
template <typename T>
__global__ void timestep_embedding_kernel(T *out, const float *t, int64_t n, int64_t d,
                                          float neg_log_period, float denom, float scale,
                                          bool flip) {
    const int64_t half_d = d / 2;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n * half_d;
         idx += stride) {
        const int64_t i = idx / half_d, f = idx - i * half_d;
        const float exponent = __fdiv_rn(__fmul_rn(neg_log_period, (float)f), denom);
        const float freq = (float)exp((double)exponent);
        const float arg = __fmul_rn(scale, __fmul_rn(t[i], freq));
        const float s = (float)sin((double)arg), c = (float)cos((double)arg);
        T *row = out + i * d;
        row[f] = sd_from_f32<T>(flip ? c : s);
        row[half_d + f] = sd_from_f32<T>(flip ? s : c);
    }
    if (d % 2)
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
            out[i * d + d - 1] = sd_from_f32<T>(0.0f);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                       const sd_timestep_embedding_params_t *p) {
    SD_TRY(sd_cuda_enter(ctx, "timestep_embedding"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = out->shape[0], d = out->shape[1], half_d = d / 2;
    /* Exactly as the CPU op rounds them. */
    const float neg_log_period = (float)-log((double)p->max_period);
    const float denom = (float)half_d - p->downscale_freq_shift;
    const unsigned grid = sd_cuda_grid(cb, n * half_d);
    if (out->dtype == SD_DTYPE_F16)
        timestep_embedding_kernel<__half><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (__half *)out->data, (const float *)t->data, n, d, neg_log_period, denom, p->scale,
            p->flip_sin_to_cos != 0);
    else
        timestep_embedding_kernel<float><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (float *)out->data, (const float *)t->data, n, d, neg_log_period, denom, p->scale,
            p->flip_sin_to_cos != 0);
    return sd_cuda_check_launch(ctx, "timestep_embedding");
}
