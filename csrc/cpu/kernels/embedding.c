/*
 * embedding.c - row gather (token embeddings) on the CPU.
 *
 * ids: (B, T) i32 in [0, V); table: (V, C) f32/f16/bf16 -> out: (B, T, C) f32.
 * ref: torch.nn.Embedding.
 */
#include "../cpu.h"

sd_status_t sd_cpu_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *ids,
                             const sd_tensor_t *table) {
    const int64_t rows = sd_tensor_numel(ids), v = table->shape[0], c = table->shape[1];
    const int32_t *id = ids->data;
    for (int64_t r = 0; r < rows; r++)
        if (id[r] < 0 || id[r] >= v)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "embedding: id %d at position %lld outside the table's %lld rows",
                           (int)id[r], (long long)r, (long long)v);
    const size_t es = sd_dtype_size(table->dtype);
    float *o = out->data;
    for (int64_t r = 0; r < rows; r++) {
        const char *src = (const char *)table->data + (size_t)id[r] * (size_t)c * es;
        if (table->dtype == SD_DTYPE_F16)
            sd_cpu(ctx)->kern->f16_to_f32(o + r * c, (const uint16_t *)src, c);
        else
            sd_convert_to_f32(o + r * c, src, table->dtype, c);
    }
    return SD_STATUS_OK;
}
