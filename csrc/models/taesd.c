/*
 * taesd.c - TAESD, the tiny autoencoder: encoder and decoder, generic over the config.
 *
 * ref: madebyollin/taesd (taesd.py: Encoder, Decoder, Block, Clamp) and diffusers'
 * AutoencoderTiny (EncoderTiny, DecoderTiny, AutoencoderTinyBlock), which builds the same
 * nn.Sequential. A Block is conv 3x3 -> ReLU -> conv -> ReLU -> conv, plus the input
 * (identity skip: the width never changes), then ReLU. Encoder: conv in -> Blocks, then
 * per further level a stride-2 conv without bias (padding 1) -> Blocks; a last conv to the
 * latents. Decoder: 3 tanh(z / 3) -> conv -> ReLU, then per level Blocks -> (nearest 2x ->
 * conv without bias, all but the last level); the last level's conv (with bias) gives the
 * image. Ranges are the original's ([0, 1] images); diffusers' (x + 1) / 2 and 2 y - 1
 * around them are the caller's business.
 */
#include "blocks.h"

#include <math.h>
#include <string.h>

#define TAESD_CLAMP 3.0f /* the decoder's input soft clamp, 3 tanh(z / 3) */

typedef struct {
    sd_conv_w conv[3]; /* conv.0, conv.2, conv.4 of the original */
} taesd_block_w;

typedef struct {
    sd_conv_w conv; /* encoder: before the blocks; decoder: after them */
    int32_t n_blocks;
    taesd_block_w *blocks;
} taesd_level_w;

typedef struct {
    sd_taesd_config_t cfg;
    taesd_level_w enc[SD_MAX_LEVELS], dec[SD_MAX_LEVELS];
    sd_conv_w enc_out, dec_in;
} taesd_net_t;

static void taesd_free(sd_ctx_t *ctx, void *p) {
    (void)ctx;
    taesd_net_t *n = p;
    if (n == NULL) return;
    for (int i = 0; i < SD_MAX_LEVELS; i++) {
        free(n->enc[i].blocks);
        free(n->dec[i].blocks);
    }
    free(n);
}

void sd_taesd_config_default(sd_taesd_config_t *c) {
    if (c == NULL) return;
    *c = (sd_taesd_config_t){
        .in_channels = 3,
        .out_channels = 3,
        .latent_channels = 4,
        .encoder_levels = 4,
        .encoder_channels = {64, 64, 64, 64},
        .encoder_blocks = {1, 3, 3, 3},
        .decoder_levels = 4,
        .decoder_channels = {64, 64, 64, 64},
        .decoder_blocks = {3, 3, 3, 1},
    };
}

size_t sd_sizeof_taesd_config(void) {
    return sizeof(sd_taesd_config_t);
}

static bool levels_ok(loader_t *L, const char *what, int32_t levels, const int32_t *channels,
                      const int32_t *blocks) {
    if (levels < 0 || levels > SD_MAX_LEVELS) {
        loader_fail(L, "%s: %d levels (0..%d)", what, levels, SD_MAX_LEVELS);
        return false;
    }
    for (int i = 0; i < levels; i++) {
        if (channels[i] < 1 || channels[i] != channels[0] || blocks[i] < 0 || blocks[i] > 64) {
            loader_fail(L,
                        "%s level %d: %d channels, %d blocks (one width for all levels, "
                        "0..64 blocks)",
                        what, i, channels[i], blocks[i]);
            return false;
        }
    }
    return true;
}

static bool taesd_config_ok(loader_t *L, const sd_taesd_config_t *c) {
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1) {
        loader_fail(L, "invalid config (in %d, out %d, latent %d)", c->in_channels, c->out_channels,
                    c->latent_channels);
        return false;
    }
    if (c->encoder_levels == 0 && c->decoder_levels == 0) {
        loader_fail(L, "neither an encoder nor a decoder (both levels 0)");
        return false;
    }
    return levels_ok(L, "encoder", c->encoder_levels, c->encoder_channels, c->encoder_blocks) &&
           levels_ok(L, "decoder", c->decoder_levels, c->decoder_channels, c->decoder_blocks);
}

/* Loads n Blocks of width ch from <prefix>.layers.<*idx>, advancing *idx. */
static void ld_blocks(loader_t *L, taesd_level_w *lv, int32_t n, int64_t ch, const char *prefix,
                      int *idx) {
    lv->n_blocks = n;
    if (n == 0) return;
    lv->blocks = calloc((size_t)n, sizeof *lv->blocks);
    if (lv->blocks == NULL) {
        loader_oom(L);
        return;
    }
    for (int32_t j = 0; j < n; j++, (*idx)++)
        for (int k = 0; k < 3; k++)
            lv->blocks[j].conv[k] =
                ld_conv(L, ch, ch, 3, "%s.layers.%d.conv.%d", prefix, *idx, 2 * k);
}

sd_status_t sd_taesd_load(sd_ctx_t *ctx, const sd_taesd_config_t *config,
                          const sd_weight_t *weights, int32_t n_weights, sd_model_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL || config == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "taesd_load: NULL config or out");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    loader_t *L = loader_new(ctx, "taesd", SD_MODEL_TAESD, weights, n_weights, NULL);
    if (L == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    taesd_net_t *net = calloc(1, sizeof *net);
    if (net == NULL) loader_oom(L);
    if (loader_status(L) != SD_STATUS_OK || !taesd_config_ok(L, config))
        return loader_finish(L, net, taesd_free, out);
    net->cfg = *config;
    const sd_taesd_config_t *c = &net->cfg;

    /* Indices of diffusers' nn.Sequential: parameter-free layers (ReLU, Upsample) count. */
    if (c->encoder_levels > 0) {
        const int64_t ch = c->encoder_channels[0];
        int idx = 0;
        for (int i = 0; i < c->encoder_levels; i++) {
            net->enc[i].conv = i == 0 ? ld_conv(L, ch, c->in_channels, 3, "encoder.layers.%d", idx)
                                      : ld_conv_no_bias(L, ch, ch, 3, "encoder.layers.%d", idx);
            idx++;
            ld_blocks(L, &net->enc[i], c->encoder_blocks[i], ch, "encoder", &idx);
        }
        net->enc_out = ld_conv(L, c->latent_channels, ch, 3, "encoder.layers.%d", idx);
    }
    if (c->decoder_levels > 0) {
        const int64_t ch = c->decoder_channels[0];
        net->dec_in = ld_conv(L, ch, c->latent_channels, 3, "decoder.layers.0");
        int idx = 2; /* 1 is the ReLU after it */
        for (int i = 0; i < c->decoder_levels; i++) {
            const bool last = i == c->decoder_levels - 1;
            ld_blocks(L, &net->dec[i], c->decoder_blocks[i], ch, "decoder", &idx);
            if (!last) idx++; /* the upsampling */
            net->dec[i].conv = last ? ld_conv(L, c->out_channels, ch, 3, "decoder.layers.%d", idx)
                                    : ld_conv_no_bias(L, ch, ch, 3, "decoder.layers.%d", idx);
            idx++;
        }
    }
    return loader_finish(L, net, taesd_free, out);
}

static void g_relu(build_t *g, sd_tensor_t *x) {
    G(g, sd_op_clamp(g->ctx, x, x, 0.0f, INFINITY));
}

/* A Block on x (B, C, H, W) -> a new tensor; x is left alone. */
static sd_tensor_t *g_block(build_t *g, const taesd_block_w *blk, const sd_tensor_t *x) {
    if (g->st != SD_STATUS_OK) return NULL;
    const int64_t b = x->shape[0], ch = x->shape[1], h = x->shape[2], w = x->shape[3];
    sd_tensor_t *t1 = g_new(g, 4, b, ch, h, w);
    g_conv(g, t1, x, &blk->conv[0], NULL, NULL, 1, 1, 1, 1, 1);
    g_relu(g, t1);
    sd_tensor_t *t2 = g_new(g, 4, b, ch, h, w);
    g_conv(g, t2, t1, &blk->conv[1], NULL, NULL, 1, 1, 1, 1, 1);
    g_relu(g, t2);
    /* t1 is free again: the last conv writes there, the skip added in its epilogue. */
    g_conv(g, t1, t2, &blk->conv[2], NULL, x, 1, 1, 1, 1, 1);
    g_relu(g, t1);
    g_free(g, t2);
    return t1;
}

/* Runs a level's Blocks on *x, replacing it (the input is freed unless it is keep). */
static void g_blocks(build_t *g, const taesd_level_w *lv, sd_tensor_t **x,
                     const sd_tensor_t *keep) {
    for (int32_t j = 0; j < lv->n_blocks; j++) {
        sd_tensor_t *r = g_block(g, &lv->blocks[j], *x);
        if (*x != keep) g_free(g, *x);
        *x = r;
    }
}

/* Output rows per band of the decoder's last level (see g_last_level_bands). */
#define TAESD_BAND_ROWS 64

/* A tensor holding rows [lo, lo + h) of a full-height (H) activation. */
typedef struct {
    sd_tensor_t *t;
    int64_t lo;
} band_t;

/* A 3x3 conv of a band: zero padding only at the image's edges, so the result holds the
 * rows whose whole receptive field the band has: one fewer at each inner edge. */
static band_t g_band_conv(build_t *g, band_t x, int64_t full_h, const sd_conv_w *c,
                          const band_t *residual) {
    const int64_t h = x.t ? x.t->shape[2] : 0;
    const int32_t pt = x.lo == 0, pb = x.lo + h == full_h;
    band_t y = {NULL, x.lo + 1 - pt};
    if (g->st != SD_STATUS_OK) return y;
    const int64_t oh = h - 2 + pt + pb;
    y.t = g_new(g, 4, x.t->shape[0], c->w->shape[0], oh, x.t->shape[3]);
    sd_tensor_t *res = NULL;
    if (residual != NULL && g->st == SD_STATUS_OK) { /* the residual's rows of y */
        res = g_new(g, 4, x.t->shape[0], residual->t->shape[1], oh, x.t->shape[3]);
        if (res) G(g, sd_op_copy_rows(g->ctx, res, 0, residual->t, y.lo - residual->lo, oh));
    }
    g_conv(g, y.t, x.t, c, NULL, res, 1, pt, pb, 1, 1);
    g_free(g, res);
    return y;
}

/* The decoder's last level (its Blocks and the output conv) on x (B, C, H, W), into res,
 * a band of output rows at a time: each band starts from x's rows within the level's
 * receptive field of it (one row per conv each way) and is cut to its own rows at the end.
 * The same values as the whole image at once (up to float rounding of other Winograd tile
 * boundaries), in a fraction of the memory: at 512² the level's three 64 MiB tensors become
 * bands of a few MB, which the caches keep and the arena finds already touched. */
static void g_last_level_bands(build_t *g, const taesd_level_w *lv, const sd_tensor_t *x,
                               sd_tensor_t *res) {
    const int64_t b = x->shape[0], ch = x->shape[1], full_h = x->shape[2], w = x->shape[3];
    const int64_t halo = 3 * (int64_t)lv->n_blocks + 1;
    for (int64_t y0 = 0; y0 < full_h && g->st == SD_STATUS_OK; y0 += TAESD_BAND_ROWS) {
        const int64_t y1 = SD_MIN(full_h, y0 + TAESD_BAND_ROWS);
        const int64_t lo = SD_MAX(0, y0 - halo), hi = SD_MIN(full_h, y1 + halo);
        band_t cur = {g_new(g, 4, b, ch, hi - lo, w), lo};
        if (cur.t) G(g, sd_op_copy_rows(g->ctx, cur.t, 0, x, lo, hi - lo));
        for (int32_t j = 0; j < lv->n_blocks && g->st == SD_STATUS_OK; j++) {
            const taesd_block_w *blk = &lv->blocks[j];
            band_t t1 = g_band_conv(g, cur, full_h, &blk->conv[0], NULL);
            if (t1.t) g_relu(g, t1.t);
            band_t t2 = g_band_conv(g, t1, full_h, &blk->conv[1], NULL);
            g_free(g, t1.t);
            if (t2.t) g_relu(g, t2.t);
            band_t r = g_band_conv(g, t2, full_h, &blk->conv[2], &cur);
            g_free(g, t2.t);
            if (r.t) g_relu(g, r.t);
            g_free(g, cur.t);
            cur = r;
        }
        band_t o = g_band_conv(g, cur, full_h, &lv->conv, NULL);
        g_free(g, cur.t);
        if (o.t) G(g, sd_op_copy_rows(g->ctx, res, y0, o.t, y0 - o.lo, y1 - y0));
        g_free(g, o.t);
    }
}

sd_status_t sd_taesd_decode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *z,
                            sd_tensor_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_TAESD, "taesd_decode"));
    const taesd_net_t *net = model->net;
    const sd_taesd_config_t *c = &net->cfg;
    if (c->decoder_levels == 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "taesd_decode: the model has no decoder");
    char b1[96], b2[96];
    if (z == NULL || out == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "taesd_decode: NULL tensor");
    const int64_t b = z->shape[0], h = z->shape[2], w = z->shape[3],
                  f = (int64_t)1 << (c->decoder_levels - 1);
    if (z->ndim != 4 || z->shape[1] != c->latent_channels || out->ndim != 4 || out->shape[0] != b ||
        out->shape[1] != c->out_channels || out->shape[2] != h * f || out->shape[3] != w * f)
        return sd_fail(
            ctx, SD_STATUS_INVALID_ARGUMENT,
            "taesd_decode: z %s, out %s: expected z (B, %d, h, w), out (B, %d, %lld h, %lld w)",
            sd_tensor_describe(z, b1, sizeof b1), sd_tensor_describe(out, b2, sizeof b2),
            c->latent_channels, c->out_channels, (long long)f, (long long)f);
    build_t gr = build_begin(ctx), *g = &gr;
    const int64_t ch = c->decoder_channels[0];
    sd_tensor_t *zi = g_input(g, z);
    sd_tensor_t *zc = g_new(g, 4, b, c->latent_channels, h, w);
    G(g, sd_op_tanh_clamp(ctx, zc, zi, TAESD_CLAMP));
    g_release_input(g, z, zi);
    sd_tensor_t *x = g_new(g, 4, b, ch, h, w);
    g_conv(g, x, zc, &net->dec_in, NULL, NULL, 1, 1, 1, 1, 1);
    g_relu(g, x);
    g_free(g, zc);
    const taesd_level_w *last = &net->dec[c->decoder_levels - 1];
    /* The last level by bands where the backend copies them and the image has several. */
    const bool bands = sd_ctx_copies_rows(ctx) && h * f > 2 * TAESD_BAND_ROWS;
    for (int i = 0; i < c->decoder_levels && g->st == SD_STATUS_OK; i++) {
        const taesd_level_w *lv = &net->dec[i];
        if (i == c->decoder_levels - 1 && bands) break;
        g_blocks(g, lv, &x, NULL);
        if (i == c->decoder_levels - 1 || g->st != SD_STATUS_OK) break;
        x = g_upsample_take(g, &lv->conv, x, 2 * x->shape[2], 2 * x->shape[3]);
    }
    sd_tensor_t *res = out->dtype == g->act ? out : g_new(g, 4, b, c->out_channels, h * f, w * f);
    if (g->st == SD_STATUS_OK && bands)
        g_last_level_bands(g, last, x, res);
    else if (g->st == SD_STATUS_OK)
        g_conv(g, res, x, &last->conv, NULL, NULL, 1, 1, 1, 1, 1);
    if (res != out) {
        g_output(g, out, res);
        g_free(g, res);
    }
    g_free(g, x);
    return g->st;
}

sd_status_t sd_taesd_encode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x,
                            sd_tensor_t *latents) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_TAESD, "taesd_encode"));
    const taesd_net_t *net = model->net;
    const sd_taesd_config_t *c = &net->cfg;
    if (c->encoder_levels == 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "taesd_encode: the model has no encoder");
    if (x == NULL || latents == NULL || x->ndim != 4 || x->shape[1] != c->in_channels)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "taesd_encode: x must be (B, %d, H, W) and latents given", c->in_channels);
    const int64_t b = x->shape[0];
    int64_t lh = x->shape[2], lw = x->shape[3];
    for (int i = 1; i < c->encoder_levels; i++) lh = (lh + 1) / 2, lw = (lw + 1) / 2;
    if (latents->ndim != 4 || latents->shape[0] != b || latents->shape[1] != c->latent_channels ||
        latents->shape[2] != lh || latents->shape[3] != lw)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "taesd_encode: latents must be (%lld, %d, %lld, %lld)", (long long)b,
                       c->latent_channels, (long long)lh, (long long)lw);

    build_t gr = build_begin(ctx), *g = &gr;
    const int64_t ch = c->encoder_channels[0];
    sd_tensor_t *xi = g_input(g, x);
    sd_tensor_t *hcur = NULL;
    for (int i = 0; i < c->encoder_levels && g->st == SD_STATUS_OK; i++) {
        const taesd_level_w *lv = &net->enc[i];
        const sd_tensor_t *src = i == 0 ? xi : hcur;
        const int32_t stride = i == 0 ? 1 : 2;
        sd_tensor_t *d =
            g_new(g, 4, b, ch, (src->shape[2] - 1) / stride + 1, (src->shape[3] - 1) / stride + 1);
        g_conv(g, d, src, &lv->conv, NULL, NULL, stride, 1, 1, 1, 1);
        if (i == 0)
            g_release_input(g, x, xi);
        else
            g_free(g, hcur);
        hcur = d;
        g_blocks(g, lv, &hcur, NULL);
    }
    sd_tensor_t *res =
        latents->dtype == g->act ? latents : g_new(g, 4, b, c->latent_channels, lh, lw);
    if (g->st == SD_STATUS_OK) g_conv(g, res, hcur, &net->enc_out, NULL, NULL, 1, 1, 1, 1, 1);
    if (res != latents) {
        g_output(g, latents, res);
        g_free(g, res);
    }
    g_free(g, hcur);
    return g->st;
}
