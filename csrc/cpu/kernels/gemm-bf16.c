/*
 * gemm-bf16.c - the bf16 GEMM path: a 12x32 microkernel on AVX512_BF16's vdpbf16ps (two
 * bf16 products per fp32 lane and instruction, accumulated in fp32) and the conversion of
 * the GEMM's packed fp32 panels into the bf16 pair layout it reads. Compiled alone with
 * -mavx512bf16 (CMakeLists.txt) and used only when CPUID reports AVX512_BF16 and the
 * context asked for SD_PRECISION_BF16; the tile and blocking are the avx512 table's, so
 * every packer, the Winograd filter transform and the attention kernel work unchanged in
 * fp32 and only the panels the microkernel reads are narrowed (Winograd's input transform
 * writes its panels paired: the avx512 table's wino_input_pair).
 *
 * Pair layout: a panel of width W (MR rows of A or NR columns of B) and depth kc becomes
 * ceil(kc/2) rows of W 32-bit lanes; lane c of pair row p holds bf16(x[2p][c]) in its low
 * half and bf16(x[2p+1][c]) in its high half (0 when 2p+1 == kc), which is the order
 * vdpbf16ps pairs its operands in. Rounding is to nearest even (vcvtne2ps2bf16).
 */
#include "../cpu.h"

#include <immintrin.h>

#define MR 12
#define NR 32

/* Interleaves the 16-bit halves of two 16-lane bf16 rows: lane i gets (lo[i], hi[i]). */
static inline __m512i pair16(__m512 lo, __m512 hi) {
    const __m512i order =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    /* cvtne2ps: elements 0..15 from the second operand, 16..31 from the first. */
    return _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

static void pair_panels(uint32_t *restrict dst, const float *restrict src, int width, int64_t kc,
                        int64_t panels, int64_t src_stride) {
    const int64_t kp = (kc + 1) / 2;
    for (int64_t p = 0; p < panels; p++, src += src_stride) {
        for (int64_t q = 0; q < kp; q++, dst += width) {
            const float *r0 = src + 2 * q * width;
            const bool odd_tail = 2 * q + 1 == kc;
            for (int c = 0; c < width; c += 16) {
                const int n = width - c < 16 ? width - c : 16;
                const __mmask16 m = (__mmask16)((1u << n) - 1);
                __m512 lo = _mm512_maskz_loadu_ps(m, r0 + c);
                __m512 hi =
                    odd_tail ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, r0 + width + c);
                _mm512_mask_storeu_epi32(dst + c, m, pair16(lo, hi));
            }
        }
    }
}

/* C[MR x NR] (=|+=) alpha * A x B over kp pairs, then the fp32 kernel's epilogue. */
static void ukernel_bf16(int64_t kp, const uint32_t *restrict a, const uint32_t *restrict b,
                         float *restrict c, int64_t ldc, const sd_tile_epilogue_t *ep) {
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kp; p++, a += MR, b += NR) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }

    const __m512 alpha = _mm512_set1_ps(ep->alpha);
    if (ep->accumulate) {
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < 2; v++) {
                float *cp = c + r * ldc + 16 * v;
                _mm512_storeu_ps(cp, _mm512_fmadd_ps(acc[r][v], alpha, _mm512_loadu_ps(cp)));
            }
        return;
    }
    for (int r = 0; r < MR; r++) {
        const __m512 row_bias = _mm512_set1_ps(ep->bias_r ? ep->bias_r[r] : 0.0f);
        for (int v = 0; v < 2; v++) {
            __m512 val = _mm512_fmadd_ps(acc[r][v], alpha, row_bias);
            if (ep->bias_c) val = _mm512_add_ps(val, _mm512_loadu_ps(ep->bias_c + 16 * v));
            if (ep->res) val = _mm512_add_ps(val, _mm512_loadu_ps(ep->res + r * ldc + 16 * v));
            _mm512_storeu_ps(c + r * ldc + 16 * v, val);
        }
    }
}

const sd_cpu_bf16_kernels_t sd_cpu_bf16_avx512 = {
    .mr = MR,
    .nr = NR,
    .ukernel = ukernel_bf16,
    .pair_panels = pair_panels,
};
