/*
 * backend.cu - the CUDA backend: device selection, memory, transfers, weights, op table.
 *
 * One cudaStream_t per context; every op enqueues its kernels (or cuBLASLt matmuls) on it
 * and returns without waiting, so a model forward can be captured into a CUDA graph and
 * replayed. Ops never allocate, synchronise or copy to or from the host: what they need
 * beyond their tensors (the cuBLASLt workspace, a small scratch buffer, the deferred error
 * word) is allocated here when the context is created. The synchronisation points are
 * download (waits for the stream), freeing memory (cudaFree waits for the device) and the
 * weight upload, which stages through host memory.
 *
 * Activations: F32 and F16 in every op (act_dtypes); model graphs use F16 (act_dtype),
 * always with float32 accumulation. Weights made by weight_from_host: matrices and tables
 * as F16, vectors as F32.
 */
#include "backend.cuh"

#include "activation.cuh"
#include "attention.cuh"
#include "conv2d.cuh"
#include "convert.cuh"
#include "elementwise.cuh"
#include "embedding.cuh"
#include "group-norm.cuh"
#include "layer-norm.cuh"
#include "linear.cuh"
#include "sd-cuda.h"
#include "timestep-embedding.cuh"
#include "upsample.cuh"

#include <math.h>
#include <string.h>

#define CUDA_ALIGN         256
#define LT_WORKSPACE_BYTES ((size_t)32 << 20) /* what cuBLASLt suggests for Hopper */
#define SCRATCH_BYTES      ((size_t)4 << 20)
#define MIN_CC_MAJOR       8 /* Ampere: mma.sync f16, cp.async, bf16 */

cudaError_t sd_cuda_set_device(const sd_cuda_backend_t *cb) {
    int cur = -1;
    cudaError_t err = cudaGetDevice(&cur);
    if (err != cudaSuccess) return err;
    return cur == cb->device ? cudaSuccess : cudaSetDevice(cb->device);
}

sd_status_t sd_cuda_fail(sd_ctx_t *ctx, cudaError_t err, const char *what) {
    return sd_fail_device(ctx, "%s: CUDA error %d (%s): %s", what, (int)err, cudaGetErrorName(err),
                          cudaGetErrorString(err));
}

/* ---- memory ------------------------------------------------------------------------------ */

static void *cuda_alloc(sd_backend_t *be, size_t nbytes) {
    sd_cuda_backend_t *cb = (sd_cuda_backend_t *)be;
    if (sd_cuda_set_device(cb) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    void *p = NULL;
    /* cudaMalloc returns 256-byte aligned memory (CUDA_ALIGN). */
    if (cudaMalloc(&p, nbytes ? nbytes : 1) != cudaSuccess) {
        /* Out of memory is not sticky: clear it so the next launch check does not see it. */
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cuda_free(sd_backend_t *be, void *p) {
    if (p == NULL) return;
    if (sd_cuda_set_device((sd_cuda_backend_t *)be) == cudaSuccess) (void)cudaFree(p);
    /* Nothing to report to: a sticky error shows at the context's next call. */
    (void)cudaGetLastError();
}

static sd_status_t cuda_upload(sd_ctx_t *ctx, void *dst, const void *src, size_t nbytes) {
    SD_TRY(sd_cuda_enter(ctx, "upload"));
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    /* From pageable memory cudaMemcpyAsync returns once the source is staged, so the caller
     * may reuse it at once. Page-locked memory is read later by the DMA engine: wait then. */
    cudaPointerAttributes attr;
    bool pinned =
        cudaPointerGetAttributes(&attr, src) == cudaSuccess && attr.type == cudaMemoryTypeHost;
    (void)cudaGetLastError();
    cudaError_t err = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, cb->stream);
    if (err == cudaSuccess && pinned) err = cudaStreamSynchronize(cb->stream);
    return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "upload");
}

/* Reports (and clears) a deferred error that a kernel recorded in err_dev. Called after the
 * stream has been synchronised with err_host refreshed. */
static sd_status_t take_deferred_error(sd_ctx_t *ctx) {
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    if (cb->err_host[0] == 0) return SD_STATUS_OK;
    int32_t pos = cb->err_host[1], id = cb->err_host[2], rows = cb->err_host[3];
    memset(cb->err_host, 0, 4 * sizeof(int32_t));
    cudaError_t err = cudaMemsetAsync(cb->err_dev, 0, 4 * sizeof(int32_t), cb->stream);
    if (err != cudaSuccess) return sd_cuda_fail(ctx, err, "download");
    return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                   "embedding: id %d at position %d outside the table's %d rows (found on the "
                   "GPU by an earlier sd_op_embedding; results computed from it are invalid)",
                   (int)id, (int)pos, (int)rows);
}

static sd_status_t cuda_download(sd_ctx_t *ctx, void *dst, const void *src, size_t nbytes) {
    SD_TRY(sd_cuda_enter(ctx, "download"));
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    cudaError_t err = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, cb->stream);
    if (err == cudaSuccess)
        err = cudaMemcpyAsync(cb->err_host, cb->err_dev, 4 * sizeof(int32_t),
                              cudaMemcpyDeviceToHost, cb->stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(cb->stream);
    if (err != cudaSuccess) return sd_cuda_fail(ctx, err, "download");
    return take_deferred_error(ctx);
}

/* ---- weights ----------------------------------------------------------------------------- */

#define CONVERT_CHUNK ((int64_t)1 << 20) /* elements converted per staging round */

/* Uploads n elements of host weights (F32/F16/BF16) converted to dst_dtype (F32 or F16),
 * a chunk at a time through a host staging buffer. */
static sd_status_t upload_converted(sd_ctx_t *ctx, void *dst, int32_t dst_dtype, const void *src,
                                    int32_t src_dtype, int64_t n) {
    sd_cuda_backend_t *cb = sd_cuda(ctx);
    const size_t des = sd_dtype_size(dst_dtype), ses = sd_dtype_size(src_dtype);
    const int64_t chunk = SD_MIN(n, CONVERT_CHUNK);
    void *stage = malloc((size_t)chunk * des);
    float *wide = (float *)malloc((size_t)chunk * sizeof(float));
    sd_status_t st = SD_STATUS_OK;
    if (stage == NULL || wide == NULL) {
        st = sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "weight upload: out of host memory");
        goto done;
    }
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
        const int64_t cnt = SD_MIN(chunk, n - i0);
        sd_convert_to_f32(wide, (const char *)src + (size_t)i0 * ses, src_dtype, cnt);
        if (dst_dtype == SD_DTYPE_F32) {
            memcpy(stage, wide, (size_t)cnt * sizeof(float));
        } else {
            uint16_t *h = (uint16_t *)stage;
            for (int64_t i = 0; i < cnt; i++) {
                if (isfinite(wide[i]) && fabsf(wide[i]) > 65504.0f) {
                    st = sd_fail(ctx, SD_STATUS_BAD_MODEL,
                                 "weight value %g at element %lld is outside the f16 range "
                                 "that the CUDA backend stores matrices in",
                                 (double)wide[i], (long long)(i0 + i));
                    goto done;
                }
                h[i] = sd_f32_to_f16(wide[i]);
            }
        }
        /* Pageable source: returns once staged, so `stage` can be refilled. */
        cudaError_t err = cudaMemcpyAsync((char *)dst + (size_t)i0 * des, stage, (size_t)cnt * des,
                                          cudaMemcpyHostToDevice, cb->stream);
        if (err != cudaSuccess) {
            st = sd_cuda_fail(ctx, err, "weight upload");
            goto done;
        }
    }
done:
    free(stage);
    free(wide);
    return st;
}

static sd_status_t cuda_weight_from_host(sd_ctx_t *ctx, const sd_tensor_t *host, int32_t role,
                                         sd_tensor_t *out) {
    SD_TRY(sd_cuda_enter(ctx, "weight upload"));
    if (host->dtype != SD_DTYPE_F32 && host->dtype != SD_DTYPE_F16 && host->dtype != SD_DTYPE_BF16)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "weight upload: unsupported dtype %s",
                       sd_dtype_name(host->dtype));
    /* Matrices and tables in f16, the tensor-core and cuBLASLt input type (bf16 -> f16 is
     * exact for every value in f16's normal range); vectors in f32, as the ops read them. */
    const int32_t dtype = role == SD_WEIGHT_VECTOR ? SD_DTYPE_F32 : SD_DTYPE_F16;
    sd_tensor_t t;
    if (!sd_tensor_init_header(&t, dtype, host->ndim, host->shape))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "weight upload: invalid shape");
    t.data = cuda_alloc(sd_ctx_backend_ptr(ctx), t.nbytes);
    if (t.data == NULL)
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY,
                       "weight upload: cannot allocate %zu bytes of device memory", t.nbytes);
    t.kind = SD_TENSOR_OWNED;
    sd_status_t st;
    if (host->dtype == dtype) {
        cudaError_t err = cudaMemcpyAsync(t.data, host->data, t.nbytes, cudaMemcpyHostToDevice,
                                          sd_cuda(ctx)->stream);
        st = err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "weight upload");
    } else {
        st = upload_converted(ctx, t.data, dtype, host->data, host->dtype, sd_tensor_numel(host));
    }
    if (st == SD_STATUS_OK) {
        /* Wait: the source may be page-locked memory still being read by the DMA engine. */
        cudaError_t err = cudaStreamSynchronize(sd_cuda(ctx)->stream);
        if (err != cudaSuccess) st = sd_cuda_fail(ctx, err, "weight upload");
    }
    if (st != SD_STATUS_OK) {
        cuda_free(sd_ctx_backend_ptr(ctx), t.data);
        return st;
    }
    *out = t;
    sd_ctx_add_weights_bytes(ctx, (int64_t)t.nbytes);
    return SD_STATUS_OK;
}

/* Writes the new values into the memory the weight already has (its dtype and byte size
 * follow from the role and the shape, which do not change), so that recorded UNet graphs,
 * which bake in weight addresses, stay valid. A failure part-way leaves a mix of old and
 * new values: the caller replaces the weight again (sd_model_set_weights says so). */
static sd_status_t cuda_weight_update(sd_ctx_t *ctx, const sd_tensor_t *host, int32_t role,
                                      sd_tensor_t *w) {
    SD_TRY(sd_cuda_enter(ctx, "weight update"));
    if (host->dtype != SD_DTYPE_F32 && host->dtype != SD_DTYPE_F16 && host->dtype != SD_DTYPE_BF16)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "weight update: unsupported dtype %s",
                       sd_dtype_name(host->dtype));
    const int32_t dtype = role == SD_WEIGHT_VECTOR ? SD_DTYPE_F32 : SD_DTYPE_F16;
    if (w->dtype != dtype || sd_tensor_numel(w) != sd_tensor_numel(host))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "weight update: the weight was not made for this role and shape");
    sd_status_t st;
    if (host->dtype == dtype) {
        cudaError_t err = cudaMemcpyAsync(w->data, host->data, w->nbytes, cudaMemcpyHostToDevice,
                                          sd_cuda(ctx)->stream);
        st = err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "weight update");
    } else {
        st = upload_converted(ctx, w->data, dtype, host->data, host->dtype, sd_tensor_numel(host));
    }
    if (st == SD_STATUS_OK) {
        /* Wait: the caller may release the source as soon as this returns. */
        cudaError_t err = cudaStreamSynchronize(sd_cuda(ctx)->stream);
        if (err != cudaSuccess) st = sd_cuda_fail(ctx, err, "weight update");
    }
    return st;
}

/* Every weight is uploaded: the host data is never read after the call. */
static bool cuda_weight_copies(int32_t role, int32_t dtype) {
    (void)role, (void)dtype;
    return true; /* uploads */
}

static void cuda_weight_free(sd_ctx_t *ctx, sd_tensor_t *w) {
    if (w->kind == SD_TENSOR_OWNED) {
        sd_ctx_add_weights_bytes(ctx, -(int64_t)w->nbytes);
        cuda_free(sd_ctx_backend_ptr(ctx), w->data);
    }
    w->data = NULL;
}

static sd_status_t cuda_synchronize(sd_ctx_t *ctx) {
    cudaError_t err = cudaStreamSynchronize(sd_cuda(ctx)->stream);
    return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "synchronize");
}

/* ---- graphs ------------------------------------------------------------------------------ */

/* Thread-local capture: other threads (other contexts) may keep allocating meanwhile. */
static sd_status_t cuda_graph_begin(sd_ctx_t *ctx) {
    SD_TRY(sd_cuda_enter(ctx, "graph capture"));
    cudaError_t err =
        cudaStreamBeginCapture(sd_cuda(ctx)->stream, cudaStreamCaptureModeThreadLocal);
    return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "cudaStreamBeginCapture");
}

/* Ends the capture even when an op failed inside it. A capture the driver invalidated (an
 * op did something that cannot be recorded) is not a device failure: the context stays
 * usable and the caller runs eagerly instead. */
static sd_status_t cuda_graph_end(sd_ctx_t *ctx, void **out) {
    *out = NULL;
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(sd_cuda(ctx)->stream, &graph);
    if (err != cudaSuccess) {
        if (graph) (void)cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED, "graph capture: %s", cudaGetErrorString(err));
    }
    cudaGraphExec_t exec = NULL;
    err = cudaGraphInstantiateWithFlags(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    if (err != cudaSuccess) return sd_cuda_fail(ctx, err, "cudaGraphInstantiateWithFlags");
    *out = (void *)exec;
    return SD_STATUS_OK;
}

static sd_status_t cuda_graph_launch(sd_ctx_t *ctx, void *graph) {
    SD_TRY(sd_cuda_enter(ctx, "graph launch"));
    cudaError_t err = cudaGraphLaunch((cudaGraphExec_t)graph, sd_cuda(ctx)->stream);
    return err == cudaSuccess ? SD_STATUS_OK : sd_cuda_fail(ctx, err, "cudaGraphLaunch");
}

static void cuda_graph_free(sd_backend_t *be, void *graph) {
    (void)be;
    if (graph) (void)cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

/* ---- lifetime ---------------------------------------------------------------------------- */

static void cuda_destroy(sd_backend_t *be) {
    sd_cuda_backend_t *cb = (sd_cuda_backend_t *)be;
    if (sd_cuda_set_device(cb) == cudaSuccess) {
        if (cb->stream) (void)cudaStreamSynchronize(cb->stream);
        sd_cuda_linear_destroy(cb);
        if (cb->lt) (void)cublasLtDestroy(cb->lt);
        (void)cudaFree(cb->lt_workspace);
        (void)cudaFree(cb->scratch);
        (void)cudaFree(cb->err_dev);
        (void)cudaFreeHost(cb->err_host);
        if (cb->stream) (void)cudaStreamDestroy(cb->stream);
    }
    (void)cudaGetLastError();
    free(cb);
}

static const sd_backend_ops_t cuda_ops = {
    /* .destroy = */ cuda_destroy,
    /* .alloc = */ cuda_alloc,
    /* .free = */ cuda_free,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .weight_from_host = */ cuda_weight_from_host,
    /* .weight_free = */ cuda_weight_free,
    /* .weight_update = */ cuda_weight_update,
    /* .weight_copies = */ cuda_weight_copies,
    /* .weight_merges = */ NULL, /* adapters are merged on the host and uploaded */
    /* .weight_merge = */ NULL,
    /* .conv2d = */ sd_cuda_conv2d,
    /* .conv2d_up2 = */ NULL, /* not fused: the decoders upsample, then convolve */
    /* .copy_rows = */ NULL,  /* decoders run whole images */
    /* .linear = */ sd_cuda_linear,
    /* .group_norm = */ sd_cuda_group_norm,
    /* .layer_norm = */ sd_cuda_layer_norm,
    /* .attention = */ sd_cuda_attention,
    /* .activation = */ sd_cuda_activation,
    /* .geglu = */ sd_cuda_geglu,
    /* .upsample_nearest = */ sd_cuda_upsample_nearest,
    /* .binary = */ sd_cuda_binary,
    /* .concat = */ sd_cuda_concat,
    /* .clamp = */ sd_cuda_clamp,
    /* .tanh_clamp = */ sd_cuda_tanh_clamp,
    /* .convert = */ sd_cuda_convert,
    /* .timestep_embedding = */ sd_cuda_timestep_embedding,
    /* .embedding = */ sd_cuda_embedding,
    /* .synchronize = */ cuda_synchronize,
    /* .graph_begin = */ cuda_graph_begin,
    /* .graph_end = */ cuda_graph_end,
    /* .graph_launch = */ cuda_graph_launch,
    /* .graph_free = */ cuda_graph_free,
};

static void copy_reason(char *dst, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void copy_reason(char *dst, size_t len, const char *fmt, ...) {
    if (dst == NULL || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, len, fmt, ap);
    va_end(ap);
}

/* Number of devices, or -1 with the reason when the runtime cannot be used. */
static int device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        copy_reason(why, why_len, "no usable CUDA device: %s", cudaGetErrorString(err));
        (void)cudaGetLastError();
        return -1;
    }
    if (n == 0) copy_reason(why, why_len, "no CUDA device");
    return n;
}

static bool device_cc(int dev, int *major, int *minor) {
    bool ok =
        cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess;
    (void)cudaGetLastError();
    return ok;
}

bool sd_backend_cuda_available(char *reason, size_t reason_len) {
    copy_reason(reason, reason_len, "%s", "");
    int n = device_count(reason, reason_len);
    if (n <= 0) return false;
    char found[128] = "";
    size_t used = 0;
    for (int d = 0; d < n; d++) {
        int major = 0, minor = 0;
        if (!device_cc(d, &major, &minor)) continue;
        if (major >= MIN_CC_MAJOR) {
            copy_reason(reason, reason_len, "%s", "");
            return true;
        }
        if (used < sizeof found)
            used += (size_t)snprintf(found + used, sizeof found - used, "%ssm_%d%d",
                                     used ? ", " : "", major, minor);
    }
    copy_reason(reason, reason_len,
                "no GPU with compute capability >= %d.0 (the CUDA backend needs Ampere or newer; "
                "found %s)",
                MIN_CC_MAJOR, found[0] ? found : "none readable");
    return false;
}

sd_status_t sd_backend_cuda_create(const sd_ctx_params_t *p, sd_backend_t **out, char *err,
                                   size_t err_len) {
    *out = NULL;
    if (p->device < 0) {
        copy_reason(err, err_len, "sd_ctx_init: device %d must be >= 0", (int)p->device);
        return SD_STATUS_INVALID_ARGUMENT;
    }
    if (p->precision != SD_PRECISION_F32) {
        /* Activations are F16 with F32 accumulation already; bf16 is the CPU's option. */
        copy_reason(err, err_len,
                    "sd_ctx_init: precision %d is a CPU option; the CUDA backend computes in f16",
                    (int)p->precision);
        return SD_STATUS_UNSUPPORTED;
    }
    char why[192];
    int n = device_count(why, sizeof why);
    if (n <= 0) {
        copy_reason(err, err_len, "sd_ctx_init: %s", why);
        return SD_STATUS_DEVICE;
    }
    if (p->device >= n) {
        copy_reason(err, err_len, "sd_ctx_init: no CUDA device %d (%d present)", (int)p->device, n);
        return SD_STATUS_DEVICE;
    }
    int major = 0, minor = 0;
    if (!device_cc(p->device, &major, &minor) || major < MIN_CC_MAJOR) {
        copy_reason(err, err_len,
                    "sd_ctx_init: CUDA device %d has compute capability %d.%d; the CUDA backend "
                    "needs %d.0 or newer",
                    (int)p->device, major, minor, MIN_CC_MAJOR);
        return SD_STATUS_DEVICE;
    }

    sd_cuda_backend_t *cb = (sd_cuda_backend_t *)calloc(1, sizeof *cb);
    if (cb == NULL) {
        copy_reason(err, err_len, "sd_ctx_init: out of host memory");
        return SD_STATUS_OUT_OF_MEMORY;
    }
    cb->base.ops = &cuda_ops;
    cb->base.kind = SD_BACKEND_CUDA;
    cb->base.alignment = CUDA_ALIGN;
    cb->base.act_dtypes = (1u << SD_DTYPE_F32) | (1u << SD_DTYPE_F16);
    cb->base.act_dtype = SD_DTYPE_F16;
    cb->device = p->device;
    cb->cc_major = major;
    cb->cc_minor = minor;

    /* Each step runs while the previous ones succeeded; `step` names the one that failed. */
    const char *step = "";
    cudaError_t cerr = cudaSuccess;
#define STEP(name, call)                                                                           \
    do {                                                                                           \
        if (cerr == cudaSuccess) {                                                                 \
            step = name;                                                                           \
            cerr = (call);                                                                         \
        }                                                                                          \
    } while (0)
    cudaDeviceProp prop;
    cb->lt_workspace_bytes = LT_WORKSPACE_BYTES;
    cb->scratch_bytes = SCRATCH_BYTES;
    STEP("cudaSetDevice", cudaSetDevice(cb->device));
    STEP("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, cb->device));
    STEP("cudaDeviceGetAttribute",
         cudaDeviceGetAttribute(&cb->sm_count, cudaDevAttrMultiProcessorCount, cb->device));
    STEP("cudaDeviceGetAttribute",
         cudaDeviceGetAttribute(&cb->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                cb->device));
    STEP("creating the stream", cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
    STEP("allocating the cuBLASLt workspace",
         cudaMalloc(&cb->lt_workspace, cb->lt_workspace_bytes));
    STEP("allocating scratch", cudaMalloc(&cb->scratch, cb->scratch_bytes));
    STEP("allocating the error word", cudaMalloc((void **)&cb->err_dev, 16));
    STEP("clearing the error word", cudaMemset(cb->err_dev, 0, 16));
    STEP("allocating pinned memory", cudaMallocHost((void **)&cb->err_host, 16));
    STEP("kernel setup", sd_cuda_attention_setup(cb));
#undef STEP
    if (cerr != cudaSuccess) {
        copy_reason(err, err_len, "sd_ctx_init: CUDA device %d: %s failed: %s", (int)p->device,
                    step, cudaGetErrorString(cerr));
        sd_status_t st =
            cerr == cudaErrorMemoryAllocation ? SD_STATUS_OUT_OF_MEMORY : SD_STATUS_DEVICE;
        cuda_destroy(&cb->base);
        return st;
    }
    memset(cb->err_host, 0, 16);
    cublasStatus_t bst = cublasLtCreate(&cb->lt);
    if (bst == CUBLAS_STATUS_SUCCESS) bst = sd_cuda_linear_init(cb);
    if (bst != CUBLAS_STATUS_SUCCESS) {
        copy_reason(err, err_len, "sd_ctx_init: cuBLASLt initialisation failed (status %d)",
                    (int)bst);
        sd_status_t st =
            bst == CUBLAS_STATUS_ALLOC_FAILED ? SD_STATUS_OUT_OF_MEMORY : SD_STATUS_DEVICE;
        cuda_destroy(&cb->base);
        return st;
    }
    int driver = 0, runtime = 0;
    (void)cudaDriverGetVersion(&driver);
    (void)cudaRuntimeGetVersion(&runtime);
    (void)cudaGetLastError();
    snprintf(cb->base.description, sizeof cb->base.description,
             "cuda: %.96s (device %d, sm_%d%d, %d SMs, %.1f GiB), driver %d.%d, runtime %d.%d",
             prop.name, cb->device, major, minor, cb->sm_count,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), driver / 1000,
             driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    *out = &cb->base;
    return SD_STATUS_OK;
}

/* ---- hooks for tests and benchmarks (sd-cuda.h) ------------------------------------------- */

void *sd_cuda_ctx_stream(sd_ctx_t *ctx) {
    if (ctx == NULL || sd_ctx_backend_ptr(ctx)->kind != SD_BACKEND_CUDA) return NULL;
    return (void *)sd_cuda(ctx)->stream;
}

sd_status_t sd_cuda_capture_begin(sd_ctx_t *ctx) {
    return cuda_graph_begin(ctx);
}

sd_status_t sd_cuda_capture_end_and_replay(sd_ctx_t *ctx, int replays) {
    void *graph = NULL;
    SD_TRY(cuda_graph_end(ctx, &graph));
    sd_status_t st = SD_STATUS_OK;
    for (int i = 0; st == SD_STATUS_OK && i < replays; i++) st = cuda_graph_launch(ctx, graph);
    if (st == SD_STATUS_OK) st = cuda_synchronize(ctx);
    cuda_graph_free(sd_ctx_backend_ptr(ctx), graph);
    return st;
}
