/*
 * Op benchmarks on the CPU backend: GFLOP/s of the GEMM-shaped ops at Stable Diffusion
 * sizes (median of several runs after a warm-up), in fp32 and, on CPUs with AVX512_BF16, each
 * again right after with bf16 compute (rows marked [bf16]).
 *   bench_ops [threads] [filter]
 */
#include "harness.h"

#include "cpu.h"
#include "sd-internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef sd_status_t (*bench_fn)(sd_ctx_t *ctx, void *arg);

static void report(sd_ctx_t *ctx, const char *name, double flops, bench_fn fn, void *arg) {
    enum { REPS = 7 };
    double t[REPS];
    if (fn(ctx, arg) != SD_STATUS_OK) { /* warm-up */
        fprintf(stderr, "%s: %s\n", name, sd_ctx_last_error(ctx));
        exit(1);
    }
    for (int i = 0; i < REPS; i++) {
        double t0 = now();
        fn(ctx, arg);
        t[i] = now() - t0;
    }
    const double m = median(t, REPS);
    printf("%-48s %9.2f ms %8.1f GFLOP/s\n", name, m * 1e3, flops > 0 ? flops / m * 1e-9 : 0.0);
}

typedef struct {
    sd_tensor_t *out, *x, *w, *b, *k, *v;
    sd_conv2d_params_t cp;
    sd_linear_params_t lp;
    sd_attention_params_t ap;
} args_t;

static sd_status_t run_linear(sd_ctx_t *ctx, void *p) {
    args_t *a = p;
    return sd_op_linear(ctx, a->out, a->x, a->w, a->b, NULL, &a->lp);
}
static sd_status_t run_conv(sd_ctx_t *ctx, void *p) {
    args_t *a = p;
    return sd_op_conv2d(ctx, a->out, a->x, a->w, a->b, NULL, &a->cp);
}
static sd_status_t run_attn(sd_ctx_t *ctx, void *p) {
    args_t *a = p;
    return sd_op_attention(ctx, a->out, a->x, a->k, a->v, &a->ap);
}
static sd_status_t run_gn(sd_ctx_t *ctx, void *p) {
    args_t *a = p;
    return sd_op_group_norm(ctx, a->out, a->x, NULL, NULL, 32, 1e-5f, true);
}

/* GEMM-shaped op number `which` (< PRODUCTS) on one context; `tag` ends its name (the
 * compute precision). */
#define PRODUCTS 8
static void bench_product(sd_ctx_t *ctx, const char *filter, const char *tag, int which) {
    const int32_t wdt[2] = {SD_DTYPE_F16, SD_DTYPE_F32};
    char name[96];
    int at = 0;
    /* A model's linear layers at 256² with CFG (few tokens): F16 weights packed at load. */
    const int64_t packed_shapes[2][3] = {{128, 1280, 1280}, {2048, 320, 2560}};
    for (int s = 0; s < 2; s++) {
        const int64_t rows = packed_shapes[s][0], k = packed_shapes[s][1], n = packed_shapes[s][2];
        snprintf(name, sizeof name,
                 "linear %" PRId64 "x%" PRId64 " @ %" PRId64 "x%" PRId64 "^T f16 packed%s", rows, k,
                 n, k, tag);
        if (which == at++ && bench_selected(filter, name)) {
            int64_t xs[2] = {rows, k}, ws[2] = {n, k}, os[2] = {rows, n};
            args_t a = {0};
            a.x = make_random(ctx, SD_DTYPE_F32, 2, xs);
            a.w = make_random(ctx, SD_DTYPE_F16, 2, ws);
            sd_cpu_backend_t *cpu = sd_cpu(ctx);
            a.w->packed =
                sd_packed_weight_new(cpu->pool, cpu->kern, a.w->data, SD_DTYPE_F16, n, k, true);
            a.out = make_empty(ctx, 2, os);
            sd_linear_params_default(&a.lp);
            report(ctx, name, 2.0 * (double)(rows * k * n), run_linear, &a);
            sd_packed_weight_free(a.w->packed); /* the test's: only model weights free theirs */
            a.w->packed = NULL;
        }
    }
    for (int d = 0; d < 2; d++) {
        snprintf(name, sizeof name, "linear 4096x1280 @ 1280x1280^T %s%s", d ? "f32" : "f16", tag);
        if (which == at++ && bench_selected(filter, name)) {
            int64_t xs[2] = {4096, 1280}, ws[2] = {1280, 1280}, bs[1] = {1280};
            args_t a = {0};
            a.x = make_random(ctx, SD_DTYPE_F32, 2, xs);
            a.w = make_random(ctx, wdt[d], 2, ws);
            a.b = make_random(ctx, SD_DTYPE_F32, 1, bs);
            a.out = make_empty(ctx, 2, xs);
            sd_linear_params_default(&a.lp);
            report(ctx, name, 2.0 * 4096 * 1280 * 1280, run_linear, &a);
        }
        snprintf(name, sizeof name, "conv2d 3x3 320->320 2x64x64 %s%s", d ? "f32" : "f16", tag);
        if (which == at++ && bench_selected(filter, name)) {
            int64_t xs[4] = {2, 320, 64, 64}, ws[4] = {320, 320, 3, 3}, bs[1] = {320};
            args_t a = {0};
            a.x = make_random(ctx, SD_DTYPE_F32, 4, xs);
            a.w = make_random(ctx, wdt[d], 4, ws);
            a.b = make_random(ctx, SD_DTYPE_F32, 1, bs);
            a.out = make_empty(ctx, 4, xs);
            sd_conv2d_params_default(&a.cp);
            a.cp.pad_top = a.cp.pad_bottom = a.cp.pad_left = a.cp.pad_right = 1;
            report(ctx, name, 2.0 * 2 * 320 * 320 * 9 * 64 * 64, run_conv, &a);
        }
    }
    snprintf(name, sizeof name, "conv2d 3x3 1280->1280 2x8x8 f16%s", tag);
    if (which == at++ && bench_selected(filter, name)) {
        int64_t xs[4] = {2, 1280, 8, 8}, ws[4] = {1280, 1280, 3, 3};
        args_t a = {0};
        a.x = make_random(ctx, SD_DTYPE_F32, 4, xs);
        a.w = make_random(ctx, SD_DTYPE_F16, 4, ws);
        a.out = make_empty(ctx, 4, xs);
        sd_conv2d_params_default(&a.cp);
        a.cp.pad_top = a.cp.pad_bottom = a.cp.pad_left = a.cp.pad_right = 1;
        report(ctx, name, 2.0 * 2 * 1280 * 1280 * 9 * 64, run_conv, &a);
    }
    snprintf(name, sizeof name, "attention self 2x4096x320 8 heads%s", tag);
    if (which == at++ && bench_selected(filter, name)) {
        int64_t qs[3] = {2, 4096, 320}, ks[3] = {2, 4096, 320}, cs[3] = {2, 77, 320};
        args_t a = {0};
        a.x = make_random(ctx, SD_DTYPE_F32, 3, qs);
        a.k = make_random(ctx, SD_DTYPE_F32, 3, ks);
        a.v = make_random(ctx, SD_DTYPE_F32, 3, ks);
        a.out = make_empty(ctx, 3, qs);
        sd_attention_params_default(&a.ap);
        a.ap.heads = 8;
        report(ctx, name, 2.0 * 2 * 2 * 4096.0 * 4096 * 320, run_attn, &a);
        args_t c = a;
        c.k = make_random(ctx, SD_DTYPE_F32, 3, cs);
        c.v = make_random(ctx, SD_DTYPE_F32, 3, cs);
        snprintf(name, sizeof name, "attention cross 2x4096x77x320 8 heads%s", tag);
        report(ctx, name, 2.0 * 2 * 2 * 4096.0 * 77 * 320, run_attn, &c);
    }
}

int main(int argc, char **argv) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    if (argc > 1) p.n_threads = atoi(argv[1]);
    const char *filter = argc > 2 ? argv[2] : NULL;
    sd_ctx_t *ctx, *ctx_bf16 = NULL;
    char err[256];
    if (sd_ctx_init(&p, &ctx, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("backend: %s\n", sd_ctx_backend_description(ctx));
    /* The same products in bf16 where the CPU has it, each right after its fp32 run so that
     * the pair sees the same load. */
    p.precision = SD_PRECISION_BF16;
    if (sd_ctx_init(&p, &ctx_bf16, err, sizeof err) != SD_STATUS_OK)
        printf("no bf16 rows: %s\n", err);
    rng_seed(7);
    for (int which = 0; which < PRODUCTS; which++) {
        bench_product(ctx, filter, "", which);
        if (ctx_bf16) bench_product(ctx_bf16, filter, " [bf16]", which);
    }
    if (bench_selected(filter, "group_norm")) {
        int64_t xs[4] = {2, 320, 64, 64};
        args_t a = {0};
        a.x = make_random(ctx, SD_DTYPE_F32, 4, xs);
        a.out = make_empty(ctx, 4, xs);
        report(ctx, "group_norm+silu 2x320x64x64", 0, run_gn, &a);
    }
    sd_ctx_free(ctx_bf16);
    sd_ctx_free(ctx);
    return 0;
}
