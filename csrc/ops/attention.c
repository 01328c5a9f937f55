/*
 * attention.c - multi-head scaled dot-product attention on the CPU.
 *
 * q: (B, Tq, C), k, v: (B, Tk, C), out: (B, Tq, C), f32; H heads of d = C/H channels,
 * head h being channels [h*d, (h+1)*d). ref: torch.nn.functional.scaled_dot_product_attention
 * (diffusers' AttnProcessor2_0); causal as CLIP's mask (query i sees keys 0..i).
 *
 * Two parallel phases. First K^T and V of every (batch, head) are packed once into GEMM
 * panels. Then one task per (batch, head, block of QB queries): S = scale * Q K^T for the
 * block (a QB x Tk buffer in the thread's scratch, never the Tq x Tk matrix), a numerically
 * stable softmax per row (max subtracted), then out = P V, both on the packed panels.
 */
#include "../cpu.h"

#include <string.h>

#define QB 32

typedef struct {
    sd_cpu_backend_t *cpu;
    const float *q, *k, *v;
    float *out;
    int64_t tq, tk, c, d, heads, qblocks;
    bool causal;
    float scale;
    size_t gemm_floats;
    float *kpack, *vpack; /* per (batch, head) */
    size_t kpack_floats, vpack_floats;
} attn_job_t;

static void pack_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const attn_job_t *j = arg;
    const int64_t bh = task / 2, b = bh / j->heads, h = bh % j->heads;
    const float *src = (task % 2 == 0 ? j->k : j->v) + b * j->tk * j->c + h * j->d;
    if (task % 2 == 0) { /* K^T: (d x Tk), read from K's rows */
        sd_gemm_b_t kb = {.data = src, .dtype = SD_DTYPE_F32, .kind = SD_GEMM_B_NK, .ld = j->c};
        sd_gemm_pack_b(j->cpu->kern, &kb, j->d, j->tk, j->kpack + bh * j->kpack_floats);
    } else { /* V: (Tk x d) */
        sd_gemm_b_t vb = {.data = src, .dtype = SD_DTYPE_F32, .kind = SD_GEMM_B_KN, .ld = j->c};
        sd_gemm_pack_b(j->cpu->kern, &vb, j->tk, j->d, j->vpack + bh * j->vpack_floats);
    }
}

static void attn_task(void *arg, int64_t task, int thread) {
    const attn_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int64_t qb = task % j->qblocks, bh = task / j->qblocks, b = bh / j->heads,
                  h = bh % j->heads;
    const int64_t q0 = qb * QB, rows = SD_MIN((int64_t)QB, j->tq - q0);
    /* Causal: the block's last query sees keys up to its own index. */
    const int64_t keys = j->causal ? q0 + rows : j->tk;
    float *scratch = j->cpu->scratch[thread];
    float *s = scratch + j->gemm_floats;

    const float *qh = j->q + (b * j->tq + q0) * j->c + h * j->d;
    float *oh = j->out + (b * j->tq + q0) * j->c + h * j->d;

    sd_gemm_a_t qa = {.data = qh, .dtype = SD_DTYPE_F32, .ld = j->c};
    sd_gemm_b_t kb = {.data = j->kpack + bh * j->kpack_floats,
                      .dtype = SD_DTYPE_F32,
                      .kind = SD_GEMM_B_PACKED,
                      .ld = j->tk,
                      .packed_k = j->d};
    sd_gemm_c_t sc = {.data = s, .ldc = keys, .group_cols = keys, .alpha = j->scale};
    sd_gemm_serial(kern, rows, keys, j->d, &qa, &kb, &sc, scratch);

    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * keys;
        int64_t valid = j->causal ? q0 + r + 1 : keys;
        float inv = 1.0f / kern->exp_sum(row, valid, kern->max(row, valid));
        for (int64_t i = 0; i < valid; i++) row[i] *= inv;
        if (valid < keys) memset(row + valid, 0, (size_t)(keys - valid) * sizeof(float));
    }

    sd_gemm_a_t pa = {.data = s, .dtype = SD_DTYPE_F32, .ld = keys};
    sd_gemm_b_t vb = {.data = j->vpack + bh * j->vpack_floats,
                      .dtype = SD_DTYPE_F32,
                      .kind = SD_GEMM_B_PACKED,
                      .ld = j->d,
                      .packed_k = j->tk};
    sd_gemm_c_t oc = {.data = oh, .ldc = j->c, .group_cols = j->d, .alpha = 1.0f};
    sd_gemm_serial(kern, rows, j->d, keys, &pa, &vb, &oc, scratch);
}

sd_status_t sd_cpu_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                             const sd_tensor_t *k, const sd_tensor_t *v, int32_t heads, bool causal,
                             float scale) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    attn_job_t job = {
        .cpu = cpu,
        .q = q->data,
        .k = k->data,
        .v = v->data,
        .out = out->data,
        .tq = q->shape[1],
        .tk = k->shape[1],
        .c = q->shape[2],
        .d = q->shape[2] / heads,
        .heads = heads,
        .causal = causal,
        .scale = scale,
        .gemm_floats = sd_gemm_scratch_floats(cpu->kern),
    };
    const int64_t bh = q->shape[0] * heads;
    job.qblocks = (job.tq + QB - 1) / QB;
    /* Keep every buffer 64-byte aligned. */
    job.gemm_floats = (job.gemm_floats + 15) / 16 * 16;
    job.kpack_floats = (sd_gemm_packed_floats(cpu->kern, job.d, job.tk) + 15) / 16 * 16;
    job.vpack_floats = (sd_gemm_packed_floats(cpu->kern, job.tk, job.d) + 15) / 16 * 16;
    if (!sd_cpu_scratch_reserve(cpu, job.gemm_floats + (size_t)QB * (size_t)job.tk))
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "attention: cannot allocate score rows");
    size_t pack_bytes = (size_t)bh * (job.kpack_floats + job.vpack_floats) * sizeof(float);
    float *packs = sd_arena_alloc(&ctx->arena, pack_bytes);
    if (packs == NULL)
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "attention: cannot allocate %zu bytes",
                       pack_bytes);
    job.kpack = packs;
    job.vpack = packs + (size_t)bh * job.kpack_floats;
    sd_pool_run(cpu->pool, 2 * bh, pack_task, &job);
    sd_pool_run(cpu->pool, bh * job.qblocks, attn_task, &job);
    sd_arena_free(&ctx->arena, packs);
    return SD_STATUS_OK;
}
