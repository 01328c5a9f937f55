/*
 * layer-norm.c - layer normalisation over the last dimension on the CPU.
 *
 * x, out: (..., C) f32; gamma, beta: (C) f32 or NULL.
 * ref: torch.nn.LayerNorm (biased variance, eps inside the square root).
 */
#include "../cpu.h"

#include <math.h>

typedef struct {
    const sd_cpu_kernels_t *kern;
    const float *x, *gamma, *beta;
    float *out;
    int64_t rows, c;
    float eps;
} ln_job_t;

#define LN_ROWS_PER_TASK 32

static void ln_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const ln_job_t *j = arg;
    int64_t r0 = task * LN_ROWS_PER_TASK, r1 = SD_MIN(j->rows, r0 + LN_ROWS_PER_TASK);
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->x + r * j->c;
        float *y = j->out + r * j->c;
        float mean = (float)(j->kern->sum(x, j->c) / (double)j->c);
        double var = j->kern->sum_sq_dev(x, j->c, mean) / (double)j->c;
        float rstd = (float)(1.0 / sqrt(var + (double)j->eps));
        for (int64_t i = 0; i < j->c; i++) {
            float v = (x[i] - mean) * rstd;
            if (j->gamma) v *= j->gamma[i];
            if (j->beta) v += j->beta[i];
            y[i] = v;
        }
    }
}

sd_status_t sd_cpu_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    const int64_t c = x->shape[x->ndim - 1];
    ln_job_t job = {
        .kern = cpu->kern,
        .x = x->data,
        .gamma = gamma ? gamma->data : NULL,
        .beta = beta ? beta->data : NULL,
        .out = out->data,
        .rows = sd_tensor_numel(x) / c,
        .c = c,
        .eps = eps,
    };
    sd_pool_run(cpu->pool, (job.rows + LN_ROWS_PER_TASK - 1) / LN_ROWS_PER_TASK, ln_task, &job);
    return SD_STATUS_OK;
}
