/*
 * esrgan.c - ESRGAN's generator, RRDBNet as Real-ESRGAN builds it.
 *
 * ref: Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial
 * Networks" (residual-in-residual dense blocks: five 3x3 convs per dense block, each
 * seeing the concatenation of the block input and all earlier outputs, LeakyReLU 0.2
 * after the first four; residual scaling 0.2 of each dense block and of each RRDB), with
 * Real-ESRGAN's module names and head/tail (basicsr's RRDBNet): conv_first, the RRDBs,
 * conv_body added to conv_first's output, two nearest 2x upsamplings each followed by a
 * conv and LeakyReLU, conv_hr + LeakyReLU, conv_last.
 */
#include "blocks.h"

#include <string.h>

#define RES_SCALE 0.2f

typedef struct {
    sd_conv_w conv[5];
} rdb_w;

typedef struct {
    rdb_w rdb[3];
} rrdb_w;

typedef struct {
    sd_esrgan_config_t cfg;
    sd_conv_w first, body, up1, up2, hr, last;
    rrdb_w *blocks;
    const sd_tensor_t *res_scale; /* (1) RES_SCALE in the activation dtype */
} esrgan_net_t;

static void esrgan_free(sd_ctx_t *ctx, void *p) {
    (void)ctx;
    esrgan_net_t *n = p;
    if (n == NULL) return;
    free(n->blocks);
    free(n);
}

void sd_esrgan_config_default(sd_esrgan_config_t *c) {
    if (c == NULL) return;
    *c = (sd_esrgan_config_t){
        .in_channels = 3, .out_channels = 3, .num_feat = 64, .num_block = 23, .num_grow_ch = 32};
}

size_t sd_sizeof_esrgan_config(void) {
    return sizeof(sd_esrgan_config_t);
}

sd_status_t sd_esrgan_load(sd_ctx_t *ctx, const sd_esrgan_config_t *config,
                           const sd_weight_t *weights, int32_t n_weights, sd_model_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL || config == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "esrgan_load: NULL config or out");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    loader_t *L = loader_new(ctx, "esrgan", SD_MODEL_ESRGAN, weights, n_weights, NULL);
    if (L == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    esrgan_net_t *net = calloc(1, sizeof *net);
    if (net == NULL) loader_oom(L);
    const sd_esrgan_config_t *c = config;
    if (loader_status(L) == SD_STATUS_OK &&
        (c->in_channels < 1 || c->out_channels < 1 || c->num_feat < 1 || c->num_block < 1 ||
         c->num_block > 1024 || c->num_grow_ch < 1))
        loader_fail(L, "invalid config (in %d, out %d, feat %d, blocks %d, grow %d)",
                    c->in_channels, c->out_channels, c->num_feat, c->num_block, c->num_grow_ch);
    if (loader_status(L) != SD_STATUS_OK) return loader_finish(L, net, esrgan_free, out);
    net->cfg = *config;
    const int64_t nf = c->num_feat, gc = c->num_grow_ch;
    net->blocks = calloc((size_t)c->num_block, sizeof *net->blocks);
    if (net->blocks == NULL) {
        loader_oom(L);
        return loader_finish(L, net, esrgan_free, out);
    }
    net->first = ld_conv(L, nf, c->in_channels, 3, "conv_first");
    for (int b = 0; b < c->num_block; b++)
        for (int r = 0; r < 3; r++)
            for (int k = 0; k < 5; k++)
                net->blocks[b].rdb[r].conv[k] = ld_conv(L, k < 4 ? gc : nf, nf + k * gc, 3,
                                                        "body.%d.rdb%d.conv%d", b, r + 1, k + 1);
    net->body = ld_conv(L, nf, nf, 3, "conv_body");
    net->up1 = ld_conv(L, nf, nf, 3, "conv_up1");
    net->up2 = ld_conv(L, nf, nf, 3, "conv_up2");
    net->hr = ld_conv(L, nf, nf, 3, "conv_hr");
    net->last = ld_conv(L, c->out_channels, nf, 3, "conv_last");
    const float scale = RES_SCALE;
    net->res_scale = ld_const(L, 1, &scale);
    return loader_finish(L, net, esrgan_free, out);
}

/* x *= RES_SCALE, through a (numel, 1) view broadcasting the model's (1) scale. */
static void g_res_scale(build_t *g, const esrgan_net_t *net, sd_tensor_t *x) {
    if (g->st != SD_STATUS_OK) return;
    int64_t shape[2] = {sd_tensor_numel(x), 1};
    sd_tensor_t v = sd_tensor_view(x->data, x->dtype, 2, shape);
    G(g, sd_op_mul(g->ctx, &v, &v, net->res_scale));
}

static void g_lrelu(build_t *g, sd_tensor_t *x) {
    G(g, sd_op_activation(g->ctx, x, x, SD_ACT_LEAKY_RELU));
}

/* A 3x3 "same" convolution into a new tensor, optionally followed by LeakyReLU. */
static sd_tensor_t *g_conv3(build_t *g, const sd_conv_w *c, const sd_tensor_t *x, bool lrelu) {
    if (g->st != SD_STATUS_OK) return NULL;
    sd_tensor_t *y = g_new(g, 4, x->shape[0], c->w->shape[0], x->shape[2], x->shape[3]);
    g_conv(g, y, x, c, NULL, NULL, 1, 1, 1, 1, 1);
    if (lrelu) g_lrelu(g, y);
    return y;
}

/* ResidualDenseBlock: x + 0.2 conv5(cat(x, x1, x2, x3, x4)), xk = lrelu(convk(cat(x, ...,
 * x(k-1)))). Returns a new tensor. */
static sd_tensor_t *g_rdb(build_t *g, const esrgan_net_t *net, const rdb_w *w,
                          const sd_tensor_t *x) {
    const sd_tensor_t *cat = x;
    sd_tensor_t *owned_cat = NULL;
    for (int k = 0; k < 4 && g->st == SD_STATUS_OK; k++) {
        sd_tensor_t *xk = g_conv3(g, &w->conv[k], cat, true);
        if (g->st != SD_STATUS_OK) {
            g_free(g, xk);
            break;
        }
        sd_tensor_t *next =
            g_new(g, 4, cat->shape[0], cat->shape[1] + xk->shape[1], cat->shape[2], cat->shape[3]);
        G(g, sd_op_concat(g->ctx, next, cat, xk));
        g_free(g, xk);
        g_free(g, owned_cat);
        cat = owned_cat = next;
    }
    sd_tensor_t *y = g_conv3(g, &w->conv[4], cat, false);
    g_free(g, owned_cat);
    g_res_scale(g, net, y);
    G(g, sd_op_add(g->ctx, y, y, x));
    return y;
}

/* RRDB: x + 0.2 rdb3(rdb2(rdb1(x))). Returns a new tensor. */
static sd_tensor_t *g_rrdb(build_t *g, const esrgan_net_t *net, const rrdb_w *w,
                           const sd_tensor_t *x) {
    sd_tensor_t *h = NULL;
    for (int r = 0; r < 3 && g->st == SD_STATUS_OK; r++) {
        sd_tensor_t *n = g_rdb(g, net, &w->rdb[r], h ? h : x);
        g_free(g, h);
        h = n;
    }
    g_res_scale(g, net, h);
    G(g, sd_op_add(g->ctx, h, h, x));
    return h;
}

/* Nearest 2x, then conv and LeakyReLU. Returns a new tensor. */
static sd_tensor_t *g_up(build_t *g, const sd_conv_w *c, const sd_tensor_t *x) {
    if (g->st != SD_STATUS_OK) return NULL;
    sd_tensor_t *u = g_upsample(g, c, x, 2 * x->shape[2], 2 * x->shape[3]);
    g_lrelu(g, u);
    return u;
}

sd_status_t sd_esrgan_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
                              sd_tensor_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_ESRGAN, "esrgan_forward"));
    const esrgan_net_t *net = model->net;
    const sd_esrgan_config_t *c = &net->cfg;
    if (x == NULL || out == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "esrgan_forward: NULL tensor");
    char b1[96], b2[96];
    if (x->ndim != 4 || x->shape[1] != c->in_channels || out->ndim != 4 ||
        out->shape[0] != x->shape[0] || out->shape[1] != c->out_channels ||
        out->shape[2] != 4 * x->shape[2] || out->shape[3] != 4 * x->shape[3])
        return sd_fail(
            ctx, SD_STATUS_INVALID_ARGUMENT,
            "esrgan_forward: x %s, out %s: expected x (B, %d, H, W), out (B, %d, 4H, 4W)",
            sd_tensor_describe(x, b1, sizeof b1), sd_tensor_describe(out, b2, sizeof b2),
            c->in_channels, c->out_channels);

    build_t gr = build_begin(ctx), *g = &gr;
    sd_tensor_t *xi = g_input(g, x);
    sd_tensor_t *feat = g_new(g, 4, x->shape[0], c->num_feat, x->shape[2], x->shape[3]);
    g_conv(g, feat, xi, &net->first, NULL, NULL, 1, 1, 1, 1, 1);
    g_release_input(g, x, xi);
    sd_tensor_t *h = NULL;
    for (int b = 0; b < c->num_block && g->st == SD_STATUS_OK; b++) {
        sd_tensor_t *n = g_rrdb(g, net, &net->blocks[b], h ? h : feat);
        g_free(g, h);
        h = n;
    }
    /* feat + conv_body(h), in place of feat. */
    if (g->st == SD_STATUS_OK) g_conv(g, feat, h, &net->body, NULL, feat, 1, 1, 1, 1, 1);
    g_free(g, h);
    sd_tensor_t *u1 = g_up(g, &net->up1, feat);
    g_free(g, feat);
    sd_tensor_t *u2 = g_up(g, &net->up2, u1);
    g_free(g, u1);
    sd_tensor_t *hr = g_conv3(g, &net->hr, u2, true);
    g_free(g, u2);
    if (g->st == SD_STATUS_OK) {
        sd_tensor_t *res = out->dtype == g->act ? out
                                                : g_new(g, 4, out->shape[0], out->shape[1],
                                                        out->shape[2], out->shape[3]);
        g_conv(g, res, hr, &net->last, NULL, NULL, 1, 1, 1, 1, 1);
        if (res != out) {
            g_output(g, out, res);
            g_free(g, res);
        }
    }
    g_free(g, hr);
    return g->st;
}
