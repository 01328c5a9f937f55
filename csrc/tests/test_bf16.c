/*
 * The bf16 compute path (SD_PRECISION_BF16) against double-precision references.
 *
 * A product of two bf16 values is exact in float32 (8 + 8 significant bits), so a bf16
 * GEMM differs from the exact product only by rounding each operand once to bf16 (unit
 * roundoff u = 2^-8, to nearest even) and by float32 accumulation. Two checks follow:
 *  - against the double product of the bf16-rounded operands, at the fp32 tolerance of
 *    test_ops (a wrong pair order, a lost depth or a stale panel fails this at once);
 *  - against the double product of the operands as given, per element:
 *      |got - ref| <= (2u + u^2) * sum_k |a_ik| |b_kj| + fp32 tolerance,
 *    the bound of (1 + d1)(1 + d2) - 1 with |d| <= u for every product.
 * Winograd multiplies transformed tiles: its bound is derived below (wino_bound).
 *
 * Run without arguments: skips (77) on a CPU without AVX512_BF16. Run with "refused"
 * (ctest sets SD_CPU_ISA=avx2): sd_ctx_init must refuse BF16 with SD_STATUS_UNSUPPORTED.
 */
#include "harness.h"

#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static sd_ctx_t *ctx;

#define U_BF16   (1.0 / 256.0)
#define PRODUCT  (2 * U_BF16 + U_BF16 * U_BF16)
#define RTOL     2e-5 /* float32 accumulation, as test_ops */
#define ATOL     1e-6
#define WINO_RMS 5e-2 /* measured: 2.4-2.5e-2 on these random cases */

static float round_bf16(float x) {
    return sd_bf16_to_f32(sd_f32_to_bf16(x));
}

static float *frand(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)n * sizeof(float));
    rng_fill(x, n, lo, hi);
    return x;
}

/* max over i of |got - ref| - bound[i] must be <= rtol * max|ref| + atol. */
static void check_bound(const char *what, const float *got, const double *ref, const double *bound,
                        int64_t n) {
    double max_ref = 0;
    for (int64_t i = 0; i < n; i++) max_ref = fmax(max_ref, fabs(ref[i]));
    const double slack = RTOL * max_ref + ATOL;
    int64_t worst = 0;
    double worst_excess = -INFINITY, worst_ratio = 0;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]), excess = err - bound[i];
        if (!(excess <= worst_excess) || isnan(err)) worst_excess = excess, worst = i;
        if (bound[i] > 0) worst_ratio = fmax(worst_ratio, err / bound[i]);
    }
    CHECK(worst_excess <= slack, "%s: element %lld got %g ref %g bound %g (+%g)", what,
          (long long)worst, got[worst], ref[worst], bound[worst], slack);
    printf("%-60s worst error / bf16 bound %.3f\n", what, worst_ratio);
}

/* ---- the GEMM driver directly ---------------------------------------------------------- */

/* C = alpha A B + bias_row + bias_col + residual with A (M x K) row-major F32 or an F16
 * packed weight, B (K x N) KN or NK. */
static void test_gemm_case(int64_t m, int64_t n, int64_t k, bool b_nk, bool a_packed, bool extras) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    float *av = frand(m * k, -1, 1), *bv = frand(k * n, -1, 1);
    float *br = frand(m, -1, 1), *bc = frand(n, -1, 1), *res = frand(m * n, -1, 1);
    float *out = malloc((size_t)(m * n) * sizeof(float));
    uint16_t *a16 = NULL;
    sd_packed_weight_t *pw = NULL;
    sd_gemm_a_t a = {.data = av, .dtype = SD_DTYPE_F32, .ld = k};
    if (a_packed) { /* as a model's conv weight: F16 in the file, packed as A panels */
        a16 = malloc((size_t)(m * k) * sizeof(uint16_t));
        for (int64_t i = 0; i < m * k; i++) {
            a16[i] = sd_f32_to_f16(av[i]);
            av[i] = sd_f16_to_f32(a16[i]);
        }
        pw = sd_packed_weight_new(cpu->pool, cpu->kern, a16, SD_DTYPE_F16, m, k, false);
        a = (sd_gemm_a_t){.packed = pw};
    }
    /* B[k][j] = bv[k*n + j]; NK stores it transposed. */
    float *bstore = bv;
    if (b_nk) {
        bstore = malloc((size_t)(k * n) * sizeof(float));
        for (int64_t kk = 0; kk < k; kk++)
            for (int64_t j = 0; j < n; j++) bstore[j * k + kk] = bv[kk * n + j];
    }
    sd_gemm_b_t b = {.data = bstore,
                     .dtype = SD_DTYPE_F32,
                     .kind = b_nk ? SD_GEMM_B_NK : SD_GEMM_B_KN,
                     .ld = b_nk ? k : n};
    const float alpha = extras ? 0.75f : 1.0f;
    sd_gemm_c_t c = {.data = out,
                     .ldc = n,
                     .group_cols = n,
                     .alpha = alpha,
                     .bias_row = extras ? br : NULL,
                     .bias_col = extras ? bc : NULL,
                     .residual = extras ? res : NULL};
    CHECK_STATUS(sd_gemm(ctx, m, n, k, &a, &b, &c), SD_STATUS_OK);

    double *exact = calloc((size_t)(m * n), sizeof(double));
    double *rounded = calloc((size_t)(m * n), sizeof(double));
    double *bound = calloc((size_t)(m * n), sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double e = 0, r = 0, s = 0;
            for (int64_t kk = 0; kk < k; kk++) {
                float x = av[i * k + kk], y = bv[kk * n + j];
                e += (double)x * y;
                r += (double)round_bf16(x) * round_bf16(y);
                s += fabs((double)x * y);
            }
            double add = extras ? (double)br[i] + bc[j] + res[i * n + j] : 0;
            exact[i * n + j] = alpha * e + add;
            rounded[i * n + j] = alpha * r + add;
            bound[i * n + j] = alpha * PRODUCT * s;
        }
    char what[128];
    snprintf(what, sizeof what, "gemm m%lld n%lld k%lld %s%s%s", (long long)m, (long long)n,
             (long long)k, b_nk ? "B NK" : "B KN", a_packed ? " A packed f16" : "",
             extras ? " alpha bias res" : "");
    char what_r[160];
    snprintf(what_r, sizeof what_r, "%s vs bf16-rounded operands", what);
    compare(what_r, out, rounded, m * n, RTOL, ATOL);
    check_bound(what, out, exact, bound, m * n);
    free(av), free(bv), free(br), free(bc), free(res), free(out), free(a16);
    if (b_nk) free(bstore);
    free(exact), free(rounded), free(bound);
    sd_packed_weight_free(pw);
}

static void test_gemm(void) {
    /* Odd M, N, K; K odd (a zero half in the last pair) and K across KC = 256; M across
     * MC = 144 and N across whole NR = 32 panels with ragged edges. */
    const int64_t shapes[][3] = {{1, 1, 1},     {5, 7, 3},      {13, 33, 17},   {12, 32, 256},
                                 {37, 45, 257}, {150, 70, 301}, {29, 100, 600}, {160, 97, 513}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int v = 0; v < 4; v++)
            test_gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], v & 1, v & 2, (s + v) % 2);
}

/* ---- ops on a bf16 context ------------------------------------------------------------- */

static void test_linear_case(int64_t rows, int64_t k, int64_t nout, int32_t wdtype, bool packed) {
    float *xv = frand(rows * k, -1, 1), *wv = frand(nout * k, -0.5f, 0.5f);
    float *wr = malloc((size_t)(nout * k) * sizeof(float)), *bv = frand(nout, -1, 1);
    int64_t xs[2] = {rows, k}, ws[2] = {nout, k}, os[2] = {rows, nout}, bs[1] = {nout};
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, wdtype, 2, ws, wv, wr);
    if (packed) {
        sd_cpu_backend_t *cpu = sd_cpu(ctx);
        w->packed = sd_packed_weight_new(cpu->pool, cpu->kern, w->data, wdtype, nout, k, true);
    }
    sd_tensor_t *b = make_tensor(ctx, SD_DTYPE_F32, 1, bs, bv, NULL);
    sd_tensor_t *out = make_empty(ctx, 2, os);
    sd_linear_params_t p;
    sd_linear_params_default(&p);
    CHECK_STATUS(sd_op_linear(ctx, out, x, w, b, NULL, &p), SD_STATUS_OK);
    double *exact = calloc((size_t)(rows * nout), sizeof(double));
    double *rounded = calloc((size_t)(rows * nout), sizeof(double));
    double *bound = calloc((size_t)(rows * nout), sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < nout; o++) {
            double e = bv[o], q = bv[o], s = 0;
            for (int64_t kk = 0; kk < k; kk++) {
                float xx = xv[r * k + kk], ww = wr[o * k + kk];
                e += (double)xx * ww;
                q += (double)round_bf16(xx) * round_bf16(ww);
                s += fabs((double)xx * ww);
            }
            exact[r * nout + o] = e, rounded[r * nout + o] = q, bound[r * nout + o] = PRODUCT * s;
        }
    float *got = fetch(ctx, out);
    char what[128], what_r[160];
    snprintf(what, sizeof what, "linear %lldx%lld @ %lldx%lld^T %s packed%d", (long long)rows,
             (long long)k, (long long)nout, (long long)k, sd_dtype_name(wdtype), packed);
    snprintf(what_r, sizeof what_r, "%s vs bf16-rounded operands", what);
    compare(what_r, got, rounded, rows * nout, RTOL, ATOL);
    check_bound(what, got, exact, bound, rows * nout);
    free(got), free(exact), free(rounded), free(bound), free(xv), free(wv), free(wr), free(bv);
    sd_packed_weight_free(w->packed);
    w->packed = NULL;
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, b),
        sd_tensor_free(ctx, out);
}

/* conv2d 3x3 pad 1 stride 1 with bias; `winograd` names which path the shape takes (the
 * test checks that through sd_cpu_winograd_applies). Direct (implicit GEMM): the plain
 * product bound and the bf16-rounded reference. Winograd F(4x4, 3x3) rounds the
 * transformed tiles U = G g G^T and V = B^T d B instead, so output (r, c) of a tile is off
 * by at most (2u + u^2) sum_{a,b} |A^T[r][a]| |A^T[c][b]| sum_ci |U_ab| |V_ab|, with
 * |U| <= |G| |g| |G|^T and |V| <= |B^T| |d| |B^T|^T elementwise (the matrices of
 * winograd.c, Lavin & Gray's points 0, +-1, +-2). wino_bound adds that to bound[]. */
static const double WG[6][3] = {{1.0 / 4, 0, 0},
                                {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                {0, 0, 1}};
static const double WBT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                 {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double WAT[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

static void wino_bound(const float *xv, const float *wr, int64_t nb, int64_t cin, int64_t h,
                       int64_t wd, int64_t cout, double *bound) {
    const int64_t th = (h + 3) / 4, tw = (wd + 3) / 4;
    double *uabs = calloc((size_t)(cout * cin * 36), sizeof(double));
    for (int64_t i = 0; i < cout * cin; i++) /* |G| |g| |G|^T */
        for (int a = 0; a < 6; a++)
            for (int b = 0; b < 6; b++) {
                double t = 0;
                for (int y = 0; y < 3; y++)
                    for (int x = 0; x < 3; x++)
                        t += fabs(WG[a][y]) * fabs((double)wr[i * 9 + y * 3 + x]) * fabs(WG[b][x]);
                uabs[i * 36 + a * 6 + b] = t;
            }
    double *vabs = calloc((size_t)(cin * 36), sizeof(double));
    for (int64_t n = 0; n < nb; n++)
        for (int64_t ty = 0; ty < th; ty++)
            for (int64_t tx = 0; tx < tw; tx++) {
                for (int64_t ci = 0; ci < cin; ci++) /* |B^T| |d| |B^T|^T, d zero-padded */
                    for (int a = 0; a < 6; a++)
                        for (int b = 0; b < 6; b++) {
                            double t = 0;
                            for (int y = 0; y < 6; y++)
                                for (int x = 0; x < 6; x++) {
                                    int64_t iy = ty * 4 - 1 + y, ix = tx * 4 - 1 + x;
                                    if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                    t += fabs(WBT[a][y]) * fabs(WBT[b][x]) *
                                         fabs((double)xv[((n * cin + ci) * h + iy) * wd + ix]);
                                }
                            vabs[ci * 36 + a * 6 + b] = t;
                        }
                for (int64_t co = 0; co < cout; co++) {
                    double m[36] = {0};
                    for (int64_t ci = 0; ci < cin; ci++)
                        for (int xi = 0; xi < 36; xi++)
                            m[xi] += uabs[(co * cin + ci) * 36 + xi] * vabs[ci * 36 + xi];
                    for (int r = 0; r < 4 && ty * 4 + r < h; r++)
                        for (int c = 0; c < 4 && tx * 4 + c < wd; c++) {
                            double t = 0;
                            for (int a = 0; a < 6; a++)
                                for (int b = 0; b < 6; b++)
                                    t += fabs(WAT[r][a]) * fabs(WAT[c][b]) * m[a * 6 + b];
                            bound[((n * cout + co) * h + ty * 4 + r) * wd + tx * 4 + c] +=
                                PRODUCT * t;
                        }
                }
            }
    free(uabs), free(vabs);
}

static void test_conv_case(int64_t nb, int64_t cin, int64_t h, int64_t wd, int64_t cout,
                           bool winograd) {
    int64_t xs[4] = {nb, cin, h, wd}, ws[4] = {cout, cin, 3, 3}, os[4] = {nb, cout, h, wd};
    int64_t nx = nb * cin * h * wd, nw = cout * cin * 9, no = nb * cout * h * wd, bs[1] = {cout};
    float *xv = frand(nx, -1, 1), *wv = frand(nw, -0.5f, 0.5f), *wr = malloc((size_t)nw * 4);
    float *bv = frand(cout, -1, 1);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, SD_DTYPE_F16, 4, ws, wv, wr);
    sd_tensor_t *b = make_tensor(ctx, SD_DTYPE_F32, 1, bs, bv, NULL);
    sd_tensor_t *out = make_empty(ctx, 4, os);
    sd_conv2d_params_t p;
    sd_conv2d_params_default(&p);
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    CHECK(sd_cpu_winograd_applies(x, w, &p, h, wd) == winograd, "conv path");
    CHECK_STATUS(sd_op_conv2d(ctx, out, x, w, b, NULL, &p), SD_STATUS_OK);
    double *exact = calloc((size_t)no, sizeof(double)), *rounded = calloc((size_t)no, 8);
    double *bound = calloc((size_t)no, sizeof(double));
    for (int64_t n = 0; n < nb; n++)
        for (int64_t co = 0; co < cout; co++)
            for (int64_t y = 0; y < h; y++)
                for (int64_t xx = 0; xx < wd; xx++) {
                    double e = bv[co], q = bv[co], s = 0;
                    for (int64_t ci = 0; ci < cin; ci++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int64_t iy = y - 1 + ky, ix = xx - 1 + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                float a = xv[((n * cin + ci) * h + iy) * wd + ix];
                                float g = wr[((co * cin + ci) * 3 + ky) * 3 + kx];
                                e += (double)a * g;
                                q += (double)round_bf16(a) * round_bf16(g);
                                s += fabs((double)a * g);
                            }
                    int64_t oi = ((n * cout + co) * h + y) * wd + xx;
                    exact[oi] = e, rounded[oi] = q;
                    bound[oi] = winograd ? 0 : PRODUCT * s;
                }
    if (winograd) wino_bound(xv, wr, nb, cin, h, wd, cout, bound);
    float *got = fetch(ctx, out);
    char what[128], what_r[160];
    snprintf(what, sizeof what, "conv2d 3x3 n%lld cin%lld %lldx%lld cout%lld %s", (long long)nb,
             (long long)cin, (long long)h, (long long)wd, (long long)cout,
             winograd ? "winograd" : "implicit gemm");
    if (!winograd) {
        snprintf(what_r, sizeof what_r, "%s vs bf16-rounded operands", what);
        compare(what_r, got, rounded, no, RTOL, ATOL);
    }
    check_bound(what, got, exact, bound, no);
    if (winograd) {
        /* The bound above is the worst case of every rounding adding up, far looser than
         * what the path does (errors of random sign): its RMS error, relative to the
         * output's RMS, stays at bf16's unit roundoff scale, which an output that lost or
         * garbled some input channels does not. */
        double e2 = 0, r2 = 0;
        for (int64_t i = 0; i < no; i++) {
            const double e = (double)got[i] - exact[i];
            e2 += e * e, r2 += exact[i] * exact[i];
        }
        const double rel = sqrt(e2 / r2);
        CHECK(rel <= WINO_RMS, "%s: RMS error %.3g of the output's RMS", what, rel);
        printf("%-60s RMS error / RMS %.2e\n", what, rel);
    }
    free(got), free(exact), free(rounded), free(bound), free(xv), free(wv), free(wr), free(bv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, b),
        sd_tensor_free(ctx, out);
}

/* Attention: S = scale Q K^T in bf16 moves each logit by at most
 * d_ij = (2u + u^2) scale sum_e |q_ie||k_je|, which changes each softmax weight by a
 * factor within exp(+-2 D_i), D_i = max_j d_ij; P and V are rounded for O = P V, which
 * adds (1 + u)^2. So |O - ref| <= (exp(2 D_i) (1 + u)^2 - 1) * sum_j p_ij |v_je|, and the
 * normaliser's own rounding is covered by taking exp(4 D_i) instead. */
static void test_attention_case(int64_t tq, int64_t tk, int64_t c, int32_t heads, float spread) {
    int64_t qs[3] = {1, tq, c}, ks[3] = {1, tk, c};
    float *qv = frand(tq * c, -spread, spread), *kv = frand(tk * c, -spread, spread);
    float *vv = frand(tk * c, -1, 1);
    sd_tensor_t *q = make_tensor(ctx, SD_DTYPE_F32, 3, qs, qv, NULL);
    sd_tensor_t *k = make_tensor(ctx, SD_DTYPE_F32, 3, ks, kv, NULL);
    sd_tensor_t *v = make_tensor(ctx, SD_DTYPE_F32, 3, ks, vv, NULL);
    sd_tensor_t *out = make_empty(ctx, 3, qs);
    sd_attention_params_t p;
    sd_attention_params_default(&p);
    p.heads = heads;
    CHECK_STATUS(sd_op_attention(ctx, out, q, k, v, &p), SD_STATUS_OK);
    const int64_t d = c / heads;
    const double scale = 1.0 / sqrt((double)d);
    double *ref = calloc((size_t)(tq * c), sizeof(double));
    double *bound = calloc((size_t)(tq * c), sizeof(double));
    double *s = calloc((size_t)tk, sizeof(double));
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < tq; i++) {
            double mx = -INFINITY, sum = 0, dmax = 0;
            for (int64_t j = 0; j < tk; j++) {
                double dot = 0, mag = 0;
                for (int64_t e = 0; e < d; e++) {
                    double t = (double)qv[i * c + h * d + e] * kv[j * c + h * d + e];
                    dot += t, mag += fabs(t);
                }
                s[j] = dot * scale;
                dmax = fmax(dmax, PRODUCT * scale * mag);
                mx = fmax(mx, s[j]);
            }
            for (int64_t j = 0; j < tk; j++) sum += s[j] = exp(s[j] - mx);
            const double gain = exp(4 * dmax) * (1 + U_BF16) * (1 + U_BF16) - 1;
            for (int64_t e = 0; e < d; e++) {
                double acc = 0, mag = 0;
                for (int64_t j = 0; j < tk; j++) {
                    acc += s[j] * vv[j * c + h * d + e];
                    mag += s[j] * fabs(vv[j * c + h * d + e]);
                }
                ref[i * c + h * d + e] = acc / sum;
                bound[i * c + h * d + e] = gain * mag / sum;
            }
        }
    float *got = fetch(ctx, out);
    char what[128];
    snprintf(what, sizeof what, "attention tq%lld tk%lld c%lld h%d spread%g", (long long)tq,
             (long long)tk, (long long)c, heads, spread);
    check_bound(what, got, ref, bound, tq * c);
    free(got), free(ref), free(bound), free(s), free(qv), free(kv), free(vv);
    sd_tensor_free(ctx, q), sd_tensor_free(ctx, k), sd_tensor_free(ctx, v),
        sd_tensor_free(ctx, out);
}

static void test_ops(void) {
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (int dt = 0; dt < 3; dt++)
        for (int packed = 0; packed < 2; packed++) {
            test_linear_case(77, 41, 35, dtypes[dt], packed);
            test_linear_case(130, 301, 97, dtypes[dt], packed);
        }
    test_conv_case(2, 5, 9, 11, 7, false);
    test_conv_case(1, 31, 19, 37, 29, false); /* K = 279: across KC, odd */
    test_conv_case(2, 33, 32, 31, 40, true);
    test_conv_case(1, 64, 48, 45, 48, true);
    /* Input channels past KC, odd: V's pair lanes in two depth blocks, the last pair's
     * high halves zero. */
    test_conv_case(1, 301, 32, 30, 33, true);
    test_attention_case(33, 33, 24, 3, 1);
    test_attention_case(64, 300, 80, 2, 1); /* d = 40 (SD 1.x), Tk > KC */
    test_attention_case(40, 77, 64, 1, 3);  /* larger logits */
}

/* Winograd by output-channel slices (winograd.c's U_BYTES; 2048 input channels make slices
 * of 72 and 58 of 130 output channels) narrows each slice's U to pair panels of its own.
 * Slicing does not change what any output sums, nor in what order: the 130-channel conv must
 * equal, bit for bit, the two 65-channel convs of its halves (which take one slice each). */
static void test_conv_slices(void) {
    const int64_t cin = 2048, cout = 130, half = cout / 2, side = 32, plane = side * side;
    int64_t xs[4] = {1, cin, side, side}, ws[4] = {cout, cin, 3, 3}, os[4] = {1, cout, side, side};
    int64_t hws[4] = {half, cin, 3, 3}, hos[4] = {1, half, side, side};
    float *xv = frand(cin * plane, -1, 1), *wv = frand(cout * cin * 9, -0.5f, 0.5f);
    sd_conv2d_params_t cp;
    sd_conv2d_params_default(&cp);
    cp.pad_top = cp.pad_bottom = cp.pad_left = cp.pad_right = 1;
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, SD_DTYPE_F16, 4, ws, wv, NULL);
    sd_tensor_t *out = make_empty(ctx, 4, os);
    CHECK(sd_cpu_winograd_applies(x, w, &cp, side, side), "conv path");
    CHECK_STATUS(sd_op_conv2d(ctx, out, x, w, NULL, NULL, &cp), SD_STATUS_OK);
    float *whole = fetch(ctx, out);
    int64_t differ = 0;
    for (int h = 0; h < 2; h++) {
        sd_tensor_t *wh = make_tensor(ctx, SD_DTYPE_F16, 4, hws, wv + h * half * cin * 9, NULL);
        sd_tensor_t *oh = make_empty(ctx, 4, hos);
        CHECK_STATUS(sd_op_conv2d(ctx, oh, x, wh, NULL, NULL, &cp), SD_STATUS_OK);
        float *part = fetch(ctx, oh);
        for (int64_t i = 0; i < half * plane; i++) differ += part[i] != whole[h * half * plane + i];
        free(part);
        sd_tensor_free(ctx, wh), sd_tensor_free(ctx, oh);
    }
    CHECK(differ == 0, "conv2d winograd by slices: %lld of %lld outputs differ from the halves'",
          (long long)differ, (long long)(cout * plane));
    free(whole), free(xv), free(wv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, out);
}

/* ---- the context option ------------------------------------------------------------------ */

static void test_params(void) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    CHECK(p.precision == SD_PRECISION_F32, "default precision %d", (int)p.precision);
    p.precision = SD_PRECISION_COUNT;
    sd_ctx_t *c = NULL;
    char err[256];
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(err, "precision") != NULL, "message: %s", err);
    CHECK(c == NULL, "no context on failure");
}

/* A bf16 context in the share group of an fp32 one (sd_ctx_init_shared): each computes in
 * its own precision; the fp32 one stays exact. */
static void test_shared_precision(void) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    sd_ctx_t *fp32 = NULL, *bf16 = NULL;
    char err[256];
    CHECK_STATUS(sd_ctx_init(&p, &fp32, err, sizeof err), SD_STATUS_OK);
    p.precision = SD_PRECISION_BF16;
    CHECK_STATUS(sd_ctx_init_shared(fp32, &p, &bf16, err, sizeof err), SD_STATUS_OK);
    if (fp32 == NULL || bf16 == NULL) return;
    CHECK(strstr(sd_ctx_backend_description(bf16), "bf16") != NULL, "bf16: %s",
          sd_ctx_backend_description(bf16));
    CHECK(strstr(sd_ctx_backend_description(fp32), "bf16") == NULL, "fp32: %s",
          sd_ctx_backend_description(fp32));
    const int64_t rows = 20, k = 37, nout = 33;
    float *xv = frand(rows * k, -1, 1), *wv = frand(nout * k, -1, 1);
    int64_t xs[2] = {rows, k}, ws[2] = {nout, k}, os[2] = {rows, nout};
    double *exact = calloc((size_t)(rows * nout), sizeof(double));
    double *rounded = calloc((size_t)(rows * nout), sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < nout; o++)
            for (int64_t kk = 0; kk < k; kk++) {
                exact[r * nout + o] += (double)xv[r * k + kk] * wv[o * k + kk];
                rounded[r * nout + o] +=
                    (double)round_bf16(xv[r * k + kk]) * round_bf16(wv[o * k + kk]);
            }
    sd_ctx_t *ctxs[2] = {fp32, bf16};
    for (int i = 0; i < 2; i++) {
        sd_tensor_t *x = make_tensor(ctxs[i], SD_DTYPE_F32, 2, xs, xv, NULL);
        sd_tensor_t *w = make_tensor(ctxs[i], SD_DTYPE_F32, 2, ws, wv, NULL);
        sd_tensor_t *out = make_empty(ctxs[i], 2, os);
        sd_linear_params_t lp;
        sd_linear_params_default(&lp);
        CHECK_STATUS(sd_op_linear(ctxs[i], out, x, w, NULL, NULL, &lp), SD_STATUS_OK);
        float *got = fetch(ctxs[i], out);
        compare(i ? "shared group: bf16 context vs bf16-rounded operands"
                  : "shared group: fp32 context vs exact",
                got, i ? rounded : exact, rows * nout, RTOL, ATOL);
        free(got);
        sd_tensor_free(ctxs[i], x), sd_tensor_free(ctxs[i], w), sd_tensor_free(ctxs[i], out);
    }
    free(xv), free(wv), free(exact), free(rounded);
    sd_ctx_free(bf16);
    sd_ctx_free(fp32);
}

static int refused(void) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.precision = SD_PRECISION_BF16;
    sd_ctx_t *c = NULL;
    char err[256] = "";
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_UNSUPPORTED);
    CHECK(strstr(err, "bf16") != NULL, "message names the precision: %s", err);
    CHECK(c == NULL, "no context on failure");
    printf("refused: %s\n", err);
    return test_summary("test_bf16 refused");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "refused") == 0) return refused();
    test_params();
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.precision = SD_PRECISION_BF16;
    char err[256];
    sd_status_t st = sd_ctx_init(&p, &ctx, err, sizeof err);
    if (st == SD_STATUS_UNSUPPORTED) {
        printf("SKIP: %s\n", err);
        return 77;
    }
    CHECK_STATUS(st, SD_STATUS_OK);
    if (st != SD_STATUS_OK) return test_summary("test_bf16");
    printf("backend: %s\n", sd_ctx_backend_description(ctx));
    rng_seed(3);
    test_gemm();
    test_ops();
    test_conv_slices();
    test_shared_precision();
    sd_ctx_free(ctx);
    return test_summary("test_bf16");
}
