/*
 * timestep-embedding.c - sinusoidal timestep embedding on the CPU.
 *
 * t: (N) f32 -> out: (N, D) f32. ref: diffusers.models.embeddings.get_timestep_embedding:
 * freq_i = exp(-ln(max_period) * i / (D/2 - shift)) for i < D/2, arguments scale * t *
 * freq_i, halves [sin, cos] ([cos, sin] with flip_sin_to_cos), a zero column for odd D.
 * Computed in float32 step by step as torch does, so large arguments (t up to 999) round
 * the same way before sin/cos.
 */
#include "../cpu.h"

#include <math.h>

sd_status_t sd_cpu_timestep_embedding(sd_ctx_t *ctx, sd_tensor_t *out, const sd_tensor_t *t,
                                      const sd_timestep_embedding_params_t *p) {
    (void)ctx;
    const int64_t n = out->shape[0], d = out->shape[1], half = d / 2;
    const float *ts = t->data;
    float *o = out->data;
    const float neg_log_period = (float)-log((double)p->max_period);
    const float denom = (float)half - p->downscale_freq_shift;
    for (int64_t i = 0; i < n; i++) {
        float *row = o + i * d;
        for (int64_t f = 0; f < half; f++) {
            float exponent = neg_log_period * (float)f / denom;
            float arg = p->scale * (ts[i] * expf(exponent));
            float s = sinf(arg), c = cosf(arg);
            row[f] = p->flip_sin_to_cos ? c : s;
            row[half + f] = p->flip_sin_to_cos ? s : c;
        }
        if (d % 2) row[d - 1] = 0.0f;
    }
    return SD_STATUS_OK;
}
