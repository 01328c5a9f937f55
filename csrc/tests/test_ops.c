/*
 * Every CPU op against a naive double-precision reference, over odd shapes (channel counts
 * that are not multiples of 8, H != W, batch 2, 1-pixel images, sizes that cross the GEMM
 * blocking), every weight dtype, and the fused extras (bias, per-sample bias, residual).
 * argv[1] names the instruction set the run expects (set through SD_CPU_ISA).
 */
#include "harness.h"

#include "cpu.h"
#include "sd-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static sd_ctx_t *ctx;

/* float32 arithmetic against a double reference: rounding of long sums stays far below. */
#define RTOL 2e-5
#define ATOL 1e-6

static double *dalloc(int64_t n) {
    return calloc((size_t)n, sizeof(double));
}

static float *frand(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)n * sizeof(float));
    rng_fill(x, n, lo, hi);
    return x;
}

/* ---- conv2d ---------------------------------------------------------------------------- */

typedef struct {
    int64_t n, cin, h, w, cout, kh, kw;
    int32_t stride, pt, pb, pl, pr;
} conv_case_t;

static void test_conv2d_case(const conv_case_t *cc, int32_t wdtype, int bias_kind,
                             int residual_kind) {
    const int64_t oh = (cc->h + cc->pt + cc->pb - cc->kh) / cc->stride + 1;
    const int64_t ow = (cc->w + cc->pl + cc->pr - cc->kw) / cc->stride + 1;
    int64_t xs[4] = {cc->n, cc->cin, cc->h, cc->w}, ws[4] = {cc->cout, cc->cin, cc->kh, cc->kw};
    int64_t os[4] = {cc->n, cc->cout, oh, ow};
    int64_t nx = cc->n * cc->cin * cc->h * cc->w, nw = cc->cout * cc->cin * cc->kh * cc->kw;
    int64_t no = cc->n * cc->cout * oh * ow;
    float *xv = frand(nx, -1, 1), *wv = frand(nw, -0.5f, 0.5f), *wr = malloc((size_t)nw * 4);
    int64_t nb = bias_kind == 2 ? cc->n * cc->cout : cc->cout;
    float *bv = frand(nb, -1, 1), *rv = frand(no, -1, 1);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, wdtype, 4, ws, wv, wr);
    int64_t bs1[1] = {cc->cout}, bs2[2] = {cc->n, cc->cout};
    sd_tensor_t *b = bias_kind == 0   ? NULL
                     : bias_kind == 1 ? make_tensor(ctx, SD_DTYPE_F32, 1, bs1, bv, NULL)
                                      : make_tensor(ctx, SD_DTYPE_F32, 2, bs2, bv, NULL);
    sd_tensor_t *out = residual_kind == 2 ? make_tensor(ctx, SD_DTYPE_F32, 4, os, rv, NULL)
                                          : make_empty(ctx, 4, os);
    sd_tensor_t *res = residual_kind == 1   ? make_tensor(ctx, SD_DTYPE_F32, 4, os, rv, NULL)
                       : residual_kind == 2 ? out
                                            : NULL;
    sd_conv2d_params_t p;
    sd_conv2d_params_default(&p);
    p.stride_h = p.stride_w = cc->stride;
    p.pad_top = cc->pt, p.pad_bottom = cc->pb, p.pad_left = cc->pl, p.pad_right = cc->pr;
    CHECK_STATUS(sd_op_conv2d(ctx, out, x, w, b, res, &p), SD_STATUS_OK);

    double *ref = dalloc(no);
    for (int64_t n = 0; n < cc->n; n++)
        for (int64_t co = 0; co < cc->cout; co++)
            for (int64_t y = 0; y < oh; y++)
                for (int64_t xx = 0; xx < ow; xx++) {
                    double acc = 0;
                    for (int64_t ci = 0; ci < cc->cin; ci++)
                        for (int64_t ky = 0; ky < cc->kh; ky++)
                            for (int64_t kx = 0; kx < cc->kw; kx++) {
                                int64_t iy = y * cc->stride - cc->pt + ky,
                                        ix = xx * cc->stride - cc->pl + kx;
                                if (iy < 0 || iy >= cc->h || ix < 0 || ix >= cc->w) continue;
                                acc += (double)xv[((n * cc->cin + ci) * cc->h + iy) * cc->w + ix] *
                                       wr[((co * cc->cin + ci) * cc->kh + ky) * cc->kw + kx];
                            }
                    if (bias_kind == 1) acc += bv[co];
                    if (bias_kind == 2) acc += bv[n * cc->cout + co];
                    int64_t oi = ((n * cc->cout + co) * oh + y) * ow + xx;
                    if (residual_kind) acc += rv[oi];
                    ref[oi] = acc;
                }
    float *got = fetch(ctx, out);
    char what[160];
    snprintf(
        what, sizeof what,
        "conv2d n%lld cin%lld %lldx%lld cout%lld k%lldx%lld s%d pad(%d,%d,%d,%d) %s bias%d res%d",
        (long long)cc->n, (long long)cc->cin, (long long)cc->h, (long long)cc->w,
        (long long)cc->cout, (long long)cc->kh, (long long)cc->kw, cc->stride, cc->pt, cc->pb,
        cc->pl, cc->pr, sd_dtype_name(wdtype), bias_kind, residual_kind);
    compare(what, got, ref, no, RTOL, ATOL);
    free(got), free(ref), free(xv), free(wv), free(wr), free(bv), free(rv);
    /* Only model weights own a packed form (freed by weight_free); this one is the test's. */
    sd_packed_weight_free(w->packed);
    w->packed = NULL;
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, b),
        sd_tensor_free(ctx, out);
    if (residual_kind == 1) sd_tensor_free(ctx, res);
}

static void test_conv2d(void) {
    const conv_case_t cases[] = {
        {1, 3, 5, 7, 7, 3, 3, 1, 1, 1, 1, 1},      /* H != W, odd channels */
        {2, 5, 1, 1, 6, 3, 3, 1, 1, 1, 1, 1},      /* 1-pixel images, batch 2 */
        {2, 4, 9, 6, 13, 1, 1, 1, 0, 0, 0, 0},     /* 1x1 */
        {2, 6, 9, 11, 5, 3, 3, 2, 1, 1, 1, 1},     /* stride-2 downsample (UNet) */
        {1, 6, 8, 10, 9, 3, 3, 2, 0, 1, 0, 1},     /* VAE downsample: pad (0,1,0,1) */
        {1, 2, 6, 6, 3, 5, 5, 1, 2, 2, 2, 2},      /* 5x5 */
        {1, 3, 4, 3, 2, 4, 2, 3, 1, 2, 0, 2},      /* even kernel, stride 3, uneven pads */
        {2, 31, 19, 37, 29, 3, 3, 1, 1, 1, 1, 1},  /* K = 279 > KC, rows across NR panels */
        {1, 17, 40, 40, 150, 3, 3, 1, 1, 1, 1, 1}, /* M = 150 > MC */
        {2, 3, 48, 47, 4, 1, 1, 1, 0, 0, 0, 0},    /* N = 4512 > NC */
        /* M > N (a deep level's conv): B packed once for both threads' rows */
        {2, 40, 4, 4, 96, 3, 3, 1, 1, 1, 1, 1},    /* K = 360: two KC blocks, one panel */
        {1, 20, 12, 13, 200, 3, 3, 1, 1, 1, 1, 1}, /* N = 156: panels in two pack tasks */
        /* Winograd: >= 32 channels, >= 64 tiles; ragged edges, uneven padding, many chunks */
        {2, 33, 24, 23, 40, 3, 3, 1, 1, 1, 1, 1},
        {1, 32, 30, 37, 35, 3, 3, 1, 0, 1, 2, 0},
        {1, 48, 70, 66, 32, 3, 3, 1, 1, 1, 1, 1},
    };
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int d = 0; d < 3; d++) test_conv2d_case(&cases[i], dtypes[d], d % 3, 0);
    /* Bias and residual combinations on one mid-size case, direct and Winograd. */
    for (int bias = 0; bias < 3; bias++)
        for (int res = 0; res < 3; res++) {
            test_conv2d_case(&cases[7], SD_DTYPE_F16, bias, res);
            test_conv2d_case(&cases[12], SD_DTYPE_F16, bias, res);
        }
}

/* A Winograd conv whose transformed filters exceed one slice (winograd.c's U_BYTES: 2048
 * input channels make slices of 72 and 58 of the 130 output channels, the last ending inside
 * an A panel), per-sample bias and a
 * residual, checked at every 5th row and column (and the last) for every channel: the
 * reference of the whole output would take seconds. */
static void test_conv2d_winograd_slices(int64_t side) {
    const int64_t cin = 2048, cout = 130, h = side, wd = side;
    int64_t xs[4] = {1, cin, h, wd}, ws[4] = {cout, cin, 3, 3}, os[4] = {1, cout, h, wd};
    int64_t bs[2] = {1, cout}, no = cout * h * wd;
    float *xv = frand(cin * h * wd, -1, 1), *wv = frand(cout * cin * 9, -0.5f, 0.5f);
    float *wr = malloc((size_t)(cout * cin * 9) * sizeof(float));
    float *bv = frand(cout, -1, 1), *rv = frand(no, -1, 1);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, SD_DTYPE_F16, 4, ws, wv, wr);
    sd_tensor_t *b = make_tensor(ctx, SD_DTYPE_F32, 2, bs, bv, NULL);
    sd_tensor_t *res = make_tensor(ctx, SD_DTYPE_F32, 4, os, rv, NULL);
    sd_tensor_t *out = make_empty(ctx, 4, os);
    sd_conv2d_params_t p;
    sd_conv2d_params_default(&p);
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    CHECK(sd_cpu_winograd_applies(x, w, &p, h, wd), "conv path");
    CHECK_STATUS(sd_op_conv2d(ctx, out, x, w, b, res, &p), SD_STATUS_OK);
    float *all = fetch(ctx, out), *got = malloc((size_t)no * sizeof(float));
    double *ref = dalloc(no);
    int64_t n = 0;
    for (int64_t co = 0; co < cout; co++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < wd; xx++) {
                if ((y % 5 != 0 && y != h - 1) || (xx % 5 != 0 && xx != wd - 1)) continue;
                double acc = bv[co];
                for (int64_t ci = 0; ci < cin; ci++)
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int64_t iy = y - 1 + ky, ix = xx - 1 + kx;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                            acc += (double)xv[(ci * h + iy) * wd + ix] *
                                   wr[((co * cin + ci) * 3 + ky) * 3 + kx];
                        }
                const int64_t oi = (co * h + y) * wd + xx;
                ref[n] = acc + rv[oi];
                got[n++] = all[oi];
            }
    char what[96];
    snprintf(what, sizeof what, "conv2d winograd by output-channel slices, cin%lld %lldx%lld",
             (long long)cin, (long long)h, (long long)wd);
    compare(what, got, ref, n, RTOL, ATOL);
    free(all), free(got), free(ref), free(xv), free(wv), free(wr), free(bv), free(rv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, b);
    sd_tensor_free(ctx, res), sd_tensor_free(ctx, out);
}

/* The decoders' fused upsample + conv (sd_op_conv2d_up2) against the two ops it replaces, bit
 * for bit where Winograd applies (the same transform of the same values); refused, with no
 * error recorded, where it does not. */
static void test_conv2d_up2(void) {
    const int64_t n = 1, cin = 33, h = 17, wd = 15, cout = 40;
    int64_t xs[4] = {n, cin, h, wd}, us[4] = {n, cin, 2 * h, 2 * wd};
    int64_t ws[4] = {cout, cin, 3, 3}, os[4] = {n, cout, 2 * h, 2 * wd}, bs[1] = {cout};
    float *xv = frand(n * cin * h * wd, -1, 1), *wv = frand(cout * cin * 9, -0.5f, 0.5f);
    float *bv = frand(cout, -1, 1);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, SD_DTYPE_F16, 4, ws, wv, NULL);
    sd_tensor_t *b = make_tensor(ctx, SD_DTYPE_F32, 1, bs, bv, NULL);
    sd_tensor_t *up = make_empty(ctx, 4, us), *ref = make_empty(ctx, 4, os);
    sd_tensor_t *out = make_empty(ctx, 4, os);
    sd_conv2d_params_t p;
    sd_conv2d_params_default(&p);
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    CHECK(sd_cpu_winograd_applies(up, w, &p, 2 * h, 2 * wd), "conv path");
    CHECK_STATUS(sd_op_upsample_nearest(ctx, up, x), SD_STATUS_OK);
    CHECK_STATUS(sd_op_conv2d(ctx, ref, up, w, b, NULL, &p), SD_STATUS_OK);
    CHECK_STATUS(sd_op_conv2d_up2(ctx, out, x, w, b), SD_STATUS_OK);
    float *got = fetch(ctx, out), *want = fetch(ctx, ref);
    int64_t differ = 0, no = n * cout * 4 * h * wd;
    for (int64_t i = 0; i < no; i++) differ += got[i] != want[i];
    CHECK(differ == 0, "conv2d of an upsampled input: %lld of %lld outputs differ",
          (long long)differ, (long long)no);
    free(got), free(want);
    /* Too few tiles for Winograd: refused, nothing recorded. */
    int64_t sxs[4] = {1, cin, 4, 4}, sos[4] = {1, cout, 8, 8};
    sd_tensor_t *sx = make_empty(ctx, 4, sxs), *so = make_empty(ctx, 4, sos);
    CHECK_STATUS(sd_op_conv2d_up2(ctx, so, sx, w, b), SD_STATUS_UNSUPPORTED);
    CHECK(sd_ctx_last_error(ctx)[0] == '\0' || strstr(sd_ctx_last_error(ctx), "upsampled") == NULL,
          "no error recorded: %s", sd_ctx_last_error(ctx));
    free(xv), free(wv), free(bv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, b);
    sd_tensor_free(ctx, up), sd_tensor_free(ctx, ref), sd_tensor_free(ctx, out);
    sd_tensor_free(ctx, sx), sd_tensor_free(ctx, so);
}

/* ---- linear ------------------------------------------------------------------------------ */

static void test_linear_case(int64_t batch, int64_t t, int64_t k, int64_t nout, int32_t in_layout,
                             int32_t out_layout, int32_t wdtype, bool with_bias, int residual_kind,
                             bool packed) {
    int64_t rows = batch * t;
    float *xv = frand(rows * k, -1, 1), *wv = frand(nout * k, -0.5f, 0.5f);
    float *wr = malloc((size_t)(nout * k) * 4), *bv = frand(nout, -1, 1),
          *rv = frand(rows * nout, -1, 1);
    bool xcf = in_layout == SD_LAYOUT_CHANNELS_FIRST, ocf = out_layout == SD_LAYOUT_CHANNELS_FIRST;
    int64_t xs[3] = {batch, xcf ? k : t, xcf ? t : k},
            os[3] = {batch, ocf ? nout : t, ocf ? t : nout};
    int64_t ws[2] = {nout, k}, bs[1] = {nout};
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 3, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, wdtype, 2, ws, wv, wr);
    if (packed) { /* as the CPU backend packs model weights: for the side the GEMM reads */
        sd_cpu_backend_t *cpu = sd_cpu(ctx);
        w->packed = sd_packed_weight_new(cpu->pool, cpu->kern, w->data, wdtype, nout, k, !ocf);
    }
    sd_tensor_t *b = with_bias ? make_tensor(ctx, SD_DTYPE_F32, 1, bs, bv, NULL) : NULL;
    sd_tensor_t *out = residual_kind == 2 ? make_tensor(ctx, SD_DTYPE_F32, 3, os, rv, NULL)
                                          : make_empty(ctx, 3, os);
    sd_tensor_t *res = residual_kind == 1   ? make_tensor(ctx, SD_DTYPE_F32, 3, os, rv, NULL)
                       : residual_kind == 2 ? out
                                            : NULL;
    sd_linear_params_t p = {in_layout, out_layout};
    CHECK_STATUS(sd_op_linear(ctx, out, x, w, b, res, &p), SD_STATUS_OK);
    double *ref = dalloc(rows * nout);
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t ti = 0; ti < t; ti++)
            for (int64_t o = 0; o < nout; o++) {
                double acc = with_bias ? bv[o] : 0;
                for (int64_t kk = 0; kk < k; kk++) {
                    float xval = xcf ? xv[(bi * k + kk) * t + ti] : xv[(bi * t + ti) * k + kk];
                    acc += (double)xval * wr[o * k + kk];
                }
                int64_t oi = ocf ? (bi * nout + o) * t + ti : (bi * t + ti) * nout + o;
                if (residual_kind) acc += rv[oi];
                ref[oi] = acc;
            }
    float *got = fetch(ctx, out);
    char what[160];
    snprintf(what, sizeof what,
             "linear b%lld t%lld k%lld n%lld in%d out%d %s bias%d res%d packed%d", (long long)batch,
             (long long)t, (long long)k, (long long)nout, in_layout, out_layout,
             sd_dtype_name(wdtype), with_bias, residual_kind, packed);
    compare(what, got, ref, rows * nout, RTOL, ATOL);
    free(got), free(ref), free(xv), free(wv), free(wr), free(bv), free(rv);
    /* Only model weights own a packed form (freed by weight_free); this one is the test's. */
    sd_packed_weight_free(w->packed);
    w->packed = NULL;
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, b),
        sd_tensor_free(ctx, out);
    if (residual_kind == 1) sd_tensor_free(ctx, res);
}

static void test_linear(void) {
    const int64_t shapes[][4] = {
        {1, 1, 1, 1}, {2, 7, 13, 9}, {2, 77, 40, 35}, {1, 45, 300, 37}, {2, 19, 33, 161}};
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int in = 0; in < 2; in++)
            for (int out = 0; out < 2; out++)
                for (int d = 0; d < 3; d++)
                    for (int packed = 0; packed < 2; packed++)
                        test_linear_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], in,
                                         out, dtypes[d], (s + d) % 2 == 0,
                                         (int)((s + in + out) % 3), packed);
    /* A 2-D (rows, K) input in the token layout. */
    float xv[6] = {1, 2, 3, 4, 5, 6}, wv[2] = {0.5f, -1};
    int64_t xs[2] = {3, 2}, ws[2] = {1, 2}, os[2] = {3, 1};
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, SD_DTYPE_F32, 2, ws, wv, NULL);
    sd_tensor_t *o = make_empty(ctx, 2, os);
    sd_linear_params_t p;
    sd_linear_params_default(&p);
    CHECK_STATUS(sd_op_linear(ctx, o, x, w, NULL, NULL, &p), SD_STATUS_OK);
    float *got = fetch(ctx, o);
    double ref[3] = {-1.5, -2.5, -3.5};
    compare("linear 2-D", got, ref, 3, RTOL, ATOL);
    free(got);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, o);
}

/* A low-rank product merged into a packed weight (sd_packed_weight_merge, what adapters use):
 * the linear layer over it computes x (W + up·down)^T. Shapes cross the packing's edges:
 * output rows past whole NR panels, depths past KC blocks and not in whole MR tiles, a rank
 * of more than one KC block; merged into F16 and BF16 packs (made F32) and again into the F32
 * pack, which must start from the base again rather than add to the last merge. */
static void test_merged_linear_case(int64_t t, int64_t k, int64_t nout, int64_t rank,
                                    int32_t wdtype) {
    float *xv = frand(t * k, -1, 1), *wv = frand(nout * k, -0.5f, 0.5f);
    float *up = frand(nout * rank, -0.2f, 0.2f), *down = frand(rank * k, -0.2f, 0.2f);
    float *wr = malloc((size_t)(nout * k) * 4);
    int64_t xs[2] = {t, k}, ws[2] = {nout, k}, os[2] = {t, nout};
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(ctx, wdtype, 2, ws, wv, wr);
    sd_tensor_t *out = make_empty(ctx, 2, os);
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    sd_packed_weight_t *pw =
        sd_packed_weight_new(cpu->pool, cpu->kern, w->data, wdtype, nout, k, true);
    w->packed = pw;
    double *ref = dalloc(t * nout), *merged = dalloc(nout * k);
    for (int64_t o = 0; o < nout; o++)
        for (int64_t j = 0; j < k; j++) {
            double v = wr[o * k + j];
            for (int64_t d = 0; d < rank; d++) v += (double)up[o * rank + d] * down[d * k + j];
            merged[o * k + j] = v;
        }
    for (int64_t i = 0; i < t; i++)
        for (int64_t o = 0; o < nout; o++) {
            double acc = 0;
            for (int64_t j = 0; j < k; j++) acc += (double)xv[i * k + j] * merged[o * k + j];
            ref[i * nout + o] = acc;
        }
    sd_linear_params_t p;
    sd_linear_params_default(&p);
    char name[96];
    for (int round = 0; round < 2; round++) {
        CHECK(sd_packed_weight_merge(cpu->pool, cpu->kern, pw, w->data, wdtype, up, down, rank),
              "merge");
        CHECK(pw->dtype == SD_DTYPE_F32, "a merged pack is F32");
        CHECK_STATUS(sd_op_linear(ctx, out, x, w, NULL, NULL, &p), SD_STATUS_OK);
        float *got = fetch(ctx, out);
        snprintf(name, sizeof name, "merged linear t%lld k%lld n%lld rank %lld %s, merge %d",
                 (long long)t, (long long)k, (long long)nout, (long long)rank,
                 sd_dtype_name(wdtype), round + 1);
        compare(name, got, ref, t * nout, RTOL, ATOL);
        free(got);
    }
    free(xv), free(wv), free(up), free(down), free(wr), free(ref), free(merged);
    sd_packed_weight_free(pw);
    w->packed = NULL;
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, w), sd_tensor_free(ctx, out);
}

/* The same for a matrix merged unpacked (sd_weight_merge_rows: convolution kernels). */
static void test_merged_rows_case(int64_t rows, int64_t cols, int64_t rank, int32_t dtype) {
    float *wv = frand(rows * cols, -0.5f, 0.5f), *wr = malloc((size_t)(rows * cols) * 4);
    float *up = frand(rows * rank, -0.2f, 0.2f), *down = frand(rank * cols, -0.2f, 0.2f);
    float *got = malloc((size_t)(rows * cols) * 4);
    int64_t ws[2] = {rows, cols};
    sd_tensor_t *w = make_tensor(ctx, dtype, 2, ws, wv, wr);
    double *ref = dalloc(rows * cols);
    for (int64_t o = 0; o < rows; o++)
        for (int64_t j = 0; j < cols; j++) {
            double v = wr[o * cols + j];
            for (int64_t d = 0; d < rank; d++) v += (double)up[o * rank + d] * down[d * cols + j];
            ref[o * cols + j] = v;
        }
    CHECK(sd_weight_merge_rows(sd_cpu(ctx), got, w->data, dtype, rows, cols, up, down, rank),
          "merge rows");
    char name[96];
    snprintf(name, sizeof name, "merged rows %lldx%lld rank %lld %s", (long long)rows,
             (long long)cols, (long long)rank, sd_dtype_name(dtype));
    compare(name, got, ref, rows * cols, RTOL, ATOL);
    free(wv), free(wr), free(up), free(down), free(got), free(ref);
    sd_tensor_free(ctx, w);
}

static void test_merged_linear(void) {
    test_merged_rows_case(7, 45, 3, SD_DTYPE_F16);
    test_merged_rows_case(40, 27, 300, SD_DTYPE_F32);
    test_merged_rows_case(1, 9, 1, SD_DTYPE_BF16);
    test_merged_linear_case(9, 300, 70, 40, SD_DTYPE_F16);
    test_merged_linear_case(5, 20, 33, 300, SD_DTYPE_BF16);
    test_merged_linear_case(3, 256, 32, 12, SD_DTYPE_F32);
    test_merged_linear_case(1, 1, 1, 1, SD_DTYPE_F16);
}

/* ---- norms ------------------------------------------------------------------------------- */

static void test_group_norm_case(int64_t n, int64_t c, int64_t h, int64_t w, int32_t groups,
                                 bool affine, bool silu, bool in_place) {
    int64_t shape[4] = {n, c, h, w}, cs[1] = {c}, total = n * c * h * w, hw = h * w;
    float *xv = frand(total, -3, 5), *gv = frand(c, 0.5f, 1.5f), *bv = frand(c, -1, 1);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, shape, xv, NULL);
    sd_tensor_t *g = affine ? make_tensor(ctx, SD_DTYPE_F32, 1, cs, gv, NULL) : NULL;
    sd_tensor_t *b = affine ? make_tensor(ctx, SD_DTYPE_F32, 1, cs, bv, NULL) : NULL;
    sd_tensor_t *out = in_place ? x : make_empty(ctx, 4, shape);
    CHECK_STATUS(sd_op_group_norm(ctx, out, x, g, b, groups, 1e-5f, silu), SD_STATUS_OK);
    double *ref = dalloc(total);
    int64_t cpg = c / groups;
    for (int64_t ni = 0; ni < n; ni++)
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *xs = xv + (ni * c + gi * cpg) * hw;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < cpg * hw; i++) mean += xs[i];
            mean /= (double)(cpg * hw);
            for (int64_t i = 0; i < cpg * hw; i++) var += (xs[i] - mean) * (xs[i] - mean);
            var /= (double)(cpg * hw);
            for (int64_t i = 0; i < cpg * hw; i++) {
                int64_t ch = gi * cpg + i / hw;
                double y = (xs[i] - mean) / sqrt(var + 1e-5);
                if (affine) y = y * gv[ch] + bv[ch];
                if (silu) y = y / (1 + exp(-y));
                ref[(ni * c + gi * cpg) * hw + i] = y;
            }
        }
    float *got = fetch(ctx, out);
    char what[128];
    snprintf(what, sizeof what, "group_norm (%lld,%lld,%lld,%lld) g%d affine%d silu%d inplace%d",
             (long long)n, (long long)c, (long long)h, (long long)w, groups, affine, silu,
             in_place);
    compare(what, got, ref, total, RTOL, ATOL);
    free(got), free(ref), free(xv), free(gv), free(bv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, g), sd_tensor_free(ctx, b);
    if (!in_place) sd_tensor_free(ctx, out);
}

static void test_norms(void) {
    test_group_norm_case(2, 6, 5, 7, 3, true, false, false);
    test_group_norm_case(1, 64, 9, 9, 32, true, true, false);
    test_group_norm_case(2, 10, 1, 1, 5, false, true, true);
    test_group_norm_case(1, 96, 70, 70, 32, true, true, true); /* groups over 4096 elements */

    const int64_t shapes[][2] = {{1, 1}, {7, 13}, {154, 48}, {5, 1030}};
    for (size_t s = 0; s < 4; s++) {
        int64_t rows = shapes[s][0], c = shapes[s][1], xs[2] = {rows, c}, cs[1] = {c};
        float *xv = frand(rows * c, -2, 6), *gv = frand(c, 0.5f, 1.5f), *bv = frand(c, -1, 1);
        sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, xs, xv, NULL);
        sd_tensor_t *g = make_tensor(ctx, SD_DTYPE_F32, 1, cs, gv, NULL);
        sd_tensor_t *b = make_tensor(ctx, SD_DTYPE_F32, 1, cs, bv, NULL);
        sd_tensor_t *out = make_empty(ctx, 2, xs);
        bool affine = s % 2 == 1;
        CHECK_STATUS(sd_op_layer_norm(ctx, out, x, affine ? g : NULL, affine ? b : NULL, 1e-5f),
                     SD_STATUS_OK);
        double *ref = dalloc(rows * c);
        for (int64_t r = 0; r < rows; r++) {
            double mean = 0, var = 0;
            for (int64_t i = 0; i < c; i++) mean += xv[r * c + i];
            mean /= (double)c;
            for (int64_t i = 0; i < c; i++) var += (xv[r * c + i] - mean) * (xv[r * c + i] - mean);
            var /= (double)c;
            for (int64_t i = 0; i < c; i++) {
                double y = (xv[r * c + i] - mean) / sqrt(var + 1e-5);
                ref[r * c + i] = affine ? y * gv[i] + bv[i] : y;
            }
        }
        float *got = fetch(ctx, out);
        char what[64];
        snprintf(what, sizeof what, "layer_norm (%lld, %lld)", (long long)rows, (long long)c);
        compare(what, got, ref, rows * c, RTOL, ATOL);
        free(got), free(ref), free(xv), free(gv), free(bv);
        sd_tensor_free(ctx, x), sd_tensor_free(ctx, g), sd_tensor_free(ctx, b),
            sd_tensor_free(ctx, out);
    }
}

/* ---- attention --------------------------------------------------------------------------- */

static void test_attention_case(int64_t b, int64_t tq, int64_t tk, int64_t c, int32_t heads,
                                bool causal, float spread) {
    int64_t qs[3] = {b, tq, c}, ks[3] = {b, tk, c};
    float *qv = frand(b * tq * c, -spread, spread), *kv = frand(b * tk * c, -spread, spread);
    float *vv = frand(b * tk * c, -1, 1);
    sd_tensor_t *q = make_tensor(ctx, SD_DTYPE_F32, 3, qs, qv, NULL);
    sd_tensor_t *k = make_tensor(ctx, SD_DTYPE_F32, 3, ks, kv, NULL);
    sd_tensor_t *v = make_tensor(ctx, SD_DTYPE_F32, 3, ks, vv, NULL);
    sd_tensor_t *out = make_empty(ctx, 3, qs);
    sd_attention_params_t p;
    sd_attention_params_default(&p);
    p.heads = heads;
    p.causal = causal;
    CHECK_STATUS(sd_op_attention(ctx, out, q, k, v, &p), SD_STATUS_OK);
    int64_t d = c / heads;
    double scale = 1.0 / sqrt((double)d);
    double *ref = dalloc(b * tq * c), *s = dalloc(tk);
    for (int64_t bi = 0; bi < b; bi++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < tq; i++) {
                int64_t keys = causal ? i + 1 : tk;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < keys; j++) {
                    double dot = 0;
                    for (int64_t e = 0; e < d; e++)
                        dot += (double)qv[(bi * tq + i) * c + h * d + e] *
                               kv[(bi * tk + j) * c + h * d + e];
                    s[j] = dot * scale;
                    mx = fmax(mx, s[j]);
                }
                for (int64_t j = 0; j < keys; j++) sum += s[j] = exp(s[j] - mx);
                for (int64_t e = 0; e < d; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < keys; j++)
                        acc += s[j] * vv[(bi * tk + j) * c + h * d + e];
                    ref[(bi * tq + i) * c + h * d + e] = acc / sum;
                }
            }
    float *got = fetch(ctx, out);
    char what[128];
    snprintf(what, sizeof what, "attention b%lld tq%lld tk%lld c%lld h%d causal%d spread%g",
             (long long)b, (long long)tq, (long long)tk, (long long)c, heads, causal, spread);
    compare(what, got, ref, b * tq * c, 1e-4, ATOL);
    free(got), free(ref), free(s), free(qv), free(kv), free(vv);
    sd_tensor_free(ctx, q), sd_tensor_free(ctx, k), sd_tensor_free(ctx, v),
        sd_tensor_free(ctx, out);
}

static void test_attention(void) {
    test_attention_case(1, 1, 1, 8, 1, false, 1);
    test_attention_case(2, 33, 33, 24, 3, false, 1);  /* self, d = 8 */
    test_attention_case(2, 37, 77, 16, 2, false, 1);  /* cross */
    test_attention_case(2, 77, 77, 32, 4, true, 1);   /* causal (CLIP) */
    test_attention_case(1, 70, 19, 30, 5, false, 1);  /* d = 6 */
    test_attention_case(1, 64, 300, 80, 2, false, 1); /* d = 40 (SD 1.x), Tk > KC */
    test_attention_case(1, 20, 20, 12, 2, false, 12); /* large logits: stable softmax */
    test_attention_case(1, 40, 40, 12, 3, true, 12);
}

/* ---- elementwise ------------------------------------------------------------------------- */

static void test_activations(void) {
    const int64_t n = 1000 + 37;
    int64_t shape[2] = {1, n};
    float *xv = frand(n, -10, 10);
    float specials[] = {0.0f,    -0.0f, 1e-20f, -1e-20f, 100.0f,
                        -100.0f, 88.0f, -88.0f, 3e38f,   -3e38f};
    memcpy(xv, specials, sizeof specials);
    for (int act = 0; act < SD_ACT_COUNT; act++) {
        sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, shape, xv, NULL);
        sd_tensor_t *out = act % 2 ? x : make_empty(ctx, 2, shape); /* in place too */
        CHECK_STATUS(sd_op_activation(ctx, out, x, act), SD_STATUS_OK);
        float *got = fetch(ctx, out);
        /* Relative per element (|ref| can be 3e38 or 1e-20). */
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            double r = ref_activation(act, xv[i]);
            double tol = 2e-6 * fabs(r) + 2e-7 * (fabs(xv[i]) < 10 ? 1 : 0) + 1e-30;
            if (!(fabs(got[i] - r) <= tol)) {
                if (!bad++)
                    fprintf(stderr, "FAIL activation %d at x=%g: got %.9g ref %.9g\n", act,
                            (double)xv[i], (double)got[i], r);
            }
        }
        test_checks++;
        if (bad) test_failures++;
        free(got);
        sd_tensor_free(ctx, x);
        if (out != x) sd_tensor_free(ctx, out);
    }
    free(xv);

    /* GEGLU: (2, 5, 2*19) -> (2, 5, 19) */
    int64_t xs[3] = {2, 5, 38}, os[3] = {2, 5, 19};
    float *gv = frand(2 * 5 * 38, -4, 4);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 3, xs, gv, NULL);
    sd_tensor_t *out = make_empty(ctx, 3, os);
    CHECK_STATUS(sd_op_geglu(ctx, out, x), SD_STATUS_OK);
    double ref[190];
    for (int64_t r = 0; r < 10; r++)
        for (int64_t i = 0; i < 19; i++)
            ref[r * 19 + i] = gv[r * 38 + i] * ref_activation(SD_ACT_GELU, gv[r * 38 + 19 + i]);
    float *got = fetch(ctx, out);
    compare("geglu", got, ref, 190, RTOL, ATOL);
    free(got), free(gv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, out);
}

static void test_shape_ops(void) {
    /* upsample (2, 3, 2, 5) -> (2, 3, 4, 10) */
    int64_t xs[4] = {2, 3, 2, 5}, os[4] = {2, 3, 4, 10};
    float *xv = frand(60, -1, 1);
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 4, xs, xv, NULL);
    sd_tensor_t *out = make_empty(ctx, 4, os);
    CHECK_STATUS(sd_op_upsample_nearest(ctx, out, x), SD_STATUS_OK);
    double ref[240];
    for (int nc = 0; nc < 6; nc++)
        for (int y = 0; y < 4; y++)
            for (int xx = 0; xx < 10; xx++)
                ref[(nc * 4 + y) * 10 + xx] = xv[(nc * 2 + y / 2) * 5 + xx / 2];
    float *got = fetch(ctx, out);
    compare("upsample_nearest 2x", got, ref, 240, 0, 0);
    free(got);
    sd_tensor_free(ctx, out);

    /* nearest resize to a size that is not 2x: (2, 3, 2, 5) -> (2, 3, 3, 7), torch's rule */
    int64_t rs[4] = {2, 3, 3, 7};
    sd_tensor_t *resized = make_empty(ctx, 4, rs);
    CHECK_STATUS(sd_op_upsample_nearest(ctx, resized, x), SD_STATUS_OK);
    double rref[126];
    for (int nc = 0; nc < 6; nc++)
        for (int y = 0; y < 3; y++)
            for (int xx = 0; xx < 7; xx++) {
                int sy = (int)floorf((float)y * (2.0f / 3.0f)),
                    sx = (int)floorf((float)xx * (5.0f / 7.0f));
                rref[(nc * 3 + y) * 7 + xx] = xv[(nc * 2 + sy) * 5 + sx];
            }
    got = fetch(ctx, resized);
    compare("upsample_nearest to 3x7", got, rref, 126, 0, 0);
    free(got);
    sd_tensor_free(ctx, resized);

    /* convert f32 -> f16 / bf16 -> f32 rounds like the host conversion */
    for (int d = 1; d <= 2; d++) {
        sd_tensor_t *half, *back;
        sd_tensor_new(ctx, d == 1 ? SD_DTYPE_F16 : SD_DTYPE_BF16, 4, xs, &half);
        back = make_empty(ctx, 4, xs);
        CHECK_STATUS(sd_op_convert(ctx, half, x), SD_STATUS_OK);
        CHECK_STATUS(sd_op_convert(ctx, back, half), SD_STATUS_OK);
        double cref[60];
        for (int i = 0; i < 60; i++)
            cref[i] = d == 1 ? sd_f16_to_f32(sd_f32_to_f16(xv[i]))
                             : sd_bf16_to_f32(sd_f32_to_bf16(xv[i]));
        got = fetch(ctx, back);
        compare(d == 1 ? "convert f16" : "convert bf16", got, cref, 60, 0, 0);
        free(got);
        sd_tensor_free(ctx, half), sd_tensor_free(ctx, back);
    }

    /* add / mul: full shape and a broadcast suffix (3, 2, 5) over (2, 3, 2, 5) */
    int64_t bs[3] = {3, 2, 5};
    float *bv = frand(60, -1, 1), *b2v = frand(30, -1, 1);
    sd_tensor_t *b = make_tensor(ctx, SD_DTYPE_F32, 4, xs, bv, NULL);
    sd_tensor_t *b2 = make_tensor(ctx, SD_DTYPE_F32, 3, bs, b2v, NULL);
    sd_tensor_t *o2 = make_empty(ctx, 4, xs);
    double r2[60];
    CHECK_STATUS(sd_op_add(ctx, o2, x, b), SD_STATUS_OK);
    for (int i = 0; i < 60; i++) r2[i] = xv[i] + bv[i]; /* float sums, exact match */
    got = fetch(ctx, o2), compare("add", got, r2, 60, 0, 0), free(got);
    CHECK_STATUS(sd_op_mul(ctx, o2, x, b2), SD_STATUS_OK);
    for (int i = 0; i < 60; i++) r2[i] = xv[i] * b2v[i % 30];
    got = fetch(ctx, o2), compare("mul broadcast", got, r2, 60, 0, 0), free(got);
    CHECK_STATUS(sd_op_add(ctx, x, x, b2), SD_STATUS_OK); /* in place */
    for (int i = 0; i < 60; i++) r2[i] = xv[i] + b2v[i % 30];
    got = fetch(ctx, x), compare("add in place", got, r2, 60, 0, 0), free(got);

    /* concat (2, 3, 2, 5) + (2, 1, 2, 5) -> (2, 4, 2, 5) */
    int64_t cs[4] = {2, 1, 2, 5}, ccs[4] = {2, 4, 2, 5};
    float *cv = frand(20, -1, 1);
    sd_tensor_t *c1 = make_tensor(ctx, SD_DTYPE_F32, 4, cs, cv, NULL);
    sd_tensor_t *cat = make_empty(ctx, 4, ccs);
    CHECK_STATUS(sd_op_concat(ctx, cat, b, c1), SD_STATUS_OK);
    double rc[80];
    for (int n = 0; n < 2; n++) {
        for (int i = 0; i < 30; i++) rc[n * 40 + i] = bv[n * 30 + i];
        for (int i = 0; i < 10; i++) rc[n * 40 + 30 + i] = cv[n * 10 + i];
    }
    got = fetch(ctx, cat), compare("concat", got, rc, 80, 0, 0), free(got);
    free(xv), free(bv), free(b2v), free(cv);
    sd_tensor_free(ctx, x), sd_tensor_free(ctx, b), sd_tensor_free(ctx, b2),
        sd_tensor_free(ctx, o2);
    sd_tensor_free(ctx, c1), sd_tensor_free(ctx, cat);
}

/* TAESD's soft clamp limit * tanh(x / limit) against double tanh, in place and not; bad
 * limits are refused. */
static void test_tanh_clamp(void) {
    const int64_t n = 1000 + 37;
    int64_t shape[2] = {1, n};
    float *xv = frand(n, -20, 20);
    float specials[] = {0.0f, -0.0f, 1e-20f, -1e-20f, 3e38f, -3e38f, 2.9f, -2.9f};
    memcpy(xv, specials, sizeof specials);
    double *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++) ref[i] = 3.0 * tanh((double)xv[i] / 3.0);
    for (int in_place = 0; in_place < 2; in_place++) {
        sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, shape, xv, NULL);
        sd_tensor_t *out = in_place ? x : make_empty(ctx, 2, shape);
        CHECK_STATUS(sd_op_tanh_clamp(ctx, out, x, 3.0f), SD_STATUS_OK);
        float *got = fetch(ctx, out);
        compare(in_place ? "tanh_clamp in place" : "tanh_clamp", got, ref, n, 2e-6, 1e-30);
        free(got);
        if (out != x) sd_tensor_free(ctx, out);
        sd_tensor_free(ctx, x);
    }
    sd_tensor_t *x = make_tensor(ctx, SD_DTYPE_F32, 2, shape, xv, NULL);
    CHECK_STATUS(sd_op_tanh_clamp(ctx, x, x, 0.0f), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_op_tanh_clamp(ctx, x, x, -3.0f), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_op_tanh_clamp(ctx, x, x, INFINITY), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_op_tanh_clamp(ctx, x, x, NAN), SD_STATUS_INVALID_ARGUMENT);
    sd_tensor_free(ctx, x);
    free(ref), free(xv);
}

static void test_timestep_embedding(void) {
    float tv[3] = {0, 1, 999};
    int64_t ts[1] = {3};
    sd_tensor_t *t = make_tensor(ctx, SD_DTYPE_F32, 1, ts, tv, NULL);
    const struct {
        int64_t d;
        int flip;
        float shift;
    } cases[] = {{320, 1, 0}, {33, 0, 1}, {2, 1, 0}, {1280, 0, 0}};
    for (int ci = 0; ci < 4; ci++) {
        int64_t d = cases[ci].d, os[2] = {3, d}, half = d / 2;
        sd_tensor_t *out = make_empty(ctx, 2, os);
        sd_timestep_embedding_params_t p;
        sd_timestep_embedding_params_default(&p);
        p.flip_sin_to_cos = cases[ci].flip;
        p.downscale_freq_shift = cases[ci].shift;
        CHECK_STATUS(sd_op_timestep_embedding(ctx, out, t, &p), SD_STATUS_OK);
        double *ref = dalloc(3 * d);
        for (int i = 0; i < 3; i++) {
            for (int64_t f = 0; f < half; f++) {
                double arg =
                    tv[i] * exp(-log(10000.0) * (double)f / ((double)half - cases[ci].shift));
                ref[i * d + f] = cases[ci].flip ? cos(arg) : sin(arg);
                ref[i * d + half + f] = cases[ci].flip ? sin(arg) : cos(arg);
            }
            if (d % 2) ref[i * d + d - 1] = 0;
        }
        float *got = fetch(ctx, out);
        char what[64];
        snprintf(what, sizeof what, "timestep_embedding d%lld flip%d", (long long)d,
                 cases[ci].flip);
        /* float32 arguments up to 999 rad carry ~6e-5 rad of rounding, as in torch. */
        compare(what, got, ref, 3 * d, 0, 2e-4);
        free(got), free(ref);
        sd_tensor_free(ctx, out);
    }
    sd_tensor_free(ctx, t);
}

static void test_embedding(void) {
    int64_t vs[2] = {11, 6}, is[2] = {2, 3}, os[3] = {2, 3, 6};
    float *table = frand(66, -2, 2), rounded[66], ids[6] = {0, 10, 3, 3, 7, 1};
    for (int d = 0; d < 3; d++) {
        int32_t dt = d == 0 ? SD_DTYPE_F32 : d == 1 ? SD_DTYPE_F16 : SD_DTYPE_BF16;
        sd_tensor_t *tab = make_tensor(ctx, dt, 2, vs, table, rounded);
        sd_tensor_t *id = make_tensor(ctx, SD_DTYPE_I32, 2, is, ids, NULL);
        sd_tensor_t *out = make_empty(ctx, 3, os);
        CHECK_STATUS(sd_op_embedding(ctx, out, id, tab), SD_STATUS_OK);
        double ref[36];
        for (int r = 0; r < 6; r++)
            for (int c = 0; c < 6; c++) ref[r * 6 + c] = rounded[(int)ids[r] * 6 + c];
        float *got = fetch(ctx, out);
        compare("embedding", got, ref, 36, 0, 0);
        free(got);
        float bad[6] = {0, 11, 0, 0, 0, 0};
        sd_tensor_t *badid = make_tensor(ctx, SD_DTYPE_I32, 2, is, bad, NULL);
        CHECK_STATUS(sd_op_embedding(ctx, out, badid, tab), SD_STATUS_INVALID_ARGUMENT);
        sd_tensor_free(ctx, tab), sd_tensor_free(ctx, id), sd_tensor_free(ctx, out);
        sd_tensor_free(ctx, badid);
    }
    free(table);
}

int main(int argc, char **argv) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    char err[256];
    if (sd_ctx_init(&p, &ctx, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "sd_ctx_init: %s\n", err);
        return 2;
    }
    const char *desc = sd_ctx_backend_description(ctx);
    printf("backend: %s\n", desc);
    if (argc > 1 && strstr(desc, "not available")) {
        printf("SKIP: %s kernels not available on this CPU\n", argv[1]);
        sd_ctx_free(ctx);
        return 77; /* ctest: skipped */
    }
    rng_seed(1);
    test_conv2d();
    test_conv2d_winograd_slices(32); /* 64 tiles: one chunk, its V kept for both slices */
    test_conv2d_winograd_slices(56); /* 196 tiles: two chunks per slice */
    test_conv2d_up2();
    test_linear();
    test_merged_linear();
    test_norms();
    test_attention();
    test_activations();
    test_shape_ops();
    test_tanh_clamp();
    test_timestep_embedding();
    test_embedding();
    sd_ctx_free(ctx);
    return test_summary("test_ops");
}
