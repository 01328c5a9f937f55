/*
 * group-norm.cu - group normalisation (optionally fused with SiLU) on the GPU.
 *
 * x, out: (N, C, ...) f32/f16, contiguous; groups G divide C; gamma, beta: (C) f32 or NULL.
 * ref: torch.nn.GroupNorm (biased variance, eps inside the square root), then
 * torch.nn.functional.silu when fused (diffusers ResnetBlock2D), as csrc/cpu/kernels/group-norm.c.
 *
 * The group g of sample n is one contiguous run of (C/G)*S elements (S: spatial size).
 * SD has only N*G = 64 groups at batch 2, too few blocks for a GPU, so each group is split
 * into chunks and two kernels run over the same (group, chunk) grid:
 *   1. each block reduces its chunk to Welford partials {count, mean, M2} in scratch;
 *   2. each block merges its group's partials (Chan et al.'s pairwise formula, in double),
 *      then normalises its chunk: y = x * (rstd * gamma) + (beta - mean * rstd * gamma),
 *      SiLU on top when fused. In place (out == x) works: each element is read, then written,
 *      by the same thread.
 * Welford keeps the variance accurate when the mean is large next to the spread; the data
 * is read twice (the second read mostly from L2).
 */
#include "group-norm.cuh"

namespace {

#define GN_THREADS   256
#define GN_MIN_CHUNK 4096 /* elements per block, at least */
#define GN_ALIGN     8    /* chunk sizes are multiples of this (the f16 vector width) */

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

template <typename F> struct Welford {
    F n, mean, m2;
    __device__ __forceinline__ void add(float v) {
        n += 1;
        const F d = v - mean;
        mean += d / n;
        m2 += d * (v - mean);
    }
    __device__ __forceinline__ void merge(F nb, F meanb, F m2b) {
        const F nn = n + nb;
        if (nb == 0) return;
        const F d = meanb - mean, fb = nb / nn;
        mean += d * fb;
        m2 += m2b + d * d * n * fb;
        n = nn;
    }
    __device__ __forceinline__ void warp_merge() {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            merge(__shfl_xor_sync(0xffffffffu, n, o), __shfl_xor_sync(0xffffffffu, mean, o),
                  __shfl_xor_sync(0xffffffffu, m2, o));
    }
};

/* x: N*G groups of group_len contiguous T; partials: (N*G, splits, 3) f32 {count, mean, M2}
 * of chunk [split*chunk, min(group_len, (split+1)*chunk)). VEC: 16-byte loads (group_len
 * and chunk multiples of the vector width, x 16-byte aligned).
 * ref: the mean and biased variance of torch.nn.GroupNorm. */
template <typename T, bool VEC>
__global__ void __launch_bounds__(GN_THREADS)
    gn_stats_kernel(const T *x, float *partials, int64_t group_len, int64_t chunk, int splits) {
    const int64_t group = blockIdx.x;
    const int split = blockIdx.y;
    const int64_t lo = split * chunk, hi = min(lo + chunk, group_len);
    const T *base = x + group * group_len;
    Welford<float> w = {0, 0, 0};
    if (VEC) {
        constexpr int V = sd_vec<T>::N;
        for (int64_t i = lo + (int64_t)threadIdx.x * V; i < hi; i += (int64_t)GN_THREADS * V) {
            const sd_vec<T> v = sd_load_vec(base + i);
#pragma unroll
            for (int e = 0; e < V; e++) w.add(sd_to_f32(v.v[e]));
        }
    } else {
        for (int64_t i = lo + threadIdx.x; i < hi; i += GN_THREADS) w.add(sd_to_f32(base[i]));
    }
    w.warp_merge();
    __shared__ float s[GN_THREADS / 32][3];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) s[warp][0] = w.n, s[warp][1] = w.mean, s[warp][2] = w.m2;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < GN_THREADS / 32; i++) w.merge(s[i][0], s[i][1], s[i][2]);
        float *p = partials + (group * splits + split) * 3;
        p[0] = w.n, p[1] = w.mean, p[2] = w.m2;
    }
}

__device__ __forceinline__ int64_t div_index(int64_t i, int64_t d) {
    /* 32-bit division when both fit: much cheaper than the 64-bit routine. */
    return ((uint64_t)(i | d) >> 32) == 0 ? (int64_t)((uint32_t)i / (uint32_t)d) : i / d;
}

/* x, out: as gn_stats_kernel; partials from it; gamma, beta: (C) f32 or NULL; channel of
 * element i of group g: (g % G) * cpg + i / spatial. VEC also needs spatial % V == 0 so a
 * vector never straddles two channels. ref: torch.nn.GroupNorm (+ F.silu). */
template <typename T, bool VEC>
__global__ void __launch_bounds__(GN_THREADS)
    gn_apply_kernel(const T *x, T *out, const float *partials, const float *gamma,
                    const float *beta, int64_t group_len, int64_t chunk, int splits,
                    int64_t spatial, int cpg, int groups, float eps, bool silu) {
    const int64_t group = blockIdx.x;
    const int split = blockIdx.y;
    __shared__ float s_mean, s_rstd;
    if (threadIdx.x < 32) {
        Welford<double> w = {0, 0, 0};
        for (int i = threadIdx.x; i < splits; i += 32) {
            const float *p = partials + (group * splits + i) * 3;
            w.merge(p[0], p[1], p[2]);
        }
        w.warp_merge();
        if (threadIdx.x == 0) {
            s_mean = (float)w.mean;
            s_rstd = (float)(1.0 / sqrt(w.m2 / w.n + (double)eps));
        }
    }
    __syncthreads();
    const float mean = s_mean, rstd = s_rstd;
    const int64_t lo = split * chunk, hi = min(lo + chunk, group_len);
    const int64_t off = group * group_len;
    const int c0 = (int)(group % groups) * cpg;
    auto affine = [&](int64_t i, float &scale, float &shift) {
        const int c = c0 + (int)div_index(i, spatial);
        scale = rstd * (gamma ? gamma[c] : 1.0f);
        shift = (beta ? beta[c] : 0.0f) - mean * scale;
    };
    auto finish = [&](float y) { return silu ? y / (1.0f + expf(-y)) : y; };
    if (VEC) {
        constexpr int V = sd_vec<T>::N;
        for (int64_t i = lo + (int64_t)threadIdx.x * V; i < hi; i += (int64_t)GN_THREADS * V) {
            float scale, shift;
            affine(i, scale, shift);
            sd_vec<T> v = sd_load_vec(x + off + i);
#pragma unroll
            for (int e = 0; e < V; e++)
                v.v[e] = sd_from_f32<T>(finish(sd_to_f32(v.v[e]) * scale + shift));
            sd_store_vec(out + off + i, v);
        }
    } else {
        for (int64_t i = lo + threadIdx.x; i < hi; i += GN_THREADS) {
            float scale, shift;
            affine(i, scale, shift);
            out[off + i] = sd_from_f32<T>(finish(sd_to_f32(x[off + i]) * scale + shift));
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

struct GnLaunch {
    const void *x;
    void *out;
    float *partials;
    const float *gamma, *beta;
    int64_t groups_total, group_len, chunk, spatial;
    int splits, cpg, groups;
    float eps;
    bool silu, vec;
};

template <typename T, bool VEC> void launch(const GnLaunch &l, cudaStream_t stream) {
    const dim3 grid((unsigned)l.groups_total, (unsigned)l.splits);
    gn_stats_kernel<T, VEC><<<grid, GN_THREADS, 0, stream>>>(
        static_cast<const T *>(l.x), l.partials, l.group_len, l.chunk, l.splits);
    gn_apply_kernel<T, VEC><<<grid, GN_THREADS, 0, stream>>>(
        static_cast<const T *>(l.x), static_cast<T *>(l.out), l.partials, l.gamma, l.beta,
        l.group_len, l.chunk, l.splits, l.spatial, l.cpg, l.groups, l.eps, l.silu);
}

template <typename T> void launch_typed(const GnLaunch &l, cudaStream_t stream) {
    if (l.vec)
        launch<T, true>(l, stream);
    else
        launch<T, false>(l, stream);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                               const sd_tensor_t *gamma, const sd_tensor_t *beta, int32_t groups,
                               float eps, bool silu) {
    SD_TRY(sd_cuda_enter(ctx, "group_norm"));
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t n = x->shape[0], c = x->shape[1];
    GnLaunch l;
    l.x = x->data;
    l.out = out->data;
    l.gamma = gamma ? (const float *)gamma->data : NULL;
    l.beta = beta ? (const float *)beta->data : NULL;
    l.groups_total = n * groups;
    l.spatial = sd_tensor_numel(x) / (n * c);
    l.cpg = (int)(c / groups);
    l.group_len = l.cpg * l.spatial;
    l.groups = groups;
    l.eps = eps;
    l.silu = silu;
    if (l.groups_total > INT32_MAX || c > INT32_MAX)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED, "group_norm: more than 2^31 groups");

    /* Enough blocks to fill the GPU a few times over, each with at least GN_MIN_CHUNK
     * elements, and partials that fit the context's scratch. */
    const int64_t per_group_bytes = 3 * (int64_t)sizeof(float);
    const int64_t max_splits = (int64_t)cb->scratch_bytes / (l.groups_total * per_group_bytes);
    if (max_splits < 1)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                       "group_norm: %lld groups exceed the CUDA backend's scratch",
                       (long long)l.groups_total);
    int64_t splits = (4 * (int64_t)cb->sm_count + l.groups_total - 1) / l.groups_total;
    splits = SD_MIN(splits, (l.group_len + GN_MIN_CHUNK - 1) / GN_MIN_CHUNK);
    splits = SD_MAX((int64_t)1, SD_MIN(splits, SD_MIN(max_splits, (int64_t)1024)));
    int64_t chunk = (l.group_len + splits - 1) / splits;
    chunk = (chunk + GN_ALIGN - 1) / GN_ALIGN * GN_ALIGN;
    l.chunk = chunk;
    l.splits = (int)((l.group_len + chunk - 1) / chunk);
    l.partials = (float *)cb->scratch;

    const int v = x->dtype == SD_DTYPE_F16 ? 8 : 4;
    l.vec = l.spatial % v == 0 && sd_cuda_aligned(x->data, 16) && sd_cuda_aligned(out->data, 16);
    if (x->dtype == SD_DTYPE_F16)
        launch_typed<__half>(l, cb->stream);
    else
        launch_typed<float>(l, cb->stream);
    return sd_cuda_check_launch(ctx, "group_norm");
}
