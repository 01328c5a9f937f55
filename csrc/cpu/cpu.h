/*
 * cpu.h - the CPU backend: thread pool, per-ISA kernel table, op entry points.
 */
#ifndef SD_CPU_H
#define SD_CPU_H

#include "sd-internal.h"

#include <pthread.h>
#include <stdatomic.h>

/* ---------------------------------------------------------------------------------------
 * Thread pool: the calling thread plus n-1 workers run the tasks of one parallel-for.
 * Tasks are claimed dynamically. Not reentrant: a task must not start another run.
 * ------------------------------------------------------------------------------------- */

typedef void (*sd_task_fn)(void *arg, int64_t task, int thread);

typedef struct sd_pool sd_pool_t;

sd_pool_t *sd_pool_create(int n_threads); /* NULL on failure */
void sd_pool_destroy(sd_pool_t *pool);
int sd_pool_threads(const sd_pool_t *pool);
/* Runs fn(arg, task, thread) for task in [0, n_tasks); thread in [0, threads). Returns when
 * all are done. Denormals are flushed to zero while tasks run (and the caller's floating
 * point state is restored afterwards). */
void sd_pool_run(sd_pool_t *pool, int64_t n_tasks, sd_task_fn fn, void *arg);

/* ---------------------------------------------------------------------------------------
 * Per-ISA kernels. gemm-kernels.c is compiled once per instruction set (generic C,
 * AVX2+FMA+F16C, AVX-512) and the best one the CPU supports is chosen at run time.
 * ------------------------------------------------------------------------------------- */

/* A weight packed once at load in the layout the GEMM reads, in its file dtype (F16 and
 * BF16 are widened while a block is staged, which is a contiguous conversion instead of a
 * strided gather). For each KC block starting at k0, the panels of all rows (A: MR rows
 * interleaved per k) or columns (B: NR columns per k), i.e. block (k0, panel p) starts at
 * k0 * padded + p * width * kc. */
typedef struct sd_packed_weight {
    int32_t dtype;   /* F32, F16 or BF16 */
    bool as_b;       /* B panels of W^T (NR columns) rather than A panels (MR rows) */
    int64_t rows, k; /* W is rows x k */
    int64_t padded;  /* rows rounded up to whole panels */
    void *data;
    /* A panels already in the bf16 kernels' pair layout (sd_gemm_pair_packed_a; dtype is
     * then ignored), for a bf16 GEMM that would otherwise narrow them block by block. */
    bool bf16_pairs;
} sd_packed_weight_t;

/* How the GEMM reads A (M x K). */
typedef struct sd_gemm_a {
    const void *data;
    int32_t dtype;  /* F32, F16 or BF16 */
    bool col_major; /* false: A[i][k] = data[i*ld + k]; true: data[k*ld + i] */
    int64_t ld;
    const sd_packed_weight_t *packed; /* when set (A panels), used instead of data */
} sd_gemm_a_t;

enum {
    SD_GEMM_B_KN = 0,     /* B[k][j] = data[k*ld + j] */
    SD_GEMM_B_NK = 1,     /* B[k][j] = data[j*ld + k] (a weight matrix used as W^T) */
    SD_GEMM_B_IM2COL = 2, /* B[k][j]: k = (ci, ky, kx), j = (n, oy, ox) of a convolution */
    SD_GEMM_B_PACKED = 3, /* already packed by sd_gemm_pack_b, in dtype */
};

typedef struct sd_gemm_conv {
    int64_t cin, h, w, kh, kw, oh, ow;
    int32_t stride_h, stride_w, pad_top, pad_left;
    int64_t image_stride; /* elements between images */
} sd_gemm_conv_t;

/* How the GEMM reads B (K x N). */
typedef struct sd_gemm_b {
    const void *data;
    int32_t dtype;       /* F32, F16 or BF16 (F32 only for IM2COL and PACKED) */
    int32_t kind;        /* SD_GEMM_B_* */
    int64_t ld;          /* PACKED: the N it was packed with */
    int64_t packed_k;    /* PACKED: the K it was packed with; a GEMM may use a prefix of both */
    sd_gemm_conv_t conv; /* IM2COL only */
    /* PACKED with a bf16 table: the panels already in the pair layout (block (k0, panel p)
     * at k0/2 * padded + p * NR * ceil(kc/2); dtype then ignored), as Winograd's input
     * transform writes them. */
    bool bf16_pairs;
} sd_gemm_b_t;

/* Where C (M x N) goes and what is added to it. Columns come in groups of `group_cols`
 * (e.g. the pixels of one image): C[i][j] is at data + g*group_stride + i*ldc + jj with
 * g = j / group_cols, jj = j % group_cols. Then
 *   C[i][j] = alpha * sum_k A[i][k] B[k][j] + bias_row[g*bias_row_group_stride + i]
 *             + bias_col[j] + residual[same offset as C]
 * where absent terms are skipped. residual may equal data. */
typedef struct sd_gemm_c {
    float *data;
    int64_t ldc;
    int64_t group_cols, group_stride;
    float alpha;
    const float *bias_row;
    int64_t bias_row_group_stride;
    const float *bias_col;
    const float *residual;
} sd_gemm_c_t;

/* Epilogue of one microtile, precomputed by the driver. */
typedef struct sd_tile_epilogue {
    float alpha;
    bool accumulate;     /* C += alpha*AB (later K blocks); otherwise the terms below */
    const float *bias_r; /* MR values or NULL */
    const float *bias_c; /* NR values or NULL */
    const float *res;    /* residual tile with stride ldc, or NULL */
} sd_tile_epilogue_t;

/* The bf16 GEMM path (kernels/gemm-bf16.c, AVX512_BF16 only): a microkernel over panels
 * in the bf16 pair layout and the conversion of packed fp32 panels into it. */
typedef struct sd_cpu_bf16_kernels {
    int mr, nr; /* must equal the table it is attached to */
    /* C tile (mr x nr, row stride ldc) from pair panels of kp = ceil(kc / 2) pair rows:
     * a[p*mr + r] and b[p*nr + c] hold the bf16 values of depths 2p (low half) and 2p+1. */
    void (*ukernel)(int64_t kp, const uint32_t *a, const uint32_t *b, float *c, int64_t ldc,
                    const sd_tile_epilogue_t *ep);
    /* Narrows `panels` fp32 panels of `width` lanes and depth kc (panel p at
     * src + p*src_stride, element (k, c) at k*width + c) into consecutive pair panels of
     * width * ceil(kc / 2) lanes each, rounding to nearest even. */
    void (*pair_panels)(uint32_t *dst, const float *src, int width, int64_t kc, int64_t panels,
                        int64_t src_stride);
} sd_cpu_bf16_kernels_t;

typedef struct sd_cpu_kernels {
    const char *name;
    /* Set on the backend's copy of the avx512 table when the context computes in bf16
     * (SD_PRECISION_BF16): every GEMM then narrows its packed panels to bf16 and runs this
     * microkernel; NULL in the static tables (the exact fp32 path). */
    const sd_cpu_bf16_kernels_t *bf16;
    int mr, nr;     /* microtile */
    int mc, kc, nc; /* cache blocking */
    /* C tile (mr x nr, row stride ldc) from packed panels of depth kc. */
    void (*ukernel)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                    const sd_tile_epilogue_t *ep);
    /* Packs rows [i0, i0+mc) x cols [k0, k0+kc) of A into mr-row micro-panels (rows past M
     * zero-filled): panel p holds dst[p*mr*kc + k*mr + r]. */
    void (*pack_a)(const sd_gemm_a_t *a, int64_t m, int64_t i0, int64_t k0, int64_t mc, int64_t kc,
                   float *dst);
    /* Packs rows [k0, k0+kc) x cols [j0, j0+nc) of B into nr-column micro-panels (columns
     * past N zero-filled): panel p holds dst[p*nr*kc + k*nr + c]. */
    void (*pack_b)(const sd_gemm_b_t *b, int64_t n, int64_t k0, int64_t j0, int64_t kc, int64_t nc,
                   float *dst);
    /* Vector math over n floats (dst may equal src). */
    void (*silu)(float *dst, const float *src, int64_t n);
    void (*gelu)(float *dst, const float *src, int64_t n); /* exact (erf) */
    /* dst[i] = a[i] * gelu(gate[i]) */
    void (*geglu)(float *dst, const float *a, const float *gate, int64_t n);
    void (*gelu_tanh)(float *dst, const float *src, int64_t n);
    void (*quick_gelu)(float *dst, const float *src, int64_t n); /* x * sigmoid(1.702 x) */
    /* In place: x[i] = exp(x[i] - max); returns the sum. */
    float (*exp_sum)(float *x, int64_t n, float max);
    float (*max)(const float *x, int64_t n);
    /* Sum and sum of squared deviations from `mean`, accumulated in blocks so that large
     * reductions (a group-norm group) stay accurate. */
    double (*sum)(const float *x, int64_t n);
    double (*sum_sq_dev)(const float *x, int64_t n, float mean);
    /* dst[i] = src[i] * scale + shift, then SiLU when silu is set (dst may equal src). */
    void (*scale_shift)(float *dst, const float *src, int64_t n, float scale, float shift,
                        bool silu);
    void (*f16_to_f32)(float *dst, const uint16_t *src, int64_t n);
    /* Online softmax step over one B panel of scores (rows x NR, row stride NR), column by
     * column: with the running max m and sum l of each column, updates m, writes the
     * factor earlier partial results must be scaled by to alpha, replaces the scores by
     * exp(s - m), and updates l = l * alpha + sum. Causal: row i is a key that column c may
     * see only when c + causal_offset >= i (other rows become 0); causal_offset < 0 with
     * causal false means every row counts. */
    void (*softmax_panel)(float *s, int64_t rows, float *m, float *l, float *alpha, bool causal,
                          int64_t causal_offset);
    /* Winograd F(4x4, 3x3) transforms, vectorised over tiles (see kernels/winograd.c).
     * wino_input: n <= NR tiles of one tile row, tile i's 6x6 patch starting at column
     * 4*i of `rows` (6 rows of a zero-padded buffer, row stride ld). The 36 transformed
     * values of tile i go to dst[xi * xi_stride + i], by streaming stores where aligned
     * (they pass the caches on their way to the GEMMs): the caller fences (sfence) before
     * another thread reads dst.
     * wino_output: for n <= NR tiles, m[xi * xi_stride + i] holds tile i's 36 products;
     * writes the 4x4 output of tile i to y[r * 4 * NR + 4 * i + c]. */
    void (*wino_input)(const float *rows, int64_t ld, int n, float *dst, int64_t xi_stride);
    /* The avx512 table only (else NULL), for bf16 GEMMs: wino_input of two input channels
     * (rows1 NULL: a zero channel) rounded to bf16 (nearest even) and paired, the first
     * channel's value in the low half of lane dst[xi * xi_stride + i], the second's in the
     * high half (streaming stores where aligned, as wino_input). */
    void (*wino_input_pair)(const float *rows0, const float *rows1, int64_t ld, int n,
                            uint32_t *dst, int64_t xi_stride);
    void (*wino_output)(const float *m, int64_t xi_stride, int n, float *y);
    /* Narrows n floats to dtype (F16 or BF16, round to nearest even). */
    void (*narrow)(uint16_t *dst, const float *src, int32_t dtype, int64_t n);
} sd_cpu_kernels_t;

extern const sd_cpu_kernels_t sd_cpu_kernels_generic;
#if defined(__x86_64__)
extern const sd_cpu_kernels_t sd_cpu_kernels_avx2;
extern const sd_cpu_kernels_t sd_cpu_kernels_avx512;
extern const sd_cpu_bf16_kernels_t sd_cpu_bf16_avx512;
#endif

/* ---------------------------------------------------------------------------------------
 * GEMM driver (kernels/gemm.c)
 * ------------------------------------------------------------------------------------- */

typedef struct sd_cpu_backend sd_cpu_backend_t;

/* C = op(A B) as described by sd_gemm_c_t, split over the pool's threads. */
sd_status_t sd_gemm(sd_ctx_t *ctx, int64_t m, int64_t n, int64_t k, const sd_gemm_a_t *a,
                    const sd_gemm_b_t *b, const sd_gemm_c_t *c);
/* The same on the calling thread only, with caller-provided pack buffers of at least
 * sd_gemm_scratch_floats() floats (used inside parallel tasks). */
void sd_gemm_serial(const sd_cpu_kernels_t *kern, int64_t m, int64_t n, int64_t k,
                    const sd_gemm_a_t *a, const sd_gemm_b_t *b, const sd_gemm_c_t *c,
                    float *scratch);
size_t sd_gemm_scratch_floats(const sd_cpu_kernels_t *kern);
/* Only the columns [j0, j1) of that GEMM (j0 a multiple of NR), for callers that split
 * several GEMMs into one set of parallel tasks. */
void sd_gemm_serial_cols(const sd_cpu_kernels_t *kern, int64_t m, int64_t n, int64_t k, int64_t j0,
                         int64_t j1, const sd_gemm_a_t *a, const sd_gemm_b_t *b,
                         const sd_gemm_c_t *c, float *scratch);

/* Packs all of B (K x N) once, in the layout the GEMM's blocks read, so several GEMMs over
 * the same B (attention's K and V for every query block) skip packing. dst holds
 * sd_gemm_packed_floats(k, n) floats; use it as a SD_GEMM_B_PACKED operand with ld = n and
 * packed_k = k. */
size_t sd_gemm_packed_floats(const sd_cpu_kernels_t *kern, int64_t k, int64_t n);
/* The same for A (M x K) in A panels: the layout of sd_packed_weight_t with F32 data. */
size_t sd_gemm_packed_a_floats(const sd_cpu_kernels_t *kern, int64_t m, int64_t k);
void sd_gemm_pack_a(const sd_cpu_kernels_t *kern, const sd_gemm_a_t *a, int64_t m, int64_t k,
                    float *dst);
void sd_gemm_pack_b(const sd_cpu_kernels_t *kern, const sd_gemm_b_t *b, int64_t k, int64_t n,
                    float *dst);
/* Narrows A (M x K) packed by sd_gemm_pack_a (fp32) into bf16 pair panels, for a table with
 * bf16 kernels: sd_gemm_pairs_a_lanes(m, k) 32-bit lanes, block (k0, panel p) at
 * k0/2 * padded + p * mr * ceil(kc/2). Use as a packed weight with bf16_pairs set. */
size_t sd_gemm_pairs_a_lanes(const sd_cpu_kernels_t *kern, int64_t m, int64_t k);
void sd_gemm_pair_packed_a(const sd_cpu_kernels_t *kern, const float *src, int64_t m, int64_t k,
                           uint32_t *dst);
/* The same for B (K x N) packed by sd_gemm_pack_b: sd_gemm_pairs_b_lanes(k, n) lanes, for
 * a SD_GEMM_B_PACKED operand with bf16_pairs set. */
size_t sd_gemm_pairs_b_lanes(const sd_cpu_kernels_t *kern, int64_t k, int64_t n);
void sd_gemm_pair_packed_b(const sd_cpu_kernels_t *kern, const float *src, int64_t k, int64_t n,
                           uint32_t *dst);

/* Packs a weight W (rows x k, in its dtype) for use as A or as B = W^T; NULL when out of
 * memory. Free with sd_packed_weight_free. */
sd_packed_weight_t *sd_packed_weight_new(sd_pool_t *pool, const sd_cpu_kernels_t *kern,
                                         const void *w, int32_t dtype, int64_t rows, int64_t k,
                                         bool as_b);
/* Packs w again into p's memory when p was made for the same shape and operand and either
 * w's dtype or F32 (which holds every F16 / BF16 value exactly): a weight replaced by
 * others of its kind, as adapters switch, saves the allocation and its first-touch faults;
 * false (p unchanged) otherwise. */
bool sd_packed_weight_repack(sd_pool_t *pool, const sd_cpu_kernels_t *kern, sd_packed_weight_t *p,
                             const void *w, int32_t dtype, int64_t rows, int64_t k, bool as_b);
/* Packs W = base + up · down (base rows x k in its dtype; up rows x rank, down rank x k,
 * float32) into p, made for this weight as B: the base's panels are converted while packed
 * and the product added to them by the microkernel, in float32, so that the merged weight
 * is never stored unpacked. p becomes F32 (new memory when it held F16 or BF16); false
 * (p unchanged) when out of memory. */
bool sd_packed_weight_merge(sd_pool_t *pool, const sd_cpu_kernels_t *kern, sd_packed_weight_t *p,
                            const void *base, int32_t dtype, const float *up, const float *down,
                            int64_t rank);
/* dst (rows x cols, float32) = base (its dtype) + up · down, in float32, by blocks of rows
 * over the pool; false (dst untouched) when the GEMM's scratch cannot be had. */
bool sd_weight_merge_rows(sd_cpu_backend_t *cpu, float *dst, const void *base, int32_t dtype,
                          int64_t rows, int64_t cols, const float *up, const float *down,
                          int64_t rank);
void sd_packed_weight_free(sd_packed_weight_t *p);
size_t sd_packed_weight_bytes(const sd_packed_weight_t *p);

/* ---------------------------------------------------------------------------------------
 * The backend
 * ------------------------------------------------------------------------------------- */

struct sd_cpu_backend {
    sd_backend_t base;
    sd_pool_t *pool;
    const sd_cpu_kernels_t *kern;
    sd_cpu_kernels_t kern_bf16; /* kern points here in a bf16 context */
    /* Per-thread scratch (pack buffers, attention rows), grown on demand. */
    float **scratch;
    size_t *scratch_floats;
};

static inline sd_cpu_backend_t *sd_cpu(sd_ctx_t *ctx) {
    return (sd_cpu_backend_t *)sd_ctx_backend_ptr(ctx);
}

/* Per-thread scratch of at least n floats; NULL when out of memory. Only call before a
 * parallel run (from the calling thread) for every thread that will use it. */
float *sd_cpu_scratch(sd_cpu_backend_t *cpu, int thread, size_t n);
/* Makes sure every thread's scratch holds n floats; false when out of memory. */
bool sd_cpu_scratch_reserve(sd_cpu_backend_t *cpu, size_t n);

/* Large host allocations (arena chunks, scratch): 2 MiB aligned and backed by
 * transparent huge pages where the kernel offers them, to save page faults. */
void *sd_host_alloc_large(size_t nbytes);
/* The same as a mapping of its own (on Linux; elsewhere sd_host_alloc_large's memory), which
 * sd_host_remap can grow keeping the pages it has, so that a pack widened from F16 to F32
 * touches only its new half. Free with sd_host_unmap and the size asked for. */
void *sd_host_map(size_t nbytes);
void sd_host_unmap(void *p, size_t nbytes);
/* p (of old_nbytes) grown to nbytes, its contents kept; NULL (p unchanged) when it cannot
 * (not Linux, out of address space). */
void *sd_host_remap(void *p, size_t old_nbytes, size_t nbytes);

/* The CPUs this process may run on: its affinity mask, capped by the CPU quota of its
 * cgroups; at least 1. The CPU backend uses no more threads than this. */
int sd_cpu_available(void);
/* The smallest CPU quota, in whole CPUs rounded up, of the cgroups that `self_cgroup` (the
 * format of /proc/self/cgroup) names under `root` (where cgroupfs is mounted: v2 directly,
 * v1's cpu controller at root/cpu) and their parents; 0 when none is set. */
int sd_cgroup_cpu_limit(const char *root, const char *self_cgroup);

/* Kernel table chosen for this CPU; honours SD_CPU_ISA=generic|avx2|avx512. */
const sd_cpu_kernels_t *sd_cpu_select_kernels(char *why, size_t why_len);
/* The bf16 kernels for `kern` when this CPU reports AVX512_BF16 and kern is the avx512
 * table (so SD_CPU_ISA=avx2 or generic rules them out, as tests use); else NULL and `why`
 * says what is missing. */
const sd_cpu_bf16_kernels_t *sd_cpu_select_bf16(const sd_cpu_kernels_t *kern, char *why,
                                                size_t why_len);

/* Op implementations (csrc/cpu/kernels/), called by the backend table. */
sd_status_t sd_cpu_conv2d(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                          const sd_tensor_t *w, const sd_tensor_t *bias,
                          const sd_tensor_t *residual, const sd_conv2d_params_t *p);
/* Winograd F(4x4, 3x3) for the 3x3 stride-1 convolutions where it pays (kernels/winograd.c). */
bool sd_cpu_winograd_applies(const sd_tensor_t *x, const sd_tensor_t *w,
                             const sd_conv2d_params_t *p, int64_t oh, int64_t ow);
/* up: x is the conv's input at half size, upsampled (nearest, 2x) on the fly. */
sd_status_t sd_cpu_conv2d_winograd(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                   const sd_tensor_t *w, const sd_tensor_t *bias,
                                   const sd_tensor_t *residual, const sd_conv2d_params_t *p,
                                   bool up);
/* out = conv2d(upsample_nearest_2x(x), w) + bias, 3x3 with padding 1, without the upsampled
 * input in memory; SD_STATUS_UNSUPPORTED (no error recorded) where Winograd does not apply. */
sd_status_t sd_cpu_conv2d_up2(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *w, const sd_tensor_t *bias);
sd_status_t sd_cpu_copy_rows(sd_ctx_t *ctx, sd_tensor_t *dst, int64_t dst_row,
                             const sd_tensor_t *src, int64_t src_row, int64_t rows);
sd_status_t sd_cpu_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                          const sd_tensor_t *w, const sd_tensor_t *bias,
                          const sd_tensor_t *residual, const sd_linear_params_t *p);
sd_status_t sd_cpu_group_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *gamma, const sd_tensor_t *beta, int32_t groups,
                              float eps, bool silu);
sd_status_t sd_cpu_layer_norm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              const sd_tensor_t *gamma, const sd_tensor_t *beta, float eps);
sd_status_t sd_cpu_attention(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *q,
                             const sd_tensor_t *k, const sd_tensor_t *v, int32_t heads, bool causal,
                             float scale);
sd_status_t sd_cpu_activation(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                              int32_t activation);
sd_status_t sd_cpu_geglu(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
sd_status_t sd_cpu_upsample_nearest(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
sd_status_t sd_cpu_binary(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b, int32_t op);
sd_status_t sd_cpu_concat(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *a,
                          const sd_tensor_t *b);
sd_status_t sd_cpu_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float lo, float hi);
sd_status_t sd_cpu_tanh_clamp(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, float limit);
sd_status_t sd_cpu_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x);
sd_status_t sd_cpu_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                      const sd_timestep_embedding_params_t *p);
sd_status_t sd_cpu_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                             const sd_tensor_t *table);

/* Splits [0, n) into `parts` nearly equal ranges; range i is [*lo, *hi). */
static inline void sd_split_range(int64_t n, int64_t parts, int64_t i, int64_t *lo, int64_t *hi) {
    int64_t q = n / parts, r = n % parts;
    *lo = i * q + (i < r ? i : r);
    *hi = *lo + q + (i < r ? 1 : 0);
}

#endif /* SD_CPU_H */
