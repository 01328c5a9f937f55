/*
 * upsample.c - nearest-neighbour 2x upsampling on the CPU.
 *
 * x: (N, C, H, W) -> out: (N, C, 2H, 2W), f32. ref: torch.nn.functional.interpolate(
 * scale_factor=2, mode='nearest') as diffusers' Upsample2D uses it.
 */
#include "../cpu.h"

#include <string.h>

typedef struct {
    const float *x;
    float *out;
    int64_t h, w;
} up_job_t;

static void up_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const up_job_t *j = arg;
    const float *src = j->x + task * j->h * j->w;
    float *dst = j->out + task * 4 * j->h * j->w;
    const int64_t ow = 2 * j->w;
    for (int64_t y = 0; y < j->h; y++) {
        float *row = dst + 2 * y * ow;
        for (int64_t xx = 0; xx < j->w; xx++) row[2 * xx] = row[2 * xx + 1] = src[y * j->w + xx];
        memcpy(row + ow, row, (size_t)ow * sizeof(float));
    }
}

sd_status_t sd_cpu_upsample_nearest2x(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    up_job_t job = {x->data, out->data, x->shape[2], x->shape[3]};
    sd_pool_run(cpu->pool, x->shape[0] * x->shape[1], up_task, &job);
    return SD_STATUS_OK;
}
