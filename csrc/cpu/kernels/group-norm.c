/*
 * group-norm.c - group normalisation (optionally fused with SiLU) on the CPU.
 *
 * x, out: (N, C, ...) f32, contiguous; groups G divide C; gamma, beta: (C) f32 or NULL.
 * ref: torch.nn.GroupNorm (biased variance, eps inside the square root), then
 * torch.nn.functional.silu when fused (diffusers ResnetBlock2D: norm -> SiLU -> conv).
 *
 * One task per (sample, group): two passes for the statistics (mean, then squared
 * deviations, accumulated blockwise in double), then one fused scale-shift(-SiLU) pass
 * per channel.
 */
#include "../cpu.h"

#include <math.h>

typedef struct {
    const sd_cpu_kernels_t *kern;
    const float *x, *gamma, *beta;
    float *out;
    int64_t c, hw, groups;
    float eps;
    bool silu;
} gn_job_t;

static void gn_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const gn_job_t *j = arg;
    const int64_t cpg = j->c / j->groups, n = task / j->groups, g = task % j->groups;
    const int64_t len = cpg * j->hw;
    const int64_t off = (n * j->c + g * cpg) * j->hw;
    const float *x = j->x + off;
    float mean = (float)(j->kern->sum(x, len) / (double)len);
    double var = j->kern->sum_sq_dev(x, len, mean) / (double)len;
    float rstd = (float)(1.0 / sqrt(var + (double)j->eps));
    for (int64_t ci = 0; ci < cpg; ci++) {
        int64_t ch = g * cpg + ci;
        float gamma = j->gamma ? j->gamma[ch] : 1.0f, beta = j->beta ? j->beta[ch] : 0.0f;
        float scale = rstd * gamma, shift = beta - mean * scale;
        j->kern->scale_shift(j->out + off + ci * j->hw, x + ci * j->hw, j->hw, scale, shift,
                             j->silu);
    }
}

sd_status_t sd_cpu_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *gamma, const sd_tensor_t *beta, int32_t groups,
                              float eps, bool silu) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    const int64_t n = x->shape[0], c = x->shape[1];
    gn_job_t job = {
        .kern = cpu->kern,
        .x = x->data,
        .gamma = gamma ? gamma->data : NULL,
        .beta = beta ? beta->data : NULL,
        .out = out->data,
        .c = c,
        .hw = sd_tensor_numel(x) / (n * c),
        .groups = groups,
        .eps = eps,
        .silu = silu,
    };
    sd_pool_run(cpu->pool, n * groups, gn_task, &job);
    return SD_STATUS_OK;
}
