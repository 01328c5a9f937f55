/*
 * Op benchmarks on the CUDA backend: bench_ops.c's shapes plus Stable Diffusion's attention
 * sizes and the memory-bound ops, with F16 activations (what the model graphs use) and F32.
 * Each op is timed with CUDA events on the context's stream: REPS runs of ITERS launches
 * after a warm-up, the median reported as time per op and TFLOP/s (GEMM-shaped ops) or GB/s
 * of compulsory traffic (each input read and each output written once).
 *   bench_cuda [filter]
 * Exits 77 without a usable GPU.
 */
#include "harness.h"

#include "sd-cuda.h"
#include "sd-internal.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>

#define REPS  7
#define ITERS 20

static sd_ctx_t *ctx;
static const char *filter;

typedef sd_status_t (*bench_fn)(void *arg);

static void check_cuda(cudaError_t err, const char *what) {
    if (err != cudaSuccess) {
        fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
        exit(1);
    }
}

/* Median seconds per call of fn. */
static double time_op(bench_fn fn, void *arg) {
    cudaStream_t stream = (cudaStream_t)sd_cuda_ctx_stream(ctx);
    if (fn(arg) != SD_STATUS_OK) { /* warm-up: cuBLASLt heuristics, first-touch */
        fprintf(stderr, "%s\n", sd_ctx_last_error(ctx));
        exit(1);
    }
    cudaEvent_t start, stop;
    check_cuda(cudaEventCreate(&start), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
    double t[REPS];
    for (int r = 0; r < REPS; r++) {
        check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
        for (int i = 0; i < ITERS; i++) fn(arg);
        check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
        check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float ms = 0;
        check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
        t[r] = ms * 1e-3 / ITERS;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return median(t, REPS);
}

/* flops > 0: report TFLOP/s, else bytes as GB/s. */
static void report(const char *name, double flops, double bytes, bench_fn fn, void *arg) {
    double s = time_op(fn, arg);
    if (flops > 0)
        printf("%-56s %9.3f ms %8.1f TFLOP/s\n", name, s * 1e3, flops / s * 1e-12);
    else
        printf("%-56s %9.3f ms %8.1f GB/s\n", name, s * 1e3, bytes / s * 1e-9);
}

typedef struct {
    sd_tensor_t *out, *x, *w, *b, *k, *v;
    sd_conv2d_params_t cp;
    sd_linear_params_t lp;
    sd_attention_params_t ap;
} args_t;

static void free_args(args_t *a) {
    sd_tensor_t *ts[] = {a->out, a->x, a->w, a->b, a->k, a->v};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ctx, ts[i]);
}

static sd_status_t run_linear(void *p) {
    args_t *a = p;
    return sd_op_linear(ctx, a->out, a->x, a->w, a->b, NULL, &a->lp);
}
static sd_status_t run_conv(void *p) {
    args_t *a = p;
    return sd_op_conv2d(ctx, a->out, a->x, a->w, a->b, NULL, &a->cp);
}
static sd_status_t run_attn(void *p) {
    args_t *a = p;
    return sd_op_attention(ctx, a->out, a->x, a->k, a->v, &a->ap);
}
static sd_status_t run_gn(void *p) {
    args_t *a = p;
    return sd_op_group_norm(ctx, a->out, a->x, a->w, a->b, 32, 1e-5f, true);
}
static sd_status_t run_ln(void *p) {
    args_t *a = p;
    return sd_op_layer_norm(ctx, a->out, a->x, a->w, a->b, 1e-5f);
}
static sd_status_t run_geglu(void *p) {
    args_t *a = p;
    return sd_op_geglu(ctx, a->out, a->x);
}
static sd_status_t run_add(void *p) {
    args_t *a = p;
    return sd_op_add(ctx, a->out, a->x, a->k);
}
static sd_status_t run_upsample(void *p) {
    args_t *a = p;
    return sd_op_upsample_nearest(ctx, a->out, a->x);
}

static void bench_linear(int32_t act, int32_t wdt) {
    char name[96];
    snprintf(name, sizeof name, "linear 4096x1280 @ 1280x1280^T %s act, %s w", sd_dtype_name(act),
             sd_dtype_name(wdt));
    if (!bench_selected(filter, name)) return;
    int64_t xs[2] = {4096, 1280}, ws[2] = {1280, 1280}, bs[1] = {1280};
    args_t a = {0};
    a.x = make_random(ctx, act, 2, xs);
    a.w = make_random(ctx, wdt, 2, ws);
    a.b = make_random(ctx, SD_DTYPE_F32, 1, bs);
    a.out = make_random(ctx, act, 2, xs);
    sd_linear_params_default(&a.lp);
    report(name, 2.0 * 4096 * 1280 * 1280, 0, run_linear, &a);
    free_args(&a);
}

static void bench_conv(int32_t act, int64_t n, int64_t c, int64_t hw) {
    char name[96];
    snprintf(name, sizeof name, "conv2d 3x3 %lld->%lld %lldx%lldx%lld %s", (long long)c,
             (long long)c, (long long)n, (long long)hw, (long long)hw, sd_dtype_name(act));
    if (!bench_selected(filter, name)) return;
    int64_t xs[4] = {n, c, hw, hw}, ws[4] = {c, c, 3, 3}, bs[1] = {c};
    args_t a = {0};
    a.x = make_random(ctx, act, 4, xs);
    a.w = make_random(ctx, act == SD_DTYPE_F16 ? SD_DTYPE_F16 : SD_DTYPE_F32, 4, ws);
    a.b = make_random(ctx, SD_DTYPE_F32, 1, bs);
    a.out = make_random(ctx, act, 4, xs);
    sd_conv2d_params_default(&a.cp);
    a.cp.pad_top = a.cp.pad_bottom = a.cp.pad_left = a.cp.pad_right = 1;
    report(name, 2.0 * n * c * c * 9 * hw * hw, 0, run_conv, &a);
    free_args(&a);
}

static void bench_attention(int32_t act, int64_t b, int64_t tq, int64_t tk, int64_t c,
                            int32_t heads, bool causal) {
    char name[96];
    snprintf(name, sizeof name, "attention %s %lldx%lldx%lld %d heads x %lld%s %s",
             tq == tk ? "self" : "cross", (long long)b, (long long)tq, (long long)tk, heads,
             (long long)(c / heads), causal ? " causal" : "", sd_dtype_name(act));
    if (!bench_selected(filter, name)) return;
    int64_t qs[3] = {b, tq, c}, ks[3] = {b, tk, c};
    args_t a = {0};
    a.x = make_random(ctx, act, 3, qs);
    a.k = make_random(ctx, act, 3, ks);
    a.v = make_random(ctx, act, 3, ks);
    a.out = make_random(ctx, act, 3, qs);
    sd_attention_params_default(&a.ap);
    a.ap.heads = heads;
    a.ap.causal = causal;
    /* Q K^T and P V; causal attention does about half. */
    double flops = 2.0 * 2 * b * (double)tq * (double)tk * (double)c * (causal ? 0.5 : 1.0);
    report(name, flops, 0, run_attn, &a);
    free_args(&a);
}

static void bench_memory_bound(int32_t act) {
    const double es = (double)sd_dtype_size(act);
    char name[96];
    snprintf(name, sizeof name, "group_norm+silu 2x320x64x64 %s", sd_dtype_name(act));
    if (bench_selected(filter, name)) {
        int64_t xs[4] = {2, 320, 64, 64}, cs[1] = {320};
        args_t a = {0};
        a.x = make_random(ctx, act, 4, xs);
        a.w = make_random(ctx, SD_DTYPE_F32, 1, cs);
        a.b = make_random(ctx, SD_DTYPE_F32, 1, cs);
        a.out = make_random(ctx, act, 4, xs);
        report(name, 0, 2.0 * 2 * 320 * 64 * 64 * es, run_gn, &a);
        free_args(&a);
    }
    snprintf(name, sizeof name, "layer_norm 8192x320 %s", sd_dtype_name(act));
    if (bench_selected(filter, name)) {
        int64_t xs[2] = {8192, 320}, cs[1] = {320};
        args_t a = {0};
        a.x = make_random(ctx, act, 2, xs);
        a.w = make_random(ctx, SD_DTYPE_F32, 1, cs);
        a.b = make_random(ctx, SD_DTYPE_F32, 1, cs);
        a.out = make_random(ctx, act, 2, xs);
        report(name, 0, 2.0 * 8192 * 320 * es, run_ln, &a);
        free_args(&a);
    }
    snprintf(name, sizeof name, "geglu 2x4096x(2*1280) %s", sd_dtype_name(act));
    if (bench_selected(filter, name)) {
        int64_t xs[3] = {2, 4096, 2560}, os[3] = {2, 4096, 1280};
        args_t a = {0};
        a.x = make_random(ctx, act, 3, xs);
        a.out = make_random(ctx, act, 3, os);
        report(name, 0, 3.0 * 2 * 4096 * 1280 * es, run_geglu, &a);
        free_args(&a);
    }
    snprintf(name, sizeof name, "add 2x320x64x64 %s", sd_dtype_name(act));
    if (bench_selected(filter, name)) {
        int64_t xs[4] = {2, 320, 64, 64};
        args_t a = {0};
        a.x = make_random(ctx, act, 4, xs);
        a.k = make_random(ctx, act, 4, xs);
        a.out = make_random(ctx, act, 4, xs);
        report(name, 0, 3.0 * 2 * 320 * 64 * 64 * es, run_add, &a);
        free_args(&a);
    }
    snprintf(name, sizeof name, "upsample_nearest2x 2x640x32x32 %s", sd_dtype_name(act));
    if (bench_selected(filter, name)) {
        int64_t xs[4] = {2, 640, 32, 32}, os[4] = {2, 640, 64, 64};
        args_t a = {0};
        a.x = make_random(ctx, act, 4, xs);
        a.out = make_random(ctx, act, 4, os);
        report(name, 0, 5.0 * 2 * 640 * 32 * 32 * es, run_upsample, &a);
        free_args(&a);
    }
}

int main(int argc, char **argv) {
    filter = argc > 1 ? argv[1] : NULL;
    char why[256];
    if (!sd_backend_available(SD_BACKEND_CUDA, why, sizeof why)) {
        printf("SKIP: %s\n", why);
        return 77;
    }
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.backend = SD_BACKEND_CUDA;
    char err[256];
    if (sd_ctx_init(&p, &ctx, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("backend: %s\n", sd_ctx_backend_description(ctx));
    rng_seed(7);
    const int32_t acts[2] = {SD_DTYPE_F16, SD_DTYPE_F32};
    for (int i = 0; i < 2; i++) {
        const int32_t act = acts[i];
        /* bench_ops.c's shapes: cuBLASLt with matching dtypes, the fallback kernels with f32
         * weights under f16 activations. */
        bench_linear(act, act);
        if (act == SD_DTYPE_F16) bench_linear(act, SD_DTYPE_F32);
        bench_conv(act, 2, 320, 64);
        bench_conv(act, 2, 1280, 8);
        /* SD 1.x at 512x512: 8 heads x 40 over 64x64 latents, cross-attention to 77 CLIP
         * tokens; the other head sizes of SD 1.x / 2.x; CLIP's causal self-attention. */
        bench_attention(act, 2, 4096, 4096, 320, 8, false);
        bench_attention(act, 2, 4096, 77, 320, 8, false);
        bench_attention(act, 2, 4096, 4096, 320, 5, false);
        bench_attention(act, 2, 1024, 1024, 640, 8, false);
        bench_attention(act, 2, 256, 256, 1280, 8, false);
        bench_attention(act, 2, 77, 77, 768, 12, true);
        bench_memory_bound(act);
    }
    sd_ctx_free(ctx);
    return 0;
}
