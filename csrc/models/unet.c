/*
 * unet.c - UNet2DConditionModel of Stable Diffusion 1.x / 2.x / XL, generic over its config.
 *
 * ref: diffusers.models.unets.unet_2d_condition.UNet2DConditionModel with
 * CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn / UNetMidBlock2D,
 * CrossAttnUpBlock2D / UpBlock2D: conv_in; sinusoidal time embedding -> linear -> SiLU ->
 * linear; down blocks keep every output for the skip connections; mid block; up blocks
 * concatenate a skip before each ResNet and upsample to the next skip's size; GroupNorm +
 * SiLU + conv_out.
 * Extra conditioning as UNet2DConditionModel.forward: class embeddings (get_class_embed) and
 * SDXL's text_time embedding (get_aug_embed) added to the time embedding before its SiLU,
 * ControlNet residuals added to the skips and to the mid-block output.
 */
#include "model.h"

#include <math.h>
#include <string.h>

typedef struct {
    int32_t n_resnets;
    resnet_w *resnets;
    transformer_w *attentions; /* NULL for blocks without attention */
    sd_conv_w sampler;         /* downsampler / upsampler conv; w NULL for the last block */
} unet_block_w;

typedef struct {
    sd_unet_config_t cfg;
    int64_t temb_dim;
    sd_conv_w conv_in, conv_out;
    sd_linear_w time1, time2;
    sd_linear_w add1, add2;         /* add_embedding (TEXT_TIME) */
    sd_linear_w class1, class2;     /* class_embedding (TIMESTEP) */
    const sd_tensor_t *class_table; /* class_embedding (TABLE) */
    unet_block_w down[SD_MAX_LEVELS], up[SD_MAX_LEVELS];
    resnet_w mid_resnets[2];
    transformer_w mid_attention;
    bool has_mid_attention;
    sd_norm_w norm_out;
} unet_net_t;

static void free_block(unet_block_w *b) {
    if (b->attentions)
        for (int32_t i = 0; i < b->n_resnets; i++) free_transformer(&b->attentions[i]);
    free(b->attentions);
    free(b->resnets);
}

static void unet_free(sd_ctx_t *ctx, void *p) {
    unet_net_t *n = p;
    if (n == NULL) return;
    for (int i = 0; i < SD_MAX_LEVELS; i++) {
        free_block(&n->down[i]);
        free_block(&n->up[i]);
    }
    if (n->has_mid_attention) free_transformer(&n->mid_attention);
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

static bool unet_config_ok(loader_t *L, const sd_unet_config_t *c) {
    if (c->levels < 1 || c->levels > SD_MAX_LEVELS) {
        loader_fail(L, "levels %d not in [1, %d]", c->levels, SD_MAX_LEVELS);
        return false;
    }
    if (c->in_channels < 1 || c->out_channels < 1 || c->layers_per_block < 1 ||
        c->layers_per_block > 64 || c->cross_attention_dim < 1 || c->norm_groups < 1 ||
        !(c->norm_eps > 0) || c->conv_in_kernel < 1 || c->conv_in_kernel % 2 == 0 ||
        c->conv_out_kernel < 1 || c->conv_out_kernel % 2 == 0) {
        loader_fail(L,
                    "invalid config (in %d, out %d, layers %d, cross dim %d, groups %d, "
                    "kernels %d/%d)",
                    c->in_channels, c->out_channels, c->layers_per_block, c->cross_attention_dim,
                    c->norm_groups, c->conv_in_kernel, c->conv_out_kernel);
        return false;
    }
    if (c->addition_embed_type < 0 || c->addition_embed_type >= SD_UNET_ADDITION_COUNT ||
        (c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME &&
         (c->addition_time_embed_dim < 1 || c->projection_class_embeddings_input_dim < 1))) {
        loader_fail(L,
                    "addition_embed_type %d, addition_time_embed_dim %d, "
                    "projection_class_embeddings_input_dim %d",
                    c->addition_embed_type, c->addition_time_embed_dim,
                    c->projection_class_embeddings_input_dim);
        return false;
    }
    if (c->class_embed_type < 0 || c->class_embed_type >= SD_UNET_CLASS_COUNT ||
        (c->class_embed_type == SD_UNET_CLASS_TABLE && c->num_class_embeds < 1)) {
        loader_fail(L, "class_embed_type %d, num_class_embeds %d", c->class_embed_type,
                    c->num_class_embeds);
        return false;
    }
    for (int i = 0; i < c->levels; i++) {
        int32_t ch = c->block_out_channels[i];
        if (ch < 1 || ch % c->norm_groups != 0) {
            loader_fail(L, "level %d: %d channels not divisible into %d groups", i, ch,
                        c->norm_groups);
            return false;
        }
        bool attn = c->down_attention[i] || c->up_attention[c->levels - 1 - i] ||
                    (i == c->levels - 1 && c->mid_attention);
        if (attn && (c->heads[i] < 1 || ch % c->heads[i] != 0 || c->transformer_layers[i] < 1 ||
                     c->transformer_layers[i] > 64)) {
            loader_fail(L, "level %d: %d channels, %d heads, %d transformer layers", i, ch,
                        c->heads[i], c->transformer_layers[i]);
            return false;
        }
    }
    return true;
}

static void ld_block(loader_t *L, unet_block_w *b, int32_t n_resnets, const int64_t *res_in,
                     int64_t out, int64_t temb_dim, bool attention, int64_t heads, int64_t ctx_dim,
                     int32_t t_layers, int32_t only_cross, const char *kind, int i, bool sampler) {
    b->n_resnets = n_resnets;
    b->resnets = calloc((size_t)n_resnets, sizeof *b->resnets);
    if (attention) b->attentions = calloc((size_t)n_resnets, sizeof *b->attentions);
    if (b->resnets == NULL || (attention && b->attentions == NULL)) {
        loader_oom(L);
        return;
    }
    char p[96];
    for (int32_t j = 0; j < n_resnets; j++) {
        snprintf(p, sizeof p, "%s.%d.resnets.%d", kind, i, (int)j);
        ld_resnet(L, &b->resnets[j], res_in[j], out, temb_dim, p);
        if (attention) {
            snprintf(p, sizeof p, "%s.%d.attentions.%d", kind, i, (int)j);
            ld_transformer(L, &b->attentions[j], out, heads, ctx_dim, t_layers, only_cross, p);
        }
    }
    if (sampler)
        b->sampler = ld_conv(L, out, out, 3, "%s.%d.%s.0.conv", kind, i,
                             strcmp(kind, "down_blocks") == 0 ? "downsamplers" : "upsamplers");
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
    if (loader_status(L) != SD_STATUS_OK || !unet_config_ok(L, config))
        return loader_finish(L, net, unet_free, out);
    net->cfg = *config;
    const sd_unet_config_t *c = &net->cfg;
    const int32_t levels = c->levels, layers = c->layers_per_block;
    const int64_t c0 = c->block_out_channels[0], ctx_dim = c->cross_attention_dim;
    const int64_t temb = 4 * c0;
    net->temb_dim = temb;

    net->conv_in = ld_conv(L, c0, c->in_channels, c->conv_in_kernel, "conv_in");
    net->time1 = ld_linear(L, temb, c0, true, "time_embedding.linear_1");
    net->time2 = ld_linear(L, temb, temb, true, "time_embedding.linear_2");
    if (c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME) {
        net->add1 = ld_linear(L, temb, c->projection_class_embeddings_input_dim, true,
                              "add_embedding.linear_1");
        net->add2 = ld_linear(L, temb, temb, true, "add_embedding.linear_2");
    }
    if (c->class_embed_type == SD_UNET_CLASS_TABLE)
        net->class_table = ld_table(L, c->num_class_embeds, temb, "class_embedding.weight");
    if (c->class_embed_type == SD_UNET_CLASS_TIMESTEP) {
        net->class1 = ld_linear(L, temb, c0, true, "class_embedding.linear_1");
        net->class2 = ld_linear(L, temb, temb, true, "class_embedding.linear_2");
    }

    int64_t res_in[65];
    int64_t out_ch = c0;
    for (int i = 0; i < levels; i++) {
        int64_t in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        for (int j = 0; j < layers; j++) res_in[j] = j == 0 ? in_ch : out_ch;
        ld_block(L, &net->down[i], layers, res_in, out_ch, temb, c->down_attention[i] != 0,
                 c->heads[i], ctx_dim, c->transformer_layers[i], c->only_cross_attention[i],
                 "down_blocks", i, i < levels - 1);
    }

    const int64_t deep = c->block_out_channels[levels - 1];
    /* UNetMidBlock2DCrossAttn: ResNet, transformer, ResNet; UNet2DConditionModel builds its
     * UNetMidBlock2D with num_layers 0 and no attention: a single ResNet. */
    ld_resnet(L, &net->mid_resnets[0], deep, deep, temb, "mid_block.resnets.0");
    net->has_mid_attention = c->mid_attention != 0;
    if (net->has_mid_attention) {
        ld_transformer(L, &net->mid_attention, deep, c->heads[levels - 1], ctx_dim,
                       c->transformer_layers[levels - 1], 0, "mid_block.attentions.0");
        ld_resnet(L, &net->mid_resnets[1], deep, deep, temb, "mid_block.resnets.1");
    }

    out_ch = deep;
    for (int i = 0; i < levels; i++) {
        const int lv = levels - 1 - i; /* the level this up block works at */
        int64_t prev = out_ch;
        out_ch = c->block_out_channels[lv];
        int64_t skip_in = c->block_out_channels[lv > 0 ? lv - 1 : 0];
        for (int j = 0; j <= layers; j++)
            res_in[j] = (j == 0 ? prev : out_ch) + (j == layers ? skip_in : out_ch);
        ld_block(L, &net->up[i], layers + 1, res_in, out_ch, temb, c->up_attention[i] != 0,
                 c->heads[lv], ctx_dim, c->transformer_layers[lv], c->only_cross_attention[lv],
                 "up_blocks", i, i < levels - 1);
    }
    net->norm_out = ld_norm(L, c0, "conv_norm_out");
    net->conv_out = ld_conv(L, c->out_channels, c0, c->conv_out_kernel, "conv_out");
    return loader_finish(L, net, unet_free, out);
}

#define MAX_SKIPS (1 + SD_MAX_LEVELS * 65)

/* Positions of the inputs handed to the graph cache; down residual i is at IN_DOWN + i. */
enum { IN_X, IN_T, IN_CONTEXT, IN_TEXT_EMBEDS, IN_TIME_IDS, IN_CLASS, IN_SCALE, IN_MID, IN_DOWN };

/* The inputs of unet_run, in the activation dtype except t, time_ids and TIMESTEP class
 * labels (F32). class_emb is, by class_embed_type, the looked-up rows (B, temb) (TABLE) or
 * the labels (B) (TIMESTEP); scale is NULL for a residual scale of 1, else (1). */
typedef struct {
    const sd_tensor_t *x, *t, *context, *text_embeds, *time_ids, *class_emb, *scale, *mid;
    const sd_tensor_t *down[MAX_SKIPS];
    int32_t n_down;
} unet_args_t;

/* dst += residual * scale (scale NULL: 1). */
static void add_residual(graph_t *g, sd_tensor_t *dst, const sd_tensor_t *residual,
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

/* temb += TimestepEmbedding(x): linear_1, SiLU, linear_2 (x (B, in) in the activation
 * dtype), the second linear accumulating into temb. */
static void add_embedding(graph_t *g, sd_tensor_t *temb, const sd_tensor_t *x,
                          const sd_linear_w *l1, const sd_linear_w *l2) {
    sd_tensor_t *h = g_new(g, 2, temb->shape[0], temb->shape[1], 0, 0);
    g_linear(g, h, x, l1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, h, h, SD_ACT_SILU));
    g_linear(g, temb, h, l2, temb, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, h);
}

/* The time embedding with the class and addition embeddings added, then SiLU: the ResNets
 * only ever see SiLU(emb). New (B, temb). */
static sd_tensor_t *time_embedding(graph_t *g, const unet_net_t *net, const unet_args_t *a) {
    const sd_unet_config_t *c = &net->cfg;
    const int64_t b = a->x->shape[0], c0 = c->block_out_channels[0];
    const sd_timestep_embedding_params_t tp = {c->flip_sin_to_cos, c->freq_shift, 1.0f, 10000.0f};
    sd_tensor_t *te = g_new(g, 2, b, c0, 0, 0);
    G(g, sd_op_timestep_embedding(g->ctx, te, a->t, &tp));
    sd_tensor_t *t1 = g_new(g, 2, b, net->temb_dim, 0, 0);
    g_linear(g, t1, te, &net->time1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, t1, t1, SD_ACT_SILU));
    sd_tensor_t *temb = g_new(g, 2, b, net->temb_dim, 0, 0);
    g_linear(g, temb, t1, &net->time2, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, t1);

    if (c->class_embed_type == SD_UNET_CLASS_TABLE) {
        G(g, sd_op_add(g->ctx, temb, temb, a->class_emb));
    } else if (c->class_embed_type == SD_UNET_CLASS_TIMESTEP) {
        /* diffusers embeds the labels with the UNet's own time_proj. */
        G(g, sd_op_timestep_embedding(g->ctx, te, a->class_emb, &tp));
        add_embedding(g, temb, te, &net->class1, &net->class2);
    }
    g_free(g, te);

    if (c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME && g->st == SD_STATUS_OK) {
        /* add_time_proj(time_ids.flatten()).reshape(B, -1): the (B * N, D) sinusoids are
         * row-major, so they already are the (B, N * D) rows to concatenate. */
        const int64_t n_ids = a->time_ids->shape[1], d = c->addition_time_embed_dim;
        const int64_t p = a->text_embeds->shape[1];
        sd_tensor_t ids =
            sd_tensor_view(a->time_ids->data, a->time_ids->dtype, 1, (int64_t[]){b * n_ids});
        sd_tensor_t *ts = g_new(g, 2, b * n_ids, d, 0, 0);
        G(g, sd_op_timestep_embedding(g->ctx, ts, &ids, &tp));
        sd_tensor_t *cat = g_new(g, 2, b, p + n_ids * d, 0, 0);
        if (g->st == SD_STATUS_OK) {
            sd_tensor_t rows = sd_tensor_view(ts->data, ts->dtype, 2, (int64_t[]){b, n_ids * d});
            G(g, sd_op_concat(g->ctx, cat, a->text_embeds, &rows));
        }
        g_free(g, ts);
        add_embedding(g, temb, cat, &net->add1, &net->add2);
        g_free(g, cat);
    }
    G(g, sd_op_activation(g->ctx, temb, temb, SD_ACT_SILU));
    return temb;
}

/* The forward pass, writing res (B, out, H, W) in the activation dtype. */
static void unet_run(graph_t *g, const unet_net_t *net, const unet_args_t *a, sd_tensor_t *res) {
    if (g->st != SD_STATUS_OK) return;
    const sd_unet_config_t *c = &net->cfg;
    const sd_tensor_t *xi = a->x, *cond = a->context;
    const int64_t b = xi->shape[0], h = xi->shape[2], w = xi->shape[3];
    const int32_t levels = c->levels, groups = c->norm_groups;
    const float eps = c->norm_eps;
    const int64_t c0 = c->block_out_channels[0];

    sd_tensor_t *temb = time_embedding(g, net, a);

    sd_tensor_t *skips[MAX_SKIPS];
    int n_skips = 0;
    const int32_t kin = c->conv_in_kernel / 2;
    sd_tensor_t *hcur = g_new(g, 4, b, c0, h, w);
    g_conv(g, hcur, xi, &net->conv_in, NULL, NULL, 1, kin, kin, kin, kin);
    skips[n_skips++] = hcur;

    for (int i = 0; i < levels; i++) {
        const unet_block_w *blk = &net->down[i];
        for (int32_t j = 0; j < blk->n_resnets; j++) {
            sd_tensor_t *r = g_resnet(g, &blk->resnets[j], hcur, temb, groups, eps);
            if (blk->attentions) {
                sd_tensor_t *a2 = g_transformer(g, &blk->attentions[j], r, cond, groups);
                g_free(g, r);
                r = a2;
            }
            hcur = skips[n_skips++] = r;
        }
        if (blk->sampler.w != NULL && g->st == SD_STATUS_OK) {
            sd_tensor_t *d =
                g_new(g, 4, b, hcur->shape[1], (hcur->shape[2] + 1) / 2, (hcur->shape[3] + 1) / 2);
            g_conv(g, d, hcur, &blk->sampler, NULL, NULL, 2, 1, 1, 1, 1);
            hcur = skips[n_skips++] = d;
        }
    }

    sd_tensor_t *m = g_resnet(g, &net->mid_resnets[0], hcur, temb, groups, eps);
    if (net->has_mid_attention) {
        sd_tensor_t *a2 = g_transformer(g, &net->mid_attention, m, cond, groups);
        g_free(g, m);
        m = g_resnet(g, &net->mid_resnets[1], a2, temb, groups, eps);
        g_free(g, a2);
    }
    hcur = m;

    /* Only now: the down path and the mid block read the skips as they were made; the up
     * blocks read them with the residuals added. */
    for (int32_t i = 0; i < a->n_down && g->st == SD_STATUS_OK; i++)
        add_residual(g, skips[i], a->down[i], a->scale);
    if (a->mid != NULL && g->st == SD_STATUS_OK) add_residual(g, hcur, a->mid, a->scale);

    for (int i = 0; i < levels; i++) {
        const unet_block_w *blk = &net->up[i];
        for (int32_t j = 0; j < blk->n_resnets; j++) {
            sd_tensor_t *s = n_skips > 0 ? skips[--n_skips] : NULL;
            sd_tensor_t *cat = NULL;
            if (g->st == SD_STATUS_OK)
                cat = g_new(g, 4, b, hcur->shape[1] + s->shape[1], hcur->shape[2], hcur->shape[3]);
            G(g, sd_op_concat(g->ctx, cat, hcur, s));
            g_free(g, hcur);
            g_free(g, s);
            sd_tensor_t *r = g_resnet(g, &blk->resnets[j], cat, temb, groups, eps);
            g_free(g, cat);
            if (blk->attentions) {
                sd_tensor_t *a2 = g_transformer(g, &blk->attentions[j], r, cond, groups);
                g_free(g, r);
                r = a2;
            }
            hcur = r;
        }
        /* Upsample to the next skip's size: 2x, or what diffusers' forward_upsample_size
         * gives for latents not divisible by 2^(levels-1). */
        if (blk->sampler.w != NULL && g->st == SD_STATUS_OK && n_skips > 0) {
            sd_tensor_t *u = g_upsample(g, &blk->sampler, hcur, skips[n_skips - 1]->shape[2],
                                        skips[n_skips - 1]->shape[3]);
            g_free(g, hcur);
            hcur = u;
        }
    }

    G(g, sd_op_group_norm(g->ctx, hcur, hcur, net->norm_out.gamma, net->norm_out.beta, groups, eps,
                          true));
    const int32_t kout = c->conv_out_kernel / 2;
    g_conv(g, res, hcur, &net->conv_out, NULL, NULL, 1, kout, kout, kout, kout);
    g_free(g, hcur);
    while (n_skips > 0) g_free(g, skips[--n_skips]);
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
    graph_t gr = graph_begin(ctx), *g = &gr;
    const int32_t n_in = IN_DOWN + call->n_down;
    sd_tensor_t *act_in[IN_DOWN + MAX_SKIPS];
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

static bool is_f32(const sd_tensor_t *t, int32_t ndim, int64_t d0, int64_t d1) {
    return t->dtype == SD_DTYPE_F32 && t->ndim == ndim && t->shape[0] == d0 &&
           (ndim < 2 || d1 < 0 || t->shape[1] == d1);
}

/* Checks the inputs beyond x, t and context against the config and x's (B, H, W). */
static sd_status_t check_extra_inputs(sd_ctx_t *ctx, const sd_unet_config_t *c,
                                      const sd_unet_inputs_t *in, int64_t b, int64_t h, int64_t w) {
    char b1[96], b2[96];
    const bool text_time = c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME;
    if (!text_time && (in->text_embeds != NULL || in->time_ids != NULL))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "unet_forward: text_embeds / time_ids given to a UNet without "
                       "addition_embed_type text_time");
    if (text_time) {
        const sd_tensor_t *te = in->text_embeds, *ti = in->time_ids;
        bool ok = te != NULL && ti != NULL && is_f32(te, 2, b, -1) && is_f32(ti, 2, b, -1) &&
                  te->shape[1] + ti->shape[1] * c->addition_time_embed_dim ==
                      c->projection_class_embeddings_input_dim;
        if (!ok)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "unet_forward: text_embeds %s, time_ids %s: expected (B, P) and (B, N) "
                           "f32 with P + N * %d = %d",
                           te ? sd_tensor_describe(te, b1, sizeof b1) : "NULL",
                           ti ? sd_tensor_describe(ti, b2, sizeof b2) : "NULL",
                           c->addition_time_embed_dim, c->projection_class_embeddings_input_dim);
    }
    const sd_tensor_t *cl = in->class_labels;
    if (c->class_embed_type == SD_UNET_CLASS_NONE && cl != NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "unet_forward: class_labels given to a UNet without class embeddings");
    if (c->class_embed_type != SD_UNET_CLASS_NONE) {
        const int32_t dt = c->class_embed_type == SD_UNET_CLASS_TABLE ? SD_DTYPE_I32 : SD_DTYPE_F32;
        if (cl == NULL || cl->dtype != dt || cl->ndim != 1 || cl->shape[0] != b)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "unet_forward: class_labels %s: expected (B) %s",
                           cl ? sd_tensor_describe(cl, b1, sizeof b1) : "NULL", sd_dtype_name(dt));
    }

    /* The skips' shapes, in the order the down blocks make them. */
    int64_t skips[MAX_SKIPS][3];
    int n_skips = 0;
    skips[n_skips][0] = c->block_out_channels[0], skips[n_skips][1] = h, skips[n_skips++][2] = w;
    for (int i = 0; i < c->levels; i++) {
        const int64_t ch = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++)
            skips[n_skips][0] = ch, skips[n_skips][1] = h, skips[n_skips++][2] = w;
        if (i < c->levels - 1) {
            h = (h + 1) / 2, w = (w + 1) / 2;
            skips[n_skips][0] = ch, skips[n_skips][1] = h, skips[n_skips++][2] = w;
        }
    }
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
    const sd_tensor_t *ins[IN_DOWN + MAX_SKIPS] = {[IN_X] = x,
                                                   [IN_T] = t,
                                                   [IN_CONTEXT] = context,
                                                   [IN_TEXT_EMBEDS] = in->text_embeds,
                                                   [IN_TIME_IDS] = in->time_ids,
                                                   [IN_MID] = in->mid_residual};
    int32_t dtypes[IN_DOWN + MAX_SKIPS];
    for (int32_t i = 0; i < IN_DOWN + n_down; i++) dtypes[i] = act;
    dtypes[IN_T] = dtypes[IN_TIME_IDS] = SD_DTYPE_F32;
    for (int32_t i = 0; i < n_down; i++) ins[IN_DOWN + i] = in->down_residuals[i];

    /* The TABLE lookup runs before the cached forward: staging converts float tensors
     * only, so the gathered rows are staged rather than the I32 labels. */
    sd_tensor_t *rows = NULL, rows2d;
    if (c->class_embed_type == SD_UNET_CLASS_TABLE) {
        SD_TRY(sd_scratch_new(ctx, act, 3, (int64_t[]){b, 1, net->temb_dim}, &rows));
        sd_tensor_t ids =
            sd_tensor_view(in->class_labels->data, SD_DTYPE_I32, 2, (int64_t[]){b, 1});
        sd_status_t st = sd_op_embedding(ctx, rows, &ids, net->class_table);
        if (st != SD_STATUS_OK) {
            sd_scratch_free(ctx, rows);
            return st;
        }
        rows2d = sd_tensor_view(rows->data, act, 2, (int64_t[]){b, net->temb_dim});
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
