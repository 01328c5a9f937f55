/*
 * controlnet.c - ControlNetModel: the UNet's encoder (unet-blocks.h) with the control image's
 * embedding added after conv_in, and a 1x1 "zero" convolution on every skip and on the mid
 * block's output.
 *
 * ref: diffusers.models.controlnets.controlnet.ControlNetModel.forward and
 * ControlNetConditioningEmbedding; guess mode's logspace scales as there.
 */
#include "unet-blocks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sd_controlnet_config_t cfg;
    sd_conv_w conv_in;
    unet_embed_w embed;
    unet_encoder_w enc;
    /* controlnet_cond_embedding: conv_in, blocks (2 per step down), conv_out */
    sd_conv_w hint_in, hint_blocks[2 * (SD_MAX_LEVELS - 1)], hint_out;
    sd_conv_w zero[UNET_MAX_SKIPS]; /* controlnet_down_blocks */
    sd_conv_w zero_mid;             /* controlnet_mid_block */
    int n_skips;
} controlnet_net_t;

static void controlnet_free(sd_ctx_t *ctx, void *p) {
    controlnet_net_t *n = p;
    if (n == NULL) return;
    free_unet_encoder(&n->enc);
    free(n);
}

void sd_controlnet_config_default(sd_controlnet_config_t *c) {
    if (c == NULL) return;
    *c = (sd_controlnet_config_t){
        .conditioning_channels = 3, .cond_levels = 4, .cond_channels = {16, 32, 96, 256}};
    sd_unet_config_default(&c->unet);
}

size_t sd_sizeof_controlnet_config(void) {
    return sizeof(sd_controlnet_config_t);
}

void sd_controlnet_inputs_default(sd_controlnet_inputs_t *in) {
    if (in == NULL) return;
    *in = (sd_controlnet_inputs_t){.scale = 1.0f};
}

size_t sd_sizeof_controlnet_inputs(void) {
    return sizeof(sd_controlnet_inputs_t);
}

sd_status_t sd_controlnet_load(sd_ctx_t *ctx, const sd_controlnet_config_t *config,
                               const sd_weight_t *weights, int32_t n_weights, sd_model_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL || config == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "controlnet_load: NULL config or out");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    loader_t *L = loader_new(ctx, "controlnet", SD_MODEL_CONTROLNET, weights, n_weights, NULL);
    if (L == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    controlnet_net_t *net = calloc(1, sizeof *net);
    if (net == NULL) loader_oom(L);
    if (loader_status(L) != SD_STATUS_OK || !unet_config_check(L, &config->unet))
        return loader_finish(L, net, controlnet_free, out);
    const int32_t cl = config->cond_levels;
    bool ok = config->conditioning_channels >= 1 && cl >= 1 && cl <= SD_MAX_LEVELS;
    for (int i = 0; ok && i < cl; i++) ok = config->cond_channels[i] >= 1;
    if (!ok) {
        loader_fail(L, "conditioning_channels %d, %d conditioning embedding levels",
                    config->conditioning_channels, cl);
        return loader_finish(L, net, controlnet_free, out);
    }
    net->cfg = *config;
    const sd_unet_config_t *c = &net->cfg.unet;
    const int32_t *hc = net->cfg.cond_channels;
    const int64_t c0 = c->block_out_channels[0];
    net->conv_in = ld_conv(L, c0, c->in_channels, c->conv_in_kernel, "conv_in");
    ld_unet_embed(L, &net->embed, c);
    ld_unet_encoder(L, &net->enc, c, net->embed.dim);
    net->hint_in =
        ld_conv(L, hc[0], config->conditioning_channels, 3, "controlnet_cond_embedding.conv_in");
    for (int i = 0; i < cl - 1; i++) {
        net->hint_blocks[2 * i] =
            ld_conv(L, hc[i], hc[i], 3, "controlnet_cond_embedding.blocks.%d", 2 * i);
        net->hint_blocks[2 * i + 1] =
            ld_conv(L, hc[i + 1], hc[i], 3, "controlnet_cond_embedding.blocks.%d", 2 * i + 1);
    }
    net->hint_out = ld_conv(L, c0, hc[cl - 1], 3, "controlnet_cond_embedding.conv_out");
    /* The skips' channels do not depend on the size: any (h, w) gives them. */
    int64_t skips[UNET_MAX_SKIPS][3];
    net->n_skips = unet_skip_shapes(c, 1, 1, skips);
    for (int i = 0; i < net->n_skips; i++)
        net->zero[i] = ld_conv(L, skips[i][0], skips[i][0], 1, "controlnet_down_blocks.%d", i);
    const int64_t deep = c->block_out_channels[c->levels - 1];
    net->zero_mid = ld_conv(L, deep, deep, 1, "controlnet_mid_block");
    return loader_finish(L, net, controlnet_free, out);
}

/* The control image's embedding: new (B, block_out_channels[0], h, w). */
static sd_tensor_t *g_hint(build_t *g, const controlnet_net_t *net, const sd_tensor_t *cond) {
    const int32_t cl = net->cfg.cond_levels;
    const int64_t b = cond->shape[0];
    int64_t h = cond->shape[2], w = cond->shape[3];
    sd_tensor_t *x = g_new(g, 4, b, net->cfg.cond_channels[0], h, w);
    g_conv(g, x, cond, &net->hint_in, NULL, NULL, 1, 1, 1, 1, 1);
    G(g, sd_op_activation(g->ctx, x, x, SD_ACT_SILU));
    for (int i = 0; i < cl - 1; i++) {
        const int64_t ci = net->cfg.cond_channels[i], cn = net->cfg.cond_channels[i + 1];
        sd_tensor_t *y = g_new(g, 4, b, ci, h, w);
        g_conv(g, y, x, &net->hint_blocks[2 * i], NULL, NULL, 1, 1, 1, 1, 1);
        G(g, sd_op_activation(g->ctx, y, y, SD_ACT_SILU));
        g_free(g, x);
        h = (h + 1) / 2, w = (w + 1) / 2;
        x = g_new(g, 4, b, cn, h, w);
        g_conv(g, x, y, &net->hint_blocks[2 * i + 1], NULL, NULL, 2, 1, 1, 1, 1);
        G(g, sd_op_activation(g->ctx, x, x, SD_ACT_SILU));
        g_free(g, y);
    }
    sd_tensor_t *e = g_new(g, 4, b, net->cfg.unet.block_out_channels[0], h, w);
    g_conv(g, e, x, &net->hint_out, NULL, NULL, 1, 1, 1, 1, 1);
    g_free(g, x);
    return e;
}

/* Rows [r0, r0 + src rows) of out (F32) get src (activation dtype): added when accumulate,
 * else copied. */
static void put_rows(build_t *g, sd_tensor_t *out, const sd_tensor_t *src, int64_t r0,
                     bool accumulate) {
    if (g->st != SD_STATUS_OK) return;
    sd_tensor_t rows = sd_rows_view(out, r0, r0 + src->shape[0]);
    if (!accumulate) {
        g_output(g, &rows, src);
        return;
    }
    if (src->dtype == SD_DTYPE_F32) {
        G(g, sd_op_add(g->ctx, &rows, &rows, src));
        return;
    }
    sd_tensor_t *wide = NULL;
    G(g, sd_scratch_new(g->ctx, SD_DTYPE_F32, src->ndim, src->shape, &wide));
    G(g, sd_op_convert(g->ctx, wide, src));
    G(g, sd_op_add(g->ctx, &rows, &rows, wide));
    sd_scratch_free(g->ctx, wide);
}

/* Sets rows outside [r0, r1) of the F32 tensor t to zero. */
static void zero_other_rows(build_t *g, sd_tensor_t *t, int64_t r0, int64_t r1) {
    if (g->st != SD_STATUS_OK || (r0 == 0 && r1 == t->shape[0])) return;
    const size_t row = t->nbytes / (size_t)t->shape[0];
    const size_t most = row * (size_t)(r0 > t->shape[0] - r1 ? r0 : t->shape[0] - r1);
    void *zeros = calloc(1, most);
    if (zeros == NULL) {
        g->st = sd_fail(g->ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
        return;
    }
    sd_backend_t *be = sd_ctx_backend_ptr(g->ctx);
    if (r0 > 0) G(g, be->ops->upload(g->ctx, t->data, zeros, row * (size_t)r0));
    if (r1 < t->shape[0])
        G(g, be->ops->upload(g->ctx, (char *)t->data + row * (size_t)r1, zeros,
                             row * (size_t)(t->shape[0] - r1)));
    free(zeros);
}

/* zero_conv(h) * scales[i] into rows [r0, r0 + B) of out. scales is (n) in the activation
 * dtype. */
static void g_residual(build_t *g, const sd_conv_w *zero, const sd_tensor_t *h,
                       const sd_tensor_t *scales, int i, sd_tensor_t *out,
                       const sd_controlnet_inputs_t *in) {
    if (g->st != SD_STATUS_OK) return;
    sd_tensor_t *r = g_new(g, 4, h->shape[0], h->shape[1], h->shape[2], h->shape[3]);
    g_conv(g, r, h, zero, NULL, NULL, 1, 0, 0, 0, 0);
    if (g->st == SD_STATUS_OK) {
        /* As (N, 1) the (1) scale is a suffix of the residual's shape: sd_op_mul
         * broadcasts it. */
        const int64_t n = sd_tensor_numel(r);
        sd_tensor_t flat = sd_tensor_view(r->data, r->dtype, 2, (int64_t[]){n, 1});
        sd_tensor_t s1 = sd_tensor_view((char *)scales->data + (size_t)i * sd_dtype_size(g->act),
                                        g->act, 1, (int64_t[]){1});
        G(g, sd_op_mul(g->ctx, &flat, &flat, &s1));
    }
    if (!in->accumulate) zero_other_rows(g, out, in->out_row, in->out_row + h->shape[0]);
    put_rows(g, out, r, in->out_row, in->accumulate != 0);
    g_free(g, r);
}

static sd_status_t check_inputs(sd_ctx_t *ctx, const controlnet_net_t *net,
                                const sd_controlnet_inputs_t *in, sd_tensor_t *const *down,
                                int32_t n_down, const sd_tensor_t *mid) {
    const sd_unet_config_t *c = &net->cfg.unet;
    const sd_tensor_t *x = in->x, *t = in->t, *context = in->context, *cond = in->cond;
    char b1[96], b2[96], b3[96], b4[96];
    if (x == NULL || t == NULL || context == NULL || cond == NULL || mid == NULL ||
        (n_down > 0 && down == NULL))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "controlnet_forward: NULL tensor");
    const int64_t b = x->shape[0], h = x->shape[2], w = x->shape[3];
    int64_t ch = cond->shape[2], cw = cond->shape[3];
    for (int i = 0; i < net->cfg.cond_levels - 1; i++) ch = (ch + 1) / 2, cw = (cw + 1) / 2;
    bool ok = x->ndim == 4 && x->shape[1] == c->in_channels && t->ndim == 1 && t->shape[0] == b &&
              t->dtype == SD_DTYPE_F32 && context->ndim == 3 && context->shape[0] == b &&
              context->shape[2] == c->cross_attention_dim && cond->ndim == 4 &&
              cond->shape[0] == b && cond->shape[1] == net->cfg.conditioning_channels && ch == h &&
              cw == w;
    if (!ok)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "controlnet_forward: x %s, t %s, context %s, cond %s: expected x (B, %d, "
                       "h, w), t (B) f32, context (B, T, %d), cond (B, %d, H, W) with H, W "
                       "halved %d times giving h, w",
                       sd_tensor_describe(x, b1, sizeof b1), sd_tensor_describe(t, b2, sizeof b2),
                       sd_tensor_describe(context, b3, sizeof b3),
                       sd_tensor_describe(cond, b4, sizeof b4), c->in_channels,
                       c->cross_attention_dim, net->cfg.conditioning_channels,
                       net->cfg.cond_levels - 1);
    SD_TRY(unet_check_embed_inputs(ctx, "controlnet_forward", c, in->text_embeds, in->time_ids,
                                   in->class_labels, b));
    if (!isfinite(in->scale) || in->out_row < 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "controlnet_forward: scale %g, out_row %d",
                       (double)in->scale, in->out_row);
    int64_t skips[UNET_MAX_SKIPS][3];
    const int n_skips = unet_skip_shapes(c, h, w, skips);
    if (n_down != n_skips)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "controlnet_forward: %d down outputs; this ControlNet makes %d", n_down,
                       n_skips);
    const int64_t rows = in->out_row + b;
    for (int i = 0; i <= n_skips; i++) {
        const sd_tensor_t *o = i < n_skips ? down[i] : mid;
        const int64_t *s = skips[i < n_skips ? i : n_skips - 1];
        const int64_t oc = i < n_skips ? s[0] : c->block_out_channels[c->levels - 1];
        if (o == NULL || o->dtype != SD_DTYPE_F32 || o->ndim != 4 || o->shape[0] < rows ||
            o->shape[1] != oc || o->shape[2] != s[1] || o->shape[3] != s[2])
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "controlnet_forward: %s output %d %s: expected (>= %lld, %lld, %lld, "
                           "%lld) f32",
                           i < n_skips ? "down" : "mid", i < n_skips ? i : 0,
                           o ? sd_tensor_describe(o, b1, sizeof b1) : "NULL", (long long)rows,
                           (long long)oc, (long long)s[1], (long long)s[2]);
    }
    return SD_STATUS_OK;
}

/* The per-residual scales (n down, then the mid one), as diffusers: scale, or in guess mode
 * torch.logspace(-1, 0, n + 1) * scale with the last (1 * scale) for the mid residual. */
static void residual_scales(const sd_controlnet_inputs_t *in, int n, float *s) {
    for (int i = 0; i <= n; i++) {
        /* torch.linspace's float32 steps, then 10^v. */
        const float step = 1.0f / (float)n;
        const float v = i < (n + 1) / 2 ? -1.0f + step * (float)i : 0.0f - step * (float)(n - i);
        s[i] = in->guess_mode ? powf(10.0f, v) * in->scale : in->scale;
    }
}

sd_status_t sd_controlnet_forward(sd_ctx_t *ctx, sd_model_t *model,
                                  const sd_controlnet_inputs_t *in, sd_tensor_t *const *down,
                                  int32_t n_down, sd_tensor_t *mid) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_CONTROLNET, "controlnet_forward"));
    if (in == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "controlnet_forward: NULL inputs");
    const controlnet_net_t *net = model->net;
    const sd_unet_config_t *c = &net->cfg.unet;
    SD_TRY(check_inputs(ctx, net, in, down, n_down, mid));

    float host_scales[UNET_MAX_SKIPS + 1];
    residual_scales(in, n_down, host_scales);
    sd_tensor_t *scales32 = NULL, *rows = NULL, rows2d;
    SD_TRY(sd_scratch_new(ctx, SD_DTYPE_F32, 1, (int64_t[]){n_down + 1}, &scales32));
    sd_status_t st = sd_ctx_backend_ptr(ctx)->ops->upload(ctx, scales32->data, host_scales,
                                                          sizeof(float) * (size_t)(n_down + 1));
    const sd_tensor_t *class_emb = in->class_labels;
    if (st == SD_STATUS_OK && c->class_embed_type == SD_UNET_CLASS_TABLE) {
        st = unet_class_rows(ctx, &net->embed, in->class_labels, &rows, &rows2d);
        class_emb = &rows2d;
    }
    if (st != SD_STATUS_OK) {
        sd_scratch_free(ctx, scales32);
        return st;
    }

    build_t gr = build_begin(ctx), *g = &gr;
    const int64_t b = in->x->shape[0], h = in->x->shape[2], w = in->x->shape[3];
    sd_tensor_t *x = g_input(g, in->x), *context = g_input(g, in->context);
    sd_tensor_t *cond = g_input(g, in->cond), *scales = g_input(g, scales32);
    sd_tensor_t *text_embeds = in->text_embeds ? g_input(g, in->text_embeds) : NULL;
    const unet_embed_in_t ein = {in->t, text_embeds, in->time_ids, class_emb};
    sd_tensor_t *temb = g_unet_temb(g, &net->embed, c, b, &ein);

    sd_tensor_t *hint = g_hint(g, net, cond);
    const int32_t kin = c->conv_in_kernel / 2;
    sd_tensor_t *hcur = g_new(g, 4, b, c->block_out_channels[0], h, w);
    g_conv(g, hcur, x, &net->conv_in, NULL, hint, 1, kin, kin, kin, kin);
    g_free(g, hint);
    sd_tensor_t *skips[UNET_MAX_SKIPS] = {0};
    int n_skips = 0;
    if (g->st == SD_STATUS_OK)
        n_skips = g_unet_down(g, &net->enc, c, hcur, temb, context, skips);
    else
        g_free(g, hcur);
    sd_tensor_t *m = NULL;
    if (g->st == SD_STATUS_OK) m = g_unet_mid(g, &net->enc, c, skips[n_skips - 1], temb, context);
    for (int i = 0; i < n_skips; i++) {
        g_residual(g, &net->zero[i], skips[i], scales, i, down[i], in);
        g_free(g, skips[i]);
    }
    if (m != NULL) g_residual(g, &net->zero_mid, m, scales, n_down, mid, in);
    g_free(g, m);
    g_free(g, temb);
    if (text_embeds) g_release_input(g, in->text_embeds, text_embeds);
    g_release_input(g, scales32, scales);
    g_release_input(g, in->cond, cond);
    g_release_input(g, in->context, context);
    g_release_input(g, in->x, x);
    sd_scratch_free(ctx, rows);
    sd_scratch_free(ctx, scales32);
    return g->st;
}
