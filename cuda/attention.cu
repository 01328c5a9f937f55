/*
 * attention.cu - multi-head scaled dot-product attention on the GPU: flash attention on
 * tensor cores for f16, a simpler float32 kernel for f32 (and for f16 heads wider than 160).
 *
 * q: (B, Tq, C), k, v: (B, Tk, C), out: (B, Tq, C), f32/f16; H heads of d = C/H channels,
 * head h being channels [h*d, (h+1)*d). ref: torch.nn.functional.scaled_dot_product_attention
 * (diffusers' AttnProcessor2_0); causal as CLIP's mask (query i sees keys 0..i); as
 * csrc/cpu/kernels/attention.c.
 *
 * Neither kernel materialises the Tq x Tk score matrix: keys and values stream through
 * shared memory in tiles, and each query row keeps a running maximum m, a running sum l
 * and an unnormalised output o, rescaled by exp(m_old - m_new) whenever the maximum grows
 * (the online softmax of Milakov & Gimelshein; flash attention, Dao et al.). Output = o / l.
 *
 * Flash kernel (f16, head dim d <= 160 padded to a multiple of 16, tile D): a block of 4
 * warps owns 64 query rows of one (batch, head), 16 rows per warp; K/V tiles of 64 keys are
 * double-buffered in shared memory with cp.async. Per tile each warp computes its 16 x 64
 * score block S = Q K^T with mma.sync m16n8k16 (f16 in, f32 accumulate), masks and
 * exponentiates it in registers (base-2: scores are pre-multiplied by scale * log2 e), and
 * feeds P, rounded to f16, straight from the accumulator registers into the next
 * mma.sync as the A operand of O += P V: the m16n8 accumulator layout of two adjacent
 * score tiles is exactly the m16n8k16 A-fragment layout (PTX ISA, "Matrix Fragments for
 * mma.m16n8k16"), so P never touches shared memory. A thread's accumulators sit in rows
 * lane/4 and lane/4 + 8, which lets it rescale its rows of O in registers; row maxima and
 * sums combine over the 4 lanes of a quad with shuffles. Fragments are loaded with
 * ldmatrix (.trans for V). Row pitches of D + 8 halves make every ldmatrix phase hit 32
 * distinct banks. Shared memory: (64 + 4 * 64) rows of D + 8 halves, 105 KB at D = 160;
 * a GPU that grants a block less (sm_86 / sm_89: 99 KB) runs such heads on the simple kernel.
 *
 * Simple kernel (f32 inputs, or f16 with 160 < d <= 256, or a GPU without the shared
 * memory for the flash tile): a block of 4 warps owns 16 query rows; 32-key tiles are
 * converted to f32 in shared memory; a lane scores one key of the tile against a row, the
 * warp reduces max and sum with shuffles, and each lane accumulates the output channels
 * lane, lane + 32, ... (up to 8 of them). Float32 throughout, exp through expf as the CPU.
 */
#include "attention.cuh"

/* Dynamic shared memory of both kernels (one declaration, so the templates agree). */
extern __shared__ __align__(16) unsigned char sd_attn_smem[];

namespace {

#define FA_ROWS    64 /* query rows per block: 4 warps x 16 */
#define FA_KEYS    64 /* keys per tile */
#define FA_THREADS 128
#define FA_MAX_D   160

#define SA_ROWS    16 /* query rows per block: 4 warps x 4 */
#define SA_KEYS    32 /* keys per tile: one per lane */
#define SA_THREADS 128
#define SA_MAX_D   256

struct AttnArgs {
    const void *q, *k, *v;
    void *out;
    int64_t tq, tk, c;
    int32_t d;
    float scale;   /* softmax scale, natural-log domain */
    bool causal;   /* requires tq == tk (checked by ops.c) */
    bool vec;      /* flash: d, c multiples of 8 and q, k, v 16-byte aligned (cp.async) */
    bool pair_out; /* flash: d, c even and out 4-byte aligned (half2 stores) */
};

/* ---------------------------------------------------------------------------------------
 * PTX wrappers (sm_80+; create() refuses older GPUs, other targets trap)
 * ------------------------------------------------------------------------------------- */

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src)
                 : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

/* Waits until at most N committed groups of this thread are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i. Lane t gets
 * (row t/4, cols 2(t%4), 2(t%4)+1) of each matrix, or with .trans (rows 2(t%4), 2(t%4)+1,
 * col t/4). */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half *p) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half *p) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
#else
    __trap();
#endif
}

/* d (16x8 f32) += a (16x16 f16, row) * b (16x8 f16, col). */
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

/* Two floats as an f16x2 register: lo in bits 0..15 (the lower-indexed element). */
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    return (uint32_t)__half_as_ushort(__float2half_rn(lo)) |
           ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
}

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

/* Loads rows [row0, row0 + 64) x channels [0, D) of one head into a 64 x (D + 8) shared
 * tile; rows past `rows` and channels past d are zero (so they add nothing to Q K^T and
 * P V). src points at (batch, row 0, head's first channel), rows `c` elements apart. */
template <int D>
__device__ __forceinline__ void load_tile(__half *dst, const __half *src, int64_t row0,
                                          int64_t rows, int64_t c, int d, bool vec) {
    constexpr int LD = D + 8;
    if (vec) {
        constexpr int CHUNKS = D / 8; /* 16-byte pieces per row */
        for (int i = threadIdx.x; i < 64 * CHUNKS; i += FA_THREADS) {
            const int r = i / CHUNKS, col = (i - r * CHUNKS) * 8;
            __half *s = dst + r * LD + col;
            if (row0 + r < rows && col < d) /* d % 8 == 0: the piece is wholly inside */
                cp_async16(s, src + (row0 + r) * c + col);
            else
                *reinterpret_cast<uint4 *>(s) = make_uint4(0, 0, 0, 0);
        }
    } else {
        for (int i = threadIdx.x; i < 64 * D; i += FA_THREADS) {
            const int r = i / D, col = i - r * D;
            dst[r * LD + col] =
                row0 + r < rows && col < d ? src[(row0 + r) * c + col] : __float2half_rn(0.0f);
        }
    }
}

/* q, k, v, out: f16 as above, d <= D (D a multiple of 16, <= 160). Grid (ceil(Tq / 64), H,
 * B), 128 threads, (64 + 4 * 64) * (D + 8) halves of dynamic shared memory.
 * ref: F.scaled_dot_product_attention (is_causal for CLIP). */
template <int D> __global__ void __launch_bounds__(FA_THREADS) flash_attn_kernel(const AttnArgs a) {
    constexpr int LD = D + 8, TILE = 64 * LD;
    __half *Qs = reinterpret_cast<__half *>(sd_attn_smem); /* [64][LD] */
    __half *Ks = Qs + TILE;                                /* [2][64][LD] */
    __half *Vs = Ks + 2 * TILE;                            /* [2][64][LD] */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t q0 = (int64_t)blockIdx.x * FA_ROWS;
    const int64_t head = (int64_t)blockIdx.y * a.d, batch = blockIdx.z;
    const __half *qg = static_cast<const __half *>(a.q) + batch * a.tq * a.c + head;
    const __half *kg = static_cast<const __half *>(a.k) + batch * a.tk * a.c + head;
    const __half *vg = static_cast<const __half *>(a.v) + batch * a.tk * a.c + head;

    /* Causal: keys past the block's last query are masked for every row; skip their tiles. */
    const int64_t kv_end = a.causal ? min(a.tk, q0 + FA_ROWS) : a.tk;
    const int tiles = (int)((kv_end + FA_KEYS - 1) / FA_KEYS);

    load_tile<D>(Qs, qg, q0, a.tq, a.c, a.d, a.vec);
    load_tile<D>(Ks, kg, 0, a.tk, a.c, a.d, a.vec);
    load_tile<D>(Vs, vg, 0, a.tk, a.c, a.d, a.vec);
    cp_async_commit();

    const int g = lane >> 2, t4 = lane & 3;   /* accumulator row group, column pair */
    const int lm = lane >> 3, lr = lane & 7;  /* ldmatrix: matrix, row within it */
    const int64_t row_a = q0 + warp * 16 + g; /* rows of accumulator elements 0,1 */
    const int64_t row_b = row_a + 8;          /* and 2,3 */
    const float scale_log2 = a.scale * 1.4426950408889634f;
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

    for (int it = 0; it < tiles; it++) {
        const int buf = it & 1;
        if (it + 1 < tiles) { /* prefetch the next tile into the other buffer */
            load_tile<D>(Ks + (buf ^ 1) * TILE, kg, (int64_t)(it + 1) * FA_KEYS, a.tk, a.c, a.d,
                         a.vec);
            load_tile<D>(Vs + (buf ^ 1) * TILE, vg, (int64_t)(it + 1) * FA_KEYS, a.tk, a.c, a.d,
                         a.vec);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const __half *Kb = Ks + buf * TILE, *Vb = Vs + buf * TILE;

        /* S (16 x 64 per warp) = Q K^T: 8 key tiles of 8 columns. */
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            uint32_t qa[4]; /* rows 0-7 / 8-15 x dims 0-7 / 8-15 of this k-step */
            ldmatrix_x4(qa, Qs + (warp * 16 + (lm & 1) * 8 + lr) * LD + ks * 16 + (lm >> 1) * 8);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t kb[4]; /* keys 0-7 x dims 0-7, 8-15; keys 8-15 x dims 0-7, 8-15 */
                ldmatrix_x4(kb, Kb + (np * 16 + (lm >> 1) * 8 + lr) * LD + ks * 16 + (lm & 1) * 8);
                mma_16816(s[2 * np], qa, kb[0], kb[1]);
                mma_16816(s[2 * np + 1], qa, kb[2], kb[3]);
            }
        }

        /* Mask, scale to base 2, update the running maxima. */
        const int64_t key0 = (int64_t)it * FA_KEYS;
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t key = key0 + nt * 8 + 2 * t4 + (e & 1);
                const int64_t row = e < 2 ? row_a : row_b;
                float v = s[nt][e] * scale_log2;
                if (key >= a.tk || (a.causal && key > row)) v = -INFINITY;
                s[nt][e] = v;
                if (e < 2)
                    mx_a = fmaxf(mx_a, v);
                else
                    mx_b = fmaxf(mx_b, v);
            }
#pragma unroll
        for (int o2 = 1; o2 <= 2; o2 <<= 1) { /* the 4 lanes of a quad share the rows */
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
        }
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        /* A row with every key so far masked keeps m = -inf: exponentiate against 0 then,
         * so p and alpha come out 0 rather than NaN. */
        const float base_a = mn_a == -INFINITY ? 0.0f : mn_a;
        const float base_b = mn_b == -INFINITY ? 0.0f : mn_b;
        const float alpha_a = exp2f(m_a - base_a), alpha_b = exp2f(m_b - base_b);
        m_a = mn_a;
        m_b = mn_b;
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - base_a);
            s[nt][1] = exp2f(s[nt][1] - base_a);
            s[nt][2] = exp2f(s[nt][2] - base_b);
            s[nt][3] = exp2f(s[nt][3] - base_b);
            sum_a += s[nt][0] + s[nt][1];
            sum_b += s[nt][2] + s[nt][3];
        }
        l_a = l_a * alpha_a + sum_a; /* per-lane partial sums; the quad adds them at the end */
        l_b = l_b * alpha_b + sum_b;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            o[nt][0] *= alpha_a;
            o[nt][1] *= alpha_a;
            o[nt][2] *= alpha_b;
            o[nt][3] *= alpha_b;
        }

        /* O += P V: 4 k-steps of 16 keys; P's A fragment is two adjacent score tiles. */
#pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++) {
            const uint32_t pa[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]),
                                    pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                    pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t vb[4]; /* keys 0-7, 8-15 x dims 0-7; keys 0-7, 8-15 x dims 8-15 */
                ldmatrix_x4_trans(vb, Vb + (kk * 16 + (lm & 1) * 8 + lr) * LD + dp * 16 +
                                          (lm >> 1) * 8);
                mma_16816(o[2 * dp], pa, vb[0], vb[1]);
                mma_16816(o[2 * dp + 1], pa, vb[2], vb[3]);
            }
        }
        __syncthreads(); /* this buffer is refilled by the next iteration's prefetch */
    }

#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
    }
    const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
    __half *og = static_cast<__half *>(a.out) + batch * a.tq * a.c + head;
    auto store2 = [&](int64_t row, int col, float x0, float x1) {
        if (row >= a.tq || col >= a.d) return;
        __half *p = og + row * a.c + col;
        if (a.pair_out) { /* d even: col + 1 < d too */
            *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(x0, x1);
        } else {
            p[0] = __float2half_rn(x0);
            if (col + 1 < a.d) p[1] = __float2half_rn(x1);
        }
    };
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        const int col = nt * 8 + 2 * t4;
        store2(row_a, col, o[nt][0] * inv_a, o[nt][1] * inv_a);
        store2(row_b, col, o[nt][2] * inv_b, o[nt][3] * inv_b);
    }
}

/* q, k, v, out: T as above, d <= 256. Grid (ceil(Tq / 16), H, B), 128 threads, (16 d +
 * 32 (d + 1) + 32 d) floats of dynamic shared memory. ref: F.scaled_dot_product_attention. */
template <typename T>
__global__ void __launch_bounds__(SA_THREADS) attn_simple_kernel(const AttnArgs a) {
    const int d = a.d;
    float *Qs = reinterpret_cast<float *>(sd_attn_smem); /* [16][d] */
    float *Ks = Qs + SA_ROWS * d;                        /* [32][d + 1]: lanes read rows */
    float *Vs = Ks + SA_KEYS * (d + 1);                  /* [32][d] */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t q0 = (int64_t)blockIdx.x * SA_ROWS;
    const int64_t head = (int64_t)blockIdx.y * d, batch = blockIdx.z;
    const T *qg = static_cast<const T *>(a.q) + batch * a.tq * a.c + head;
    const T *kg = static_cast<const T *>(a.k) + batch * a.tk * a.c + head;
    const T *vg = static_cast<const T *>(a.v) + batch * a.tk * a.c + head;

    for (int i = threadIdx.x; i < SA_ROWS * d; i += SA_THREADS) {
        const int r = i / d, e = i - r * d;
        Qs[i] = q0 + r < a.tq ? sd_to_f32(qg[(q0 + r) * a.c + e]) : 0.0f;
    }
    float m[4], l[4], o[4][8];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) o[r][i] = 0.0f;
    }
    const int64_t kv_end = a.causal ? min(a.tk, q0 + SA_ROWS) : a.tk;
    for (int64_t j0 = 0; j0 < kv_end; j0 += SA_KEYS) {
        __syncthreads(); /* the previous tile is consumed (and Q is loaded) */
        for (int i = threadIdx.x; i < SA_KEYS * d; i += SA_THREADS) {
            const int r = i / d, e = i - r * d;
            const bool in = j0 + r < a.tk;
            Ks[r * (d + 1) + e] = in ? sd_to_f32(kg[(j0 + r) * a.c + e]) : 0.0f;
            Vs[r * d + e] = in ? sd_to_f32(vg[(j0 + r) * a.c + e]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int64_t row = q0 + warp * 4 + r; /* uniform over the warp */
            if (row >= a.tq) continue;
            const int64_t key = j0 + lane;
            const bool valid = key < a.tk && (!a.causal || key <= row);
            const float *qr = Qs + (warp * 4 + r) * d, *kr = Ks + lane * (d + 1);
            float dot = 0.0f;
            for (int e = 0; e < d; e++) dot = fmaf(qr[e], kr[e], dot);
            const float s = valid ? dot * a.scale : -INFINITY;
            const float mn = fmaxf(m[r], sd_warp_max(s));
            if (mn == -INFINITY) continue; /* every key so far masked (uniform) */
            const float p = valid ? expf(s - mn) : 0.0f, alpha = expf(m[r] - mn);
            l[r] = l[r] * alpha + sd_warp_sum(p);
            m[r] = mn;
#pragma unroll
            for (int i = 0; i < 8; i++) o[r][i] *= alpha;
            for (int j = 0; j < SA_KEYS; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
                const float *vr = Vs + j * d;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    if (lane + 32 * i < d) o[r][i] = fmaf(pj, vr[lane + 32 * i], o[r][i]);
            }
        }
    }
    T *og = static_cast<T *>(a.out) + batch * a.tq * a.c + head;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int64_t row = q0 + warp * 4 + r;
        if (row >= a.tq) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (lane + 32 * i < d) og[row * a.c + lane + 32 * i] = sd_from_f32<T>(o[r][i] * inv);
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

constexpr int flash_smem(int dpad) {
    return (FA_ROWS + 4 * FA_KEYS) * (dpad + 8) * (int)sizeof(__half);
}
constexpr int simple_smem(int d) {
    return (SA_ROWS * d + SA_KEYS * (d + 1) + SA_KEYS * d) * (int)sizeof(float);
}

/* The head sizes the flash kernel is compiled for (d is padded up to the next one). */
#define FA_FOR_EACH_D(X) X(16) X(32) X(48) X(64) X(80) X(96) X(128) X(160)

int flash_tile_for(int d) {
#define FA_PICK(D)                                                                                 \
    if (d <= D) return D;
    FA_FOR_EACH_D(FA_PICK)
#undef FA_PICK
    return 0;
}

void launch_flash(int dpad, const AttnArgs &a, dim3 grid, cudaStream_t stream) {
    switch (dpad) {
#define FA_CASE(D)                                                                                 \
    case D:                                                                                        \
        flash_attn_kernel<D><<<grid, FA_THREADS, flash_smem(D), stream>>>(a);                      \
        break;
        FA_FOR_EACH_D(FA_CASE)
#undef FA_CASE
    default:
        break;
    }
}

} // namespace

cudaError_t sd_cuda_attention_setup(sd_cuda_backend_t *cb) {
    cudaError_t err = cudaSuccess;
#define FA_SETUP(D)                                                                                \
    if (err == cudaSuccess && flash_smem(D) <= cb->smem_optin)                                     \
        err = cudaFuncSetAttribute(flash_attn_kernel<D>,                                           \
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem(D));
    FA_FOR_EACH_D(FA_SETUP)
#undef FA_SETUP
    const int simple = SD_MIN(simple_smem(SA_MAX_D), cb->smem_optin);
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(attn_simple_kernel<float>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, simple);
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(attn_simple_kernel<__half>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, simple);
    return err;
}

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                              const sd_tensor_t *k, const sd_tensor_t *v, int32_t heads,
                              bool causal, float scale) {
    SD_TRY(sd_cuda_enter(ctx, "attention"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t b = q->shape[0], c = q->shape[2], d = c / heads;
    if (b > 65535 || heads > 65535)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                       "attention: batch %lld or %d heads beyond the CUDA grid's 65535",
                       (long long)b, (int)heads);
    AttnArgs a;
    a.q = q->data, a.k = k->data, a.v = v->data, a.out = out->data;
    a.tq = q->shape[1], a.tk = k->shape[1], a.c = c;
    a.d = (int32_t)SD_MIN(d, (int64_t)INT32_MAX);
    a.scale = scale;
    a.causal = causal;
    a.vec = d % 8 == 0 && c % 8 == 0 && sd_cuda_aligned(q->data, 16) &&
            sd_cuda_aligned(k->data, 16) && sd_cuda_aligned(v->data, 16);
    a.pair_out = d % 2 == 0 && c % 2 == 0 && sd_cuda_aligned(out->data, 4);

    const int dpad = d <= FA_MAX_D ? flash_tile_for((int)d) : 0;
    if (q->dtype == SD_DTYPE_F16 && dpad > 0 && flash_smem(dpad) <= cb->smem_optin) {
        const dim3 grid((unsigned)((a.tq + FA_ROWS - 1) / FA_ROWS), (unsigned)heads, (unsigned)b);
        launch_flash(dpad, a, grid, cb->stream);
        return sd_cuda_check_launch(ctx, "attention");
    }
    if (d > SA_MAX_D || simple_smem((int)d) > cb->smem_optin)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                       "attention: head size %lld is beyond the CUDA kernels' %d", (long long)d,
                       SA_MAX_D);
    const dim3 grid((unsigned)((a.tq + SA_ROWS - 1) / SA_ROWS), (unsigned)heads, (unsigned)b);
    if (q->dtype == SD_DTYPE_F16)
        attn_simple_kernel<__half><<<grid, SA_THREADS, simple_smem((int)d), cb->stream>>>(a);
    else
        attn_simple_kernel<float><<<grid, SA_THREADS, simple_smem((int)d), cb->stream>>>(a);
    return sd_cuda_check_launch(ctx, "attention");
}
