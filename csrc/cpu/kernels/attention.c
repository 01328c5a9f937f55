/*
 * attention.c - multi-head scaled dot-product attention on the CPU, flash-style.
 *
 * q: (B, Tq, C), k, v: (B, Tk, C), out: (B, Tq, C), f32; H heads of d = C/H channels,
 * head h being channels [h*d, (h+1)*d). ref: torch.nn.functional.scaled_dot_product_attention
 * (diffusers' AttnProcessor2_0); causal as CLIP's mask (query i sees keys 0..i).
 *
 * Everything is computed transposed, with queries as GEMM columns:
 *   S^T = scale * K Q^T     (keys x queries) for a block of KB keys and QB queries,
 *   P^T = softmax over each column (online across key blocks, flash-attention style),
 *   O^T += V^T P^T          (d x queries), rescaled when a column's running max grows.
 * The first GEMM writes S^T straight into the panel layout the second one reads as B, the
 * softmax runs down columns with queries in vector lanes, and O^T has d rows (40 for SD
 * 1.x) where O would have d columns padded to the GEMM's panel width. No Tq x Tk matrix is
 * ever formed; a task's blocks stay in L2. K and V^T are packed once per head and key
 * block, shared by all query blocks.
 */
#include "../cpu.h"

#include <math.h>
#include <string.h>

#define QB 128 /* queries per task: a whole number of B panels for every kernel table */

typedef struct {
    sd_cpu_backend_t *cpu;
    const float *q, *k, *v;
    float *out;
    int64_t tq, tk, c, d, heads, qblocks;
    int64_t kb, kblocks; /* keys per block: a multiple of MR that fits one KC block */
    bool causal;
    float scale;
    float *kpack, *vpack;         /* per (batch, head): every key block's K and V^T panels */
    size_t kblock_f, vblock_f;    /* floats per key block */
    size_t gemm_f, s_f, o_f, q_f; /* per-thread scratch layout */
} attn_job_t;

static int64_t keys_in(const attn_job_t *j, int64_t kbi) {
    return SD_MIN(j->kb, j->tk - kbi * j->kb);
}

/* Phase 1: one task per (batch, head, key block) packs K (rows = keys) and V^T; in bf16
 * as pair panels, narrowed here once rather than by each query block's GEMMs. */
static void pack_task(void *arg, int64_t task, int thread) {
    const attn_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int64_t kbi = task % j->kblocks, bh = task / j->kblocks;
    const int64_t b = bh / j->heads, h = bh % j->heads, k0 = kbi * j->kb, n = keys_in(j, kbi);
    const size_t at = (size_t)(bh * j->kblocks + kbi);
    const int64_t row = (b * j->tk + k0) * j->c + h * j->d;
    float *kdst = j->kpack + at * j->kblock_f, *vdst = j->vpack + at * j->vblock_f;
    float *tmp = j->cpu->scratch[thread]; /* bf16: the fp32 panels on their way */
    sd_gemm_a_t ka = {.data = j->k + row, .dtype = SD_DTYPE_F32, .ld = j->c};
    sd_gemm_pack_a(kern, &ka, n, j->d, kern->bf16 ? tmp : kdst);
    if (kern->bf16) sd_gemm_pair_packed_a(kern, tmp, n, j->d, (uint32_t *)kdst);
    sd_gemm_a_t va = {.data = j->v + row, .dtype = SD_DTYPE_F32, .col_major = true, .ld = j->c};
    sd_gemm_pack_a(kern, &va, j->d, n, kern->bf16 ? tmp : vdst);
    if (kern->bf16) sd_gemm_pair_packed_a(kern, tmp, j->d, n, (uint32_t *)vdst);
}

/* Phase 2: one task per (batch, head, block of QB queries). */
static void attn_task(void *arg, int64_t task, int thread) {
    const attn_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int nr = kern->nr;
    const int64_t qb = task % j->qblocks, bh = task / j->qblocks, b = bh / j->heads,
                  h = bh % j->heads;
    const int64_t q0 = qb * QB, nq = SD_MIN((int64_t)QB, j->tq - q0);
    const int64_t panels = (nq + nr - 1) / nr;
    float *scratch = j->cpu->scratch[thread];
    float *s = scratch + j->gemm_f; /* S^T / P^T: panels of (kb x nr) */
    float *o = s + j->s_f;          /* O^T: (d x QB) */
    float *m = o + j->o_f, *l = m + QB, *alpha = l + QB;
    float *qpack = alpha + QB;                       /* Q^T packed once, for every key block */
    uint32_t *qpairs = (uint32_t *)(qpack + j->q_f); /* bf16: the same as pair panels */

    for (int64_t c = 0; c < QB; c++) m[c] = -INFINITY, l[c] = 0.0f;
    memset(o, 0, (size_t)(j->d * QB) * sizeof(float));
    /* Columns past nq in the last panel are never read back; keep them finite. */
    if (nq % nr) memset(s, 0, j->s_f * sizeof(float));

    /* Q^T as B: B[dd][q] = Q[q][dd], packed once here rather than by every key block's GEMM. */
    const sd_gemm_b_t q_nk = {.data = j->q + (b * j->tq + q0) * j->c + h * j->d,
                              .dtype = SD_DTYPE_F32,
                              .kind = SD_GEMM_B_NK,
                              .ld = j->c};
    sd_gemm_pack_b(kern, &q_nk, j->d, nq, qpack);
    sd_gemm_b_t qt = {
        .data = qpack, .dtype = SD_DTYPE_F32, .kind = SD_GEMM_B_PACKED, .ld = nq, .packed_k = j->d};
    if (kern->bf16) {
        sd_gemm_pair_packed_b(kern, qpack, j->d, nq, qpairs);
        qt.data = qpairs;
        qt.bf16_pairs = true;
    }
    /* Causal: keys past the block's last query are never visible. */
    const int64_t last_key = j->causal ? SD_MIN(j->tk, q0 + nq) : j->tk;
    for (int64_t kbi = 0; kbi * j->kb < last_key; kbi++) {
        const int64_t k0 = kbi * j->kb, n = keys_in(j, kbi);
        const size_t at = (size_t)(bh * j->kblocks + kbi);
        sd_packed_weight_t kp = {SD_DTYPE_F32,
                                 false,
                                 n,
                                 j->d,
                                 (n + kern->mr - 1) / kern->mr * kern->mr,
                                 j->kpack + at * j->kblock_f,
                                 kern->bf16 != NULL};
        sd_gemm_a_t ka = {.packed = &kp};
        /* S^T: row i (key), column c (query) at panel c / nr, i * nr + c % nr. */
        sd_gemm_c_t sc = {
            .data = s, .ldc = nr, .group_cols = nr, .group_stride = n * nr, .alpha = j->scale};
        sd_gemm_serial(kern, n, nq, j->d, &ka, &qt, &sc, scratch);

        for (int64_t p = 0; p < panels; p++) {
            kern->softmax_panel(s + p * n * nr, n, m + p * nr, l + p * nr, alpha + p * nr,
                                j->causal, q0 + p * nr - k0);
        }
        /* Earlier key blocks were weighted with a smaller max: rescale O^T's columns. */
        if (kbi > 0)
            for (int64_t dd = 0; dd < j->d; dd++)
                for (int64_t c = 0; c < nq; c++) o[dd * QB + c] *= alpha[c];

        sd_packed_weight_t vp = {SD_DTYPE_F32,
                                 false,
                                 j->d,
                                 n,
                                 (j->d + kern->mr - 1) / kern->mr * kern->mr,
                                 j->vpack + at * j->vblock_f,
                                 kern->bf16 != NULL};
        sd_gemm_a_t va = {.packed = &vp};
        sd_gemm_b_t pt = {
            .data = s, .dtype = SD_DTYPE_F32, .kind = SD_GEMM_B_PACKED, .ld = nq, .packed_k = n};
        sd_gemm_c_t oc = {.data = o, .ldc = QB, .group_cols = QB, .alpha = 1.0f, .residual = o};
        sd_gemm_serial(kern, j->d, nq, n, &va, &pt, &oc, scratch);
    }

    float *out = j->out + (b * j->tq + q0) * j->c + h * j->d;
    for (int64_t c = 0; c < nq; c++) {
        const float inv = 1.0f / l[c];
        for (int64_t dd = 0; dd < j->d; dd++) out[c * j->c + dd] = o[dd * QB + c] * inv;
    }
}

sd_status_t sd_cpu_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                             const sd_tensor_t *k, const sd_tensor_t *v, int32_t heads, bool causal,
                             float scale) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    const sd_cpu_kernels_t *kern = cpu->kern;
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
    };
    const int64_t bh = q->shape[0] * heads;
    job.qblocks = (job.tq + QB - 1) / QB;
    job.kb = kern->kc / kern->mr * kern->mr;
    job.kblocks = (job.tk + job.kb - 1) / job.kb;
    /* Keep every buffer 64-byte aligned (16 floats). */
#define ALIGN16(n) (((size_t)(n) + 15) / 16 * 16)
    job.kblock_f = ALIGN16(sd_gemm_packed_a_floats(kern, job.kb, job.d));
    job.vblock_f = ALIGN16(sd_gemm_packed_a_floats(kern, job.d, job.kb));
    job.gemm_f = ALIGN16(sd_gemm_scratch_floats(kern));
    job.s_f = ALIGN16(job.kb * QB);
    job.o_f = ALIGN16(job.d * QB);
    job.q_f = ALIGN16(sd_gemm_packed_floats(kern, job.d, QB));
    const size_t q2_f = kern->bf16 ? sd_gemm_pairs_b_lanes(kern, job.d, QB) : 0;
#undef ALIGN16
    /* Phase 1 narrows through the start of the same scratch: one key block's panels. */
    SD_ASSERT(job.gemm_f >= SD_MAX(job.kblock_f, job.vblock_f));
    if (!sd_cpu_scratch_reserve(cpu, job.gemm_f + job.s_f + job.o_f + 3 * QB + job.q_f + q2_f))
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "attention: cannot allocate work buffers");
    size_t pack_bytes = (size_t)(bh * job.kblocks) * (job.kblock_f + job.vblock_f) * sizeof(float);
    float *packs = sd_arena_alloc(&ctx->arena, pack_bytes);
    if (packs == NULL)
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "attention: cannot allocate %zu bytes",
                       pack_bytes);
    job.kpack = packs;
    job.vpack = packs + (size_t)(bh * job.kblocks) * job.kblock_f;
    sd_pool_run(cpu->pool, bh * job.kblocks, pack_task, &job);
    sd_pool_run(cpu->pool, bh * job.qblocks, attn_task, &job);
    sd_arena_free(&ctx->arena, packs);
    return SD_STATUS_OK;
}
