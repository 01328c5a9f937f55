/*
 * linear.cu - y = x W^T + b (+ residual) on the GPU, with channels-first input or output.
 *
 * w: (N, K) f32/f16/bf16; TOKENS x (..., T, K) -> out (..., T, N); CHANNELS_FIRST x
 * (B, K, T...) -> out (B, N, T...); activations f32 or f16. ref: torch.nn.functional.linear;
 * a channels-first side is a 1x1 conv2d (csrc/cpu/kernels/linear.c).
 *
 * When the weight has the activations' dtype the GEMM runs in cuBLASLt (f32 accumulation;
 * f32 activations use CUBLAS_COMPUTE_32F, never TF32, so the F32 path stays accurate).
 * cuBLAS is column-major, so every row-major operand is read as its transpose:
 *   token output:          out^T (N x rows)  = op(W) (N x K) * op(x) (K x rows)
 *   channels-first output: out_b^T (T x N)   = op(x_b) (T x K) * W^T (K x N), per batch b
 * where op() transposes or not depending on the input layout; no permuted copy is made.
 * The residual is cuBLASLt's C matrix (beta = 1; C may be D). A token-layout output adds
 * the bias in cuBLASLt's epilogue (per row of D); its bias must have D's dtype, so an f16
 * output first converts the f32 bias into the context's scratch. A channels-first output
 * wants a bias per column of D, which the epilogue cannot do: a small kernel adds it after.
 *
 * Mixed dtypes (f32 activations with f16/bf16 weights, f16 activations with f32/bf16
 * weights) and problems cuBLASLt has no algorithm for run the implicit-GEMM kernels of
 * conv2d.cu as a 1x1 convolution over a 1 x T image, addressed through strides.
 */
#include "linear.cuh"

#include "conv2d.cuh"

#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

namespace {

/* src: (n) f32 -> dst: (n) f16. ref: torch.Tensor.to(torch.float16). */
__global__ void bias_to_f16_kernel(__half *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

/* out: (B, N, T) channels-first or (rows, N) tokens; bias: (N) f32; out += bias per channel
 * (channels-first: channel (i / t) % N, tokens: i % N). ref: the bias term of
 * torch.nn.functional.linear. */
template <typename T>
__global__ void add_bias_kernel(T *out, const float *bias, int64_t total, int64_t n, int64_t t,
                                bool channels_first) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = channels_first ? (i / t) % n : i % n;
        out[i] = sd_from_f32<T>(sd_to_f32(out[i]) + bias[c]);
    }
}

/* ---------------------------------------------------------------------------------------
 * cuBLASLt
 * ------------------------------------------------------------------------------------- */

/* A cuBLASLt problem (column-major view), run `batch` times with byte strides. */
struct LtProblem {
    int32_t dtype; /* SD_DTYPE_F32 or SD_DTYPE_F16: A, B, C, D and the bias */
    cublasOperation_t transa, transb;
    int64_t m, n, k, lda, ldb, ldd;
    const void *a, *b, *c; /* c: NULL (beta 0) or like d */
    void *d;
    const void *bias; /* NULL or (m) */
    int32_t batch;
    int64_t stride_a, stride_b, stride_d; /* bytes */
};

} // namespace

/* Everything the heuristic's answer depends on. Zero-initialised before filling, so it
 * compares with memcmp. */
struct sd_cuda_lt_key {
    int32_t dtype, transa, transb, has_bias;
    int64_t m, n, k, lda, ldb, ldd;
    uint32_t align_a, align_b, align_c, align_d, align_bias;
    uint32_t reserved; /* no padding: keys compare bytewise */
};
typedef struct sd_cuda_lt_key LtKey;
static_assert(sizeof(LtKey) == 4 * 4 + 6 * 8 + 6 * 4, "LtKey has no padding");

#define LT_CACHE_SIZE 256

struct sd_cuda_lt_cache {
    LtKey keys[LT_CACHE_SIZE];
    cublasLtMatmulAlgo_t algos[LT_CACHE_SIZE];
    bool found[LT_CACHE_SIZE]; /* false: cuBLASLt has no algorithm (use the fallback) */
    int count, next;
};

cublasStatus_t sd_cuda_linear_init(sd_cuda_backend_t *cb) {
    cb->lt_cache = (struct sd_cuda_lt_cache *)calloc(1, sizeof *cb->lt_cache);
    return cb->lt_cache ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

void sd_cuda_linear_destroy(sd_cuda_backend_t *cb) {
    free(cb->lt_cache);
    cb->lt_cache = NULL;
}

namespace {

/* Largest power of two (up to 256) dividing the address and the batch stride. */
uint32_t alignment_of(const void *p, int64_t stride) {
    uintptr_t v = (uintptr_t)p | (uintptr_t)stride | (uintptr_t)256;
    return (uint32_t)(v & (~v + 1));
}

int lt_cache_find(const sd_cuda_lt_cache *c, const LtKey &key) {
    for (int i = 0; i < c->count; i++)
        if (memcmp(&c->keys[i], &key, sizeof key) == 0) return i;
    return -1;
}

void lt_cache_put(sd_cuda_lt_cache *c, const LtKey &key, const cublasLtMatmulAlgo_t *algo,
                  bool found) {
    int i = c->count < LT_CACHE_SIZE ? c->count++ : c->next++ % LT_CACHE_SIZE;
    c->keys[i] = key;
    if (found) c->algos[i] = *algo;
    c->found[i] = found;
}

/* cuBLASLt descriptors of one problem, destroyed together. */
struct LtDescs {
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    ~LtDescs() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

sd_status_t lt_fail(sd_ctx_t *ctx, cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_ALLOC_FAILED)
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "linear: %s: out of memory", what);
    return sd_fail_device(ctx, "linear: %s failed with cuBLAS status %d", what, (int)st);
}

#define LT_TRY(what, call)                                                                         \
    do {                                                                                           \
        cublasStatus_t lt_st_ = (call);                                                            \
        if (lt_st_ != CUBLAS_STATUS_SUCCESS) return lt_fail(ctx, lt_st_, what);                    \
    } while (0)

/* Runs q through cuBLASLt. *ran is false (and nothing was enqueued) when cuBLASLt has no
 * algorithm for it; the caller then uses the fallback kernels. */
sd_status_t lt_run(sd_ctx_t *ctx, const LtProblem &q, bool *ran) {
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    *ran = false;
    LtKey key;
    memset(&key, 0, sizeof key);
    key.dtype = q.dtype;
    key.transa = (int32_t)q.transa;
    key.transb = (int32_t)q.transb;
    key.has_bias = q.bias != NULL;
    key.m = q.m, key.n = q.n, key.k = q.k;
    key.lda = q.lda, key.ldb = q.ldb, key.ldd = q.ldd;
    key.align_a = alignment_of(q.a, q.stride_a);
    key.align_b = alignment_of(q.b, q.stride_b);
    key.align_c = alignment_of(q.c ? q.c : q.d, q.stride_d);
    key.align_d = alignment_of(q.d, q.stride_d);
    key.align_bias = q.bias ? alignment_of(q.bias, 0) : 0;
    const int hit = lt_cache_find(cb->lt_cache, key);
    if (hit >= 0 && !cb->lt_cache->found[hit]) return SD_STATUS_OK;

    const cudaDataType_t type = q.dtype == SD_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F;
    LtDescs ds;
    LT_TRY("matmul descriptor", cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = (int32_t)q.transa, tb = (int32_t)q.transb;
    LT_TRY("transa",
           cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY("transb",
           cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (q.bias) {
        const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_TRY("epilogue", cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                          &epi, sizeof epi));
        LT_TRY("bias", cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &q.bias, sizeof q.bias));
    }
    const bool na = q.transa == CUBLAS_OP_N, nb = q.transb == CUBLAS_OP_N;
    LT_TRY("layout A", cublasLtMatrixLayoutCreate(&ds.a, type, (uint64_t)(na ? q.m : q.k),
                                                  (uint64_t)(na ? q.k : q.m), q.lda));
    LT_TRY("layout B", cublasLtMatrixLayoutCreate(&ds.b, type, (uint64_t)(nb ? q.k : q.n),
                                                  (uint64_t)(nb ? q.n : q.k), q.ldb));
    LT_TRY("layout D",
           cublasLtMatrixLayoutCreate(&ds.d, type, (uint64_t)q.m, (uint64_t)q.n, q.ldd));

    cublasLtMatmulAlgo_t algo;
    if (hit >= 0) {
        algo = cb->lt_cache->algos[hit];
    } else {
        LT_TRY("preference", cublasLtMatmulPreferenceCreate(&ds.pref));
        const uint64_t ws = cb->lt_workspace_bytes;
        LT_TRY("workspace preference",
               cublasLtMatmulPreferenceSetAttribute(
                   ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        const uint32_t align_val[4] = {key.align_a, key.align_b, key.align_c, key.align_d};
        for (int i = 0; i < 4; i++)
            LT_TRY("alignment preference",
                   cublasLtMatmulPreferenceSetAttribute(ds.pref, align_attr[i], &align_val[i],
                                                        sizeof align_val[i]));
        cublasLtMatmulHeuristicResult_t result;
        int returned = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cb->lt, ds.op, ds.a, ds.b, ds.d, ds.d,
                                                           ds.pref, 1, &result, &returned);
        const bool found =
            st == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
        if (!found && st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED &&
            st != CUBLAS_STATUS_INVALID_VALUE)
            return lt_fail(ctx, st, "algorithm heuristic");
        lt_cache_put(cb->lt_cache, key, &result.algo, found);
        if (!found) return SD_STATUS_OK;
        algo = result.algo;
    }

    const float alpha = 1.0f, beta = q.c ? 1.0f : 0.0f;
    for (int32_t i = 0; i < q.batch; i++) {
        const char *a = (const char *)q.a + i * q.stride_a;
        const char *b = (const char *)q.b + i * q.stride_b;
        char *d = (char *)q.d + i * q.stride_d;
        const char *c = q.c ? (const char *)q.c + i * q.stride_d : d;
        /* C and D share one layout, which also lets C be D (an in-place residual). */
        LT_TRY("matmul",
               cublasLtMatmul(cb->lt, ds.op, &alpha, a, ds.a, b, ds.b, &beta, c, ds.d, d, ds.d,
                              &algo, cb->lt_workspace, cb->lt_workspace_bytes, cb->stream));
    }
    *ran = true;
    return SD_STATUS_OK;
}

/* Layout facts shared by both paths. */
struct LinearShape {
    int64_t nout, k, rows, batch, t;
    bool x_cf, out_cf;
};

sd_status_t launch_add_bias(sd_ctx_t *ctx, sd_tensor_t *out, const float *bias,
                            const LinearShape &s) {
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t total = s.rows * s.nout;
    const unsigned grid = sd_cuda_grid(cb, total);
    if (out->dtype == SD_DTYPE_F16)
        add_bias_kernel<__half><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (__half *)out->data, bias, total, s.nout, s.t, s.out_cf);
    else
        add_bias_kernel<float><<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            (float *)out->data, bias, total, s.nout, s.t, s.out_cf);
    return sd_cuda_check_launch(ctx, "linear bias");
}

sd_status_t linear_lt(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x, const sd_tensor_t *w,
                      const sd_tensor_t *bias, const sd_tensor_t *residual, const LinearShape &s,
                      bool *ran) {
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t es = (int64_t)sd_dtype_size(out->dtype);
    LtProblem q;
    memset(&q, 0, sizeof q);
    q.dtype = out->dtype;
    q.k = s.k;
    q.c = residual ? residual->data : NULL;
    q.d = out->data;
    if (!s.out_cf) {
        q.m = s.nout;
        q.transa = CUBLAS_OP_T; /* W (N, K) row-major is K x N column-major */
        q.a = w->data;
        q.lda = s.k;
        q.ldd = s.nout;
        if (!s.x_cf) { /* x (rows, K): K x rows column-major */
            q.n = s.rows;
            q.transb = CUBLAS_OP_N;
            q.b = x->data;
            q.ldb = s.k;
            q.batch = 1;
        } else { /* x_b (K, T): T x K column-major, transposed */
            q.n = s.t;
            q.transb = CUBLAS_OP_T;
            q.b = x->data;
            q.ldb = s.t;
            q.batch = (int32_t)s.batch;
            q.stride_b = s.k * s.t * es;
            q.stride_d = s.t * s.nout * es;
        }
    } else { /* out_b (N, T) row-major: T x N column-major */
        q.m = s.t;
        q.n = s.nout;
        q.transa = s.x_cf ? CUBLAS_OP_N : CUBLAS_OP_T;
        q.a = x->data;
        q.lda = s.x_cf ? s.t : s.k;
        q.transb = CUBLAS_OP_N; /* W^T: K x N column-major */
        q.b = w->data;
        q.ldb = s.k;
        q.ldd = s.t;
        q.batch = (int32_t)s.batch;
        q.stride_a = s.k * s.t * es;
        q.stride_d = s.nout * s.t * es;
    }

    bool post_bias = false;
    if (bias != NULL) {
        if (s.out_cf) {
            post_bias = true;
        } else if (out->dtype == SD_DTYPE_F32) {
            q.bias = bias->data;
        } else if ((size_t)s.nout * sizeof(__half) <= cb->scratch_bytes) {
            __half *b16 = (__half *)cb->scratch;
            bias_to_f16_kernel<<<sd_cuda_grid(cb, s.nout), SD_CUDA_THREADS, 0, cb->stream>>>(
                b16, (const float *)bias->data, s.nout);
            SD_TRY(sd_cuda_check_launch(ctx, "linear bias"));
            q.bias = b16;
        } else {
            post_bias = true;
        }
    }
    SD_TRY(lt_run(ctx, q, ran));
    if (*ran && post_bias) return launch_add_bias(ctx, out, (const float *)bias->data, s);
    return SD_STATUS_OK;
}

sd_status_t linear_igemm(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                         const sd_tensor_t *w, const sd_tensor_t *bias, const sd_tensor_t *residual,
                         const LinearShape &s) {
    if (s.k > INT32_MAX || s.nout > INT32_MAX || s.t > INT32_MAX || s.batch > INT32_MAX)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                       "linear: dimensions beyond 2^31 in the fallback kernels");
    sd_cuda_igemm_t g;
    memset(&g, 0, sizeof g);
    g.x = x->data;
    g.w = w->data;
    g.w_dtype = w->dtype;
    g.bias = bias ? bias->data : NULL;
    g.bias_dtype = SD_DTYPE_F32;
    g.residual = residual ? residual->data : NULL;
    g.out = out->data;
    g.act_dtype = out->dtype;
    /* A 1x1 convolution over a 1 x T image per batch entry. */
    g.batch = (int32_t)s.batch;
    g.cin = (int32_t)s.k;
    g.h = 1;
    g.w_ = (int32_t)s.t;
    g.kh = g.kw = 1;
    g.oh = 1;
    g.ow = (int32_t)s.t;
    g.cout = (int32_t)s.nout;
    g.stride_h = g.stride_w = 1;
    g.x_sn = s.k * s.t;
    g.x_sc = s.x_cf ? s.t : 1;
    g.x_sh = 0;
    g.x_sw = s.x_cf ? 1 : s.k;
    g.o_sn = s.nout * s.t;
    g.o_sc = s.out_cf ? s.t : 1;
    g.o_sp = s.out_cf ? 1 : s.nout;
    return sd_cuda_igemm_run(ctx, &g);
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_linear(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x,
                           const sd_tensor_t *w, const sd_tensor_t *bias,
                           const sd_tensor_t *residual, const sd_linear_params_t *p) {
    SD_TRY(sd_cuda_enter(ctx, "linear"));
    LinearShape s;
    s.nout = w->shape[0];
    s.k = w->shape[1];
    s.rows = sd_tensor_numel(x) / s.k;
    s.x_cf = p->in_layout == SD_LAYOUT_CHANNELS_FIRST;
    s.out_cf = p->out_layout == SD_LAYOUT_CHANNELS_FIRST;
    /* A channels-first side has a batch axis that both sides share (checked by ops.c). */
    s.batch = s.x_cf || s.out_cf ? x->shape[0] : 1;
    s.t = s.rows / s.batch;
    if (s.batch > INT32_MAX)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED, "linear: batch beyond 2^31");
    if (w->dtype == out->dtype) {
        bool ran = false;
        SD_TRY(linear_lt(ctx, out, x, w, bias, residual, s, &ran));
        if (ran) return SD_STATUS_OK;
        sd_log(ctx, SD_LOG_DEBUG,
               "linear: no cuBLASLt algorithm for %lld x %lld x %lld (%s); using the fallback "
               "kernels",
               (long long)s.rows, (long long)s.nout, (long long)s.k, sd_dtype_name(out->dtype));
    }
    return linear_igemm(ctx, out, x, w, bias, residual, s);
}
