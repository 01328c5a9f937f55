/*
 * winograd.c - 3x3 stride-1 convolution by Winograd's minimal filtering on the CPU.
 *
 * x: (N, Cin, H, W) f32; w: (Cout, Cin, 3, 3) f32/f16/bf16; out: (N, Cout, OH, OW) f32.
 * ref: torch.nn.functional.conv2d (the same function as conv2d.c, computed differently);
 * the algorithm is Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"
 * (2015), F(4x4, 3x3) with the interpolation points 0, +-1, +-2.
 *
 * The output is cut into 4x4 tiles, each computed from a 6x6 input patch:
 *   U = G g G^T per filter, V = B^T d B per patch, M = sum over input channels of U . V,
 *   Y = A^T M A.
 * The channel sums are 36 independent GEMMs, M[xi] (Cout x tiles) = U[xi] (Cout x Cin)
 * V[xi] (Cin x tiles), so 9 multiplies per output become 36 / 16 = 2.25. The filter
 * transform writes U and the input transform writes V straight into the GEMM's packed
 * panel layouts, so the GEMMs pack nothing (in bf16, V goes straight into the pair layout
 * the bf16 microkernel reads, two input channels at a time). Tiles are processed in chunks so V and
 * M stay within a bounded buffer; U is recomputed per call (cheap next to the GEMMs wherever this
 * path is chosen), a slice of output channels at a time where the whole of it would be large (see
 * U_BYTES). Bias, per-sample bias and residual are added by the output transform. fp32 accuracy
 * stays within a few 1e-6 of the direct convolution on SD's activations (the op and conformance
 * tests check it).
 */
#include "../cpu.h"

#include <string.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#define WM 4         /* output tile side */
#define WA (WM + 2)  /* input tile side */
#define WP (WA * WA) /* transformed positions = GEMMs */

/* G of F(4, 3); B^T and A^T are written out in the kernels (wino_input / wino_output). */
static const float G[WA][3] = {
    {1.0f / 4, 0, 0},
    {-1.0f / 6, -1.0f / 6, -1.0f / 6},
    {-1.0f / 6, 1.0f / 6, -1.0f / 6},
    {1.0f / 24, 1.0f / 12, 1.0f / 6},
    {1.0f / 24, -1.0f / 12, 1.0f / 6},
    {0, 0, 1},
};

/* Below these the direct implicit GEMM is as fast: the filter transform (36 values per
 * input-output channel pair, made on every call) and the short GEMMs would not pay. At 64
 * tiles (one 32x32 image: SD's 512² UNet at batch 1, e.g. SD-Turbo without guidance) a
 * 640-channel conv was slower this way until the filter transform was vectorised; since,
 * the SD 2.1 512² batch-1 step takes 2.42-2.87 s with the limit at 64 against 2.52-3.17 s
 * at 128 (interleaved runs). */
#define MIN_TILES    64
#define MIN_CHANNELS 32
/* Transformed inputs and outputs of one chunk of tiles, and at most this many tiles (long
 * enough GEMMs; narrow convs, TAESD's 64 channels, then keep 28 MB rather than 48 of V and
 * M, which at 512² made TAESD's decode the largest user of the activation arena). */
#define CHUNK_BYTES     ((size_t)48 << 20)
#define MAX_CHUNK_TILES 1536
/* Transformed filters of one slice of output channels. The whole U of a deep conv is large
 * (SD's 1920->640 up-block conv: 177 MB, SDXL's 2560->1280: 472 MB), and was most of the
 * activation arena at batch 1 (one step of SD-Turbo: a 294 MB arena, every page of it
 * first touched during the step); by slices, the input transform is made once per slice
 * when the tiles take more than one chunk (few-tile deep convs take one, kept). */
#define U_BYTES ((size_t)32 << 20)

bool sd_cpu_winograd_applies(const sd_tensor_t *x, const sd_tensor_t *w,
                             const sd_conv2d_params_t *p, int64_t oh, int64_t ow) {
    if (w->shape[2] != 3 || w->shape[3] != 3 || p->stride_h != 1 || p->stride_w != 1) return false;
    if (w->shape[0] < MIN_CHANNELS || w->shape[1] < MIN_CHANNELS) return false;
    int64_t tiles = x->shape[0] * ((oh + WM - 1) / WM) * ((ow + WM - 1) / WM);
    return tiles >= MIN_TILES;
}

typedef struct {
    sd_cpu_backend_t *cpu;
    const float *x;
    const void *w;
    int32_t wdtype;
    float *out;
    const float *bias, *residual;
    int64_t bias_stride;                         /* 0: one bias per channel; Cout: per sample */
    int64_t n, cin, h, wd, cout, oh, ow, th, tw; /* h, wd: the input the conv sees */
    int32_t pt, pl;
    bool up;         /* x is that input at half size, upsampled (nearest, 2x) as rows are read */
    int64_t co0, cs; /* the slice of output channels [co0, co0 + cs) being computed */
    int64_t mpad;    /* cs in whole A panels */
    int64_t row_len; /* a zero-padded input row of a tile row's patches */
    float *u;        /* WP packed A operands (cs x Cin) */
    uint32_t *u2;    /* bf16: the same as pair panels, u2_lanes each; else NULL */
    size_t u2_lanes;
    float *v, *m; /* the chunk's WP packed B operands (Cin x tiles) and results */
    uint32_t *v2; /* bf16: V written as pair panels instead (v2_lanes each); else NULL */
    size_t v2_lanes;
    int64_t t0, nt, ntpad;
    size_t gemm_offset; /* GEMM pack buffers in a thread's scratch, after the row buffers */
} wino_job_t;

/* Offset of element (row, k) of an operand packed in panels of `width` rows with `padded`
 * rows per KC block of a K of k_total: A panels (rows = output channels) or B panels
 * (rows = tiles, i.e. B's columns). */
static inline int64_t packed_at(int64_t row, int64_t k, int64_t width, int64_t padded,
                                int64_t k_total, int64_t kcb) {
    int64_t pc = k / kcb * kcb, kc = SD_MIN(kcb, k_total - pc);
    return pc * padded + row / width * width * kc + (k - pc) * width + row % width;
}

/* U for one A panel of output channels: lanes are the panel's rows, which lie side by side
 * in every U[xi] (a vector store per transformed position; rows past Cout, zero weights,
 * come out zero), and the weights are converted a block of input channels at a time. */
enum { FILTER_LANES = 16, FILTER_CI = 32 };

/* The first n of v to dst: copies of a constant size for the kernel tables' panel widths,
 * which the compiler inlines, rather than a library call per store. */
static inline void store_lanes(float *dst, const float v[FILTER_LANES], int64_t n) {
    switch (n) {
    case 12:
        memcpy(dst, v, 12 * sizeof(float));
        break;
    case 6:
        memcpy(dst, v, 6 * sizeof(float));
        break;
    case 4:
        memcpy(dst, v, 4 * sizeof(float));
        break;
    default:
        memcpy(dst, v, (size_t)n * sizeof(float));
    }
}

static void filter_task(void *arg, int64_t panel, int thread) {
    (void)thread;
    const wino_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int64_t mr = kern->mr, co0 = j->co0 + panel * mr;
    const int64_t rows = SD_MIN(mr, j->co0 + j->cs - co0);
    SD_ASSERT(mr <= FILTER_LANES);
    const size_t es = sd_dtype_size(j->wdtype), per_xi = (size_t)(j->mpad * j->cin);
    float w[FILTER_LANES][FILTER_CI * 9];
    for (int64_t c0 = 0; c0 < j->cin; c0 += FILTER_CI) {
        const int64_t nc = SD_MIN((int64_t)FILTER_CI, j->cin - c0);
        for (int64_t r = 0; r < rows; r++) {
            const void *src = (const char *)j->w + (size_t)(((co0 + r) * j->cin + c0) * 9) * es;
            if (j->wdtype == SD_DTYPE_F16)
                kern->f16_to_f32(w[r], src, nc * 9);
            else
                sd_convert_to_f32(w[r], src, j->wdtype, nc * 9);
        }
        for (int64_t r = rows; r < FILTER_LANES; r++) memset(w[r], 0, sizeof w[r]);
        for (int64_t cc = 0; cc < nc; cc++) {
            float t[WA][3][FILTER_LANES];
            for (int a = 0; a < WA; a++)
                for (int b = 0; b < 3; b++)
                    for (int r = 0; r < FILTER_LANES; r++)
                        t[a][b][r] = G[a][0] * w[r][cc * 9 + b] + G[a][1] * w[r][cc * 9 + 3 + b] +
                                     G[a][2] * w[r][cc * 9 + 6 + b];
            /* The panel's rows of channel c0 + cc are consecutive in every U[xi]. */
            float *u = j->u + packed_at(co0 - j->co0, c0 + cc, mr, j->mpad, j->cin, kern->kc);
            for (int a = 0; a < WA; a++)
                for (int b = 0; b < WA; b++) {
                    float v[FILTER_LANES];
                    for (int r = 0; r < FILTER_LANES; r++)
                        v[r] = t[a][0][r] * G[b][0] + t[a][1][r] * G[b][1] + t[a][2][r] * G[b][2];
                    store_lanes(u + (size_t)(a * WA + b) * per_xi, v, mr);
                }
        }
    }
}

/* bf16: narrows U[xi] to pair panels once per call, rather than in every GEMM slice. */
static void pair_filter_task(void *arg, int64_t xi, int thread) {
    (void)thread;
    const wino_job_t *j = arg;
    sd_gemm_pair_packed_a(j->cpu->kern, j->u + (size_t)xi * (size_t)(j->mpad * j->cin), j->cs,
                          j->cin, j->u2 + (size_t)xi * j->u2_lanes);
}

/* A run: consecutive tiles of the chunk in one tile row and one B panel. */
typedef struct {
    int64_t k; /* index of the first tile in the chunk */
    int n;
    int64_t img, ty, tx;
} tile_run_t;

static bool next_run(const wino_job_t *j, int64_t k, tile_run_t *r) {
    if (k >= j->nt) return false;
    int64_t t = j->t0 + k, per_img = j->th * j->tw, rem = t % per_img;
    const int64_t nr = j->cpu->kern->nr;
    r->k = k;
    r->img = t / per_img;
    r->ty = rem / j->tw;
    r->tx = rem % j->tw;
    r->n = (int)SD_MIN(SD_MIN(j->tw - r->tx, j->nt - k), nr - k % nr);
    return true;
}

/* The tile row's 6 input rows of channel ci, zero-padded around the image (only the
 * padding is cleared: the rows are rewritten for every channel and tile row). */
static void fill_rows(const wino_job_t *j, const tile_run_t *r, int64_t ci, float *rows) {
    const int64_t sh = j->up ? j->h / 2 : j->h, sw = j->up ? j->wd / 2 : j->wd;
    const float *plane = j->x + (r->img * j->cin + ci) * sh * sw;
    const int64_t tail = j->row_len - j->pl - j->wd;
    for (int a = 0; a < WA; a++) {
        float *row = rows + a * j->row_len;
        int64_t iy = r->ty * WM + a - j->pt;
        if (iy < 0 || iy >= j->h) {
            memset(row, 0, (size_t)j->row_len * sizeof(float));
            continue;
        }
        memset(row, 0, (size_t)j->pl * sizeof(float));
        if (j->up) {
            const float *src = plane + iy / 2 * sw;
            float *d = row + j->pl;
            for (int64_t i = 0; i < sw; i++) d[2 * i] = d[2 * i + 1] = src[i];
        } else {
            memcpy(row + j->pl, plane + iy * j->wd, (size_t)j->wd * sizeof(float));
        }
        memset(row + j->pl + j->wd, 0, (size_t)tail * sizeof(float));
    }
}

static void input_task(void *arg, int64_t ci, int thread) {
    const wino_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    float *rows = j->cpu->scratch[thread]; /* 6 padded input rows */
    const size_t per_xi = (size_t)(j->cin * j->ntpad);
    int64_t filled_img = -1, filled_ty = -1;
    tile_run_t r;
    for (int64_t k = 0; next_run(j, k, &r); k += r.n) {
        if (r.img != filled_img || r.ty != filled_ty) {
            fill_rows(j, &r, ci, rows);
            filled_img = r.img, filled_ty = r.ty;
        }
        float *dst = j->v + packed_at(r.k, ci, kern->nr, j->ntpad, j->cin, kern->kc);
        kern->wino_input(rows + WM * r.tx, j->row_len, r.n, dst, (int64_t)per_xi);
    }
#if defined(__x86_64__)
    _mm_sfence(); /* the input transform's streaming stores, before the GEMMs read them */
#endif
}

/* bf16: input channels 2p and 2p + 1 (when there is one) into the halves of V's pair
 * lanes, so that the GEMMs read V as it is and no fp32 V is written. */
static void input_pair_task(void *arg, int64_t p, int thread) {
    const wino_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int64_t nr = kern->nr, kcb = kern->kc, ci = 2 * p;
    const int64_t pc = ci / kcb * kcb, kp = (SD_MIN(kcb, j->cin - pc) + 1) / 2;
    const int chans = ci + 1 < j->cin ? 2 : 1;
    float *rows = j->cpu->scratch[thread]; /* 6 padded input rows per channel */
    int64_t filled_img = -1, filled_ty = -1;
    tile_run_t r;
    for (int64_t k = 0; next_run(j, k, &r); k += r.n) {
        const bool fill = r.img != filled_img || r.ty != filled_ty;
        /* Pair row (ci - pc) / 2 of the tiles' B panel in the block of depth pc. */
        uint32_t *dst =
            j->v2 + pc / 2 * j->ntpad + r.k / nr * nr * kp + (ci - pc) / 2 * nr + r.k % nr;
        float *rows1 = chans == 2 ? rows + WA * j->row_len : NULL;
        if (fill) {
            fill_rows(j, &r, ci, rows);
            if (rows1) fill_rows(j, &r, ci + 1, rows1);
        }
        kern->wino_input_pair(rows + WM * r.tx, rows1 ? rows1 + WM * r.tx : NULL, j->row_len, r.n,
                              dst, (int64_t)j->v2_lanes);
        filled_img = r.img, filled_ty = r.ty;
    }
#if defined(__x86_64__)
    _mm_sfence(); /* as input_task */
#endif
}

/* The chunk's 36 GEMMs as one set of tasks: (position xi, slice of tiles). */
#define GEMM_SLICES 4

static void gemm_task(void *arg, int64_t task, int thread) {
    const wino_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    const int64_t xi = task / GEMM_SLICES, slice = task % GEMM_SLICES, nr = kern->nr;
    int64_t p0, p1; /* panels of the slice */
    sd_split_range(j->ntpad / nr, GEMM_SLICES, slice, &p0, &p1);
    if (p0 >= p1) return;
    sd_packed_weight_t up = {SD_DTYPE_F32, false,   j->cs,
                             j->cin,       j->mpad, j->u + (size_t)xi * (size_t)(j->mpad * j->cin),
                             false};
    if (j->u2 != NULL) {
        up.data = j->u2 + (size_t)xi * j->u2_lanes;
        up.bf16_pairs = true;
    }
    sd_gemm_a_t a = {.packed = &up};
    sd_gemm_b_t b = {.data = j->v + (size_t)xi * (size_t)(j->cin * j->ntpad),
                     .dtype = SD_DTYPE_F32,
                     .kind = SD_GEMM_B_PACKED,
                     .ld = j->nt,
                     .packed_k = j->cin};
    if (j->v2 != NULL) {
        b.data = j->v2 + (size_t)xi * j->v2_lanes;
        b.bf16_pairs = true;
    }
    sd_gemm_c_t c = {.data = j->m + (size_t)xi * (size_t)(j->cs * j->nt),
                     .ldc = j->nt,
                     .group_cols = j->nt,
                     .alpha = 1.0f};
    sd_gemm_serial_cols(kern, j->cs, j->nt, j->cin, p0 * nr, SD_MIN(p1 * nr, j->nt), &a, &b, &c,
                        j->cpu->scratch[thread] + j->gemm_offset);
}

/* Output channel j->co0 + oc of the slice. */
static void output_task(void *arg, int64_t oc, int thread) {
    const wino_job_t *j = arg;
    const sd_cpu_kernels_t *kern = j->cpu->kern;
    float *y = j->cpu->scratch[thread]; /* WM rows of WM * NR outputs */
    const int64_t row = WM * kern->nr, co = j->co0 + oc;
    tile_run_t r;
    for (int64_t k = 0; next_run(j, k, &r); k += r.n) {
        kern->wino_output(j->m + oc * j->nt + r.k, j->cs * j->nt, r.n, y);
        const float bias = j->bias ? j->bias[r.img * j->bias_stride + co] : 0.0f;
        const int64_t base = (r.img * j->cout + co) * j->oh * j->ow;
        const int64_t x0 = r.tx * WM, cols = SD_MIN((int64_t)r.n * WM, j->ow - x0);
        for (int64_t a = 0; a < WM && r.ty * WM + a < j->oh; a++) {
            const int64_t at = base + (r.ty * WM + a) * j->ow + x0;
            float *o = j->out + at;
            const float *src = y + a * row;
            if (j->residual) {
                const float *res = j->residual + at;
                for (int64_t c = 0; c < cols; c++) o[c] = src[c] + bias + res[c];
            } else {
                for (int64_t c = 0; c < cols; c++) o[c] = src[c] + bias;
            }
        }
    }
}

sd_status_t sd_cpu_conv2d_winograd(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                                   const sd_tensor_t *w, const sd_tensor_t *bias,
                                   const sd_tensor_t *residual, const sd_conv2d_params_t *p,
                                   bool up) {
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    const sd_cpu_kernels_t *kern = cpu->kern;
    wino_job_t j = {
        .cpu = cpu,
        .x = x->data,
        .w = w->data,
        .wdtype = w->dtype,
        .out = out->data,
        .bias = bias ? bias->data : NULL,
        .residual = residual ? residual->data : NULL,
        .bias_stride = bias && bias->ndim == 2 ? w->shape[0] : 0,
        .n = x->shape[0],
        .cin = x->shape[1],
        .h = x->shape[2] * (up ? 2 : 1),
        .wd = x->shape[3] * (up ? 2 : 1),
        .up = up,
        .cout = w->shape[0],
        .oh = out->shape[2],
        .ow = out->shape[3],
        .pt = p->pad_top,
        .pl = p->pad_left,
    };
    const int64_t nr = kern->nr, mr = kern->mr;
    j.th = (j.oh + WM - 1) / WM;
    j.tw = (j.ow + WM - 1) / WM;
    /* Every patch of the tile row, the gathers' overreach past the last tile (a vector is at
     * most NR lanes) and the whole padded input row. */
    j.row_len = SD_MAX(WM * (j.tw + nr) + WA, j.wd + j.pl);
    const int64_t tiles = j.n * j.th * j.tw;
    /* Output channels per slice: whole A panels whose U fits U_BYTES (at least one panel),
     * the slices made even. */
    const int64_t row_bytes = (int64_t)((size_t)WP * (size_t)j.cin * sizeof(float));
    int64_t cs = SD_MAX(mr, (int64_t)U_BYTES / row_bytes / mr * mr);
    const int64_t slices = (j.cout + cs - 1) / cs;
    cs = SD_MIN(j.cout, ((j.cout + slices - 1) / slices + mr - 1) / mr * mr);
    int64_t chunk = (int64_t)(CHUNK_BYTES / ((size_t)WP * (size_t)(j.cin + cs) * sizeof(float)));
    chunk =
        SD_MIN(SD_MIN(SD_MAX(nr, chunk / nr * nr), (tiles + nr - 1) / nr * nr), MAX_CHUNK_TILES);

    const size_t u_floats = (size_t)WP * (size_t)((cs + mr - 1) / mr * mr * j.cin);
    /* bf16: V as pair lanes (half the bytes) in place of the fp32 V. */
    const bool pairs = kern->bf16 != NULL && kern->wino_input_pair != NULL;
    j.v2_lanes = pairs ? sd_gemm_pairs_b_lanes(kern, j.cin, chunk) : 0;
    const size_t v_floats = pairs ? WP * j.v2_lanes : (size_t)WP * (size_t)(j.cin * chunk);
    /* M rows are read a whole vector at a time: pad the end. */
    const size_t m_floats = (size_t)WP * (size_t)(cs * chunk) + (size_t)nr;
    float *u = sd_arena_alloc(&ctx->arena, u_floats * sizeof(float));
    j.u2_lanes = kern->bf16 ? sd_gemm_pairs_a_lanes(kern, cs, j.cin) : 0;
    uint32_t *u2 =
        kern->bf16 ? sd_arena_alloc(&ctx->arena, WP * j.u2_lanes * sizeof(uint32_t)) : NULL;
    float *vm = sd_arena_alloc(&ctx->arena, (v_floats + m_floats) * sizeof(float));
    /* Row buffers, output tiles, and the GEMMs' own buffers (edge tiles; bf16 pair panels). */
    const size_t scratch_floats =
        SD_MAX(SD_MAX((size_t)((pairs ? 2 : 1) * WA * j.row_len), (size_t)(WM * WM * nr)),
               sd_gemm_scratch_floats(kern));
    bool scratch = sd_cpu_scratch_reserve(cpu, scratch_floats);
    if (u == NULL || vm == NULL || !scratch || (kern->bf16 && u2 == NULL)) {
        sd_arena_free(&ctx->arena, u2);
        sd_arena_free(&ctx->arena, u);
        sd_arena_free(&ctx->arena, vm);
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "conv2d: cannot allocate %zu bytes",
                       (u_floats + v_floats + m_floats) * sizeof(float));
    }
    j.u = u;
    j.u2 = u2;
    j.v = pairs ? NULL : vm;
    j.v2 = pairs ? (uint32_t *)vm : NULL;
    j.m = vm + v_floats;
    for (j.co0 = 0; j.co0 < j.cout; j.co0 += cs) {
        j.cs = SD_MIN(cs, j.cout - j.co0);
        j.mpad = (j.cs + mr - 1) / mr * mr;
        sd_pool_run(cpu->pool, j.mpad / mr, filter_task, &j);
        if (u2 != NULL) sd_pool_run(cpu->pool, WP, pair_filter_task, &j);
        for (j.t0 = 0; j.t0 < tiles; j.t0 += chunk) {
            j.nt = SD_MIN(chunk, tiles - j.t0);
            j.ntpad = (j.nt + nr - 1) / nr * nr;
            /* One chunk holds every tile: its V serves every slice. */
            if (j.co0 == 0 || chunk < tiles) {
                if (pairs) {
                    /* The lanes past the tiles are never written. */
                    if (j.ntpad > j.nt) memset(j.v2, 0, WP * j.v2_lanes * sizeof(uint32_t));
                    sd_pool_run(cpu->pool, (j.cin + 1) / 2, input_pair_task, &j);
                } else {
                    if (j.ntpad > j.nt)
                        memset(j.v, 0, (size_t)WP * (size_t)(j.cin * j.ntpad) * sizeof(float));
                    sd_pool_run(cpu->pool, j.cin, input_task, &j);
                }
            }
            sd_pool_run(cpu->pool, WP * GEMM_SLICES, gemm_task, &j);
            sd_pool_run(cpu->pool, j.cs, output_task, &j);
        }
    }
    sd_arena_free(&ctx->arena, vm);
    sd_arena_free(&ctx->arena, u2);
    sd_arena_free(&ctx->arena, u);
    return SD_STATUS_OK;
}
