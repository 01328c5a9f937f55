/*
 * embedding.cu - row gather (token embeddings) on the GPU.
 *
 * ids: (B, T) i32 in [0, V); table: (V, C) f32/f16/bf16 -> out: (B, T, C) f32/f16.
 * ref: torch.nn.Embedding (csrc/cpu/kernels/embedding.c).
 *
 * The ids live in device memory, so checking them before the gather would need a copy to
 * the host and a wait on every call (and could not be captured in a CUDA graph). Instead the
 * kernel clamps an id out of range (the gather stays in bounds) and records the first one it
 * meets in the context's device error word; every download copies that word back with its
 * data, and a set word makes the download fail with SD_STATUS_INVALID_ARGUMENT naming the id.
 * So the error surfaces at the next sync point (in a txt2img call, the first UNet step's
 * download), the context stays usable, and the op itself never waits.
 */
#include "embedding.cuh"

namespace {

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

/* ids: (rows) i32; table: (v, c) TT -> out: (rows, c) T. err: {flag, position, id, v}, set
 * once by the first thread to find an id outside [0, v). ref: torch.nn.Embedding. */
template <typename TT, typename T>
__global__ void embedding_kernel(T *out, const int32_t *ids, const TT *table, int64_t rows,
                                 int64_t c, int64_t v, int32_t *err) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * c; i += stride) {
        const int64_t r = i / c, col = i - r * c;
        int64_t id = ids[r];
        if (id < 0 || id >= v) {
            if (col == 0 && atomicCAS(err, 0, 1) == 0) {
                err[1] = (int32_t)r;
                err[2] = (int32_t)id;
                err[3] = (int32_t)v;
            }
            id = id < 0 ? 0 : v - 1;
        }
        out[i] = sd_from_f32<T>(sd_to_f32(table[id * c + col]));
    }
}

/* ---------------------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------------------- */

template <typename T>
void launch(const sd_cuda_backend_t *cb, T *out, const sd_tensor_t *ids, const sd_tensor_t *table,
            int64_t rows, int64_t c) {
    const unsigned grid = sd_cuda_grid(cb, rows * c);
    const int32_t *id = (const int32_t *)ids->data;
    const int64_t v = table->shape[0];
    switch (table->dtype) {
    case SD_DTYPE_F16:
        embedding_kernel<<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            out, id, (const __half *)table->data, rows, c, v, cb->err_dev);
        break;
    case SD_DTYPE_BF16:
        embedding_kernel<<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            out, id, (const __nv_bfloat16 *)table->data, rows, c, v, cb->err_dev);
        break;
    default:
        embedding_kernel<<<grid, SD_CUDA_THREADS, 0, cb->stream>>>(
            out, id, (const float *)table->data, rows, c, v, cb->err_dev);
        break;
    }
}

} // namespace

/* ---------------------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------------------- */

sd_status_t sd_cuda_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                              const sd_tensor_t *table) {
    SD_TRY(sd_cuda_enter(ctx, "embedding"));
    const sd_cuda_backend_t *cb = sd_cuda(ctx);
    const int64_t rows = sd_tensor_numel(ids), c = table->shape[1];
    if (out->dtype == SD_DTYPE_F16)
        launch(cb, (__half *)out->data, ids, table, rows, c);
    else
        launch(cb, (float *)out->data, ids, table, rows, c);
    return sd_cuda_check_launch(ctx, "embedding");
}
