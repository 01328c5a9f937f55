/*
 * unet-blocks.c - the parts of UNet2DConditionModel (unet-blocks.h).
 *
 * ref: diffusers.models.unets.unet_2d_condition.UNet2DConditionModel with
 * CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn / UNetMidBlock2D,
 * CrossAttnUpBlock2D / UpBlock2D; get_class_embed and get_aug_embed (SDXL's text_time).
 */
#include "unet-blocks.h"

#include <string.h>

bool unet_config_check(loader_t *L, const sd_unet_config_t *c) {
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

void free_unet_block(unet_block_w *b) {
    if (b->attentions)
        for (int32_t i = 0; i < b->n_resnets; i++) free_transformer(&b->attentions[i]);
    free(b->attentions);
    free(b->resnets);
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

void ld_unet_embed(loader_t *L, unet_embed_w *e, const sd_unet_config_t *c) {
    const int64_t c0 = c->block_out_channels[0], temb = 4 * c0;
    e->dim = temb;
    e->time1 = ld_linear(L, temb, c0, true, "time_embedding.linear_1");
    e->time2 = ld_linear(L, temb, temb, true, "time_embedding.linear_2");
    if (c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME) {
        e->add1 = ld_linear(L, temb, c->projection_class_embeddings_input_dim, true,
                            "add_embedding.linear_1");
        e->add2 = ld_linear(L, temb, temb, true, "add_embedding.linear_2");
    }
    if (c->class_embed_type == SD_UNET_CLASS_TABLE)
        e->class_table = ld_table(L, c->num_class_embeds, temb, "class_embedding.weight");
    if (c->class_embed_type == SD_UNET_CLASS_TIMESTEP) {
        e->class1 = ld_linear(L, temb, c0, true, "class_embedding.linear_1");
        e->class2 = ld_linear(L, temb, temb, true, "class_embedding.linear_2");
    }
}

void ld_unet_encoder(loader_t *L, unet_encoder_w *e, const sd_unet_config_t *c, int64_t temb) {
    const int32_t levels = c->levels, layers = c->layers_per_block;
    const int64_t ctx_dim = c->cross_attention_dim;
    int64_t res_in[65];
    int64_t out_ch = c->block_out_channels[0];
    for (int i = 0; i < levels; i++) {
        int64_t in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        for (int j = 0; j < layers; j++) res_in[j] = j == 0 ? in_ch : out_ch;
        ld_block(L, &e->down[i], layers, res_in, out_ch, temb, c->down_attention[i] != 0,
                 c->heads[i], ctx_dim, c->transformer_layers[i], c->only_cross_attention[i],
                 "down_blocks", i, i < levels - 1);
    }

    const int64_t deep = c->block_out_channels[levels - 1];
    /* UNetMidBlock2DCrossAttn: ResNet, transformer, ResNet; UNet2DConditionModel builds its
     * UNetMidBlock2D with num_layers 0 and no attention: a single ResNet. */
    ld_resnet(L, &e->mid_resnets[0], deep, deep, temb, "mid_block.resnets.0");
    e->has_mid_attention = c->mid_attention != 0;
    if (e->has_mid_attention) {
        ld_transformer(L, &e->mid_attention, deep, c->heads[levels - 1], ctx_dim,
                       c->transformer_layers[levels - 1], 0, "mid_block.attentions.0");
        ld_resnet(L, &e->mid_resnets[1], deep, deep, temb, "mid_block.resnets.1");
    }
}

void free_unet_encoder(unet_encoder_w *e) {
    for (int i = 0; i < SD_MAX_LEVELS; i++) free_unet_block(&e->down[i]);
    if (e->has_mid_attention) free_transformer(&e->mid_attention);
}

void ld_unet_decoder(loader_t *L, unet_block_w *up, const sd_unet_config_t *c, int64_t temb) {
    const int32_t levels = c->levels, layers = c->layers_per_block;
    int64_t res_in[66];
    int64_t out_ch = c->block_out_channels[levels - 1];
    for (int i = 0; i < levels; i++) {
        const int lv = levels - 1 - i; /* the level this up block works at */
        int64_t prev = out_ch;
        out_ch = c->block_out_channels[lv];
        int64_t skip_in = c->block_out_channels[lv > 0 ? lv - 1 : 0];
        for (int j = 0; j <= layers; j++)
            res_in[j] = (j == 0 ? prev : out_ch) + (j == layers ? skip_in : out_ch);
        ld_block(L, &up[i], layers + 1, res_in, out_ch, temb, c->up_attention[i] != 0, c->heads[lv],
                 c->cross_attention_dim, c->transformer_layers[lv], c->only_cross_attention[lv],
                 "up_blocks", i, i < levels - 1);
    }
}

int unet_skip_shapes(const sd_unet_config_t *c, int64_t h, int64_t w,
                     int64_t shapes[UNET_MAX_SKIPS][3]) {
    int n = 0;
    shapes[n][0] = c->block_out_channels[0], shapes[n][1] = h, shapes[n++][2] = w;
    for (int i = 0; i < c->levels; i++) {
        const int64_t ch = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++)
            shapes[n][0] = ch, shapes[n][1] = h, shapes[n++][2] = w;
        if (i < c->levels - 1) {
            h = (h + 1) / 2, w = (w + 1) / 2;
            shapes[n][0] = ch, shapes[n][1] = h, shapes[n++][2] = w;
        }
    }
    return n;
}

static bool is_f32(const sd_tensor_t *t, int32_t ndim, int64_t d0) {
    return t->dtype == SD_DTYPE_F32 && t->ndim == ndim && t->shape[0] == d0;
}

sd_status_t unet_check_embed_inputs(sd_ctx_t *ctx, const char *op, const sd_unet_config_t *c,
                                    const sd_tensor_t *te, const sd_tensor_t *ti,
                                    const sd_tensor_t *cl, int64_t b) {
    char b1[96], b2[96];
    const bool text_time = c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME;
    if (!text_time && (te != NULL || ti != NULL))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: text_embeds / time_ids given to a model without "
                       "addition_embed_type text_time",
                       op);
    if (text_time) {
        bool ok = te != NULL && ti != NULL && is_f32(te, 2, b) && is_f32(ti, 2, b) &&
                  te->shape[1] + ti->shape[1] * c->addition_time_embed_dim ==
                      c->projection_class_embeddings_input_dim;
        if (!ok)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "%s: text_embeds %s, time_ids %s: expected (B, P) and (B, N) f32 with "
                           "P + N * %d = %d",
                           op, te ? sd_tensor_describe(te, b1, sizeof b1) : "NULL",
                           ti ? sd_tensor_describe(ti, b2, sizeof b2) : "NULL",
                           c->addition_time_embed_dim, c->projection_class_embeddings_input_dim);
    }
    if (c->class_embed_type == SD_UNET_CLASS_NONE && cl != NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: class_labels given to a model without class embeddings", op);
    if (c->class_embed_type != SD_UNET_CLASS_NONE) {
        const int32_t dt = c->class_embed_type == SD_UNET_CLASS_TABLE ? SD_DTYPE_I32 : SD_DTYPE_F32;
        if (cl == NULL || cl->dtype != dt || cl->ndim != 1 || cl->shape[0] != b)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: class_labels %s: expected (B) %s",
                           op, cl ? sd_tensor_describe(cl, b1, sizeof b1) : "NULL",
                           sd_dtype_name(dt));
    }
    return SD_STATUS_OK;
}

sd_status_t unet_class_rows(sd_ctx_t *ctx, const unet_embed_w *e, const sd_tensor_t *labels,
                            sd_tensor_t **rows, sd_tensor_t *rows2d) {
    const int32_t act = sd_ctx_backend_ptr(ctx)->act_dtype;
    const int64_t b = labels->shape[0];
    SD_TRY(sd_scratch_new(ctx, act, 3, (int64_t[]){b, 1, e->dim}, rows));
    sd_tensor_t ids = sd_tensor_view(labels->data, SD_DTYPE_I32, 2, (int64_t[]){b, 1});
    sd_status_t st = sd_op_embedding(ctx, *rows, &ids, e->class_table);
    if (st != SD_STATUS_OK) {
        sd_scratch_free(ctx, *rows);
        *rows = NULL;
        return st;
    }
    *rows2d = sd_tensor_view((*rows)->data, act, 2, (int64_t[]){b, e->dim});
    return SD_STATUS_OK;
}

/* temb += TimestepEmbedding(x): linear_1, SiLU, linear_2 (x (B, in) in the activation
 * dtype), the second linear accumulating into temb. */
static void add_embedding(build_t *g, sd_tensor_t *temb, const sd_tensor_t *x,
                          const sd_linear_w *l1, const sd_linear_w *l2) {
    sd_tensor_t *h = g_new(g, 2, temb->shape[0], temb->shape[1], 0, 0);
    g_linear(g, h, x, l1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, h, h, SD_ACT_SILU));
    g_linear(g, temb, h, l2, temb, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, h);
}

sd_tensor_t *g_unet_temb(build_t *g, const unet_embed_w *e, const sd_unet_config_t *c, int64_t b,
                         const unet_embed_in_t *in) {
    const int64_t c0 = c->block_out_channels[0];
    const sd_timestep_embedding_params_t tp = {c->flip_sin_to_cos, c->freq_shift, 1.0f, 10000.0f};
    sd_tensor_t *te = g_new(g, 2, b, c0, 0, 0);
    G(g, sd_op_timestep_embedding(g->ctx, te, in->t, &tp));
    sd_tensor_t *t1 = g_new(g, 2, b, e->dim, 0, 0);
    g_linear(g, t1, te, &e->time1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, t1, t1, SD_ACT_SILU));
    sd_tensor_t *temb = g_new(g, 2, b, e->dim, 0, 0);
    g_linear(g, temb, t1, &e->time2, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, t1);

    if (c->class_embed_type == SD_UNET_CLASS_TABLE) {
        G(g, sd_op_add(g->ctx, temb, temb, in->class_emb));
    } else if (c->class_embed_type == SD_UNET_CLASS_TIMESTEP) {
        /* diffusers embeds the labels with the UNet's own time_proj. */
        G(g, sd_op_timestep_embedding(g->ctx, te, in->class_emb, &tp));
        add_embedding(g, temb, te, &e->class1, &e->class2);
    }
    g_free(g, te);

    if (c->addition_embed_type == SD_UNET_ADDITION_TEXT_TIME && g->st == SD_STATUS_OK) {
        /* add_time_proj(time_ids.flatten()).reshape(B, -1): the (B * N, D) sinusoids are
         * row-major, so they already are the (B, N * D) rows to concatenate. */
        const int64_t n_ids = in->time_ids->shape[1], d = c->addition_time_embed_dim;
        const int64_t p = in->text_embeds->shape[1];
        sd_tensor_t ids =
            sd_tensor_view(in->time_ids->data, in->time_ids->dtype, 1, (int64_t[]){b * n_ids});
        sd_tensor_t *ts = g_new(g, 2, b * n_ids, d, 0, 0);
        G(g, sd_op_timestep_embedding(g->ctx, ts, &ids, &tp));
        sd_tensor_t *cat = g_new(g, 2, b, p + n_ids * d, 0, 0);
        if (g->st == SD_STATUS_OK) {
            sd_tensor_t rows = sd_tensor_view(ts->data, ts->dtype, 2, (int64_t[]){b, n_ids * d});
            G(g, sd_op_concat(g->ctx, cat, in->text_embeds, &rows));
        }
        g_free(g, ts);
        add_embedding(g, temb, cat, &e->add1, &e->add2);
        g_free(g, cat);
    }
    G(g, sd_op_activation(g->ctx, temb, temb, SD_ACT_SILU));
    return temb;
}

int g_unet_down(build_t *g, const unet_encoder_w *e, const sd_unet_config_t *c, sd_tensor_t *h,
                const sd_tensor_t *temb, const sd_tensor_t *cond, sd_tensor_t **skips) {
    const int32_t groups = c->norm_groups;
    const float eps = c->norm_eps;
    int n_skips = 0;
    skips[n_skips++] = h;
    for (int i = 0; i < c->levels; i++) {
        const unet_block_w *blk = &e->down[i];
        for (int32_t j = 0; j < blk->n_resnets; j++) {
            sd_tensor_t *r = g_resnet(g, &blk->resnets[j], h, temb, groups, eps);
            if (blk->attentions) {
                sd_tensor_t *a2 = g_transformer(g, &blk->attentions[j], r, cond, groups);
                g_free(g, r);
                r = a2;
            }
            h = skips[n_skips++] = r;
        }
        if (blk->sampler.w != NULL && g->st == SD_STATUS_OK) {
            const int64_t b = h->shape[0];
            sd_tensor_t *d =
                g_new(g, 4, b, h->shape[1], (h->shape[2] + 1) / 2, (h->shape[3] + 1) / 2);
            g_conv(g, d, h, &blk->sampler, NULL, NULL, 2, 1, 1, 1, 1);
            h = skips[n_skips++] = d;
        }
    }
    return n_skips;
}

sd_tensor_t *g_unet_mid(build_t *g, const unet_encoder_w *e, const sd_unet_config_t *c,
                        const sd_tensor_t *x, const sd_tensor_t *temb, const sd_tensor_t *cond) {
    const int32_t groups = c->norm_groups;
    const float eps = c->norm_eps;
    sd_tensor_t *m = g_resnet(g, &e->mid_resnets[0], x, temb, groups, eps);
    if (e->has_mid_attention) {
        sd_tensor_t *a2 = g_transformer(g, &e->mid_attention, m, cond, groups);
        g_free(g, m);
        m = g_resnet(g, &e->mid_resnets[1], a2, temb, groups, eps);
        g_free(g, a2);
    }
    return m;
}

sd_tensor_t *g_unet_up(build_t *g, const unet_block_w *up, const sd_unet_config_t *c,
                       sd_tensor_t *h, sd_tensor_t **skips, int n_skips, const sd_tensor_t *temb,
                       const sd_tensor_t *cond) {
    const int32_t groups = c->norm_groups;
    const float eps = c->norm_eps;
    for (int i = 0; i < c->levels; i++) {
        const unet_block_w *blk = &up[i];
        for (int32_t j = 0; j < blk->n_resnets; j++) {
            sd_tensor_t *s = n_skips > 0 ? skips[--n_skips] : NULL;
            sd_tensor_t *cat = NULL;
            if (g->st == SD_STATUS_OK)
                cat = g_new(g, 4, h->shape[0], h->shape[1] + s->shape[1], h->shape[2], h->shape[3]);
            G(g, sd_op_concat(g->ctx, cat, h, s));
            g_free(g, h);
            g_free(g, s);
            sd_tensor_t *r = g_resnet_take(g, &blk->resnets[j], cat, temb, groups, eps);
            if (blk->attentions) {
                sd_tensor_t *a2 = g_transformer(g, &blk->attentions[j], r, cond, groups);
                g_free(g, r);
                r = a2;
            }
            h = r;
        }
        /* Upsample to the next skip's size: 2x, or what diffusers' forward_upsample_size
         * gives for latents not divisible by 2^(levels-1). */
        if (blk->sampler.w != NULL && g->st == SD_STATUS_OK && n_skips > 0) {
            sd_tensor_t *u = g_upsample(g, &blk->sampler, h, skips[n_skips - 1]->shape[2],
                                        skips[n_skips - 1]->shape[3]);
            g_free(g, h);
            h = u;
        }
    }
    while (n_skips > 0) g_free(g, skips[--n_skips]);
    return h;
}
