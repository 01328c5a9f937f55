/*
 * convert.c - element type conversion on the CPU (F32 <-> F16 / BF16).
 *
 * x, out: same shape, any float dtype. ref: torch.Tensor.to(dtype), round to nearest even.
 */
#include "../cpu.h"

#include <string.h>

sd_status_t sd_cpu_convert(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *x) {
    const int64_t n = sd_tensor_numel(x);
    if (out->dtype == x->dtype) {
        if (out->data != x->data) memcpy(out->data, x->data, x->nbytes);
        return SD_STATUS_OK;
    }
    if (out->dtype == SD_DTYPE_F32) {
        if (x->dtype == SD_DTYPE_F16)
            sd_cpu(ctx)->kern->f16_to_f32(out->data, x->data, n);
        else
            sd_convert_to_f32(out->data, x->data, x->dtype, n);
        return SD_STATUS_OK;
    }
    /* To a half type, through float. */
    const float *src = x->data;
    float *tmp = NULL;
    if (x->dtype != SD_DTYPE_F32) {
        tmp = malloc((size_t)n * sizeof(float));
        if (tmp == NULL)
            return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "convert: out of host memory");
        sd_convert_to_f32(tmp, x->data, x->dtype, n);
        src = tmp;
    }
    uint16_t *dst = out->data;
    for (int64_t i = 0; i < n; i++)
        dst[i] = out->dtype == SD_DTYPE_F16 ? sd_f32_to_f16(src[i]) : sd_f32_to_bf16(src[i]);
    free(tmp);
    return SD_STATUS_OK;
}
