/*
 * activation.c - elementwise activations and GEGLU on the CPU.
 *
 * x, out: any shape, f32, contiguous. ref: torch.nn.functional.silu, gelu (approximate
 * 'none' and 'tanh'), transformers' quick_gelu (x * sigmoid(1.702 x)), leaky_relu with
 * negative_slope 0.2 (ESRGAN) and diffusers' GEGLU (proj output split in halves a, gate
 * along the last dim; a * gelu(gate)).
 */
#include "../cpu.h"

#define CHUNK 16384

typedef struct {
    void (*fn)(float *dst, const float *src, int64_t n);
    float *out;
    const float *x;
    int64_t n;
} map_job_t;

/* A plain loop the compiler vectorises; the slope is ESRGAN's. */
static void leaky_relu(float *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = src[i] >= 0.0f ? src[i] : 0.2f * src[i];
}

static void map_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const map_job_t *j = arg;
    int64_t lo = task * CHUNK, hi = SD_MIN(j->n, lo + CHUNK);
    j->fn(j->out + lo, j->x + lo, hi - lo);
}

sd_status_t sd_cpu_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              int32_t activation) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    map_job_t job = {.out = out->data, .x = x->data, .n = sd_tensor_numel(x)};
    switch (activation) {
    case SD_ACT_SILU:
        job.fn = cpu->kern->silu;
        break;
    case SD_ACT_GELU:
        job.fn = cpu->kern->gelu;
        break;
    case SD_ACT_GELU_TANH:
        job.fn = cpu->kern->gelu_tanh;
        break;
    case SD_ACT_LEAKY_RELU:
        job.fn = leaky_relu;
        break;
    default:
        job.fn = cpu->kern->quick_gelu;
        break;
    }
    sd_pool_run(cpu->pool, (job.n + CHUNK - 1) / CHUNK, map_task, &job);
    return SD_STATUS_OK;
}

typedef struct {
    const sd_cpu_kernels_t *kern;
    float *out;
    const float *x;
    int64_t rows, half;
} geglu_job_t;

static void geglu_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const geglu_job_t *j = arg;
    int64_t per = SD_MAX((int64_t)1, CHUNK / j->half);
    int64_t r0 = task * per, r1 = SD_MIN(j->rows, r0 + per);
    for (int64_t r = r0; r < r1; r++) {
        const float *row = j->x + r * 2 * j->half;
        j->kern->geglu(j->out + r * j->half, row, row + j->half, j->half);
    }
}

sd_status_t sd_cpu_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    int64_t half = out->shape[out->ndim - 1];
    geglu_job_t job = {cpu->kern, out->data, x->data, sd_tensor_numel(out) / half, half};
    int64_t per = SD_MAX((int64_t)1, CHUNK / half);
    sd_pool_run(cpu->pool, (job.rows + per - 1) / per, geglu_task, &job);
    return SD_STATUS_OK;
}
