/*
 * gemm-kernels.c - the per-instruction-set hot loops: GEMM microkernel, panel packing
 * (with F16/BF16 -> F32 conversion and on-the-fly im2col) and vector math (exp, SiLU,
 * GELU). Compiled once per instruction set with SD_ISA set (see CMakeLists.txt), using
 * GCC/Clang vector extensions so one source serves 128-, 256- and 512-bit vectors.
 *
 * Packed layouts: an A micro-panel holds MR rows interleaved per k (a[k*MR + r]); a B
 * micro-panel holds NR columns per k (b[k*NR + c]). Both are 64-byte aligned.
 */
#include "../cpu.h"

#include <math.h>
#include <string.h>

#define SD_ISA_GENERIC 0
#define SD_ISA_AVX2    1
#define SD_ISA_AVX512  2

#if SD_ISA == SD_ISA_AVX512
#include <immintrin.h>
#define VB          64
#define MR          12
#define NR          32
#define MC          144
#define KC          256
#define NC          4096
#define ISA_NAME    "avx512"
#define KERNELS_SYM sd_cpu_kernels_avx512
#elif SD_ISA == SD_ISA_AVX2
#include <immintrin.h>
#define VB          32
#define MR          6
#define NR          16
#define MC          120
#define KC          256
#define NC          4096
#define ISA_NAME    "avx2"
#define KERNELS_SYM sd_cpu_kernels_avx2
#else
#define VB          16
#define MR          4
#define NR          8
#define MC          64
#define KC          256
#define NC          2048
#define ISA_NAME    "generic"
#define KERNELS_SYM sd_cpu_kernels_generic
#endif

#define VW (VB / 4)  /* floats per vector */
#define NV (NR / VW) /* vectors per microtile row */

typedef float vf __attribute__((vector_size(VB)));
typedef float vf_u __attribute__((vector_size(VB), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VB)));

static inline vf vload(const float *p) {
    return *(const vf_u *)p;
}
static inline void vstore(float *p, vf v) {
    *(vf_u *)p = v;
}
/* Every lane s. Not written (vf){0} + s: that must add (0 + -0 is +0), and the scalar add
 * before the broadcast cost the microkernel a fifth of its speed. */
static inline vf vsplat(float s) {
#if SD_ISA == SD_ISA_AVX512
    return (vf)_mm512_set1_ps(s);
#elif SD_ISA == SD_ISA_AVX2
    return (vf)_mm256_set1_ps(s);
#else
    return (vf){s, s, s, s};
#endif
}
static inline vf vselect(vi mask, vf a, vf b) {
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}
static inline vf vmax(vf a, vf b) {
    return vselect(a > b, a, b);
}
static inline vf vmin(vf a, vf b) {
    return vselect(a < b, a, b);
}

/* ---------------------------------------------------------------------------------------
 * Microkernel: C[MR x NR] (=|+=) alpha * A-panel x B-panel, plus the epilogue terms.
 * ------------------------------------------------------------------------------------- */

static void ukernel(int64_t kc, const float *restrict a, const float *restrict b, float *restrict c,
                    int64_t ldc, const sd_tile_epilogue_t *ep) {
    vf acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    /* Accumulating, the epilogue reads the tile's rows of C: fetched (for writing) now, so
     * that their misses overlap the products rather than stall it. */
    if (ep->accumulate) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
            for (int l = 0; l < NR; l += 16) __builtin_prefetch(c + r * ldc + l, 1, 3);
    }

    for (int64_t k = 0; k < kc; k++) {
        vf bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = *(const vf *)(b + v * VW);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            vf av = vsplat(a[r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] += av * bv[v];
        }
        a += MR;
        b += NR;
    }

    const vf alpha = vsplat(ep->alpha);
    if (ep->accumulate) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) {
                float *cp = c + r * ldc + v * VW;
                vstore(cp, vload(cp) + acc[r][v] * alpha);
            }
        return;
    }
    for (int r = 0; r < MR; r++) {
        vf row_bias = vsplat(ep->bias_r ? ep->bias_r[r] : 0.0f);
        for (int v = 0; v < NV; v++) {
            vf val = acc[r][v] * alpha + row_bias;
            if (ep->bias_c) val += vload(ep->bias_c + v * VW);
            if (ep->res) val += vload(ep->res + r * ldc + v * VW);
            vstore(c + r * ldc + v * VW, val);
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Conversion of a contiguous run to float32.
 * ------------------------------------------------------------------------------------- */

static void f16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
#if SD_ISA == SD_ISA_AVX512
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#elif SD_ISA == SD_ISA_AVX2
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = sd_f16_to_f32(src[i]);
}

static void narrow_n(uint16_t *dst, const float *src, int32_t dtype, int64_t n) {
    int64_t i = 0;
    if (dtype == SD_DTYPE_F16) {
#if SD_ISA == SD_ISA_AVX512
        for (; i + 16 <= n; i += 16)
            _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
                                                                      _MM_FROUND_TO_NEAREST_INT));
#elif SD_ISA == SD_ISA_AVX2
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(dst + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) dst[i] = sd_f32_to_f16(src[i]);
        return;
    }
    for (; i < n; i++) dst[i] = sd_f32_to_bf16(src[i]);
}

static void load_f32(float *dst, const void *src, int32_t dtype, int64_t offset, int64_t n) {
    switch (dtype) {
    case SD_DTYPE_F32:
        memcpy(dst, (const float *)src + offset, (size_t)n * sizeof(float));
        break;
    case SD_DTYPE_F16:
        f16_to_f32(dst, (const uint16_t *)src + offset, n);
        break;
    default: { /* BF16 */
        const uint16_t *s = (const uint16_t *)src + offset;
        for (int64_t i = 0; i < n; i++) dst[i] = sd_bf16_to_f32(s[i]);
    }
    }
}

/* ---------------------------------------------------------------------------------------
 * Packing
 * ------------------------------------------------------------------------------------- */

#if SD_ISA != SD_ISA_AVX512
/* Interleaves `rows` rows of kc floats (tmp[r*kc + k]) into dst[k*width + r], zero-filling
 * rows past `rows` up to `width`. */
static void interleave(float *restrict dst, const float *restrict tmp, int rows, int width,
                       int64_t kc) {
    if (rows == width) {
        for (int64_t k = 0; k < kc; k++)
            for (int r = 0; r < width; r++) dst[k * width + r] = tmp[r * kc + k];
        return;
    }
    for (int64_t k = 0; k < kc; k++) {
        for (int r = 0; r < rows; r++) dst[k * width + r] = tmp[r * kc + k];
        for (int r = rows; r < width; r++) dst[k * width + r] = 0.0f;
    }
}
#endif

#if SD_ISA == SD_ISA_AVX512
/* Up to 16 elements of a row as floats, zero-filled past n. */
static inline __m512 load_row16(const void *src, int32_t dtype, int64_t offset, int n) {
    __mmask16 m = (__mmask16)((1u << n) - 1);
    switch (dtype) {
    case SD_DTYPE_F32:
        return _mm512_maskz_loadu_ps(m, (const float *)src + offset);
    case SD_DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)src + offset));
    default: /* BF16: the high half of a float */
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)src + offset)),
            16));
    }
}

/* In-register transpose of a 16x16 float block: r[i] lane j becomes r[j] lane i. */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int j = 0; j < 4; j++) {
        __m512d a = _mm512_castps_pd(t[4 * j]), b = _mm512_castps_pd(t[4 * j + 1]);
        __m512d c = _mm512_castps_pd(t[4 * j + 2]), d = _mm512_castps_pd(t[4 * j + 3]);
        u[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* Now u[4j+m] lane group g (4 floats) holds rows 4j..4j+3 of column 4g+m. */
    for (int m = 0; m < 4; m++) {
        __m512 a = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88); /* groups 0,2 | 0,2 */
        __m512 b = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd); /* groups 1,3 | 1,3 */
        __m512 c = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
        __m512 d = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
        r[m] = _mm512_shuffle_f32x4(a, c, 0x88);      /* column m */
        r[8 + m] = _mm512_shuffle_f32x4(a, c, 0xdd);  /* column 8+m */
        r[4 + m] = _mm512_shuffle_f32x4(b, d, 0x88);  /* column 4+m */
        r[12 + m] = _mm512_shuffle_f32x4(b, d, 0xdd); /* column 12+m */
    }
}

/* Packs `rows` (<= 16) rows of kc elements, row i starting at row_offset[i] of src, into
 * dst[k*stride + i] for i < lanes (rows past `rows` are zero). */
static void pack_rows_t16(float *restrict dst, const void *src, int32_t dtype,
                          const int64_t *row_offset, int rows, int lanes, int stride, int64_t kc) {
    const __mmask16 out_mask = (__mmask16)((1u << lanes) - 1);
    const size_t es = dtype == SD_DTYPE_F32 ? 4 : 2;
    for (int64_t k = 0; k < kc; k += 16) {
        int n = (int)SD_MIN((int64_t)16, kc - k);
        __m512 r[16];
        /* The rows are as many streams, far apart (a direct conv's weight rows are Cin*9
         * elements long): fetched 512 bytes ahead, which the hardware prefetchers did not
         * (conv 1280->1280 on 2x8x8, whose packing of F16 weights is a large part: 5-8%). */
        for (int i = 0; i < rows; i++)
            __builtin_prefetch((const char *)src + (size_t)(row_offset[i] + k) * es + 512, 0, 0);
        for (int i = 0; i < 16; i++)
            r[i] = i < rows ? load_row16(src, dtype, row_offset[i] + k, n) : _mm512_setzero_ps();
        transpose16(r);
        for (int kk = 0; kk < n; kk++)
            _mm512_mask_storeu_ps(dst + (k + kk) * stride, out_mask, r[kk]);
    }
}
#endif

static void pack_a(const sd_gemm_a_t *a, int64_t m, int64_t i0, int64_t k0, int64_t mc, int64_t kc,
                   float *dst) {
    float tmp[MR * KC];
    for (int64_t p = 0; p * MR < mc; p++, dst += MR * kc) {
        int64_t r0 = i0 + p * MR;
        int rows = (int)SD_MIN((int64_t)MR, SD_MIN(m - r0, mc - p * MR));
        if (a->col_major) {
            /* Each k holds the rows contiguously. */
            for (int64_t k = 0; k < kc; k++) {
                float *d = dst + k * MR;
                load_f32(d, a->data, a->dtype, (k0 + k) * a->ld + r0, rows);
                for (int r = rows; r < MR; r++) d[r] = 0.0f;
            }
            continue;
        }
#if SD_ISA == SD_ISA_AVX512
        int64_t offs[16];
        for (int r = 0; r < rows; r++) offs[r] = (r0 + r) * a->ld + k0;
        pack_rows_t16(dst, a->data, a->dtype, offs, rows, MR, MR, kc);
        (void)tmp;
#else
        for (int r = 0; r < rows; r++)
            load_f32(tmp + r * kc, a->data, a->dtype, (r0 + r) * a->ld + k0, kc);
        interleave(dst, tmp, rows, MR, kc);
#endif
    }
}

static void pack_b_kn(const sd_gemm_b_t *b, int64_t n, int64_t k0, int64_t j0, int64_t kc,
                      int64_t nc, float *dst) {
    for (int64_t p = 0; p * NR < nc; p++, dst += NR * kc) {
        int64_t c0 = j0 + p * NR;
        int cols = (int)SD_MIN((int64_t)NR, SD_MIN(n - c0, nc - p * NR));
        for (int64_t k = 0; k < kc; k++) {
            float *d = dst + k * NR;
            load_f32(d, b->data, b->dtype, (k0 + k) * b->ld + c0, cols);
            for (int c = cols; c < NR; c++) d[c] = 0.0f;
        }
    }
}

static void pack_b_nk(const sd_gemm_b_t *b, int64_t n, int64_t k0, int64_t j0, int64_t kc,
                      int64_t nc, float *dst) {
    float tmp[NR * KC];
    for (int64_t p = 0; p * NR < nc; p++, dst += NR * kc) {
        int64_t c0 = j0 + p * NR;
        int cols = (int)SD_MIN((int64_t)NR, SD_MIN(n - c0, nc - p * NR));
#if SD_ISA == SD_ISA_AVX512
        /* Two 16-column halves, each a transposed block of rows. */
        for (int h = 0; h < NR / 16; h++) {
            int64_t offs[16];
            int half = SD_MAX(0, SD_MIN(16, cols - 16 * h));
            for (int c = 0; c < half; c++) offs[c] = (c0 + 16 * h + c) * b->ld + k0;
            pack_rows_t16(dst + 16 * h, b->data, b->dtype, offs, half, 16, NR, kc);
        }
        (void)tmp;
#else
        for (int c = 0; c < cols; c++)
            load_f32(tmp + c * kc, b->data, b->dtype, (c0 + c) * b->ld + k0, kc);
        interleave(dst, tmp, cols, NR, kc);
#endif
    }
}

/* A run of panel columns that lie in one output row of one image. */
typedef struct {
    int c0, len;
    const float *img;
    int64_t oy, ox0;
} im2col_seg_t;

static void pack_b_im2col(const sd_gemm_b_t *b, int64_t n, int64_t k0, int64_t j0, int64_t kc,
                          int64_t nc, float *dst) {
    const sd_gemm_conv_t *cv = &b->conv;
    const float *x = b->data;
    const int64_t ohw = cv->oh * cv->ow, khw = cv->kh * cv->kw, hw = cv->h * cv->w;
    for (int64_t p = 0; p * NR < nc; p++, dst += NR * kc) {
        int64_t c0 = j0 + p * NR;
        int cols = (int)SD_MIN((int64_t)NR, SD_MIN(n - c0, nc - p * NR));
        im2col_seg_t segs[NR];
        int nseg = 0;
        for (int c = 0; c < cols;) {
            int64_t j = c0 + c, img = j / ohw, pix = j % ohw;
            int64_t oy = pix / cv->ow, ox = pix % cv->ow;
            int len = (int)SD_MIN((int64_t)(cols - c), cv->ow - ox);
            segs[nseg++] = (im2col_seg_t){c, len, x + img * cv->image_stride, oy, ox};
            c += len;
        }
        int64_t ci = k0 / khw, ky = (k0 % khw) / cv->kw, kx = k0 % cv->kw;
        for (int64_t k = 0; k < kc; k++) {
            float *d = dst + k * NR;
            for (int c = cols; c < NR; c++) d[c] = 0.0f;
            for (int s = 0; s < nseg; s++) {
                const im2col_seg_t *sg = &segs[s];
                float *ds = d + sg->c0;
                int64_t iy = sg->oy * cv->stride_h - cv->pad_top + ky;
                if (iy < 0 || iy >= cv->h) {
                    memset(ds, 0, (size_t)sg->len * sizeof(float));
                    continue;
                }
                const float *src = sg->img + ci * hw + iy * cv->w;
                int64_t ix0 = sg->ox0 * cv->stride_w - cv->pad_left + kx;
                if (cv->stride_w == 1) {
                    if (sg->len == NR && ix0 >= 0 && ix0 + NR <= cv->w) {
#pragma GCC unroll 4
                        for (int v = 0; v < NV; v++) vstore(ds + v * VW, vload(src + ix0 + v * VW));
                        continue;
                    }
                    int lo = (int)SD_MIN((int64_t)sg->len, SD_MAX((int64_t)0, -ix0));
                    int hi = (int)SD_MAX((int64_t)lo, SD_MIN((int64_t)sg->len, cv->w - ix0));
                    for (int t = 0; t < lo; t++) ds[t] = 0.0f;
                    for (int t = lo; t < hi; t++) ds[t] = src[ix0 + t];
                    for (int t = hi; t < sg->len; t++) ds[t] = 0.0f;
                } else {
                    for (int t = 0; t < sg->len; t++) {
                        int64_t ix = ix0 + (int64_t)t * cv->stride_w;
                        ds[t] = ix >= 0 && ix < cv->w ? src[ix] : 0.0f;
                    }
                }
            }
            if (++kx == cv->kw) {
                kx = 0;
                if (++ky == cv->kh) ky = 0, ci++;
            }
        }
    }
}

static void pack_b(const sd_gemm_b_t *b, int64_t n, int64_t k0, int64_t j0, int64_t kc, int64_t nc,
                   float *dst) {
    switch (b->kind) {
    case SD_GEMM_B_KN:
        pack_b_kn(b, n, k0, j0, kc, nc, dst);
        break;
    case SD_GEMM_B_NK:
        pack_b_nk(b, n, k0, j0, kc, nc, dst);
        break;
    default:
        pack_b_im2col(b, n, k0, j0, kc, nc, dst);
        break;
    }
}

/* ---------------------------------------------------------------------------------------
 * Vector math
 * ------------------------------------------------------------------------------------- */

/* exp(x) for x in float range: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6
 * polynomial (relative error ~1e-7), 2^n through the exponent bits. Inputs are clamped to
 * [-87.3, 88.7], so exp never returns denormals or infinity. */
static inline vf vexp(vf x) {
    x = vmin(vmax(x, vsplat(-87.3365f)), vsplat(88.7228f));
    const vf magic = vsplat(12582912.0f); /* 1.5 * 2^23: rounds to the nearest integer */
    vf n = (x * vsplat(1.44269504088896341f) + magic) - magic;
    vf r = x - n * vsplat(0.693359375f);
    r = r - n * vsplat(-2.12194440e-4f);
    vf p = vsplat(1.0f / 720.0f);
    p = p * r + vsplat(1.0f / 120.0f);
    p = p * r + vsplat(1.0f / 24.0f);
    p = p * r + vsplat(1.0f / 6.0f);
    p = p * r + vsplat(0.5f);
    p = p * r + vsplat(1.0f);
    p = p * r + vsplat(1.0f);
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

static inline float sexp(float x) {
    float buf[VW] = {x};
    vstore(buf, vexp(vload(buf)));
    return buf[0];
}

/* Phi(x) * x with Phi the standard normal CDF, through erfc so both tails keep their
 * relative accuracy: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), the Chebyshev fit
 * from Numerical Recipes (fractional error < 1.2e-7 for all z >= 0). */
static inline vf vgelu(vf x) {
    vi neg = x < 0;
    vf z = vselect(neg, -x, x) * vsplat(0.70710678118654752f);
    vf t = vsplat(1.0f) / (vsplat(1.0f) + vsplat(0.5f) * z);
    vf p = vsplat(0.17087277f);
    p = p * t + vsplat(-0.82215223f);
    p = p * t + vsplat(1.48851587f);
    p = p * t + vsplat(-1.13520398f);
    p = p * t + vsplat(0.27886807f);
    p = p * t + vsplat(-0.18628806f);
    p = p * t + vsplat(0.09678418f);
    p = p * t + vsplat(0.37409196f);
    p = p * t + vsplat(1.00002368f);
    p = p * t + vsplat(-1.26551223f);
    vf half_erfc = vsplat(0.5f) * t * vexp(p - z * z);
    return x * vselect(neg, half_erfc, vsplat(1.0f) - half_erfc);
}

static inline vf vsilu(vf x) {
    return x / (vsplat(1.0f) + vexp(-x));
}

/* Applies a vector function to n floats, the tail through a zero-padded vector. */
#define MAP_UNARY(name, vfn)                                                                       \
    static void name(float *dst, const float *src, int64_t n) {                                    \
        int64_t i = 0;                                                                             \
        for (; i + VW <= n; i += VW) vstore(dst + i, vfn(vload(src + i)));                         \
        if (i < n) {                                                                               \
            float buf[VW] = {0};                                                                   \
            memcpy(buf, src + i, (size_t)(n - i) * sizeof(float));                                 \
            vstore(buf, vfn(vload(buf)));                                                          \
            memcpy(dst + i, buf, (size_t)(n - i) * sizeof(float));                                 \
        }                                                                                          \
    }

/* 0.5 x (1 + tanh(u)) = x sigmoid(2u): no cancellation in the negative tail. */
static inline vf vgelu_tanh(vf x) {
    vf u = vsplat(0.79788456080286536f) * (x + vsplat(0.044715f) * x * x * x);
    return x / (vsplat(1.0f) + vexp(vsplat(-2.0f) * u));
}

static inline vf vquick_gelu(vf x) {
    return x / (vsplat(1.0f) + vexp(vsplat(-1.702f) * x));
}

MAP_UNARY(silu_n, vsilu)
MAP_UNARY(gelu_n, vgelu)
MAP_UNARY(gelu_tanh_n, vgelu_tanh)
MAP_UNARY(quick_gelu_n, vquick_gelu)

static void geglu_n(float *dst, const float *a, const float *gate, int64_t n) {
    int64_t i = 0;
    for (; i + VW <= n; i += VW) vstore(dst + i, vload(a + i) * vgelu(vload(gate + i)));
    if (i < n) {
        float ga[VW] = {0};
        memcpy(ga, gate + i, (size_t)(n - i) * sizeof(float));
        vstore(ga, vgelu(vload(ga)));
        for (int64_t t = i; t < n; t++) dst[t] = a[t] * ga[t - i];
    }
}

static float exp_sum(float *x, int64_t n, float max) {
    vf sum = {0};
    const vf m = vsplat(max);
    int64_t i = 0;
    for (; i + VW <= n; i += VW) {
        vf e = vexp(vload(x + i) - m);
        vstore(x + i, e);
        sum += e;
    }
    float s = 0.0f;
    for (int v = 0; v < VW; v++) s += sum[v];
    for (; i < n; i++) {
        x[i] = sexp(x[i] - max);
        s += x[i];
    }
    return s;
}

static void softmax_panel(float *s, int64_t rows, float *m, float *l, float *alpha, bool causal,
                          int64_t causal_offset) {
    vf mx[NV], sum[NV];
    vi lane;
    for (int t = 0; t < VW; t++) lane[t] = t;
    for (int v = 0; v < NV; v++) mx[v] = vload(m + v * VW);
        /* Keys a column may see: c + causal_offset >= i. */
#define VISIBLE(i, v) (lane + (v * VW) + (int32_t)causal_offset >= (int32_t)(i))
    for (int64_t i = 0; i < rows; i++)
        for (int v = 0; v < NV; v++) {
            vf x = vload(s + i * NR + v * VW);
            mx[v] = causal ? vselect(VISIBLE(i, v), vmax(mx[v], x), mx[v]) : vmax(mx[v], x);
        }
    for (int v = 0; v < NV; v++) {
        vstore(alpha + v * VW, vexp(vload(m + v * VW) - mx[v]));
        vstore(m + v * VW, mx[v]);
        sum[v] = (vf){0};
    }
    for (int64_t i = 0; i < rows; i++)
        for (int v = 0; v < NV; v++) {
            vf e = vexp(vload(s + i * NR + v * VW) - mx[v]);
            if (causal) e = vselect(VISIBLE(i, v), e, (vf){0});
            vstore(s + i * NR + v * VW, e);
            sum[v] += e;
        }
#undef VISIBLE
    for (int v = 0; v < NV; v++)
        vstore(l + v * VW, vload(l + v * VW) * vload(alpha + v * VW) + sum[v]);
}

/* ---------------------------------------------------------------------------------------
 * Winograd F(4x4, 3x3) transforms, VW tiles per vector. The 1-D transforms written out:
 * B^T d for d0..d5 and A^T m for m0..m5 (Lavin & Gray's points 0, +-1, +-2).
 * ------------------------------------------------------------------------------------- */

static inline void bt6(const vf d[6], vf r[6]) {
    const vf two = vsplat(2.0f), four = vsplat(4.0f), five = vsplat(5.0f);
    r[0] = four * d[0] - five * d[2] + d[4];
    r[1] = -four * (d[1] + d[2]) + d[3] + d[4];
    r[2] = four * (d[1] - d[2]) - d[3] + d[4];
    r[3] = two * (d[3] - d[1]) - d[2] + d[4];
    r[4] = two * (d[1] - d[3]) - d[2] + d[4];
    r[5] = four * d[1] - five * d[3] + d[5];
}

static inline void at6(const vf m[6], vf y[4]) {
    const vf two = vsplat(2.0f), four = vsplat(4.0f), eight = vsplat(8.0f);
    vf s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    y[0] = m[0] + s12 + s34;
    y[1] = d12 + two * d34;
    y[2] = s12 + four * s34;
    y[3] = d12 + eight * d34 + m[5];
}

/* Lanes base[4 * lane] (lanes past n are don't-care but stay in bounds: callers pad). */
static inline vf vgather4(const float *base) {
#if SD_ISA == SD_ISA_AVX512
    const __m512i idx =
        _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
    return _mm512_i32gather_ps(idx, base, 4);
#elif SD_ISA == SD_ISA_AVX2
    const __m256i idx = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_i32gather_ps(base, idx, 4);
#else
    vf v;
    for (int t = 0; t < VW; t++) v[t] = base[4 * t];
    return v;
#endif
}

/* d[b] lane t = p[4t + b] for b < 6: one patch row of VW consecutive tiles. */
static inline void patch_row(const float *p, vf d[6]) {
#if SD_ISA == SD_ISA_AVX512
    /* Loads and permutes rather than six gathers, which are slow: the even and odd quarters
     * of lanes come from (v0, v1) and (v2, v3), and b = 4, 5 are b = 0, 1 one tile on. */
    const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16),
                 v2 = _mm512_loadu_ps(p + 32), v3 = _mm512_loadu_ps(p + 48),
                 v4 = _mm512_maskz_loadu_ps(0x3, p + 64);
    for (int b = 0; b < 4; b++) {
        const __m512i idx = _mm512_add_epi32(
            _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
            _mm512_set1_epi32(b));
        d[b] = (vf)_mm512_mask_blend_ps(0xff00, _mm512_permutex2var_ps(v0, idx, v1),
                                        _mm512_permutex2var_ps(v2, idx, v3));
    }
    const __m512i next = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    d[4] = (vf)_mm512_permutex2var_ps((__m512)d[0], next, v4);
    d[5] = (vf)_mm512_permutex2var_ps((__m512)d[1], next,
                                      _mm512_permutexvar_ps(_mm512_set1_epi32(1), v4));
#else
    for (int b = 0; b < 6; b++) d[b] = vgather4(p + b);
#endif
}

/* B^T applied along each patch row of VW tiles from t0: cols[a][b']. No rows: zeros. */
static inline void wino_rows(const float *rows, int64_t ld, int t0, vf cols[6][6]) {
    for (int a = 0; a < 6; a++) {
        vf d[6] = {0};
        if (rows) patch_row(rows + a * ld + 4 * t0, d);
        bt6(d, cols[a]);
    }
}

/* Then down column b: r[a] is the transformed value at position a * 6 + b. */
static inline void wino_column(vf cols[6][6], int b, vf r[6]) {
    vf d[6];
    for (int a = 0; a < 6; a++) d[a] = cols[a][b];
    bt6(d, r);
}

static void wino_input(const float *rows, int64_t ld, int n, float *dst, int64_t xi_stride) {
    for (int t0 = 0; t0 < n; t0 += VW) {
        vf cols[6][6];
        wino_rows(rows, ld, t0, cols);
        for (int b = 0; b < 6; b++) {
            vf r[6];
            wino_column(cols, b, r);
            for (int a = 0; a < 6; a++) {
                float *o = dst + (int64_t)(a * 6 + b) * xi_stride + t0;
                if (t0 + VW <= n) {
#if SD_ISA == SD_ISA_AVX512
                    /* Streamed: V is read once, by the GEMMs, from a buffer larger than the
                     * caches, so fetching its lines before writing them only cost
                     * bandwidth (TAESD and VAE decodes at 512² 6-8% faster). */
                    if (((uintptr_t)o & 63) == 0)
                        _mm512_stream_ps(o, (__m512)r[a]);
                    else
#endif
                        vstore(o, r[a]);
                } else {
                    for (int t = 0; t < n - t0; t++) o[t] = r[a][t];
                }
            }
        }
    }
}

#if SD_ISA == SD_ISA_AVX512
#define WINO_POSITIONS 36
/* bf16 bits of each lane, in its low half: rounded to nearest even, NaN kept quiet (as
 * sd_f32_to_bf16 and vcvtne2ps2bf16, for the normal values the transforms produce). */
static inline __m512i bf16_bits(__m512 x) {
    const __m512i b = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
}

static void wino_input_pair(const float *rows0, const float *rows1, int64_t ld, int n,
                            uint32_t *dst, int64_t xi_stride) {
    for (int t0 = 0; t0 < n; t0 += VW) {
        vf lo[WINO_POSITIONS]; /* the first channel's 36 values, paired with the second's */
        for (int c = 0; c < 2; c++) {
            vf cols[6][6];
            wino_rows(c ? rows1 : rows0, ld, t0, cols);
            for (int b = 0; b < 6; b++) {
                vf r[6];
                wino_column(cols, b, r);
                for (int a = 0; a < 6; a++) {
                    const int xi = a * 6 + b;
                    if (c == 0) {
                        lo[xi] = r[a];
                        continue;
                    }
                    const __m512i v = _mm512_or_si512(
                        bf16_bits((__m512)lo[xi]), _mm512_slli_epi32(bf16_bits((__m512)r[a]), 16));
                    uint32_t *o = dst + (int64_t)xi * xi_stride + t0;
                    if (t0 + VW <= n && ((uintptr_t)o & 63) == 0)
                        _mm512_stream_si512((void *)o, v); /* as wino_input */
                    else
                        _mm512_mask_storeu_epi32(o, (__mmask16)((1u << SD_MIN(VW, n - t0)) - 1), v);
                }
            }
        }
    }
}
#endif

static void wino_output(const float *m, int64_t xi_stride, int n, float *y) {
    for (int t0 = 0; t0 < n; t0 += VW) {
        vf rows[4][6]; /* A^T applied down each column: rows[r][b] */
        for (int b = 0; b < 6; b++) {
            vf col[6], r[4];
            for (int a = 0; a < 6; a++) col[a] = vload(m + (int64_t)(a * 6 + b) * xi_stride + t0);
            at6(col, r);
            for (int k = 0; k < 4; k++) rows[k][b] = r[k];
        }
        for (int k = 0; k < 4; k++) {
            vf out[4];
            at6(rows[k], out);
            float *yr = y + k * 4 * NR + 4 * t0;
            for (int t = 0; t < VW && t0 + t < n; t++)
                for (int c = 0; c < 4; c++) yr[4 * t + c] = out[c][t];
        }
    }
}

static float max_n(const float *x, int64_t n) {
    vf m = vsplat(-INFINITY);
    int64_t i = 0;
    for (; i + VW <= n; i += VW) m = vmax(m, vload(x + i));
    float r = -INFINITY;
    for (int v = 0; v < VW; v++) r = m[v] > r ? m[v] : r;
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

/* Blocks of 4096 elements are summed in float vectors, the blocks in double. */
#define SUM_BLOCK 4096

static double sum_n(const float *x, int64_t n) {
    double total = 0.0;
    for (int64_t b = 0; b < n; b += SUM_BLOCK) {
        int64_t e = SD_MIN(n, b + SUM_BLOCK), i = b;
        vf acc = {0};
        for (; i + VW <= e; i += VW) acc += vload(x + i);
        float s = 0.0f;
        for (int v = 0; v < VW; v++) s += acc[v];
        for (; i < e; i++) s += x[i];
        total += s;
    }
    return total;
}

static double sum_sq_dev_n(const float *x, int64_t n, float mean) {
    double total = 0.0;
    const vf m = vsplat(mean);
    for (int64_t b = 0; b < n; b += SUM_BLOCK) {
        int64_t e = SD_MIN(n, b + SUM_BLOCK), i = b;
        vf acc = {0};
        for (; i + VW <= e; i += VW) {
            vf d = vload(x + i) - m;
            acc += d * d;
        }
        float s = 0.0f;
        for (int v = 0; v < VW; v++) s += acc[v];
        for (; i < e; i++) s += (x[i] - mean) * (x[i] - mean);
        total += s;
    }
    return total;
}

static void scale_shift_n(float *dst, const float *src, int64_t n, float scale, float shift,
                          bool silu) {
    const vf a = vsplat(scale), b = vsplat(shift);
    int64_t i = 0;
    if (silu) {
        for (; i + VW <= n; i += VW) vstore(dst + i, vsilu(vload(src + i) * a + b));
    } else {
        for (; i + VW <= n; i += VW) vstore(dst + i, vload(src + i) * a + b);
    }
    if (i < n) {
        float buf[VW] = {0};
        memcpy(buf, src + i, (size_t)(n - i) * sizeof(float));
        vf y = vload(buf) * a + b;
        vstore(buf, silu ? vsilu(y) : y);
        memcpy(dst + i, buf, (size_t)(n - i) * sizeof(float));
    }
}

const sd_cpu_kernels_t KERNELS_SYM = {
    .name = ISA_NAME,
    .mr = MR,
    .nr = NR,
    .mc = MC,
    .kc = KC,
    .nc = NC,
    .ukernel = ukernel,
    .pack_a = pack_a,
    .pack_b = pack_b,
    .silu = silu_n,
    .gelu = gelu_n,
    .geglu = geglu_n,
    .gelu_tanh = gelu_tanh_n,
    .quick_gelu = quick_gelu_n,
    .exp_sum = exp_sum,
    .max = max_n,
    .sum = sum_n,
    .sum_sq_dev = sum_sq_dev_n,
    .scale_shift = scale_shift_n,
    .f16_to_f32 = f16_to_f32,
    .narrow = narrow_n,
    .softmax_panel = softmax_panel,
    .wino_input = wino_input,
#if SD_ISA == SD_ISA_AVX512
    .wino_input_pair = wino_input_pair,
#endif
    .wino_output = wino_output,
};
