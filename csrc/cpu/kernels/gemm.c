/*
 * gemm.c - the blocked GEMM driver (Goto/BLIS loop nest) over the per-ISA microkernel and
 * packers, and its split over threads.
 *
 * Loop nest per thread: jc (NC columns) > pc (KC depth; B block packed) > ic (MC rows;
 * A block packed) > jr (NR) > ir (MR) microtiles, so a packed B micro-panel stays in L1
 * while A micro-panels stream from L2.
 */
#include "../cpu.h"

#include <string.h>

size_t sd_gemm_scratch_floats(const sd_cpu_kernels_t *kern) {
    size_t floats = (size_t)kern->kc * (size_t)kern->nc + (size_t)kern->mc * (size_t)kern->kc +
                    (size_t)kern->mr * (size_t)kern->nr;
    /* bf16: the B and A blocks again as pair panels, one 32-bit lane per two depths. */
    if (kern->bf16) floats += (size_t)(kern->kc + 1) / 2 * (size_t)(kern->nc + kern->mc);
    return floats;
}

static int64_t padded_cols(const sd_cpu_kernels_t *kern, int64_t n) {
    return (n + kern->nr - 1) / kern->nr * kern->nr;
}

size_t sd_gemm_packed_floats(const sd_cpu_kernels_t *kern, int64_t k, int64_t n) {
    return (size_t)k * (size_t)padded_cols(kern, n);
}

/* Layout: for each KC block starting at k0, its panels of all columns, i.e. the packed
 * block (k0, j0) starts at k0 * padded(N) + j0 * kc. */
void sd_gemm_pack_b(const sd_cpu_kernels_t *kern, const sd_gemm_b_t *b, int64_t k, int64_t n,
                    float *dst) {
    const int64_t npad = padded_cols(kern, n);
    for (int64_t pc = 0; pc < k; pc += kern->kc) {
        int64_t kc = SD_MIN((int64_t)kern->kc, k - pc);
        kern->pack_b(b, n, pc, 0, kc, n, dst + pc * npad);
    }
}

static int64_t padded_rows(const sd_cpu_kernels_t *kern, int64_t m) {
    return (m + kern->mr - 1) / kern->mr * kern->mr;
}

/* Converts n packed elements of dtype to float32 (dst may not alias src). */
static void stage(const sd_cpu_kernels_t *kern, float *dst, const void *src, int32_t dtype,
                  int64_t offset, int64_t n) {
    if (dtype == SD_DTYPE_F16)
        kern->f16_to_f32(dst, (const uint16_t *)src + offset, n);
    else if (dtype == SD_DTYPE_F32)
        memcpy(dst, (const float *)src + offset, (size_t)n * sizeof(float));
    else
        sd_convert_to_f32(dst, (const uint16_t *)src + offset, dtype, n);
}

/* One task per panel: the kernels' packers (which transpose in registers) produce the
 * panel as float32, kept as such in a float32 pack or narrowed back to the pack's dtype,
 * the source's (exact, as the values came from it). */
typedef struct {
    const sd_cpu_kernels_t *kern;
    const void *src;
    void *dst;
    int32_t dtype, pack_dtype; /* the source's, the pack's: the same, or F32 */
    bool as_b;
    int64_t rows, k, width, padded;
} pack_weight_job_t;

static void pack_weight_task(void *arg, int64_t panel, int thread) {
    (void)thread;
    const pack_weight_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->kern;
    const int64_t r0 = panel * j->width, n = SD_MIN(j->width, j->rows - r0);
    float tmp[64 * 256]; /* width x KC of every kernel table */
    SD_ASSERT(j->width * kern->kc <= 64 * 256);
    for (int64_t pc = 0; pc < j->k; pc += kern->kc) {
        const int64_t kc = SD_MIN((int64_t)kern->kc, j->k - pc);
        if (j->as_b) {
            sd_gemm_b_t b = {.data = j->src, .dtype = j->dtype, .kind = SD_GEMM_B_NK, .ld = j->k};
            kern->pack_b(&b, j->rows, pc, r0, kc, n, tmp);
        } else {
            sd_gemm_a_t a = {.data = j->src, .dtype = j->dtype, .ld = j->k};
            kern->pack_a(&a, j->rows, r0, pc, n, kc, tmp);
        }
        const int64_t at = pc * j->padded + r0 * kc, count = j->width * kc;
        if (j->pack_dtype == SD_DTYPE_F32)
            memcpy((float *)j->dst + at, tmp, (size_t)count * sizeof(float));
        else
            kern->narrow((uint16_t *)j->dst + at, tmp, j->pack_dtype, count);
    }
}

sd_packed_weight_t *sd_packed_weight_new(sd_pool_t *pool, const sd_cpu_kernels_t *kern,
                                         const void *w, int32_t dtype, int64_t rows, int64_t k,
                                         bool as_b) {
    const int64_t width = as_b ? kern->nr : kern->mr;
    const int64_t padded = (rows + width - 1) / width * width;
    sd_packed_weight_t *p = malloc(sizeof *p);
    const size_t bytes = (size_t)(padded * k) * sd_dtype_size(dtype);
    void *data = sd_host_map(bytes);
    if (p == NULL || data == NULL) {
        free(p), sd_host_unmap(data, bytes);
        return NULL;
    }
    *p = (sd_packed_weight_t){dtype, as_b, rows, k, padded, data, false};
    pack_weight_job_t job = {kern, w, data, dtype, dtype, as_b, rows, k, width, padded};
    sd_pool_run(pool, padded / width, pack_weight_task, &job);
    return p;
}

bool sd_packed_weight_repack(sd_pool_t *pool, const sd_cpu_kernels_t *kern, sd_packed_weight_t *p,
                             const void *w, int32_t dtype, int64_t rows, int64_t k, bool as_b) {
    if (p == NULL || (p->dtype != dtype && p->dtype != SD_DTYPE_F32) || p->rows != rows ||
        p->k != k || p->as_b != as_b)
        return false;
    const int64_t width = as_b ? kern->nr : kern->mr;
    pack_weight_job_t job = {kern, w, p->data, dtype, p->dtype, as_b, rows, k, width, p->padded};
    sd_pool_run(pool, p->padded / width, pack_weight_task, &job);
    return true;
}

/* One task per B panel of the merged weight: the panel of the base, packed in place
 * (converted to float32), then up·down added to it by the microkernel (C += A·B with A the
 * rows of down^T at the panel's depths, B the panel's rows of up as a column panel). */
typedef struct {
    const sd_cpu_kernels_t *kern;
    const void *base;
    int32_t dtype;
    float *dst;
    int64_t rows, k, padded, rank;
    const float *down_a; /* per KC block of depths: down^T's rows packed as A panels */
    int64_t a_block;     /* floats of one such block: padded KC rows x rank */
    const float *up_b;   /* up as B panels over the rank (sd_gemm_pack_b's layout) */
} merge_job_t;

static void merge_task(void *arg, int64_t panel, int thread) {
    (void)thread;
    const merge_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->kern;
    const int mr = kern->mr, nr = kern->nr;
    const int64_t r0 = panel * nr, n = SD_MIN((int64_t)nr, j->rows - r0);
    _Alignas(64) float edge[16 * 64]; /* one MR x NR tile */
    SD_ASSERT(mr * nr <= 16 * 64);
    const sd_tile_epilogue_t add = {.alpha = 1.0f, .accumulate = true};
    const sd_tile_epilogue_t put = {.alpha = 1.0f};
    sd_gemm_b_t b = {.data = j->base, .dtype = j->dtype, .kind = SD_GEMM_B_NK, .ld = j->k};
    for (int64_t pc = 0; pc < j->k; pc += kern->kc) {
        const int64_t kc = SD_MIN((int64_t)kern->kc, j->k - pc);
        /* The panel's block in place (64-byte aligned: whole NR-float rows from an aligned
         * start), as the microkernel's C tiles of row stride NR. */
        float *c = j->dst + pc * j->padded + r0 * kc;
        kern->pack_b(&b, j->rows, pc, r0, kc, n, c);
        const float *a_blk = j->down_a + pc / kern->kc * j->a_block;
        const int64_t kc_pad = (kc + mr - 1) / mr * mr;
        for (int64_t d0 = 0; d0 < j->rank; d0 += kern->kc) {
            const int64_t dc = SD_MIN((int64_t)kern->kc, j->rank - d0);
            const float *bp = j->up_b + d0 * j->padded + r0 * dc;
            for (int64_t i = 0; i < kc; i += mr) {
                const float *ap = a_blk + d0 * kc_pad + i * dc;
                if (i + mr <= kc) {
                    kern->ukernel(dc, ap, bp, c + i * nr, nr, &add);
                    continue;
                }
                kern->ukernel(dc, ap, bp, edge, nr, &put);
                for (int64_t r = 0; r < kc - i; r++)
                    for (int col = 0; col < nr; col++) c[(i + r) * nr + col] += edge[r * nr + col];
            }
        }
    }
}

bool sd_packed_weight_merge(sd_pool_t *pool, const sd_cpu_kernels_t *kern, sd_packed_weight_t *p,
                            const void *base, int32_t dtype, const float *up, const float *down,
                            int64_t rank) {
    SD_ASSERT(p->as_b && rank > 0);
    const int64_t k = p->k, kc_max = kern->kc, mr = kern->mr;
    const int64_t blocks = (k + kc_max - 1) / kc_max;
    const int64_t a_block = (kc_max + mr - 1) / mr * mr * rank;
    /* The microkernel reads panels (and writes tiles) with aligned vector loads. */
    float *down_a = sd_host_alloc_large((size_t)(blocks * a_block) * sizeof(float));
    float *up_b = sd_host_alloc_large(sd_gemm_packed_floats(kern, rank, p->rows) * sizeof(float));
    if (down_a == NULL || up_b == NULL) {
        free(down_a), free(up_b);
        return false;
    }
    /* An F16 / BF16 pack grows into F32 where its memory can (the pages it has are kept:
     * only the new half is fresh memory), else moves to new memory. */
    float *dst = p->data;
    if (p->dtype != SD_DTYPE_F32) {
        const size_t bytes = (size_t)(p->padded * k) * sizeof(float);
        dst = sd_host_remap(p->data, sd_packed_weight_bytes(p), bytes);
        if (dst != NULL) {
            p->data = NULL; /* moved */
        } else if ((dst = sd_host_map(bytes)) == NULL) {
            free(down_a), free(up_b);
            return false;
        }
    }
    /* down^T (k x rank) by blocks of KC rows, each in A panels of its own (a block's
     * depths, the rows of a B panel's KC block, start a fresh run of MR-row panels). */
    const sd_gemm_a_t a = {.data = down, .dtype = SD_DTYPE_F32, .col_major = true, .ld = k};
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t i0 = blk * kc_max, rows = SD_MIN(kc_max, k - i0);
        const int64_t rows_pad = (rows + mr - 1) / mr * mr;
        for (int64_t d0 = 0; d0 < rank; d0 += kc_max)
            kern->pack_a(&a, k, i0, d0, rows, SD_MIN(kc_max, rank - d0),
                         down_a + blk * a_block + d0 * rows_pad);
    }
    const sd_gemm_b_t ub = {.data = up, .dtype = SD_DTYPE_F32, .kind = SD_GEMM_B_NK, .ld = rank};
    sd_gemm_pack_b(kern, &ub, rank, p->rows, up_b);
    merge_job_t job = {kern, base, dtype, dst, p->rows, k, p->padded, rank, down_a, a_block, up_b};
    sd_pool_run(pool, p->padded / kern->nr, merge_task, &job);
    free(down_a);
    free(up_b);
    if (dst != p->data) {
        sd_host_unmap(p->data, sd_packed_weight_bytes(p));
        p->data = dst;
        p->dtype = SD_DTYPE_F32;
    }
    return true;
}

/* One block of rows of an unpacked merged weight: the base's rows converted in place,
 * then the rows' up · down added by the GEMM (the block as its own residual). */
typedef struct {
    sd_cpu_backend_t *cpu;
    float *dst;
    const void *base;
    int32_t dtype;
    const float *up, *down;
    int64_t rows, cols, rank, block;
} merge_rows_job_t;

static void merge_rows_task(void *arg, int64_t task, int thread) {
    const merge_rows_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int64_t r0 = task * j->block, n = SD_MIN(j->block, j->rows - r0);
    float *d = j->dst + r0 * j->cols;
    stage(kern, d, j->base, j->dtype, r0 * j->cols, n * j->cols);
    const sd_gemm_a_t a = {.data = j->up + r0 * j->rank, .dtype = SD_DTYPE_F32, .ld = j->rank};
    const sd_gemm_b_t b = {
        .data = j->down, .dtype = SD_DTYPE_F32, .kind = SD_GEMM_B_KN, .ld = j->cols};
    const sd_gemm_c_t c = {
        .data = d, .ldc = j->cols, .group_cols = j->cols, .alpha = 1.0f, .residual = d};
    sd_gemm_serial(kern, n, j->cols, j->rank, &a, &b, &c,
                   sd_cpu_scratch(j->cpu, thread, sd_gemm_scratch_floats(kern)));
}

bool sd_weight_merge_rows(sd_cpu_backend_t *cpu, float *dst, const void *base, int32_t dtype,
                          int64_t rows, int64_t cols, const float *up, const float *down,
                          int64_t rank) {
    if (!sd_cpu_scratch_reserve(cpu, sd_gemm_scratch_floats(cpu->kern))) return false;
    /* A few blocks per thread: each packs all of down again, the smaller operand. */
    const int64_t tasks = SD_MIN(rows, 4 * (int64_t)sd_pool_threads(cpu->pool));
    const int64_t block = (rows + tasks - 1) / tasks;
    merge_rows_job_t job = {cpu, dst, base, dtype, up, down, rows, cols, rank, block};
    sd_pool_run(cpu->pool, (rows + block - 1) / block, merge_rows_task, &job);
    return true;
}

void sd_packed_weight_free(sd_packed_weight_t *p) {
    if (p == NULL) return;
    sd_host_unmap(p->data, sd_packed_weight_bytes(p));
    free(p);
}

size_t sd_packed_weight_bytes(const sd_packed_weight_t *p) {
    return p ? (size_t)(p->k * p->padded) * sd_dtype_size(p->dtype) : 0;
}

size_t sd_gemm_packed_a_floats(const sd_cpu_kernels_t *kern, int64_t m, int64_t k) {
    return (size_t)k * (size_t)padded_rows(kern, m);
}

void sd_gemm_pack_a(const sd_cpu_kernels_t *kern, const sd_gemm_a_t *a, int64_t m, int64_t k,
                    float *dst) {
    const int64_t mpad = padded_rows(kern, m);
    for (int64_t pc = 0; pc < k; pc += kern->kc)
        kern->pack_a(a, m, 0, pc, m, SD_MIN((int64_t)kern->kc, k - pc), dst + pc * mpad);
}

size_t sd_gemm_pairs_a_lanes(const sd_cpu_kernels_t *kern, int64_t m, int64_t k) {
    return (size_t)padded_rows(kern, m) * (size_t)((k + 1) / 2);
}

/* Narrows an operand packed in panels of `width` (padded panel lanes in all, depth k) into
 * pair panels, a KC block at a time. */
static void pair_packed(const sd_cpu_kernels_t *kern, const float *src, int64_t k, int64_t padded,
                        int width, uint32_t *dst) {
    SD_ASSERT(kern->bf16 != NULL && kern->kc % 2 == 0);
    for (int64_t pc = 0; pc < k; pc += kern->kc) {
        const int64_t kc = SD_MIN((int64_t)kern->kc, k - pc);
        kern->bf16->pair_panels(dst + pc / 2 * padded, src + pc * padded, width, kc, padded / width,
                                width * kc);
    }
}

void sd_gemm_pair_packed_a(const sd_cpu_kernels_t *kern, const float *src, int64_t m, int64_t k,
                           uint32_t *dst) {
    pair_packed(kern, src, k, padded_rows(kern, m), kern->mr, dst);
}

size_t sd_gemm_pairs_b_lanes(const sd_cpu_kernels_t *kern, int64_t k, int64_t n) {
    return (size_t)padded_cols(kern, n) * (size_t)((k + 1) / 2);
}

void sd_gemm_pair_packed_b(const sd_cpu_kernels_t *kern, const float *src, int64_t k, int64_t n,
                           uint32_t *dst) {
    pair_packed(kern, src, k, padded_cols(kern, n), kern->nr, dst);
}

/* Offset of C[i][j] (and of the residual) for the column-group layout. */
static inline int64_t c_offset(const sd_gemm_c_t *c, int64_t i, int64_t j) {
    int64_t g = j / c->group_cols, jj = j - g * c->group_cols;
    return g * c->group_stride + i * c->ldc + jj;
}

/* Merges an edge microtile computed into `tile` (row stride nr) into C. */
static void merge_edge_tile(const sd_gemm_c_t *c, const float *tile, int nr, int64_t i, int64_t j,
                            int rows, int cols, bool accumulate) {
    for (int r = 0; r < rows; r++) {
        for (int col = 0; col < cols; col++) {
            int64_t off = c_offset(c, i + r, j + col);
            float v = c->alpha * tile[r * nr + col];
            if (accumulate) {
                c->data[off] += v;
                continue;
            }
            if (c->bias_row)
                v += c->bias_row[((j + col) / c->group_cols) * c->bias_row_group_stride + i + r];
            if (c->bias_col) v += c->bias_col[j + col];
            if (c->residual) v += c->residual[off];
            c->data[off] = v;
        }
    }
}

/* One microtile from the packed fp32 panels, or in bf16 from their pair forms. */
static inline void run_tile(const sd_cpu_kernels_t *kern, int64_t kc, const float *ap,
                            const float *bp, const uint32_t *ap2, const uint32_t *bp2, float *c,
                            int64_t ldc, const sd_tile_epilogue_t *ep) {
    if (kern->bf16)
        kern->bf16->ukernel((kc + 1) / 2, ap2, bp2, c, ldc, ep);
    else
        kern->ukernel(kc, ap, bp, c, ldc, ep);
}

/* The sub-problem rows [i_lo, i_hi) x columns [j_lo, j_hi) of the full GEMM. */
static void gemm_block(const sd_cpu_kernels_t *kern, int64_t m, int64_t n, int64_t k, int64_t i_lo,
                       int64_t i_hi, int64_t j_lo, int64_t j_hi, const sd_gemm_a_t *a,
                       const sd_gemm_b_t *b, const sd_gemm_c_t *c, float *scratch) {
    const int mr = kern->mr, nr = kern->nr;
    float *bpack = scratch;
    float *apack = bpack + (size_t)kern->kc * kern->nc;
    float *tile = apack + (size_t)kern->mc * kern->kc;
    const sd_cpu_bf16_kernels_t *bf16 = kern->bf16;
    /* bf16 only (the scratch holds them only then): the blocks as pair panels. */
    uint32_t *bpair = bf16 ? (uint32_t *)(tile + mr * nr) : NULL;
    uint32_t *apair = bf16 ? bpair + (size_t)(kern->kc + 1) / 2 * kern->nc : NULL;
    for (int64_t jc = j_lo; jc < j_hi; jc += kern->nc) {
        int64_t nc = SD_MIN((int64_t)kern->nc, j_hi - jc);
        for (int64_t pc = 0; pc < k; pc += kern->kc) {
            int64_t kc = SD_MIN((int64_t)kern->kc, k - pc);
            bool accumulate = pc > 0;
            /* Panels hold `panel_kc` rows: kc, or the depth B was packed with. */
            const float *bblock = bpack;
            const uint32_t *bblock2 = bpair;
            int64_t panel_kc = kc;
            int64_t panel_kp = (kc + 1) / 2; /* pair rows per B panel */
            if (b->kind == SD_GEMM_B_PACKED && b->bf16_pairs) {
                panel_kc = SD_MIN((int64_t)kern->kc, b->packed_k - pc);
                panel_kp = (panel_kc + 1) / 2;
                /* An odd depth's last pair holds one depth past it. */
                SD_ASSERT(bf16 != NULL && pc % 2 == 0 && (kc % 2 == 0 || kc == panel_kc));
                bblock2 =
                    (const uint32_t *)b->data + pc / 2 * padded_cols(kern, b->ld) + jc * panel_kp;
            } else if (b->kind == SD_GEMM_B_PACKED) {
                panel_kc = SD_MIN((int64_t)kern->kc, b->packed_k - pc);
                int64_t at = pc * padded_cols(kern, b->ld) + jc * panel_kc;
                if (b->dtype == SD_DTYPE_F32)
                    bblock = (const float *)b->data + at;
                else /* stage this block's panels as float32 */
                    stage(kern, bpack, b->data, b->dtype, at, padded_cols(kern, nc) * panel_kc);
            } else {
                kern->pack_b(b, n, pc, jc, kc, nc, bpack);
            }
            const int64_t kp = (kc + 1) / 2;
            if (bf16 && bblock2 == bpair)
                bf16->pair_panels(bpair, bblock, nr, kc, (nc + nr - 1) / nr, panel_kc * nr);
            for (int64_t ic = i_lo; ic < i_hi; ic += kern->mc) {
                int64_t mc = SD_MIN((int64_t)kern->mc, i_hi - ic);
                const float *ablock = apack;
                const uint32_t *ablock2 = apair;
                if (a->packed != NULL && a->packed->bf16_pairs) {
                    SD_ASSERT(bf16 != NULL && pc % 2 == 0);
                    ablock2 =
                        (const uint32_t *)a->packed->data + pc / 2 * a->packed->padded + ic * kp;
                } else if (a->packed != NULL) {
                    const sd_packed_weight_t *pw = a->packed;
                    int64_t at = pc * pw->padded + ic * kc;
                    if (pw->dtype == SD_DTYPE_F32)
                        ablock = (const float *)pw->data + at;
                    else
                        stage(kern, apack, pw->data, pw->dtype, at, padded_rows(kern, mc) * kc);
                } else {
                    kern->pack_a(a, m, ic, pc, mc, kc, apack);
                }
                if (bf16 && ablock2 == apair)
                    bf16->pair_panels(apair, ablock, mr, kc, (mc + mr - 1) / mr, mr * kc);
                for (int64_t jr = 0; jr < nc; jr += nr) {
                    int64_t j = jc + jr;
                    int cols = (int)SD_MIN((int64_t)nr, jc + nc - j);
                    int64_t g = j / c->group_cols;
                    bool same_group = (j + cols - 1) / c->group_cols == g;
                    const float *bp = bblock + jr * panel_kc;
                    const uint32_t *bp2 = bf16 ? bblock2 + jr * panel_kp : NULL;
                    for (int64_t ir = 0; ir < mc; ir += mr) {
                        int64_t i = ic + ir;
                        int rows = (int)SD_MIN((int64_t)mr, ic + mc - i);
                        const float *ap = ablock + ir * kc;
                        const uint32_t *ap2 = bf16 ? ablock2 + ir * kp : NULL;
                        if (rows == mr && cols == nr && same_group) {
                            int64_t off = c_offset(c, i, j);
                            sd_tile_epilogue_t ep = {
                                .alpha = c->alpha,
                                .accumulate = accumulate,
                                .bias_r = c->bias_row
                                              ? c->bias_row + g * c->bias_row_group_stride + i
                                              : NULL,
                                .bias_c = c->bias_col ? c->bias_col + j : NULL,
                                .res = c->residual ? c->residual + off : NULL,
                            };
                            run_tile(kern, kc, ap, bp, ap2, bp2, c->data + off, c->ldc, &ep);
                        } else {
                            sd_tile_epilogue_t ep = {.alpha = 1.0f};
                            run_tile(kern, kc, ap, bp, ap2, bp2, tile, nr, &ep);
                            merge_edge_tile(c, tile, nr, i, j, rows, cols, accumulate);
                        }
                    }
                }
            }
        }
    }
}

void sd_gemm_serial(const sd_cpu_kernels_t *kern, int64_t m, int64_t n, int64_t k,
                    const sd_gemm_a_t *a, const sd_gemm_b_t *b, const sd_gemm_c_t *c,
                    float *scratch) {
    gemm_block(kern, m, n, k, 0, m, 0, n, a, b, c, scratch);
}

void sd_gemm_serial_cols(const sd_cpu_kernels_t *kern, int64_t m, int64_t n, int64_t k, int64_t j0,
                         int64_t j1, const sd_gemm_a_t *a, const sd_gemm_b_t *b,
                         const sd_gemm_c_t *c, float *scratch) {
    gemm_block(kern, m, n, k, 0, m, j0, j1, a, b, c, scratch);
}

typedef struct {
    sd_cpu_backend_t *cpu;
    int64_t m, n, k;
    int64_t parts_m, parts_n;
    const sd_gemm_a_t *a;
    const sd_gemm_b_t *b;
    const sd_gemm_c_t *c;
} gemm_job_t;

static void gemm_task(void *arg, int64_t task, int thread) {
    const gemm_job_t *job = arg;
    const int mr = job->cpu->kern->mr, nr = job->cpu->kern->nr;
    int64_t pm = task / job->parts_n, pn = task % job->parts_n;
    /* Split in whole microtiles so only the true edges take the slow path. */
    int64_t tiles_m = (job->m + mr - 1) / mr, tiles_n = (job->n + nr - 1) / nr;
    int64_t tm0, tm1, tn0, tn1;
    sd_split_range(tiles_m, job->parts_m, pm, &tm0, &tm1);
    sd_split_range(tiles_n, job->parts_n, pn, &tn0, &tn1);
    int64_t i0 = tm0 * mr, i1 = SD_MIN(tm1 * mr, job->m);
    int64_t j0 = tn0 * nr, j1 = SD_MIN(tn1 * nr, job->n);
    if (i0 >= i1 || j0 >= j1) return;
    gemm_block(job->cpu->kern, job->m, job->n, job->k, i0, i1, j0, j1, job->a, job->b, job->c,
               job->cpu->scratch[thread]);
}

/* B packed once for every part of a GEMM split by rows: one task per KC block and group of
 * PACK_PANELS panels. */
#define PACK_PANELS 4
/* Up to this size; a larger B is packed by each part, a block at a time. */
#define SHARED_B_BYTES ((size_t)32 << 20)

typedef struct {
    const sd_cpu_kernels_t *kern;
    const sd_gemm_b_t *b;
    int64_t n, k, groups;
    float *dst;
} pack_job_t;

static void pack_b_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const pack_job_t *pj = arg;
    const sd_cpu_kernels_t *kern = pj->kern;
    const int64_t pc = task / pj->groups * kern->kc,
                  j0 = task % pj->groups * PACK_PANELS * kern->nr;
    const int64_t kc = SD_MIN((int64_t)kern->kc, pj->k - pc);
    const int64_t nc = SD_MIN((int64_t)PACK_PANELS * kern->nr, pj->n - j0);
    kern->pack_b(pj->b, pj->n, pc, j0, kc, nc, pj->dst + pc * padded_cols(kern, pj->n) + j0 * kc);
}

sd_status_t sd_gemm(sd_ctx_t *ctx, int64_t m, int64_t n, int64_t k, const sd_gemm_a_t *a,
                    const sd_gemm_b_t *b, const sd_gemm_c_t *c) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    const sd_cpu_kernels_t *kern = cpu->kern;
    if (!sd_cpu_scratch_reserve(cpu, sd_gemm_scratch_floats(kern)))
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "gemm: cannot allocate pack buffers");
    int64_t threads = sd_pool_threads(cpu->pool);
    int64_t tiles_m = (m + kern->mr - 1) / kern->mr, tiles_n = (n + kern->nr - 1) / kern->nr;
    /* Each part packs its own rows of A and columns of B, so the operand that is not split
     * is packed once per part: split the larger dimension (counting elements, not tiles)
     * so the redundant packing is the smaller operand. */
    gemm_job_t job = {cpu, m, n, k, 1, threads, a, b, c};
    if (m > n) {
        job.parts_m = threads;
        job.parts_n = 1;
    }
    job.parts_m = SD_MIN(job.parts_m, tiles_m);
    job.parts_n = SD_MIN(job.parts_n, tiles_n);
    /* Split by rows, every part would pack all of B (a direct conv's im2col: the weights
     * have more rows than the image at the UNet's deep levels have pixels): packed once,
     * by all threads, where it is small enough to keep whole. */
    sd_gemm_b_t shared;
    float *packed = NULL;
    const size_t packed_floats = sd_gemm_packed_floats(kern, k, n);
    if (job.parts_m > 1 && job.parts_n == 1 && b->kind != SD_GEMM_B_PACKED &&
        packed_floats * sizeof(float) <= SHARED_B_BYTES &&
        (packed = sd_arena_alloc(&ctx->arena, packed_floats * sizeof(float))) != NULL) {
        pack_job_t pj = {kern, b, n, k, (tiles_n + PACK_PANELS - 1) / PACK_PANELS, packed};
        sd_pool_run(cpu->pool, (k + kern->kc - 1) / kern->kc * pj.groups, pack_b_task, &pj);
        shared = (sd_gemm_b_t){.data = packed,
                               .dtype = SD_DTYPE_F32,
                               .kind = SD_GEMM_B_PACKED,
                               .ld = n,
                               .packed_k = k};
        job.b = &shared;
    }
    sd_pool_run(cpu->pool, job.parts_m * job.parts_n, gemm_task, &job);
    sd_arena_free(&ctx->arena, packed);
    return SD_STATUS_OK;
}
