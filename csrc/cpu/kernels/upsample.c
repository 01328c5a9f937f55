/*
 * upsample.c - nearest-neighbour resize on the CPU.
 *
 * x: (N, C, H, W) -> out: (N, C, OH, OW), f32. ref: torch.nn.functional.interpolate(
 * mode='nearest'): source row floor(oy * H / OH) (clamped), likewise for columns. The 2x
 * case (diffusers' Upsample2D with scale_factor=2) takes a fast path; the index rule gives
 * the same result there.
 */
#include "../cpu.h"

#include <string.h>

typedef struct {
    const float *x;
    float *out;
    int64_t h, w, oh, ow;
    const int64_t *src_col; /* source column of each output column */
} up_job_t;

static void up_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const up_job_t *j = arg;
    const float *src = j->x + task * j->h * j->w;
    float *dst = j->out + task * j->oh * j->ow;
    if (j->oh == 2 * j->h && j->ow == 2 * j->w) {
        for (int64_t y = 0; y < j->h; y++) {
            float *row = dst + 2 * y * j->ow;
            for (int64_t x = 0; x < j->w; x++) row[2 * x] = row[2 * x + 1] = src[y * j->w + x];
            memcpy(row + j->ow, row, (size_t)j->ow * sizeof(float));
        }
        return;
    }
    const float scale = (float)j->h / (float)j->oh;
    for (int64_t y = 0; y < j->oh; y++) {
        int64_t sy = SD_MIN((int64_t)((float)y * scale), j->h - 1);
        const float *srow = src + sy * j->w;
        float *row = dst + y * j->ow;
        for (int64_t x = 0; x < j->ow; x++) row[x] = srow[j->src_col[x]];
    }
}

sd_status_t sd_cpu_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    up_job_t job = {x->data,       out->data,     x->shape[2], x->shape[3],
                    out->shape[2], out->shape[3], NULL};
    int64_t *cols = malloc((size_t)job.ow * sizeof *cols);
    if (cols == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "upsample: out of host memory");
    /* torch computes the scale in float: in / out */
    const float scale = (float)job.w / (float)job.ow;
    for (int64_t i = 0; i < job.ow; i++) cols[i] = SD_MIN((int64_t)((float)i * scale), job.w - 1);
    job.src_col = cols;
    sd_pool_run(cpu->pool, x->shape[0] * x->shape[1], up_task, &job);
    free(cols);
    return SD_STATUS_OK;
}

sd_status_t sd_cpu_copy_rows(sd_ctx_t *ctx, sd_tensor_t *dst, int64_t dst_row,
                             const sd_tensor_t *src, int64_t src_row, int64_t rows) {
    (void)ctx;
    const int64_t planes = dst->shape[0] * dst->shape[1], w = dst->shape[3];
    const size_t es = sd_dtype_size(dst->dtype), run = (size_t)(rows * w) * es;
    for (int64_t p = 0; p < planes; p++)
        memcpy((char *)dst->data + ((size_t)(p * dst->shape[2] + dst_row) * (size_t)w) * es,
               (const char *)src->data + ((size_t)(p * src->shape[2] + src_row) * (size_t)w) * es,
               run);
    return SD_STATUS_OK;
}
