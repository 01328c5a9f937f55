/*
 * The CUDA backend against the CPU backend. Every op case of test_ops.c (the same shapes,
 * weight dtypes and fused extras) runs on a CPU context and on a CUDA context with the same
 * random inputs, once with F32 and once with F16 activations (the CPU computes in float32
 * on the f16-rounded inputs), and the results are compared:
 *   F32: max |gpu - cpu| <= 1e-5 max |cpu| (+ 1e-6): float32 arithmetic on both sides;
 *   F16: max |gpu - cpu| <= 2e-3 max |cpu|: f16 storage of the output (2^-11 relative)
 *        and of the weights / attention probabilities inside the tensor-core paths.
 * A few ops need wider or per-element bounds, said where they are set. Then the shapes the
 * GPU kernels specialise (SD's head sizes 40/64/80/160 and wider, 3x3 convolutions over
 * hundreds of channels) and what only the CUDA backend has: unaligned tensors (the scalar
 * fallbacks of vectorised kernels, cuBLASLt alignment), the deferred embedding id check,
 * weight upload, unsupported sizes, and a CUDA graph capture of a chain of ops.
 * Exits 77 (ctest: skipped) when no usable GPU is present.
 */
#include "harness.h"

#include "sd-cuda.h"
#include "sd-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static sd_ctx_t *cpu, *gpu;
static int32_t act = SD_DTYPE_F32; /* activation dtype of the current pass */

#define F32_RTOL 1e-5
#define F32_ATOL 1e-6
#define F16_RTOL 2e-3

/* An op's status, with the context's message when it is not the expected one. */
#define CHECK_ST(c, expr, want)                                                                    \
    do {                                                                                           \
        sd_status_t st_ = (expr);                                                                  \
        CHECK(st_ == (want), "%s returned %d (%s), want %d: %s", #expr, (int)st_,                  \
              sd_status_string(st_), (int)(want), sd_ctx_last_error(c));                           \
    } while (0)
#define CHECK_OK(c, expr) CHECK_ST(c, expr, SD_STATUS_OK)

static float *frand(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)n * sizeof(float));
    rng_fill(x, n, lo, hi);
    return x;
}

static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static float round_to(int32_t dtype, float v) {
    if (dtype == SD_DTYPE_F16) return sd_f16_to_f32(sd_f32_to_f16(v));
    if (dtype == SD_DTYPE_BF16) return sd_bf16_to_f32(sd_f32_to_bf16(v));
    return v;
}

/* The same tensor on both backends. */
typedef struct {
    sd_tensor_t *c, *g;
    int64_t n;
} pair_t;

static const pair_t NONE = {NULL, NULL, 0};

/* A CPU tensor of dtype cdt and a GPU tensor of dtype gdt holding v; when only the GPU side
 * rounds (f16 activations), v is rounded in place first so both hold the same numbers. */
static pair_t pair_new(int32_t cdt, int32_t gdt, int ndim, const int64_t *shape, float *v) {
    pair_t p;
    p.n = numel(ndim, shape);
    if (cdt != gdt)
        for (int64_t i = 0; i < p.n; i++) v[i] = round_to(gdt, v[i]);
    p.c = make_tensor(cpu, cdt, ndim, shape, v, NULL);
    p.g = make_tensor(gpu, gdt, ndim, shape, v, NULL);
    return p;
}
/* Activations: F32 on the CPU, the pass's dtype on the GPU. */
static pair_t pair_act(int ndim, const int64_t *shape, float *v) {
    return pair_new(SD_DTYPE_F32, act, ndim, shape, v);
}
/* Weights: the same dtype on both. */
static pair_t pair_w(int32_t dtype, int ndim, const int64_t *shape, float *v) {
    return pair_new(dtype, dtype, ndim, shape, v);
}
/* Outputs, poisoned with NaN: every element must be written. */
static pair_t pair_out(int ndim, const int64_t *shape) {
    int64_t n = numel(ndim, shape);
    float *nan = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN;
    pair_t p = pair_act(ndim, shape, nan);
    free(nan);
    return p;
}

static void pair_free(pair_t *p) {
    sd_tensor_free(cpu, p->c);
    sd_tensor_free(gpu, p->g);
    *p = NONE;
}

/* Downloads an F32 or F16 tensor as floats (malloc'd). */
static float *fetch_any(sd_ctx_t *c, const sd_tensor_t *t) {
    int64_t n = numel(t->ndim, t->shape);
    float *out = malloc((size_t)n * sizeof(float));
    if (t->dtype == SD_DTYPE_F32) {
        CHECK_OK(c, sd_tensor_download(c, t, out, t->nbytes));
        return out;
    }
    uint16_t *h = malloc(t->nbytes);
    CHECK_OK(c, sd_tensor_download(c, t, h, t->nbytes));
    for (int64_t i = 0; i < n; i++) out[i] = sd_f16_to_f32(h[i]);
    free(h);
    return out;
}

/* The GPU result against the CPU one, with the pass's tolerance (rtol32 for F32). */
static void check_pair(const char *what, pair_t out, double rtol32) {
    float *c = fetch_any(cpu, out.c), *g = fetch_any(gpu, out.g);
    char name[256];
    snprintf(name, sizeof name, "%s [%s]", what, sd_dtype_name(act));
    if (act == SD_DTYPE_F16)
        compare_floats(name, g, c, out.n, F16_RTOL, 0);
    else
        compare_floats(name, g, c, out.n, rtol32, F32_ATOL);
    free(c), free(g);
}

/* ---- conv2d (cases of test_ops.c, then SD sizes) ------------------------------------------- */

typedef struct {
    int64_t n, cin, h, w, cout, kh, kw;
    int32_t stride, pt, pb, pl, pr;
} conv_case_t;

static void conv_case(const conv_case_t *cc, int32_t wdtype, int bias_kind, int residual_kind) {
    const int64_t oh = (cc->h + cc->pt + cc->pb - cc->kh) / cc->stride + 1;
    const int64_t ow = (cc->w + cc->pl + cc->pr - cc->kw) / cc->stride + 1;
    int64_t xs[4] = {cc->n, cc->cin, cc->h, cc->w}, ws[4] = {cc->cout, cc->cin, cc->kh, cc->kw};
    int64_t os[4] = {cc->n, cc->cout, oh, ow};
    int64_t nx = numel(4, xs), nw = numel(4, ws), no = numel(4, os);
    int64_t nb = bias_kind == 2 ? cc->n * cc->cout : cc->cout;
    float *xv = frand(nx, -1, 1), *wv = frand(nw, -0.5f, 0.5f), *bv = frand(nb, -1, 1),
          *rv = frand(no, -1, 1);
    pair_t x = pair_act(4, xs, xv), w = pair_w(wdtype, 4, ws, wv);
    /* The bias may be F32 or the activation dtype: per-sample biases use the latter. */
    int64_t bs1[1] = {cc->cout}, bs2[2] = {cc->n, cc->cout};
    pair_t b = bias_kind == 0   ? NONE
               : bias_kind == 1 ? pair_w(SD_DTYPE_F32, 1, bs1, bv)
                                : pair_new(SD_DTYPE_F32, act, 2, bs2, bv);
    pair_t out = residual_kind == 2 ? pair_act(4, os, rv) : pair_out(4, os);
    pair_t res = residual_kind == 1 ? pair_act(4, os, rv) : residual_kind == 2 ? out : NONE;
    sd_conv2d_params_t p;
    sd_conv2d_params_default(&p);
    p.stride_h = p.stride_w = cc->stride;
    p.pad_top = cc->pt, p.pad_bottom = cc->pb, p.pad_left = cc->pl, p.pad_right = cc->pr;
    CHECK_OK(cpu, sd_op_conv2d(cpu, out.c, x.c, w.c, b.c, res.c, &p));
    CHECK_OK(gpu, sd_op_conv2d(gpu, out.g, x.g, w.g, b.g, res.g, &p));
    char what[192];
    snprintf(what, sizeof what,
             "conv2d n%lld cin%lld %lldx%lld cout%lld k%lldx%lld s%d pad(%d,%d,%d,%d) %s bias%d "
             "res%d",
             (long long)cc->n, (long long)cc->cin, (long long)cc->h, (long long)cc->w,
             (long long)cc->cout, (long long)cc->kh, (long long)cc->kw, cc->stride, cc->pt, cc->pb,
             cc->pl, cc->pr, sd_dtype_name(wdtype), bias_kind, residual_kind);
    check_pair(what, out, F32_RTOL);
    free(xv), free(wv), free(bv), free(rv);
    pair_free(&x), pair_free(&w), pair_free(&b), pair_free(&out);
    if (residual_kind == 1) pair_free(&res);
}

static void test_conv2d(void) {
    const conv_case_t cases[] = {
        /* test_ops.c */
        {1, 3, 5, 7, 7, 3, 3, 1, 1, 1, 1, 1},
        {2, 5, 1, 1, 6, 3, 3, 1, 1, 1, 1, 1},
        {2, 4, 9, 6, 13, 1, 1, 1, 0, 0, 0, 0},
        {2, 6, 9, 11, 5, 3, 3, 2, 1, 1, 1, 1},
        {1, 6, 8, 10, 9, 3, 3, 2, 0, 1, 0, 1},
        {1, 2, 6, 6, 3, 5, 5, 1, 2, 2, 2, 2},
        {1, 3, 4, 3, 2, 4, 2, 3, 1, 2, 0, 2},
        {2, 31, 19, 37, 29, 3, 3, 1, 1, 1, 1, 1},
        {1, 17, 40, 40, 150, 3, 3, 1, 1, 1, 1, 1},
        {2, 3, 48, 47, 4, 1, 1, 1, 0, 0, 0, 0},
        /* SD sizes: 3x3 over 320 channels (K = 2880, f16 weights vectorised), the UNet's
         * stride-2 downsample, the VAE's (0,1,0,1) downsample, a 1x1 shortcut, conv_in. */
        {2, 320, 16, 16, 320, 3, 3, 1, 1, 1, 1, 1},
        {1, 64, 17, 15, 64, 3, 3, 2, 1, 1, 1, 1},
        {1, 128, 16, 16, 128, 3, 3, 2, 0, 1, 0, 1},
        {2, 640, 8, 8, 320, 1, 1, 1, 0, 0, 0, 0},
        {2, 4, 32, 32, 320, 3, 3, 1, 1, 1, 1, 1},
    };
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int d = 0; d < 3; d++) conv_case(&cases[i], dtypes[d], d % 3, 0);
    for (int bias = 0; bias < 3; bias++)
        for (int res = 0; res < 3; res++) conv_case(&cases[7], SD_DTYPE_F16, bias, res);
    conv_case(&cases[10], SD_DTYPE_F16, 2, 1); /* time-embedding bias + skip */
}

/* ---- linear -------------------------------------------------------------------------------- */

static void linear_case(int64_t batch, int64_t t, int64_t k, int64_t nout, int32_t in_layout,
                        int32_t out_layout, int32_t wdtype, bool with_bias, int residual_kind) {
    int64_t rows = batch * t;
    bool xcf = in_layout == SD_LAYOUT_CHANNELS_FIRST, ocf = out_layout == SD_LAYOUT_CHANNELS_FIRST;
    int64_t xs[3] = {batch, xcf ? k : t, xcf ? t : k},
            os[3] = {batch, ocf ? nout : t, ocf ? t : nout};
    int64_t ws[2] = {nout, k}, bs[1] = {nout};
    float *xv = frand(rows * k, -1, 1), *wv = frand(nout * k, -0.5f, 0.5f),
          *bv = frand(nout, -1, 1), *rv = frand(rows * nout, -1, 1);
    pair_t x = pair_act(3, xs, xv), w = pair_w(wdtype, 2, ws, wv);
    pair_t b = with_bias ? pair_w(SD_DTYPE_F32, 1, bs, bv) : NONE;
    pair_t out = residual_kind == 2 ? pair_act(3, os, rv) : pair_out(3, os);
    pair_t res = residual_kind == 1 ? pair_act(3, os, rv) : residual_kind == 2 ? out : NONE;
    sd_linear_params_t p = {in_layout, out_layout};
    CHECK_OK(cpu, sd_op_linear(cpu, out.c, x.c, w.c, b.c, res.c, &p));
    CHECK_OK(gpu, sd_op_linear(gpu, out.g, x.g, w.g, b.g, res.g, &p));
    char what[160];
    snprintf(what, sizeof what, "linear b%lld t%lld k%lld n%lld in%d out%d %s bias%d res%d",
             (long long)batch, (long long)t, (long long)k, (long long)nout, in_layout, out_layout,
             sd_dtype_name(wdtype), with_bias, residual_kind);
    check_pair(what, out, F32_RTOL);
    free(xv), free(wv), free(bv), free(rv);
    pair_free(&x), pair_free(&w), pair_free(&b), pair_free(&out);
    if (residual_kind == 1) pair_free(&res);
}

static void test_linear(void) {
    const int64_t shapes[][4] = {/* test_ops.c */
                                 {1, 1, 1, 1},
                                 {2, 7, 13, 9},
                                 {2, 77, 40, 35},
                                 {1, 45, 300, 37},
                                 {2, 19, 33, 161},
                                 /* SD: attention projections, proj_in/out, feed-forward */
                                 {2, 256, 320, 320},
                                 {2, 64, 640, 1280},
                                 {1, 77, 768, 320}};
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int in = 0; in < 2; in++)
            for (int out = 0; out < 2; out++)
                for (int d = 0; d < 3; d++)
                    linear_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], in, out,
                                dtypes[d], (s + d) % 2 == 0, (int)((s + in + out) % 3));
    /* Every bias / residual combination on the cuBLASLt path of both layouts. */
    for (int out = 0; out < 2; out++)
        for (int res = 0; res < 3; res++)
            for (int bias = 0; bias < 2; bias++)
                linear_case(2, 40, 64, 48, SD_LAYOUT_TOKENS, out, act, bias, res);
}

/* ---- norms --------------------------------------------------------------------------------- */

static void group_norm_case(int64_t n, int64_t c, int64_t h, int64_t w, int32_t groups, bool affine,
                            bool silu, bool in_place) {
    int64_t shape[4] = {n, c, h, w}, cs[1] = {c}, total = n * c * h * w;
    float *xv = frand(total, -3, 5), *gv = frand(c, 0.5f, 1.5f), *bv = frand(c, -1, 1);
    pair_t x = pair_act(4, shape, xv);
    pair_t g = affine ? pair_w(SD_DTYPE_F32, 1, cs, gv) : NONE;
    pair_t b = affine ? pair_w(SD_DTYPE_F32, 1, cs, bv) : NONE;
    pair_t out = in_place ? x : pair_out(4, shape);
    CHECK_OK(cpu, sd_op_group_norm(cpu, out.c, x.c, g.c, b.c, groups, 1e-5f, silu));
    CHECK_OK(gpu, sd_op_group_norm(gpu, out.g, x.g, g.g, b.g, groups, 1e-5f, silu));
    char what[128];
    snprintf(what, sizeof what, "group_norm (%lld,%lld,%lld,%lld) g%d affine%d silu%d inplace%d",
             (long long)n, (long long)c, (long long)h, (long long)w, groups, affine, silu,
             in_place);
    check_pair(what, out, F32_RTOL);
    free(xv), free(gv), free(bv);
    pair_free(&x), pair_free(&g), pair_free(&b);
    if (!in_place) pair_free(&out);
}

static void layer_norm_case(int64_t rows, int64_t c, bool affine, bool in_place) {
    int64_t xs[2] = {rows, c}, cs[1] = {c};
    float *xv = frand(rows * c, -2, 6), *gv = frand(c, 0.5f, 1.5f), *bv = frand(c, -1, 1);
    pair_t x = pair_act(2, xs, xv), g = pair_w(SD_DTYPE_F32, 1, cs, gv),
           b = pair_w(SD_DTYPE_F32, 1, cs, bv);
    pair_t out = in_place ? x : pair_out(2, xs);
    CHECK_OK(cpu,
             sd_op_layer_norm(cpu, out.c, x.c, affine ? g.c : NULL, affine ? b.c : NULL, 1e-5f));
    CHECK_OK(gpu,
             sd_op_layer_norm(gpu, out.g, x.g, affine ? g.g : NULL, affine ? b.g : NULL, 1e-5f));
    char what[64];
    snprintf(what, sizeof what, "layer_norm (%lld, %lld) affine%d inplace%d", (long long)rows,
             (long long)c, affine, in_place);
    check_pair(what, out, F32_RTOL);
    free(xv), free(gv), free(bv);
    pair_free(&x), pair_free(&g), pair_free(&b);
    if (!in_place) pair_free(&out);
}

static void test_norms(void) {
    group_norm_case(2, 6, 5, 7, 3, true, false, false);
    group_norm_case(1, 64, 9, 9, 32, true, true, false);
    group_norm_case(2, 10, 1, 1, 5, false, true, true);
    group_norm_case(1, 96, 70, 70, 32, true, true, true);
    group_norm_case(2, 320, 32, 32, 32, true, true, false); /* SD: split groups */
    group_norm_case(1, 1280, 8, 8, 32, true, false, false);
    const int64_t shapes[][2] = {{1, 1}, {7, 13}, {154, 48}, {5, 1030}, {154, 768}, {512, 320}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        layer_norm_case(shapes[s][0], shapes[s][1], s % 2 == 1, s == 4);
}

/* ---- attention ----------------------------------------------------------------------------- */

/* F32: inputs up to 12 give logits near 1e3, whose float32 rounding (~6e-5) moves the
 * softmax weights by ~1e-4 relative on either backend: a 1e-4 bound, as test_ops.c. */
#define ATTN_F32_RTOL 1e-4

static void attention_case(int64_t b, int64_t tq, int64_t tk, int64_t c, int32_t heads, bool causal,
                           float spread) {
    int64_t qs[3] = {b, tq, c}, ks[3] = {b, tk, c};
    float *qv = frand(b * tq * c, -spread, spread), *kv = frand(b * tk * c, -spread, spread);
    float *vv = frand(b * tk * c, -1, 1);
    pair_t q = pair_act(3, qs, qv), k = pair_act(3, ks, kv), v = pair_act(3, ks, vv);
    pair_t out = pair_out(3, qs);
    sd_attention_params_t p;
    sd_attention_params_default(&p);
    p.heads = heads;
    p.causal = causal;
    CHECK_OK(cpu, sd_op_attention(cpu, out.c, q.c, k.c, v.c, &p));
    CHECK_OK(gpu, sd_op_attention(gpu, out.g, q.g, k.g, v.g, &p));
    char what[128];
    snprintf(what, sizeof what, "attention b%lld tq%lld tk%lld c%lld h%d (d%lld) causal%d spread%g",
             (long long)b, (long long)tq, (long long)tk, (long long)c, heads,
             (long long)(c / heads), causal, spread);
    check_pair(what, out, ATTN_F32_RTOL);
    free(qv), free(kv), free(vv);
    pair_free(&q), pair_free(&k), pair_free(&v), pair_free(&out);
}

static void test_attention(void) {
    /* test_ops.c */
    attention_case(1, 1, 1, 8, 1, false, 1);
    attention_case(2, 33, 33, 24, 3, false, 1);
    attention_case(2, 37, 77, 16, 2, false, 1);
    attention_case(2, 77, 77, 32, 4, true, 1);
    attention_case(1, 70, 19, 30, 5, false, 1);
    attention_case(1, 64, 300, 80, 2, false, 1);
    attention_case(1, 20, 20, 12, 2, false, 12);
    attention_case(1, 40, 40, 12, 3, true, 12);
    /* SD head sizes (the flash kernel's tiles 48, 64, 80, 160), cross-attention with 77
     * keys, CLIP's causal 77 x 64, blocks and key tiles with ragged ends; then heads wider
     * than the flash kernel takes (the simple kernel in f16). */
    attention_case(2, 256, 256, 320, 8, false, 1);
    attention_case(2, 200, 77, 320, 8, false, 1);
    attention_case(1, 130, 130, 512, 8, false, 1);
    attention_case(1, 77, 77, 768, 12, true, 1);
    attention_case(1, 100, 77, 640, 8, false, 1);
    attention_case(1, 64, 64, 1280, 8, false, 1);
    attention_case(2, 65, 129, 320, 2, false, 1);
    attention_case(1, 150, 150, 128, 1, true, 3);
    attention_case(1, 50, 50, 400, 2, false, 1);
    attention_case(1, 40, 40, 512, 2, true, 1);
}

/* ---- elementwise --------------------------------------------------------------------------- */

static void test_activations(void) {
    const int64_t n = 1000 + 37;
    int64_t shape[2] = {1, n};
    float *xv = frand(n, -10, 10);
    /* test_ops.c's specials, kept inside f16's range in the F16 pass. */
    const float big = act == SD_DTYPE_F16 ? 60000.0f : 3e38f;
    float specials[] = {0.0f, -0.0f, 1e-20f, -1e-20f, 100.0f, -100.0f, 88.0f, -88.0f, big, -big};
    memcpy(xv, specials, sizeof specials);
    for (int a = 0; a < SD_ACT_COUNT; a++) {
        float *v = malloc((size_t)n * sizeof(float));
        memcpy(v, xv, (size_t)n * sizeof(float));
        pair_t x = pair_act(2, shape, v);
        pair_t out = a % 2 ? x : pair_out(2, shape); /* in place too */
        CHECK_OK(cpu, sd_op_activation(cpu, out.c, x.c, a));
        CHECK_OK(gpu, sd_op_activation(gpu, out.g, x.g, a));
        /* Per element and relative: the outputs span 1e-37 to 3e38. F32: both backends are
         * within ~1e-6 of the exact value (2e-7 absolute near the CPU's polynomial's zero
         * crossings, as test_ops.c); F16: one f16 rounding of the output. */
        float *c = fetch_any(cpu, out.c), *g = fetch_any(gpu, out.g);
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            double tol = act == SD_DTYPE_F16
                             ? 2e-3 * fabs(c[i]) + 1e-7
                             : F32_RTOL * fabs(c[i]) + (fabsf(v[i]) < 10 ? 2e-7 : 0) + 1e-30;
            if (!(fabs((double)g[i] - c[i]) <= tol) && !bad++)
                fprintf(stderr, "FAIL activation %d [%s] at x=%g: gpu %.9g cpu %.9g (exact %.9g)\n",
                        a, sd_dtype_name(act), (double)v[i], (double)g[i], (double)c[i],
                        ref_activation(a, v[i]));
        }
        test_checks++;
        if (bad) test_failures++;
        free(c), free(g), free(v);
        if (out.c != x.c) pair_free(&out);
        pair_free(&x);
    }
    free(xv);

    /* GEGLU: test_ops.c's (2, 5, 2*19) and an SD feed-forward width. */
    const int64_t widths[2][3] = {{2, 5, 19}, {2, 64, 1280}};
    for (int s = 0; s < 2; s++) {
        int64_t xs[3] = {widths[s][0], widths[s][1], 2 * widths[s][2]};
        int64_t os[3] = {widths[s][0], widths[s][1], widths[s][2]};
        float *gv = frand(numel(3, xs), -4, 4);
        pair_t x = pair_act(3, xs, gv), out = pair_out(3, os);
        CHECK_OK(cpu, sd_op_geglu(cpu, out.c, x.c));
        CHECK_OK(gpu, sd_op_geglu(gpu, out.g, x.g));
        char what[64];
        snprintf(what, sizeof what, "geglu (%lld, %lld, 2*%lld)", (long long)xs[0],
                 (long long)xs[1], (long long)os[2]);
        check_pair(what, out, F32_RTOL);
        free(gv);
        pair_free(&x), pair_free(&out);
    }
}

/* Upsample, add, mul and concat copy or round once: F32 results match exactly. */
static void test_shape_ops(void) {
    int64_t xs[4] = {2, 3, 2, 5}, os[4] = {2, 3, 4, 10}, bs[3] = {3, 2, 5};
    int64_t big[4] = {2, 64, 16, 16}, bigo[4] = {2, 64, 32, 32}, bigb[3] = {64, 16, 16};
    for (int s = 0; s < 2; s++) {
        const int64_t *shape = s ? big : xs, *up = s ? bigo : os, *suffix = s ? bigb : bs;
        int64_t n = numel(4, shape);
        float *xv = frand(n, -1, 1), *bv = frand(n, -1, 1), *b2v = frand(numel(3, suffix), -1, 1);
        pair_t x = pair_act(4, shape, xv), b = pair_act(4, shape, bv),
               b2 = pair_act(3, suffix, b2v);
        pair_t o = pair_out(4, up);
        CHECK_OK(cpu, sd_op_upsample_nearest(cpu, o.c, x.c));
        CHECK_OK(gpu, sd_op_upsample_nearest(gpu, o.g, x.g));
        check_pair("upsample_nearest 2x", o, 0);
        pair_free(&o);

        o = pair_out(4, shape);
        CHECK_OK(cpu, sd_op_add(cpu, o.c, x.c, b.c));
        CHECK_OK(gpu, sd_op_add(gpu, o.g, x.g, b.g));
        check_pair("add", o, 0);
        CHECK_OK(cpu, sd_op_mul(cpu, o.c, x.c, b2.c));
        CHECK_OK(gpu, sd_op_mul(gpu, o.g, x.g, b2.g));
        check_pair("mul broadcast", o, 0);
        CHECK_OK(cpu, sd_op_add(cpu, x.c, x.c, b2.c));
        CHECK_OK(gpu, sd_op_add(gpu, x.g, x.g, b2.g));
        check_pair("add in place", x, 0);
        pair_free(&o);

        o = pair_out(4, shape);
        CHECK_OK(cpu, sd_op_tanh_clamp(cpu, o.c, b.c, 0.5f));
        CHECK_OK(gpu, sd_op_tanh_clamp(gpu, o.g, b.g, 0.5f));
        check_pair("tanh_clamp", o, 2e-6);
        pair_free(&o);

        int64_t cs[4] = {shape[0], s ? 32 : 1, shape[2], shape[3]};
        int64_t ccs[4] = {shape[0], shape[1] + cs[1], shape[2], shape[3]};
        float *cv = frand(numel(4, cs), -1, 1);
        pair_t c1 = pair_act(4, cs, cv), cat = pair_out(4, ccs);
        CHECK_OK(cpu, sd_op_concat(cpu, cat.c, b.c, c1.c));
        CHECK_OK(gpu, sd_op_concat(gpu, cat.g, b.g, c1.g));
        check_pair("concat", cat, 0);
        free(xv), free(bv), free(b2v), free(cv);
        pair_free(&x), pair_free(&b), pair_free(&b2), pair_free(&c1), pair_free(&cat);
    }
}

static void test_timestep_embedding(void) {
    float tv[3] = {0, 1, 999};
    int64_t ts[1] = {3};
    pair_t t = pair_w(SD_DTYPE_F32, 1, ts, tv);
    const struct {
        int64_t d;
        int flip;
        float shift;
    } cases[] = {{320, 1, 0}, {33, 0, 1}, {2, 1, 0}, {1280, 0, 0}};
    for (int ci = 0; ci < 4; ci++) {
        int64_t os[2] = {3, cases[ci].d};
        pair_t out = pair_out(2, os);
        sd_timestep_embedding_params_t p;
        sd_timestep_embedding_params_default(&p);
        p.flip_sin_to_cos = cases[ci].flip;
        p.downscale_freq_shift = cases[ci].shift;
        CHECK_OK(cpu, sd_op_timestep_embedding(cpu, out.c, t.c, &p));
        CHECK_OK(gpu, sd_op_timestep_embedding(gpu, out.g, t.g, &p));
        char what[64];
        snprintf(what, sizeof what, "timestep_embedding d%lld flip%d", (long long)cases[ci].d,
                 cases[ci].flip);
        /* The same float32 steps on both sides; a 1-ulp difference in a libm result moves
         * an argument near 999 rad by ~6e-5: test_ops.c's 2e-4 absolute bound. */
        float *c = fetch_any(cpu, out.c), *g = fetch_any(gpu, out.g);
        char name[96];
        snprintf(name, sizeof name, "%s [%s]", what, sd_dtype_name(act));
        compare_floats(name, g, c, out.n, act == SD_DTYPE_F16 ? F16_RTOL : 0, 2e-4);
        free(c), free(g);
        pair_free(&out);
    }
    pair_free(&t);
}

static void test_embedding(void) {
    int64_t vs[2] = {11, 6}, is[2] = {2, 3}, os[3] = {2, 3, 6};
    float *table = frand(66, -2, 2), ids[6] = {0, 10, 3, 3, 7, 1};
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (int d = 0; d < 3; d++) {
        pair_t tab = pair_w(dtypes[d], 2, vs, table), id = pair_w(SD_DTYPE_I32, 2, is, ids);
        pair_t out = pair_out(3, os);
        CHECK_OK(cpu, sd_op_embedding(cpu, out.c, id.c, tab.c));
        CHECK_OK(gpu, sd_op_embedding(gpu, out.g, id.g, tab.g));
        check_pair("embedding", out, 0);
        pair_free(&tab), pair_free(&id), pair_free(&out);
    }
    free(table);
}

/* ---- CUDA only ----------------------------------------------------------------------------- */

/* A GPU tensor of dtype holding v (zeros if NULL) whose data starts `off` elements into a
 * larger allocation (kept in *backing), so that vectorised kernels take their unaligned
 * paths. */
static sd_tensor_t shifted(int32_t dtype, int ndim, const int64_t *shape, const float *v, int off,
                           sd_tensor_t **backing) {
    int64_t n = numel(ndim, shape), bs[1] = {n + off};
    float *buf = calloc((size_t)(n + off), sizeof(float));
    if (v) memcpy(buf + off, v, (size_t)n * sizeof(float));
    *backing = make_tensor(gpu, dtype, 1, bs, buf, NULL);
    free(buf);
    return sd_tensor_view((char *)(*backing)->data + (size_t)off * sd_dtype_size(dtype), dtype,
                          ndim, shape);
}

/* Compares a GPU tensor (any header) with a CPU result. */
static void check_view(const char *what, const sd_tensor_t *g, const sd_tensor_t *c,
                       double rtol32) {
    pair_t p = {(sd_tensor_t *)c, (sd_tensor_t *)g, numel(c->ndim, c->shape)};
    check_pair(what, p, rtol32);
}

static void test_unaligned(void) {
    sd_tensor_t *bk[4];
    /* activation: n = 1037 one element in */
    {
        int64_t s[1] = {1037};
        float *xv = frand(1037, -5, 5);
        pair_t x = pair_act(1, s, xv), o = pair_out(1, s);
        sd_tensor_t xg = shifted(act, 1, s, xv, 1, &bk[0]), og = shifted(act, 1, s, xv, 3, &bk[1]);
        CHECK_OK(cpu, sd_op_activation(cpu, o.c, x.c, SD_ACT_GELU));
        CHECK_OK(gpu, sd_op_activation(gpu, &og, &xg, SD_ACT_GELU));
        check_view("unaligned gelu", &og, o.c, F32_RTOL);
        free(xv), pair_free(&x), pair_free(&o), sd_tensor_free(gpu, bk[0]),
            sd_tensor_free(gpu, bk[1]);
    }
    /* linear, both layouts: x and out one element in (cuBLASLt's alignment preferences or
     * the fallback kernels), f16 weights one element in (the scalar weight loads). */
    for (int ocf = 0; ocf < 2; ocf++) {
        int64_t xs[3] = {2, 9, 40}, ws[2] = {24, 40}, os[3] = {2, ocf ? 24 : 9, ocf ? 9 : 24};
        float *xv = frand(720, -1, 1), *wv = frand(960, -0.5f, 0.5f);
        int32_t wdt = act == SD_DTYPE_F16 ? SD_DTYPE_F16 : SD_DTYPE_F32;
        pair_t x = pair_act(3, xs, xv), w = pair_w(wdt, 2, ws, wv), o = pair_out(3, os);
        sd_tensor_t xg = shifted(act, 3, xs, xv, 1, &bk[0]),
                    wg = shifted(wdt, 2, ws, wv, 1, &bk[1]);
        sd_tensor_t og = shifted(act, 3, os, NULL, 1, &bk[2]);
        sd_linear_params_t p = {SD_LAYOUT_TOKENS, ocf};
        CHECK_OK(cpu, sd_op_linear(cpu, o.c, x.c, w.c, NULL, NULL, &p));
        CHECK_OK(gpu, sd_op_linear(gpu, &og, &xg, &wg, NULL, NULL, &p));
        check_view("unaligned linear", &og, o.c, F32_RTOL);
        free(xv), free(wv), pair_free(&x), pair_free(&w), pair_free(&o);
        for (int i = 0; i < 3; i++) sd_tensor_free(gpu, bk[i]);
    }
    /* attention, d = 64: q, k, v one element in (scalar tile loads), out one in. */
    {
        int64_t qs[3] = {1, 70, 128};
        float *qv = frand(70 * 128, -1, 1), *kv = frand(70 * 128, -1, 1),
              *vv = frand(70 * 128, -1, 1);
        pair_t q = pair_act(3, qs, qv), k = pair_act(3, qs, kv), v = pair_act(3, qs, vv),
               o = pair_out(3, qs);
        sd_tensor_t qg = shifted(act, 3, qs, qv, 1, &bk[0]),
                    kg = shifted(act, 3, qs, kv, 1, &bk[1]);
        sd_tensor_t vg = shifted(act, 3, qs, vv, 1, &bk[2]),
                    og = shifted(act, 3, qs, qv, 1, &bk[3]);
        sd_attention_params_t p;
        sd_attention_params_default(&p);
        p.heads = 2;
        CHECK_OK(cpu, sd_op_attention(cpu, o.c, q.c, k.c, v.c, &p));
        CHECK_OK(gpu, sd_op_attention(gpu, &og, &qg, &kg, &vg, &p));
        check_view("unaligned attention", &og, o.c, ATTN_F32_RTOL);
        free(qv), free(kv), free(vv);
        pair_free(&q), pair_free(&k), pair_free(&v), pair_free(&o);
        for (int i = 0; i < 4; i++) sd_tensor_free(gpu, bk[i]);
    }
    /* group norm, layer norm, add with broadcast, concat, upsample. */
    {
        int64_t s4[4] = {2, 32, 8, 8}, s2[2] = {32, 64}, sb[2] = {8, 8}, sc[4] = {2, 64, 8, 8};
        int64_t su[4] = {2, 32, 16, 16};
        float *xv = frand(4096, -2, 3), *bv = frand(64, -1, 1);
        pair_t x = pair_act(4, s4, xv), o = pair_out(4, s4);
        sd_tensor_t xg = shifted(act, 4, s4, xv, 1, &bk[0]),
                    og = shifted(act, 4, s4, xv, 2, &bk[1]);
        CHECK_OK(cpu, sd_op_group_norm(cpu, o.c, x.c, NULL, NULL, 8, 1e-5f, true));
        CHECK_OK(gpu, sd_op_group_norm(gpu, &og, &xg, NULL, NULL, 8, 1e-5f, true));
        check_view("unaligned group_norm", &og, o.c, F32_RTOL);
        sd_tensor_t x2 = sd_tensor_view(xg.data, act, 2, s2),
                    o2 = sd_tensor_view(og.data, act, 2, s2);
        sd_tensor_t x2c = sd_tensor_view(x.c->data, SD_DTYPE_F32, 2, s2),
                    o2c = sd_tensor_view(o.c->data, SD_DTYPE_F32, 2, s2);
        CHECK_OK(cpu, sd_op_layer_norm(cpu, &o2c, &x2c, NULL, NULL, 1e-5f));
        CHECK_OK(gpu, sd_op_layer_norm(gpu, &o2, &x2, NULL, NULL, 1e-5f));
        check_view("unaligned layer_norm", &o2, &o2c, F32_RTOL);
        pair_t b = pair_act(2, sb, bv);
        CHECK_OK(cpu, sd_op_add(cpu, o.c, x.c, b.c));
        CHECK_OK(gpu, sd_op_add(gpu, &og, &xg, b.g));
        check_view("unaligned add broadcast", &og, o.c, 0);
        pair_t cat = pair_out(4, sc);
        CHECK_OK(cpu, sd_op_concat(cpu, cat.c, x.c, o.c));
        CHECK_OK(gpu, sd_op_concat(gpu, cat.g, &xg, &og));
        check_view("unaligned concat", cat.g, cat.c, 0);
        pair_t up = pair_out(4, su);
        sd_tensor_t upg = shifted(act, 4, su, NULL, 1, &bk[2]);
        CHECK_OK(cpu, sd_op_upsample_nearest(cpu, up.c, x.c));
        CHECK_OK(gpu, sd_op_upsample_nearest(gpu, &upg, &xg));
        check_view("unaligned upsample", &upg, up.c, 0);
        free(xv), free(bv);
        pair_free(&x), pair_free(&o), pair_free(&b), pair_free(&cat), pair_free(&up);
        for (int i = 0; i < 3; i++) sd_tensor_free(gpu, bk[i]);
    }
}

/* An id out of range: the op enqueues without waiting; the next download reports it and the
 * context stays usable. */
static void test_embedding_deferred_error(void) {
    int64_t vs[2] = {11, 6}, is[2] = {2, 3}, os[3] = {2, 3, 6};
    float *table = frand(66, -2, 2), bad[6] = {0, 11, 0, 0, -1, 0};
    sd_tensor_t *tab = make_tensor(gpu, SD_DTYPE_F16, 2, vs, table, NULL);
    sd_tensor_t *id = make_tensor(gpu, SD_DTYPE_I32, 2, is, bad, NULL);
    sd_tensor_t *out = make_tensor(gpu, act, 3, os, table, NULL);
    CHECK_OK(gpu, sd_op_embedding(gpu, out, id, tab));
    size_t nb = sd_tensor_nbytes(out);
    void *host = malloc(nb);
    CHECK_ST(gpu, sd_tensor_download(gpu, out, host, nb), SD_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(sd_ctx_last_error(gpu), "embedding") != NULL, "message: %s",
          sd_ctx_last_error(gpu));
    CHECK_OK(gpu, sd_tensor_download(gpu, out, host, nb)); /* reported once */
    CHECK_OK(gpu, sd_op_activation(gpu, out, out, SD_ACT_SILU));
    CHECK_OK(gpu, sd_tensor_download(gpu, out, host, nb));
    free(host), free(table);
    sd_tensor_free(gpu, tab), sd_tensor_free(gpu, id), sd_tensor_free(gpu, out);
}

/* weight_from_host: matrices and tables as F16, vectors as F32, usable by the ops; values
 * beyond f16 are refused. */
static void test_weights(void) {
    const sd_backend_ops_t *gops = sd_ctx_backend_ptr(gpu)->ops;
    const sd_backend_ops_t *cops = sd_ctx_backend_ptr(cpu)->ops;
    int64_t ws[2] = {48, 64}, bs[1] = {48}, xs[3] = {2, 10, 64}, os[3] = {2, 10, 48};
    float *wv = frand(48 * 64, -0.5f, 0.5f), *bv = frand(48, -1, 1), *xv = frand(1280, -1, 1);
    const int32_t dtypes[] = {SD_DTYPE_F32, SD_DTYPE_F16, SD_DTYPE_BF16};
    for (int d = 0; d < 3; d++) {
        /* Host weights in dtype d, as a model loader would hand them over. */
        size_t es = sd_dtype_size(dtypes[d]);
        void *wh = malloc(48 * 64 * es), *bh = malloc(48 * es);
        for (int i = 0; i < 48 * 64; i++) {
            if (dtypes[d] == SD_DTYPE_F32) ((float *)wh)[i] = wv[i];
            if (dtypes[d] == SD_DTYPE_F16) ((uint16_t *)wh)[i] = sd_f32_to_f16(wv[i]);
            if (dtypes[d] == SD_DTYPE_BF16) ((uint16_t *)wh)[i] = sd_f32_to_bf16(wv[i]);
        }
        for (int i = 0; i < 48; i++) {
            if (dtypes[d] == SD_DTYPE_F32) ((float *)bh)[i] = bv[i];
            if (dtypes[d] == SD_DTYPE_F16) ((uint16_t *)bh)[i] = sd_f32_to_f16(bv[i]);
            if (dtypes[d] == SD_DTYPE_BF16) ((uint16_t *)bh)[i] = sd_f32_to_bf16(bv[i]);
        }
        sd_tensor_t whost = sd_tensor_view(wh, dtypes[d], 2, ws);
        sd_tensor_t bhost = sd_tensor_view(bh, dtypes[d], 1, bs);
        sd_tensor_t wg, bg, wc, bc;
        CHECK_OK(gpu, gops->weight_from_host(gpu, &whost, SD_WEIGHT_MATRIX_B, &wg));
        CHECK_OK(gpu, gops->weight_from_host(gpu, &bhost, SD_WEIGHT_VECTOR, &bg));
        CHECK_OK(cpu, cops->weight_from_host(cpu, &whost, SD_WEIGHT_MATRIX_B, &wc));
        CHECK_OK(cpu, cops->weight_from_host(cpu, &bhost, SD_WEIGHT_VECTOR, &bc));
        CHECK(wg.dtype == SD_DTYPE_F16 && bg.dtype == SD_DTYPE_F32, "stored as %s and %s",
              sd_dtype_name(wg.dtype), sd_dtype_name(bg.dtype));
        pair_t x = pair_act(3, xs, xv), o = pair_out(3, os);
        sd_linear_params_t p;
        sd_linear_params_default(&p);
        CHECK_OK(cpu, sd_op_linear(cpu, o.c, x.c, &wc, &bc, NULL, &p));
        CHECK_OK(gpu, sd_op_linear(gpu, o.g, x.g, &wg, &bg, NULL, &p));
        /* The GPU holds the weights in f16: F32 passes see their rounding too. */
        float *c = fetch_any(cpu, o.c), *g = fetch_any(gpu, o.g);
        char name[64];
        snprintf(name, sizeof name, "weight_from_host %s [%s]", sd_dtype_name(dtypes[d]),
                 sd_dtype_name(act));
        compare_floats(name, g, c, 960, F16_RTOL, 0);
        free(c), free(g);
        pair_free(&x), pair_free(&o);
        gops->weight_free(gpu, &wg);
        gops->weight_free(gpu, &bg);
        cops->weight_free(cpu, &wc);
        cops->weight_free(cpu, &bc);
        free(wh), free(bh);
    }
    float huge[4] = {1, 2, 1e6f, 3};
    int64_t hs[2] = {2, 2};
    sd_tensor_t hh = sd_tensor_view(huge, SD_DTYPE_F32, 2, hs), hg;
    CHECK_ST(gpu, gops->weight_from_host(gpu, &hh, SD_WEIGHT_MATRIX_B, &hg), SD_STATUS_BAD_MODEL);
    CHECK_OK(gpu, gops->weight_from_host(gpu, &hh, SD_WEIGHT_VECTOR, &hg)); /* f32: fine */
    gops->weight_free(gpu, &hg);
    free(wv), free(bv), free(xv);
}

/* Validation that differs from the CPU backend, and sizes the CUDA kernels refuse. */
static void test_validation(void) {
    int64_t s[2] = {4, 8};
    float v[32] = {0};
    sd_tensor_t *h = make_tensor(gpu, SD_DTYPE_F16, 2, s, v, NULL);
    sd_tensor_t *f = make_tensor(gpu, SD_DTYPE_F32, 2, s, v, NULL);
    sd_tensor_t *hc = make_tensor(cpu, SD_DTYPE_F16, 2, s, v, NULL);
    CHECK_OK(gpu, sd_op_activation(gpu, h, h, SD_ACT_SILU)); /* F16 ok */
    CHECK_ST(cpu, sd_op_activation(cpu, hc, hc, SD_ACT_SILU), SD_STATUS_INVALID_ARGUMENT); /* CPU */
    CHECK_ST(gpu, sd_op_activation(gpu, f, h, SD_ACT_SILU), SD_STATUS_INVALID_ARGUMENT); /* mixed */
    CHECK_ST(gpu, sd_op_add(gpu, h, h, f), SD_STATUS_INVALID_ARGUMENT);
    /* A linear bias must be F32 even with F16 activations. */
    int64_t ws[2] = {8, 8}, bs[1] = {8};
    sd_tensor_t *w = make_tensor(gpu, SD_DTYPE_F16, 2, ws, v, NULL);
    sd_tensor_t *b16 = make_tensor(gpu, SD_DTYPE_F16, 1, bs, v, NULL);
    sd_tensor_t *o = make_tensor(gpu, SD_DTYPE_F16, 2, s, v, NULL);
    sd_linear_params_t lp;
    sd_linear_params_default(&lp);
    CHECK_ST(gpu, sd_op_linear(gpu, o, h, w, b16, NULL, &lp), SD_STATUS_INVALID_ARGUMENT);
    /* Heads wider than 256 channels: unsupported, and the context stays usable. */
    int64_t qs[3] = {1, 4, 264};
    float *qv = calloc(4 * 264, sizeof(float));
    sd_tensor_t *q = make_tensor(gpu, SD_DTYPE_F16, 3, qs, qv, NULL);
    sd_tensor_t *qo = make_tensor(gpu, SD_DTYPE_F16, 3, qs, qv, NULL);
    sd_attention_params_t ap;
    sd_attention_params_default(&ap);
    CHECK_ST(gpu, sd_op_attention(gpu, qo, q, q, q, &ap), SD_STATUS_UNSUPPORTED);
    CHECK_OK(gpu, sd_op_activation(gpu, h, h, SD_ACT_GELU));
    free(qv);
    sd_tensor_free(gpu, h), sd_tensor_free(gpu, f), sd_tensor_free(cpu, hc);
    sd_tensor_free(gpu, w), sd_tensor_free(gpu, b16), sd_tensor_free(gpu, o);
    sd_tensor_free(gpu, q), sd_tensor_free(gpu, qo);

    /* Contexts: bad ordinals; the description names the GPU. */
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.backend = SD_BACKEND_CUDA;
    sd_ctx_t *c = NULL;
    char err[256];
    p.device = -1;
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    p.device = 4096;
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_DEVICE);
    CHECK(c == NULL && strstr(err, "4096") != NULL, "err: %s", err);
    CHECK(strncmp(sd_ctx_backend_description(gpu), "cuda: ", 6) == 0, "description: %s",
          sd_ctx_backend_description(gpu));
    CHECK(sd_ctx_backend(gpu) == SD_BACKEND_CUDA, "backend kind");
    CHECK(sd_ctx_activation_dtype(gpu) == SD_DTYPE_F16, "cuda activation dtype %d",
          (int)sd_ctx_activation_dtype(gpu));
}

/* A chain of ops captured into a CUDA graph and replayed gives what the eager calls gave:
 * no op synchronises, allocates or copies through the host. */
static void test_graph_capture(void) {
    int64_t xs[4] = {2, 32, 16, 16}, ws[4] = {32, 32, 3, 3}, ts[3] = {2, 256, 32};
    int64_t lw[2] = {64, 32}, ls[3] = {2, 256, 64}, gs[3] = {2, 256, 32}, cs[1] = {32};
    int64_t es[2] = {10, 32}, is[2] = {2, 4}, eo[3] = {2, 4, 32}, tt[1] = {2}, te[2] = {2, 32};
    float *xv = frand(numel(4, xs), -1, 1), *wv = frand(numel(4, ws), -0.2f, 0.2f);
    float *lv = frand(64 * 32, -0.2f, 0.2f), *cv = frand(32, -1, 1), *ev = frand(320, -1, 1);
    float idv[8] = {1, 2, 3, 9, 0, 0, 5, 4}, tv[2] = {10, 999};
    int32_t w16 = act == SD_DTYPE_F16 ? SD_DTYPE_F16 : SD_DTYPE_F32;
    sd_tensor_t *x = make_tensor(gpu, act, 4, xs, xv, NULL);
    sd_tensor_t *w = make_tensor(gpu, w16, 4, ws, wv, NULL);
    sd_tensor_t *lin = make_tensor(gpu, w16, 2, lw, lv, NULL);
    sd_tensor_t *bias = make_tensor(gpu, SD_DTYPE_F32, 1, cs, cv, NULL);
    sd_tensor_t *table = make_tensor(gpu, SD_DTYPE_F16, 2, es, ev, NULL);
    sd_tensor_t *ids = make_tensor(gpu, SD_DTYPE_I32, 2, is, idv, NULL);
    sd_tensor_t *t = make_tensor(gpu, SD_DTYPE_F32, 1, tt, tv, NULL);
    sd_tensor_t *c1 = make_tensor(gpu, act, 4, xs, xv, NULL),
                *g1 = make_tensor(gpu, act, 4, xs, xv, NULL);
    sd_tensor_t *tok = make_tensor(gpu, act, 3, ts, xv, NULL),
                *ln = make_tensor(gpu, act, 3, ts, xv, NULL);
    sd_tensor_t *ff = make_tensor(gpu, act, 3, ls, xv, NULL),
                *gg = make_tensor(gpu, act, 3, gs, xv, NULL);
    sd_tensor_t *at = make_tensor(gpu, act, 3, ts, xv, NULL),
                *sum = make_tensor(gpu, act, 3, ts, xv, NULL);
    sd_tensor_t *emb = make_tensor(gpu, act, 3, eo, xv, NULL),
                *temb = make_tensor(gpu, act, 2, te, xv, NULL);
    sd_tensor_t *outs[] = {c1, g1, tok, ln, ff, gg, at, sum, emb, temb};
    const int nouts = sizeof outs / sizeof *outs;

    sd_conv2d_params_t cp;
    sd_conv2d_params_default(&cp);
    cp.pad_top = cp.pad_bottom = cp.pad_left = cp.pad_right = 1;
    sd_linear_params_t to_tok = {SD_LAYOUT_CHANNELS_FIRST, SD_LAYOUT_TOKENS}, lp;
    sd_linear_params_default(&lp);
    sd_attention_params_t ap;
    sd_attention_params_default(&ap);
    ap.heads = 4;
    sd_timestep_embedding_params_t tp;
    sd_timestep_embedding_params_default(&tp);
    sd_tensor_t ident = sd_tensor_view(lin->data, w16, 2, (int64_t[]){32, 32});
    /* conv -> group norm + SiLU -> to tokens -> layer norm -> feed-forward -> GEGLU ->
     * attention -> residual add; embedding and timestep embedding on the side. */
    float *eager[10];
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) CHECK_OK(gpu, sd_cuda_capture_begin(gpu));
        CHECK_OK(gpu, sd_op_conv2d(gpu, c1, x, w, bias, NULL, &cp));
        CHECK_OK(gpu, sd_op_group_norm(gpu, g1, c1, NULL, NULL, 8, 1e-5f, true));
        CHECK_OK(gpu, sd_op_linear(gpu, tok, g1, &ident, bias, NULL, &to_tok));
        CHECK_OK(gpu, sd_op_layer_norm(gpu, ln, tok, NULL, NULL, 1e-5f));
        CHECK_OK(gpu, sd_op_linear(gpu, ff, ln, lin, NULL, NULL, &lp));
        CHECK_OK(gpu, sd_op_geglu(gpu, gg, ff));
        CHECK_OK(gpu, sd_op_attention(gpu, at, gg, ln, ln, &ap));
        CHECK_OK(gpu, sd_op_add(gpu, sum, at, tok));
        CHECK_OK(gpu, sd_op_embedding(gpu, emb, ids, table));
        CHECK_OK(gpu, sd_op_timestep_embedding(gpu, temb, t, &tp));
        if (pass == 0) {
            for (int i = 0; i < nouts; i++) {
                eager[i] = fetch_any(gpu, outs[i]);
                /* Poison, so the replay must write every output again. */
                float *nan = malloc((size_t)numel(outs[i]->ndim, outs[i]->shape) * sizeof(float));
                for (int64_t j = 0; j < numel(outs[i]->ndim, outs[i]->shape); j++) nan[j] = NAN;
                sd_tensor_t *tmp = make_tensor(gpu, act, outs[i]->ndim, outs[i]->shape, nan, NULL);
                CHECK_OK(gpu, sd_op_add(gpu, outs[i], tmp, tmp));
                sd_tensor_free(gpu, tmp);
                free(nan);
            }
        } else {
            CHECK_OK(gpu, sd_cuda_capture_end_and_replay(gpu, 2));
        }
    }
    for (int i = 0; i < nouts; i++) {
        float *g = fetch_any(gpu, outs[i]);
        int64_t n = numel(outs[i]->ndim, outs[i]->shape);
        char name[64];
        snprintf(name, sizeof name, "graph replay output %d [%s]", i, sd_dtype_name(act));
        compare_floats(name, g, eager[i], n, act == SD_DTYPE_F16 ? F16_RTOL : F32_RTOL, 0);
        free(g), free(eager[i]);
    }
    for (int i = 0; i < nouts; i++) sd_tensor_free(gpu, outs[i]);
    sd_tensor_free(gpu, x), sd_tensor_free(gpu, w), sd_tensor_free(gpu, lin);
    sd_tensor_free(gpu, bias), sd_tensor_free(gpu, table), sd_tensor_free(gpu, ids);
    sd_tensor_free(gpu, t);
    free(xv), free(wv), free(lv), free(cv), free(ev);
}

int main(void) {
    char why[256];
    if (!sd_backend_available(SD_BACKEND_CUDA, why, sizeof why)) {
        printf("SKIP: %s\n", why);
        return 77; /* ctest: skipped */
    }
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    char err[256];
    if (sd_ctx_init(&p, &cpu, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "cpu context: %s\n", err);
        return 2;
    }
    p.backend = SD_BACKEND_CUDA;
    if (sd_ctx_init(&p, &gpu, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "cuda context: %s\n", err);
        sd_ctx_free(cpu);
        return 2;
    }
    printf("cpu: %s\ncuda: %s\n", sd_ctx_backend_description(cpu), sd_ctx_backend_description(gpu));
    const int32_t passes[2] = {SD_DTYPE_F32, SD_DTYPE_F16};
    for (int i = 0; i < 2; i++) {
        act = passes[i];
        rng_seed(1 + (uint64_t)i);
        test_conv2d();
        test_linear();
        test_norms();
        test_attention();
        test_activations();
        test_shape_ops();
        test_timestep_embedding();
        test_embedding();
        test_unaligned();
        test_embedding_deferred_error();
        test_weights();
        test_graph_capture();
        printf("%s activations: %d checks, %d failures so far\n", sd_dtype_name(act), test_checks,
               test_failures);
    }
    test_validation();
    sd_ctx_free(gpu);
    sd_ctx_free(cpu);
    return test_summary("test_cuda");
}
