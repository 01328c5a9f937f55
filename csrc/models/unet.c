/*
 * unet.c - UNet2DConditionModel of Stable Diffusion 1.x / 2.x, generic over its config.
 *
 * ref: diffusers.models.unets.unet_2d_condition.UNet2DConditionModel with
 * CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D /
 * UpBlock2D: conv_in; sinusoidal time embedding -> linear -> SiLU -> linear; down blocks
 * keep every output for the skip connections; mid block; up blocks concatenate a skip
 * before each ResNet and upsample to the next skip's size; GroupNorm + SiLU + conv_out.
 */
#include "model.h"

#include <string.h>

typedef struct {
    int32_t n_resnets;
    resnet_w *resnets;
    transformer_w *attentions; /* NULL for blocks without attention */
    sd_conv_w sampler;         /* downsampler / upsampler conv; w NULL for the last block */
} unet_block_w;

/* A recorded forward pass for one input shape (backends with graphs): inputs are staged
 * into, and the result read from, its own buffers, whose addresses the graph captured. */
typedef struct {
    int64_t b, h, w, tokens;
    sd_tensor_t x, t, context, out; /* backend memory, not the arena */
    void *graph;
    uint64_t epoch; /* the arena epoch the graph was recorded in */
    int eager_runs; /* the first run is eager: it sizes the arena */
    bool no_graph;  /* recording failed: always eager */
    uint64_t used;  /* for least-recently-used replacement */
} unet_graph_t;

#define UNET_GRAPHS 4

typedef struct {
    sd_unet_config_t cfg;
    int64_t temb_dim;
    unet_graph_t graphs[UNET_GRAPHS];
    int n_graphs;
    uint64_t calls;
    sd_conv_w conv_in, conv_out;
    sd_linear_w time1, time2;
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

static void free_graph(sd_ctx_t *ctx, unet_graph_t *e) {
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    if (e->graph) be->ops->graph_free(be, e->graph);
    sd_tensor_t *bufs[4] = {&e->x, &e->t, &e->context, &e->out};
    for (int i = 0; i < 4; i++)
        if (bufs[i]->data) be->ops->free(be, bufs[i]->data);
    memset(e, 0, sizeof *e);
    e->b = -1;
}

static void unet_free(sd_ctx_t *ctx, void *p) {
    unet_net_t *n = p;
    if (n == NULL) return;
    for (int i = 0; i < n->n_graphs; i++) free_graph(ctx, &n->graphs[i]);
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
        .use_linear_projection = 0,
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
                     int32_t t_layers, const char *kind, int i, bool sampler) {
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
            ld_transformer(L, &b->attentions[j], out, heads, ctx_dim, t_layers, p);
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

    int64_t res_in[65];
    int64_t out_ch = c0;
    for (int i = 0; i < levels; i++) {
        int64_t in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        for (int j = 0; j < layers; j++) res_in[j] = j == 0 ? in_ch : out_ch;
        ld_block(L, &net->down[i], layers, res_in, out_ch, temb, c->down_attention[i] != 0,
                 c->heads[i], ctx_dim, c->transformer_layers[i], "down_blocks", i, i < levels - 1);
    }

    const int64_t deep = c->block_out_channels[levels - 1];
    ld_resnet(L, &net->mid_resnets[0], deep, deep, temb, "mid_block.resnets.0");
    net->has_mid_attention = c->mid_attention != 0;
    if (net->has_mid_attention)
        ld_transformer(L, &net->mid_attention, deep, c->heads[levels - 1], ctx_dim,
                       c->transformer_layers[levels - 1], "mid_block.attentions.0");
    ld_resnet(L, &net->mid_resnets[1], deep, deep, temb, "mid_block.resnets.1");

    out_ch = deep;
    for (int i = 0; i < levels; i++) {
        const int lv = levels - 1 - i; /* the level this up block works at */
        int64_t prev = out_ch;
        out_ch = c->block_out_channels[lv];
        int64_t skip_in = c->block_out_channels[lv > 0 ? lv - 1 : 0];
        for (int j = 0; j <= layers; j++)
            res_in[j] = (j == 0 ? prev : out_ch) + (j == layers ? skip_in : out_ch);
        ld_block(L, &net->up[i], layers + 1, res_in, out_ch, temb, c->up_attention[i] != 0,
                 c->heads[lv], ctx_dim, c->transformer_layers[lv], "up_blocks", i, i < levels - 1);
    }
    net->norm_out = ld_norm(L, c0, "conv_norm_out");
    net->conv_out = ld_conv(L, c->out_channels, c0, c->conv_out_kernel, "conv_out");
    return loader_finish(L, net, unet_free, out);
}

#define MAX_SKIPS (1 + SD_MAX_LEVELS * 65)

/* The forward pass on inputs in the activation dtype: xi (B, in, H, W), t (B) F32 and cond
 * (B, T, cross dim), writing res (B, out, H, W). */
static void unet_run(graph_t *g, const unet_net_t *net, const sd_tensor_t *xi, const sd_tensor_t *t,
                     const sd_tensor_t *cond, sd_tensor_t *res) {
    if (g->st != SD_STATUS_OK) return;
    const sd_unet_config_t *c = &net->cfg;
    const int64_t b = xi->shape[0], h = xi->shape[2], w = xi->shape[3];
    const int32_t levels = c->levels, groups = c->norm_groups;
    const float eps = c->norm_eps;
    const int64_t c0 = c->block_out_channels[0];

    /* Time embedding; the ResNets only ever see SiLU(temb). */
    sd_tensor_t *te = g_new(g, 2, b, c0, 0, 0);
    sd_timestep_embedding_params_t tp = {c->flip_sin_to_cos, c->freq_shift, 1.0f, 10000.0f};
    G(g, sd_op_timestep_embedding(g->ctx, te, t, &tp));
    sd_tensor_t *t1 = g_new(g, 2, b, net->temb_dim, 0, 0);
    g_linear(g, t1, te, &net->time1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, t1, t1, SD_ACT_SILU));
    sd_tensor_t *temb = g_new(g, 2, b, net->temb_dim, 0, 0);
    g_linear(g, temb, t1, &net->time2, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, temb, temb, SD_ACT_SILU));
    g_free(g, te);
    g_free(g, t1);

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
                sd_tensor_t *a = g_transformer(g, &blk->attentions[j], r, cond, groups);
                g_free(g, r);
                r = a;
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
        sd_tensor_t *a = g_transformer(g, &net->mid_attention, m, cond, groups);
        g_free(g, m);
        m = a;
    }
    hcur = g_resnet(g, &net->mid_resnets[1], m, temb, groups, eps);
    g_free(g, m);

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
                sd_tensor_t *a = g_transformer(g, &blk->attentions[j], r, cond, groups);
                g_free(g, r);
                r = a;
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

static bool alloc_like(sd_backend_t *be, sd_tensor_t *dst, int32_t dtype, const sd_tensor_t *like) {
    *dst = sd_tensor_view(NULL, dtype, like->ndim, like->shape);
    dst->data = be->ops->alloc(be, dst->nbytes);
    return dst->data != NULL;
}

/* The graph entry for this call's shapes, created (replacing the least recently used one)
 * on first sight; NULL when out of memory. */
static unet_graph_t *graph_entry(sd_ctx_t *ctx, unet_net_t *net, const sd_tensor_t *x,
                                 const sd_tensor_t *t, const sd_tensor_t *context,
                                 const sd_tensor_t *out, int32_t act) {
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    const int64_t b = x->shape[0], h = x->shape[2], w = x->shape[3], tokens = context->shape[1];
    unet_graph_t *e = NULL;
    for (int i = 0; i < net->n_graphs; i++) {
        unet_graph_t *c = &net->graphs[i];
        if (c->b == b && c->h == h && c->w == w && c->tokens == tokens) e = c;
    }
    if (e == NULL) {
        if (net->n_graphs < UNET_GRAPHS) {
            e = &net->graphs[net->n_graphs++];
        } else {
            e = &net->graphs[0];
            for (int i = 1; i < UNET_GRAPHS; i++)
                if (net->graphs[i].used < e->used) e = &net->graphs[i];
            free_graph(ctx, e);
        }
        e->b = b, e->h = h, e->w = w, e->tokens = tokens;
        if (!alloc_like(be, &e->x, act, x) || !alloc_like(be, &e->t, SD_DTYPE_F32, t) ||
            !alloc_like(be, &e->context, act, context) || !alloc_like(be, &e->out, act, out)) {
            free_graph(ctx, e); /* leaves an entry no shape matches */
            return NULL;
        }
    }
    e->used = ++net->calls;
    return e;
}

/* Runs through a recorded graph: inputs staged into the entry's buffers, the first call
 * eager (it grows the arena to this shape's needs, so recording allocates nothing), the
 * second recorded, later ones replayed. A graph is dropped when the arena has released
 * memory since it was recorded. */
static void unet_graph_forward(graph_t *g, unet_net_t *net, unet_graph_t *e, const sd_tensor_t *x,
                               const sd_tensor_t *t, const sd_tensor_t *context, sd_tensor_t *out) {
    sd_ctx_t *ctx = g->ctx;
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    G(g, sd_op_convert(ctx, &e->x, x));
    G(g, sd_op_convert(ctx, &e->t, t));
    G(g, sd_op_convert(ctx, &e->context, context));
    if (g->st != SD_STATUS_OK) return;
    if (e->graph != NULL && e->epoch != sd_ctx_arena_epoch(ctx)) {
        be->ops->graph_free(be, e->graph);
        e->graph = NULL;
        e->eager_runs = 0;
    }
    if (e->graph == NULL && !e->no_graph && e->eager_runs > 0) {
        sd_status_t st = be->ops->graph_begin(ctx);
        if (st == SD_STATUS_OK) {
            unet_run(g, net, &e->x, &e->t, &e->context, &e->out);
            void *graph = NULL;
            st = be->ops->graph_end(ctx, &graph);
            if (g->st == SD_STATUS_OK && st == SD_STATUS_OK) {
                e->graph = graph;
                e->epoch = sd_ctx_arena_epoch(ctx);
            } else if (graph != NULL) {
                be->ops->graph_free(be, graph);
            }
        }
        if (e->graph == NULL) {
            if (g->st == SD_STATUS_CANCELLED) return;
            sd_log(ctx, SD_LOG_WARN, "unet: recording a graph failed (%s); running eagerly",
                   sd_ctx_last_error(ctx));
            e->no_graph = true;
            g->st = SD_STATUS_OK;
        }
    }
    if (e->graph != NULL) {
        G(g, be->ops->graph_launch(ctx, e->graph));
    } else {
        unet_run(g, net, &e->x, &e->t, &e->context, &e->out);
        e->eager_runs++;
    }
    g_output(g, out, &e->out);
}

sd_status_t sd_unet_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
                            const sd_tensor_t *t, const sd_tensor_t *context, sd_tensor_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    if (model == NULL || model->kind != SD_MODEL_UNET)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "unet_forward: not a UNet model");
    const unet_net_t *net = model->net;
    const sd_unet_config_t *c = &net->cfg;
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

    graph_t gr = graph_begin(ctx), *g = &gr;
    if (sd_ctx_graphs_enabled(ctx)) {
        unet_graph_t *e = graph_entry(ctx, model->net, x, t, context, out, g->act);
        if (e == NULL)
            return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "unet: cannot allocate graph buffers");
        unet_graph_forward(g, model->net, e, x, t, context, out);
        return g->st;
    }
    sd_tensor_t *xi = g_input(g, x), *cond = g_input(g, context);
    sd_tensor_t *res = out->dtype == g->act ? out : g_new(g, 4, b, c->out_channels, h, w);
    unet_run(g, net, xi, t, cond, res);
    if (res != out) {
        g_output(g, out, res);
        g_free(g, res);
    }
    g_release_input(g, x, xi);
    g_release_input(g, context, cond);
    return g->st;
}
