/*
 * elementwise.c - add, multiply (with suffix broadcasting) and channel concatenation on
 * the CPU.
 *
 * add/mul: a, out any shape; b a's shape or a suffix of it. ref: torch broadcasting of
 * trailing dims. concat: (N, Ca, ...) + (N, Cb, ...) -> (N, Ca + Cb, ...), ref: torch.cat
 * along dim 1 (the UNet's skip connections). clamp: torch.clamp. tanh_clamp: limit *
 * tanh(x / limit), TAESD's Clamp module (madebyollin/taesd, diffusers' DecoderTiny).
 */
#include "../cpu.h"

#include <math.h>
#include <string.h>

#define CHUNK 16384

typedef struct {
    float *out;
    const float *a, *b;
    int64_t n, nb;
    int32_t op;
} bin_job_t;

static void bin_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const bin_job_t *j = arg;
    int64_t lo = task * CHUNK, hi = SD_MIN(j->n, lo + CHUNK);
    int64_t bi = lo % j->nb;
    for (int64_t i = lo; i < hi;) {
        /* Runs over which b does not wrap vectorise. */
        int64_t run = SD_MIN(hi - i, j->nb - bi);
        float *o = j->out + i;
        const float *a = j->a + i, *b = j->b + bi;
        if (j->op == SD_BINARY_ADD)
            for (int64_t t = 0; t < run; t++) o[t] = a[t] + b[t];
        else
            for (int64_t t = 0; t < run; t++) o[t] = a[t] * b[t];
        i += run;
        bi = 0;
    }
}

sd_status_t sd_cpu_binary(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b, int32_t op) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    bin_job_t job = {out->data, a->data, b->data, sd_tensor_numel(a), sd_tensor_numel(b), op};
    sd_pool_run(cpu->pool, (job.n + CHUNK - 1) / CHUNK, bin_task, &job);
    return SD_STATUS_OK;
}

sd_status_t sd_cpu_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b) {
    (void)ctx;
    const int64_t n = a->shape[0];
    const size_t sa = (size_t)(sd_tensor_numel(a) / n) * sizeof(float);
    const size_t sb = (size_t)(sd_tensor_numel(b) / n) * sizeof(float);
    for (int64_t i = 0; i < n; i++) {
        char *dst = (char *)out->data + (size_t)i * (sa + sb);
        memcpy(dst, (const char *)a->data + (size_t)i * sa, sa);
        memcpy(dst + sa, (const char *)b->data + (size_t)i * sb, sb);
    }
    return SD_STATUS_OK;
}

sd_status_t sd_cpu_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo,
                         float hi) {
    (void)ctx;
    const int64_t n = sd_tensor_numel(x);
    const float *src = x->data;
    float *dst = out->data;
    for (int64_t i = 0; i < n; i++) dst[i] = src[i] < lo ? lo : src[i] > hi ? hi : src[i];
    return SD_STATUS_OK;
}

sd_status_t sd_cpu_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit) {
    (void)ctx;
    const int64_t n = sd_tensor_numel(x);
    const float *src = x->data;
    float *dst = out->data;
    /* Latent-sized (4 channels at 1/8 resolution): one thread is plenty. */
    for (int64_t i = 0; i < n; i++) dst[i] = limit * tanhf(src[i] / limit);
    return SD_STATUS_OK;
}
