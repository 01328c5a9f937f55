/*
 * unet.c - UNet2DConditionModel of Stable Diffusion 1.x / 2.x / XL, generic over its config:
 * conv_in, the time embedding, the encoder and decoder of unet-blocks.h, GroupNorm + SiLU +
 * conv_out; ControlNet residuals added to the skips and to the mid-block output, as
 * UNet2DConditionModel.forward does with down_block_additional_residuals and
 * mid_block_additional_residual.
 */
#include "unet-blocks.h"

#include <math.h>
#include <string.h>

typedef struct {
    sd_unet_config_t cfg;
    sd_conv_w conv_in, conv_out;
    unet_embed_w embed;
    unet_encoder_w enc;
    unet_block_w up[SD_MAX_LEVELS];
    sd_norm_w norm_out;
} unet_net_t;

static void unet_free(sd_ctx_t *ctx, void *p) {
    unet_net_t *n = p;
    if (n == NULL) return;
    free_unet_encoder(&n->enc);
    for (int i = 0; i < SD_MAX_LEVELS; i++) free_unet_block(&n->up[i]);
    free(n);
}

void sd_unet_config_default(sd_unet_config_t *c) {
    if (c == NULL) return;
    *c = (sd_unet_config_t){
        .in_channels = 4,
        .out_channels = 4,
        .levels = 4,
        .block_out_channels = {320, 640, 1280, 1280},
        .layers_per_block = 2,
        .down_attention = {1, 1, 1, 0},
        .up_attention = {0, 1, 1, 1},
        .heads = {8, 8, 8, 8},
        .transformer_layers = {1, 1, 1, 1},
        .mid_attention = 1,
        .cross_attention_dim = 768,
        .norm_groups = 32,
        .norm_eps = 1e-5f,
        .flip_sin_to_cos = 1,
        .freq_shift = 0.0f,
        .conv_in_kernel = 3,
        .conv_out_kernel = 3,
    };
}

size_t sd_sizeof_unet_config(void) {
    return sizeof(sd_unet_config_t);
}

sd_status_t sd_unet_load(sd_ctx_t *ctx, const sd_unet_config_t *config, const sd_weight_t *weights,
                         int32_t n_weights, sd_model_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL || config == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "unet_load: NULL config or out");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    loader_t *L = loader_new(ctx, "unet", SD_MODEL_UNET, weights, n_weights, NULL);
    if (L == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    unet_net_t *net = calloc(1, sizeof *net);
    if (net == NULL) loader_oom(L);
    if (loader_status(L) != SD_STATUS_OK || !unet_config_check(L, config))
        return loader_finish(L, net, unet_free, out);
    net->cfg = *config;
    const sd_unet_config_t *c = &net->cfg;
    const int64_t c0 = c->block_out_channels[0];
    net->conv_in = ld_conv(L, c0, c->in_channels, c->conv_in_kernel, "conv_in");
    ld_unet_embed(L, &net->embed, c);
    ld_unet_encoder(L, &net->enc, c, net->embed.dim);
    ld_unet_decoder(L, net->up, c, net->embed.dim);
    net->norm_out = ld_norm(L, c0, "conv_norm_out");
    net->conv_out = ld_conv(L, c->out_channels, c0, c->conv_out_kernel, "conv_out");
    return loader_finish(L, net, unet_free, out);
}

/* Positions of the inputs handed to the graph cache; down residual i is at IN_DOWN + i. */
enum { IN_X, IN_T, IN_CONTEXT, IN_TEXT_EMBEDS, IN_TIME_IDS, IN_CLASS, IN_SCALE, IN_MID, IN_DOWN };

/* The inputs of unet_run, in the activation dtype except t, time_ids and TIMESTEP class
 * labels (F32). class_emb is, by class_embed_type, the looked-up rows (B, temb) (TABLE) or
 * the labels (B) (TIMESTEP); scale is NULL for a residual scale of 1, else (1). */
typedef struct {
    const sd_tensor_t *x, *t, *context, *text_embeds, *time_ids, *class_emb, *scale, *mid;
    const sd_tensor_t *down[UNET_MAX_SKIPS];
    int32_t n_down;
} unet_args_t;

/* dst += residual * scale (scale NULL: 1). */
static void add_residual(build_t *g, sd_tensor_t *dst, const sd_tensor_t *residual,
                         const sd_tensor_t *scale) {
    if (scale == NULL) {
        G(g, sd_op_add(g->ctx, dst, dst, residual));
        return;
    }
    /* As (N, 1) the (1) scale is a suffix of the residual's shape, so sd_op_mul broadcasts
     * it over every element. */
    const int64_t n = sd_tensor_numel(residual);
    sd_tensor_t *scaled = g_new(g, 2, n, 1, 0, 0);
    if (g->st != SD_STATUS_OK) return;
    sd_tensor_t flat = sd_tensor_view(residual->data, residual->dtype, 2, (int64_t[]){n, 1});
    sd_tensor_t s1 = sd_tensor_view(scale->data, scale->dtype, 1, (int64_t[]){1});
    G(g, sd_op_mul(g->ctx, scaled, &flat, &s1));
    sd_tensor_t shaped = sd_tensor_view(scaled->data, scaled->dtype, dst->ndim, dst->shape);
    G(g, sd_op_add(g->ctx, dst, dst, &shaped));
    g_free(g, scaled);
}

/* The forward pass, writing res (B, out, H, W) in the activation dtype. */
static void unet_run(build_t *g, const unet_net_t *net, const unet_args_t *a, sd_tensor_t *res) {
    if (g->st != SD_STATUS_OK) return;
    const sd_unet_config_t *c = &net->cfg;
    const sd_tensor_t *xi = a->x, *cond = a->context;
    const int64_t b = xi->shape[0], h = xi->shape[2], w = xi->shape[3];
    const int64_t c0 = c->block_out_channels[0];

    const unet_embed_in_t ein = {a->t, a->text_embeds, a->time_ids, a->class_emb};
    sd_tensor_t *temb = g_unet_temb(g, &net->embed, c, b, &ein);

    const int32_t kin = c->conv_in_kernel / 2;
    sd_tensor_t *hcur = g_new(g, 4, b, c0, h, w);
    g_conv(g, hcur, xi, &net->conv_in, NULL, NULL, 1, kin, kin, kin, kin);
    sd_tensor_t *skips[UNET_MAX_SKIPS];
    const int n_skips = g_unet_down(g, &net->enc, c, hcur, temb, cond, skips);
    hcur = g_unet_mid(g, &net->enc, c, skips[n_skips - 1], temb, cond);

    /* Only now: the down path and the mid block read the skips as they were made; the up
     * blocks read them with the residuals added. */
    for (int32_t i = 0; i < a->n_down && g->st == SD_STATUS_OK; i++)
        add_residual(g, skips[i], a->down[i], a->scale);
    if (a->mid != NULL && g->st == SD_STATUS_OK) add_residual(g, hcur, a->mid, a->scale);

    hcur = g_unet_up(g, net->up, c, hcur, skips, n_skips, temb, cond);
    G(g, sd_op_group_norm(g->ctx, hcur, hcur, net->norm_out.gamma, net->norm_out.beta,
                          c->norm_groups, c->norm_eps, true));
    const int32_t kout = c->conv_out_kernel / 2;
    g_conv(g, res, hcur, &net->conv_out, NULL, NULL, 1, kout, kout, kout, kout);
    g_free(g, hcur);
    g_free(g, temb);
}

typedef struct {
    const unet_net_t *net;
    int32_t n_down;
} unet_call_t;

/* The graph cache's forward: inputs as sd_graph_cache_run hands them over (staged, or the
 * caller's own tensors), converted to the activation dtype where unet_run needs it. */
static sd_status_t unet_cached_forward(sd_ctx_t *ctx, void *user, const sd_tensor_t *const *in,
                                       sd_tensor_t *out) {
    const unet_call_t *call = user;
    const unet_net_t *net = call->net;
    const sd_unet_config_t *c = &net->cfg;
    build_t gr = build_begin(ctx), *g = &gr;
    const int32_t n_in = IN_DOWN + call->n_down;
    sd_tensor_t *act_in[IN_DOWN + UNET_MAX_SKIPS];
    for (int32_t i = 0; i < n_in; i++) {
        bool f32 = i == IN_T || i == IN_TIME_IDS ||
                   (i == IN_CLASS && c->class_embed_type == SD_UNET_CLASS_TIMESTEP);
        act_in[i] = f32 || in[i] == NULL ? (sd_tensor_t *)in[i] : g_input(g, in[i]);
    }
    unet_args_t a = {.x = act_in[IN_X],
                     .t = act_in[IN_T],
                     .context = act_in[IN_CONTEXT],
                     .text_embeds = act_in[IN_TEXT_EMBEDS],
                     .time_ids = act_in[IN_TIME_IDS],
                     .class_emb = act_in[IN_CLASS],
                     .scale = act_in[IN_SCALE],
                     .mid = act_in[IN_MID]};
    a.n_down = call->n_down;
    for (int32_t i = 0; i < a.n_down; i++) a.down[i] = act_in[IN_DOWN + i];
    const int64_t b = in[IN_X]->shape[0], h = in[IN_X]->shape[2], w = in[IN_X]->shape[3];
    sd_tensor_t *res = out->dtype == g->act ? out : g_new(g, 4, b, c->out_channels, h, w);
    unet_run(g, net, &a, res);
    if (res != out) {
        g_output(g, out, res);
        g_free(g, res);
    }
    for (int32_t i = 0; i < n_in; i++)
        if (act_in[i] != NULL) g_release_input(g, in[i], act_in[i]);
    return g->st;
}

void sd_unet_inputs_default(sd_unet_inputs_t *in) {
    if (in == NULL) return;
    *in = (sd_unet_inputs_t){.residual_scale = 1.0f};
}

size_t sd_sizeof_unet_inputs(void) {
    return sizeof(sd_unet_inputs_t);
}

/* Checks the inputs beyond x, t and context against the config and x's (B, H, W). */
static sd_status_t check_extra_inputs(sd_ctx_t *ctx, const sd_unet_config_t *c,
                                      const sd_unet_inputs_t *in, int64_t b, int64_t h, int64_t w) {
    char b1[96];
    SD_TRY(unet_check_embed_inputs(ctx, "unet_forward", c, in->text_embeds, in->time_ids,
                                   in->class_labels, b));
    /* The skips' shapes, in the order the down blocks make them. */
    int64_t skips[UNET_MAX_SKIPS][3];
    const int n_skips = unet_skip_shapes(c, h, w, skips);
    h = skips[n_skips - 1][1], w = skips[n_skips - 1][2];
    if (in->n_down_residuals < 0 || in->n_down_residuals > n_skips ||
        (in->n_down_residuals > 0 && in->down_residuals == NULL))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "unet_forward: %d down residuals (array %s); this UNet has %d skips",
                       in->n_down_residuals, in->down_residuals ? "given" : "NULL", n_skips);
    for (int32_t i = 0; i < in->n_down_residuals; i++) {
        const sd_tensor_t *r = in->down_residuals[i];
        if (r == NULL || r->dtype != SD_DTYPE_F32 || r->ndim != 4 || r->shape[0] != b ||
            r->shape[1] != skips[i][0] || r->shape[2] != skips[i][1] || r->shape[3] != skips[i][2])
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "unet_forward: down residual %d %s: expected (%lld, %lld, %lld, %lld) "
                           "f32",
                           (int)i, r ? sd_tensor_describe(r, b1, sizeof b1) : "NULL", (long long)b,
                           (long long)skips[i][0], (long long)skips[i][1], (long long)skips[i][2]);
    }
    const sd_tensor_t *m = in->mid_residual;
    const int64_t deep = c->block_out_channels[c->levels - 1];
    if (m != NULL && (m->dtype != SD_DTYPE_F32 || m->ndim != 4 || m->shape[0] != b ||
                      m->shape[1] != deep || m->shape[2] != h || m->shape[3] != w))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "unet_forward: mid residual %s: expected (%lld, %lld, %lld, %lld) f32",
                       sd_tensor_describe(m, b1, sizeof b1), (long long)b, (long long)deep,
                       (long long)h, (long long)w);
    if (!isfinite(in->residual_scale))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "unet_forward: residual_scale %g",
                       (double)in->residual_scale);
    return SD_STATUS_OK;
}

sd_status_t sd_unet_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_unet_inputs_t *in,
                            sd_tensor_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_UNET, "unet_forward"));
    if (in == NULL) return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "unet_forward: NULL inputs");
    const unet_net_t *net = model->net;
    const sd_unet_config_t *c = &net->cfg;
    const sd_tensor_t *x = in->x, *t = in->t, *context = in->context;
    char b1[96], b2[96], b3[96], b4[96];
    if (x == NULL || t == NULL || context == NULL || out == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "unet_forward: NULL tensor");
    const int64_t b = x->shape[0], h = x->shape[2], w = x->shape[3];
    bool ok = x->ndim == 4 && x->shape[1] == c->in_channels && t->ndim == 1 && t->shape[0] == b &&
              t->dtype == SD_DTYPE_F32 && context->ndim == 3 && context->shape[0] == b &&
              context->shape[2] == c->cross_attention_dim && out->ndim == 4 && out->shape[0] == b &&
              out->shape[1] == c->out_channels && out->shape[2] == h && out->shape[3] == w;
    if (!ok)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "unet_forward: x %s, t %s, context %s, out %s: expected x (B, %d, H, W), "
                       "t (B) f32, context (B, T, %d), out (B, %d, H, W)",
                       sd_tensor_describe(x, b1, sizeof b1), sd_tensor_describe(t, b2, sizeof b2),
                       sd_tensor_describe(context, b3, sizeof b3),
                       sd_tensor_describe(out, b4, sizeof b4), c->in_channels,
                       c->cross_attention_dim, c->out_channels);
    SD_TRY(check_extra_inputs(ctx, c, in, b, h, w));

    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    const int32_t act = be->act_dtype, n_down = in->n_down_residuals;
    const sd_tensor_t *ins[IN_DOWN + UNET_MAX_SKIPS] = {[IN_X] = x,
                                                        [IN_T] = t,
                                                        [IN_CONTEXT] = context,
                                                        [IN_TEXT_EMBEDS] = in->text_embeds,
                                                        [IN_TIME_IDS] = in->time_ids,
                                                        [IN_MID] = in->mid_residual};
    int32_t dtypes[IN_DOWN + UNET_MAX_SKIPS];
    for (int32_t i = 0; i < IN_DOWN + n_down; i++) dtypes[i] = act;
    dtypes[IN_T] = dtypes[IN_TIME_IDS] = SD_DTYPE_F32;
    for (int32_t i = 0; i < n_down; i++) ins[IN_DOWN + i] = in->down_residuals[i];

    /* The TABLE lookup runs before the cached forward: staging converts float tensors
     * only, so the gathered rows are staged rather than the I32 labels. */
    sd_tensor_t *rows = NULL, rows2d;
    if (c->class_embed_type == SD_UNET_CLASS_TABLE) {
        SD_TRY(unet_class_rows(ctx, &net->embed, in->class_labels, &rows, &rows2d));
        ins[IN_CLASS] = &rows2d;
    } else if (c->class_embed_type == SD_UNET_CLASS_TIMESTEP) {
        ins[IN_CLASS] = in->class_labels;
        dtypes[IN_CLASS] = SD_DTYPE_F32;
    }

    /* A scale of 1 skips the multiply; any other value is an input tensor, which a
     * recorded graph reads from its staging copy, so each call's value counts. */
    sd_status_t st = SD_STATUS_OK;
    sd_tensor_t *scale = NULL;
    if (in->residual_scale != 1.0f && (n_down > 0 || in->mid_residual != NULL)) {
        st = sd_scratch_new(ctx, SD_DTYPE_F32, 1, (int64_t[]){1}, &scale);
        if (st == SD_STATUS_OK)
            st = be->ops->upload(ctx, scale->data, &in->residual_scale, sizeof(float));
        ins[IN_SCALE] = scale;
    }
    /* The model is shared by the contexts of its group; graphs are this context's. */
    sd_graph_cache_t *graphs = st == SD_STATUS_OK ? sd_model_graphs(ctx, model) : NULL;
    if (st == SD_STATUS_OK && graphs == NULL) st = SD_STATUS_OUT_OF_MEMORY;
    unet_call_t call = {net, n_down};
    if (st == SD_STATUS_OK)
        st = sd_graph_cache_run(ctx, graphs, "unet", ins, dtypes, IN_DOWN + n_down, out, act,
                                unet_cached_forward, &call);
    sd_scratch_free(ctx, scale);
    sd_scratch_free(ctx, rows);
    return st;
}
