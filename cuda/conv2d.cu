/*
 * conv2d.cu - 2-D convolution as an implicit GEMM: tensor cores (WMMA, f16 in, f32
 * accumulate) for f16 activations, float32 CUDA cores for f32 activations.
 *
 * x: (N, Cin, H, W) f32/f16; w: (Cout, Cin, KH, KW) f32/f16/bf16; out: (N, Cout, OH, OW)
 * like x. ref: torch.nn.functional.conv2d (groups=1, dilation=1) after F.pad with zeros,
 * padding per side as sd_conv2d_params_t; bias (Cout) or (N, Cout), residual added in the
 * epilogue, as csrc/cpu/kernels/conv2d.c.
 *
 * GEMM view: C (Cout x N*OH*OW) = W (Cout x K) * im2col(x) (K x N*OH*OW), K = Cin*KH*KW.
 * No im2col matrix is materialised: each thread gathers its B-tile elements straight from
 * x with bounds checks (that is the zero padding), walking k = (ci, ky, kx) incrementally.
 * 1x1 and 3x3 kernels are compile-time specialisations of the index arithmetic; any other
 * kernel size, stride and padding runs the same code with run-time sizes.
 *
 * Both kernels double-buffer the shared-memory tiles through registers: the global loads
 * of tile k+1 are issued before the math on tile k, stored after it, one __syncthreads per
 * tile. The tile sizes are conventional starting points, not tuned on hardware.
 */
#include "conv2d.cuh"

#include <mma.h>
#include <string.h>
#include <type_traits>

namespace {

/* The descriptor with the sizes the kernels derive from it. */
struct Problem {
    sd_cuda_igemm_t g;
    int32_t k;     /* Cin*KH*KW */
    int32_t taps;  /* KH*KW */
    int32_t ohw;   /* OH*OW */
    int32_t ncols; /* N*OH*OW */
};

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

template <typename T> __device__ __forceinline__ T zero_of() {
    return sd_from_f32<T>(0.0f);
}

__device__ __forceinline__ __half to_half(__half v) {
    return v;
}
__device__ __forceinline__ __half to_half(float v) {
    return __float2half_rn(v);
}
__device__ __forceinline__ __half to_half(__nv_bfloat16 v) {
    return __float2half_rn(__bfloat162float(v));
}

/* One output pixel column j = (n, oy, ox) of the GEMM: where its receptive field starts. */
struct Column {
    int64_t base; /* element offset of x[n, 0, iy0, ix0] (may lie outside the image) */
    int32_t iy0, ix0;
    bool valid; /* j < N*OH*OW */
};

__device__ __forceinline__ Column column_of(const Problem &P, int32_t j) {
    Column c;
    c.valid = j < P.ncols;
    const int32_t jj = c.valid ? j : 0;
    const int32_t n = jj / P.ohw, pix = jj - n * P.ohw;
    const int32_t oy = pix / P.g.ow, ox = pix - oy * P.g.ow;
    c.iy0 = oy * P.g.stride_h - P.g.pad_top;
    c.ix0 = ox * P.g.stride_w - P.g.pad_left;
    c.base = (int64_t)n * P.g.x_sn + (int64_t)c.iy0 * P.g.x_sh + (int64_t)c.ix0 * P.g.x_sw;
    return c;
}

/* A position k = (ci, r) in the reduction, r = ky*KW + kx the kernel tap, advanced by a
 * fixed step; KH, KW > 0 fix the kernel size at compile time, 0 reads it from P. */
template <int KH, int KW> struct KWalker {
    int32_t k, r;
    int64_t ci_off; /* ci * x_sc */

    __device__ __forceinline__ int32_t taps(const Problem &P) const {
        return KH > 0 ? KH * KW : P.taps;
    }
    __device__ __forceinline__ void init(const Problem &P, int32_t k0) {
        const int32_t ci = k0 / taps(P);
        k = k0;
        r = k0 - ci * taps(P);
        ci_off = (int64_t)ci * P.g.x_sc;
    }
    __device__ __forceinline__ void advance(const Problem &P, int32_t step) {
        k += step;
        r += step;
        while (r >= taps(P)) {
            r -= taps(P);
            ci_off += P.g.x_sc;
        }
    }
    /* B[k, column c], zero outside the image and past K. */
    template <typename T>
    __device__ __forceinline__ T fetch(const Problem &P, const T *x, const Column &c) const {
        const int32_t kw = KW > 0 ? KW : P.g.kw;
        const int32_t ky = r / kw, kx = r - ky * kw;
        const int32_t iy = c.iy0 + ky, ix = c.ix0 + kx;
        const bool inside =
            c.valid && k < P.k && (uint32_t)iy < (uint32_t)P.g.h && (uint32_t)ix < (uint32_t)P.g.w_;
        return inside ? x[c.base + ci_off + (int64_t)ky * P.g.x_sh + (int64_t)kx * P.g.x_sw]
                      : zero_of<T>();
    }
};

__device__ __forceinline__ float bias_at(const Problem &P, int32_t n, int32_t co) {
    const int64_t i = (int64_t)n * P.g.bias_n_stride + co;
    return P.g.bias_dtype == SD_DTYPE_F32 ? static_cast<const float *>(P.g.bias)[i]
                                          : __half2float(static_cast<const __half *>(P.g.bias)[i]);
}

/* Writes COUNT accumulators of output channel co for the consecutive columns j0.. (which may
 * cross into the next image): + bias + residual, converted to T. */
template <typename T, int COUNT>
__device__ __forceinline__ void store_row(const Problem &P, const float *vals, int32_t co,
                                          int32_t j0) {
    if (j0 >= P.ncols) return;
    int32_t n = j0 / P.ohw, pix = j0 - n * P.ohw;
    const T *res = static_cast<const T *>(P.g.residual);
    T *out = static_cast<T *>(P.g.out);
#pragma unroll
    for (int c = 0; c < COUNT; c++) {
        if (j0 + c < P.ncols) {
            float v = vals[c];
            if (P.g.bias) v += bias_at(P, n, co);
            const int64_t off =
                (int64_t)n * P.g.o_sn + (int64_t)co * P.g.o_sc + (int64_t)pix * P.g.o_sp;
            if (res) v += sd_to_f32(res[off]);
            out[off] = sd_from_f32<T>(v);
            if (++pix == P.ohw) pix = 0, n++;
        }
    }
}

/* ---- tensor cores: f16 activations ------------------------------------------------------- */

constexpr int TC_BM = 128, TC_BN = 128, TC_BK = 32, TC_THREADS = 256;
/* Row pitches in halves: +8 keeps WMMA's 32-byte pointer alignment and the 16-byte
 * vector stores while shifting consecutive rows across banks. */
constexpr int TC_LDA = TC_BK + 8, TC_LDB = TC_BN + 8;
constexpr int TC_SMEM_A = 2 * TC_BM * TC_LDA * (int)sizeof(__half);
constexpr int TC_SMEM_B = 2 * TC_BK * TC_LDB * (int)sizeof(__half);
constexpr int TC_SMEM = TC_SMEM_A + TC_SMEM_B;
static_assert(TC_SMEM >= 8 * 16 * 16 * (int)sizeof(float), "epilogue staging fits");
static_assert(TC_SMEM <= 48 * 1024, "static shared memory");

/* x: f16 through P's strides; w: (Cout, K) TW row-major; out/residual: f16.
 * ref: torch.nn.functional.conv2d (see the file comment); f16 products, f32 sums.
 * Block: 128 output channels x 128 output pixels, 8 warps as 2 (channels) x 4 (pixels),
 * each warp 64 x 32 = 4 x 2 WMMA 16x16x16 tiles; K in steps of 32. */
template <typename TW, int KH, int KW>
__global__ void __launch_bounds__(TC_THREADS) igemm_tc_kernel(const Problem P) {
    using namespace nvcuda;
    __shared__ __align__(128) unsigned char smem[TC_SMEM];
    __half *As = reinterpret_cast<__half *>(smem);             /* [2][BM][LDA] */
    __half *Bs = reinterpret_cast<__half *>(smem + TC_SMEM_A); /* [2][BK][LDB] */
    const __half *x = static_cast<const __half *>(P.g.x);
    const TW *w = static_cast<const TW *>(P.g.w);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int warp_m = warp >> 2, warp_n = warp & 3;
    const int32_t m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int32_t M = P.g.cout, K = P.k;

    /* A tile (128 x 32): f16 weights with K % 8 == 0 as two 16-byte vectors per thread,
     * anything else as 16 converted scalars per thread (a warp reads 32 consecutive k). */
    const bool a_vec = std::is_same<TW, __half>::value && K % 8 == 0 && ((uintptr_t)w & 15) == 0;
    union {
        uint4 u[2];
        __half h[16];
    } a_stage;
    /* B tile (32 x 128): thread owns column jj and rows kb, kb+2, ..., kb+30. */
    const int jj = tid & (TC_BN - 1), kb = tid >> 7;
    const Column col = column_of(P, n0 + jj);
    KWalker<KH, KW> walk;
    walk.init(P, kb);
    union {
        uint4 u[2];
        __half h[16];
    } b_stage;

    auto load_tiles = [&](int32_t k0) {
        if (a_vec) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int v = tid + i * TC_THREADS, row = v >> 2, kc = (v & 3) * 8;
                const int32_t gm = m0 + row, gk = k0 + kc;
                a_stage.u[i] = gm < M && gk < K
                                   ? *reinterpret_cast<const uint4 *>(w + (int64_t)gm * K + gk)
                                   : make_uint4(0, 0, 0, 0);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const int32_t gm = m0 + (tid >> 5) + 8 * i, gk = k0 + lane;
                a_stage.h[i] =
                    gm < M && gk < K ? to_half(w[(int64_t)gm * K + gk]) : zero_of<__half>();
            }
        }
#pragma unroll
        for (int i = 0; i < 16; i++) {
            b_stage.h[i] = walk.fetch(P, x, col);
            walk.advance(P, 2);
        }
    };
    auto store_tiles = [&](int buf) {
        if (a_vec) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int v = tid + i * TC_THREADS, row = v >> 2, kc = (v & 3) * 8;
                *reinterpret_cast<uint4 *>(&As[(buf * TC_BM + row) * TC_LDA + kc]) = a_stage.u[i];
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++)
                As[(buf * TC_BM + (tid >> 5) + 8 * i) * TC_LDA + lane] = a_stage.h[i];
        }
#pragma unroll
        for (int i = 0; i < 16; i++) Bs[(buf * TC_BK + kb + 2 * i) * TC_LDB + jj] = b_stage.h[i];
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 2; ni++) wmma::fill_fragment(acc[mi][ni], 0.0f);

    const int32_t ktiles = (K + TC_BK - 1) / TC_BK;
    load_tiles(0);
    store_tiles(0);
    __syncthreads();
    for (int32_t kt = 0; kt < ktiles; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        if (more) load_tiles((kt + 1) * TC_BK);
#pragma unroll
        for (int ks = 0; ks < TC_BK / 16; ks++) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> bf[2];
#pragma unroll
            for (int ni = 0; ni < 2; ni++)
                wmma::load_matrix_sync(
                    bf[ni], Bs + (cur * TC_BK + ks * 16) * TC_LDB + warp_n * 32 + ni * 16, TC_LDB);
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> af;
                wmma::load_matrix_sync(
                    af, As + (cur * TC_BM + warp_m * 64 + mi * 16) * TC_LDA + ks * 16, TC_LDA);
#pragma unroll
                for (int ni = 0; ni < 2; ni++) wmma::mma_sync(acc[mi][ni], af, bf[ni], acc[mi][ni]);
            }
        }
        if (more) store_tiles(cur ^ 1);
        __syncthreads();
    }

    /* Epilogue through a 16x16 float staging tile per warp (the fragment layout is opaque):
     * lane -> row lane/2, 8 consecutive columns. The loop's last barrier freed the tiles. */
    float *stage = reinterpret_cast<float *>(smem) + warp * 256;
    const int r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 2; ni++) {
            wmma::store_matrix_sync(stage, acc[mi][ni], 16, wmma::mem_row_major);
            __syncwarp();
            const int32_t co = m0 + warp_m * 64 + mi * 16 + r;
            if (co < M)
                store_row<__half, 8>(P, stage + r * 16 + c0, co, n0 + warp_n * 32 + ni * 16 + c0);
            __syncwarp();
        }
}

/* ---- CUDA cores: f32 activations --------------------------------------------------------- */

constexpr int S_BM = 64, S_BN = 64, S_BK = 16, S_THREADS = 256;
constexpr int S_LDA = S_BM + 4; /* A is stored k-major; the pad spreads its transposing stores */

/* x: f32 through P's strides; w: (Cout, K) TW row-major; out/residual: f32.
 * ref: torch.nn.functional.conv2d (see the file comment), float32 throughout (no TF32):
 * the F32 path is the accurate one. Block: 64 channels x 64 pixels, each thread a 4 x 4
 * register tile; K in steps of 16. */
template <typename TW, int KH, int KW>
__global__ void __launch_bounds__(S_THREADS) igemm_f32_kernel(const Problem P) {
    __shared__ __align__(16) float As[2][S_BK][S_LDA];
    __shared__ __align__(16) float Bs[2][S_BK][S_BN];
    const float *x = static_cast<const float *>(P.g.x);
    const TW *w = static_cast<const TW *>(P.g.w);
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int32_t m0 = blockIdx.y * S_BM, n0 = blockIdx.x * S_BN;
    const int32_t M = P.g.cout, K = P.k;

    /* A: thread reads k = k0 + (tid & 15) of rows (tid >> 4) + 16 i. B: column tid & 63,
     * rows kb + 4 i. */
    const int a_k = tid & 15, a_row = tid >> 4;
    const int jj = tid & (S_BN - 1), kb = tid >> 6;
    const Column col = column_of(P, n0 + jj);
    KWalker<KH, KW> walk;
    walk.init(P, kb);
    float a_stage[4], b_stage[4];

    auto load_tiles = [&](int32_t k0) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int32_t gm = m0 + a_row + 16 * i, gk = k0 + a_k;
            a_stage[i] = gm < M && gk < K ? sd_to_f32(w[(int64_t)gm * K + gk]) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            b_stage[i] = walk.fetch(P, x, col);
            walk.advance(P, 4);
        }
    };
    auto store_tiles = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; i++) As[buf][a_k][a_row + 16 * i] = a_stage[i];
#pragma unroll
        for (int i = 0; i < 4; i++) Bs[buf][kb + 4 * i][jj] = b_stage[i];
    };

    float acc[4][4] = {};
    const int32_t ktiles = (K + S_BK - 1) / S_BK;
    load_tiles(0);
    store_tiles(0);
    __syncthreads();
    for (int32_t kt = 0; kt < ktiles; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        if (more) load_tiles((kt + 1) * S_BK);
#pragma unroll
        for (int kk = 0; kk < S_BK; kk++) {
            const float4 a = *reinterpret_cast<const float4 *>(&As[cur][kk][ty * 4]);
            const float4 b = *reinterpret_cast<const float4 *>(&Bs[cur][kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) store_tiles(cur ^ 1);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int32_t co = m0 + ty * 4 + i;
        if (co < M) store_row<float, 4>(P, acc[i], co, n0 + tx * 4);
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename TW, int KH, int KW>
void launch_typed(const Problem &P, int32_t act, cudaStream_t stream) {
    if (act == SD_DTYPE_F16) {
        dim3 grid((unsigned)((P.ncols + TC_BN - 1) / TC_BN),
                  (unsigned)((P.g.cout + TC_BM - 1) / TC_BM));
        igemm_tc_kernel<TW, KH, KW><<<grid, TC_THREADS, 0, stream>>>(P);
    } else {
        dim3 grid((unsigned)((P.ncols + S_BN - 1) / S_BN),
                  (unsigned)((P.g.cout + S_BM - 1) / S_BM));
        igemm_f32_kernel<TW, KH, KW><<<grid, S_THREADS, 0, stream>>>(P);
    }
}

template <int KH, int KW> void launch_sized(const Problem &P, cudaStream_t stream) {
    switch (P.g.w_dtype) {
    case SD_DTYPE_F16:
        launch_typed<__half, KH, KW>(P, P.g.act_dtype, stream);
        break;
    case SD_DTYPE_BF16:
        launch_typed<__nv_bfloat16, KH, KW>(P, P.g.act_dtype, stream);
        break;
    default:
        launch_typed<float, KH, KW>(P, P.g.act_dtype, stream);
        break;
    }
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_igemm_run(sd_ctx_t *ctx, const sd_cuda_igemm_t *g) {
    const int64_t k = (int64_t)g->cin * g->kh * g->kw;
    const int64_t ohw = (int64_t)g->oh * g->ow, ncols = ohw * g->batch;
    /* Tile indices are 32-bit; 65535 blocks of 64 channels in grid.y. */
    if (k > INT32_MAX || ncols > INT32_MAX - 256 || g->cout > 65535 * 64)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                       "conv2d/linear: GEMM of %lld x %lld x %lld exceeds the CUDA kernels' 32-bit "
                       "indexing",
                       (long long)g->cout, (long long)ncols, (long long)k);
    Problem P;
    P.g = *g;
    P.k = (int32_t)k;
    P.taps = g->kh * g->kw;
    P.ohw = (int32_t)ohw;
    P.ncols = (int32_t)ncols;
    cudaStream_t stream = sd_cuda(ctx)->stream;
    if (g->kh == 1 && g->kw == 1)
        launch_sized<1, 1>(P, stream);
    else if (g->kh == 3 && g->kw == 3)
        launch_sized<3, 3>(P, stream);
    else
        launch_sized<0, 0>(P, stream);
    return sd_cuda_check_launch(ctx, "conv2d");
}

sd_status_t sd_cuda_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                           const sd_tensor_t *w, const sd_tensor_t *bias,
                           const sd_tensor_t *residual, const sd_conv2d_params_t *p) {
    SD_TRY(sd_cuda_enter(ctx, "conv2d"));
    for (int i = 0; i < 4; i++)
        if (x->shape[i] > INT32_MAX || w->shape[i] > INT32_MAX || out->shape[i] > INT32_MAX)
            return sd_fail(ctx, SD_STATUS_UNSUPPORTED, "conv2d: dimensions beyond 2^31");
    sd_cuda_igemm_t g;
    memset(&g, 0, sizeof g);
    g.x = x->data;
    g.w = w->data;
    g.w_dtype = w->dtype;
    g.bias = bias ? bias->data : NULL;
    g.bias_dtype = bias ? bias->dtype : SD_DTYPE_F32;
    g.bias_n_stride = bias && bias->ndim == 2 ? w->shape[0] : 0;
    g.residual = residual ? residual->data : NULL;
    g.out = out->data;
    g.act_dtype = out->dtype;
    g.batch = (int32_t)x->shape[0];
    g.cin = (int32_t)x->shape[1];
    g.h = (int32_t)x->shape[2];
    g.w_ = (int32_t)x->shape[3];
    g.cout = (int32_t)w->shape[0];
    g.kh = (int32_t)w->shape[2];
    g.kw = (int32_t)w->shape[3];
    g.oh = (int32_t)out->shape[2];
    g.ow = (int32_t)out->shape[3];
    g.stride_h = p->stride_h;
    g.stride_w = p->stride_w;
    g.pad_top = p->pad_top;
    g.pad_left = p->pad_left;
    g.x_sw = 1;
    g.x_sh = g.w_;
    g.x_sc = (int64_t)g.h * g.w_;
    g.x_sn = g.x_sc * g.cin;
    g.o_sp = 1;
    g.o_sc = (int64_t)g.oh * g.ow;
    g.o_sn = g.o_sc * g.cout;
    return sd_cuda_igemm_run(ctx, &g);
}
