/*
 * vae.c - AutoencoderKL of Stable Diffusion: encoder and decoder, generic over the config.
 *
 * ref: diffusers.models.autoencoders.autoencoder_kl.AutoencoderKL with the Encoder /
 * Decoder of diffusers.models.autoencoders.vae: ResNets without time embedding (GroupNorm
 * eps 1e-6), a mid block ResNet -> single-head attention -> ResNet, stride-2 downsampling
 * after padding (0, 1, 0, 1), nearest 2x upsampling + conv, quant_conv / post_quant_conv
 * 1x1 convolutions, and DiagonalGaussianDistribution (mean, logvar clamped to [-30, 20]).
 * The scaling factor is the caller's business (raw latents in and out).
 */
#include "blocks.h"

#include <string.h>

#define VAE_EPS 1e-6f

typedef struct {
    int32_t n_resnets;
    resnet_w *resnets;
    sd_conv_w sampler; /* w NULL for the last block */
} vae_block_w;

typedef struct {
    resnet_w res[2];
    vae_attn_w attn;
    bool has_attn;
} vae_mid_w;

typedef struct {
    sd_vae_config_t cfg;
    sd_conv_w enc_in, enc_out, dec_in, dec_out, quant, post_quant;
    vae_block_w down[SD_MAX_LEVELS], up[SD_MAX_LEVELS];
    vae_mid_w enc_mid, dec_mid;
    sd_norm_w enc_norm, dec_norm;
} vae_net_t;

/* The build context of an encode or decode: F32 activations for force_upcast where the
 * backend's graphs use another dtype and it accepts F32 (every backend does). */
static build_t vae_build_begin(sd_ctx_t *ctx, const vae_net_t *net) {
    build_t g = build_begin(ctx);
    const sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    if (net->cfg.force_upcast && (be->act_dtypes & (1u << SD_DTYPE_F32))) g.act = SD_DTYPE_F32;
    return g;
}

static void vae_free(sd_ctx_t *ctx, void *p) {
    (void)ctx;
    vae_net_t *n = p;
    if (n == NULL) return;
    for (int i = 0; i < SD_MAX_LEVELS; i++) {
        free(n->down[i].resnets);
        free(n->up[i].resnets);
    }
    free(n);
}

void sd_vae_config_default(sd_vae_config_t *c) {
    if (c == NULL) return;
    *c = (sd_vae_config_t){
        .in_channels = 3,
        .out_channels = 3,
        .latent_channels = 4,
        .levels = 4,
        .block_out_channels = {128, 256, 512, 512},
        .layers_per_block = 2,
        .norm_groups = 32,
        .mid_attention = 1,
        .use_quant_conv = 1,
        .use_post_quant_conv = 1,
        .force_upcast = 0,
    };
}

size_t sd_sizeof_vae_config(void) {
    return sizeof(sd_vae_config_t);
}

static bool vae_config_ok(loader_t *L, const sd_vae_config_t *c) {
    if (c->levels < 1 || c->levels > SD_MAX_LEVELS || c->in_channels < 1 || c->out_channels < 1 ||
        c->latent_channels < 1 || c->layers_per_block < 1 || c->layers_per_block > 64 ||
        c->norm_groups < 1) {
        loader_fail(L, "invalid config (levels %d, in %d, out %d, latent %d, layers %d, groups %d)",
                    c->levels, c->in_channels, c->out_channels, c->latent_channels,
                    c->layers_per_block, c->norm_groups);
        return false;
    }
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_groups != 0) {
            loader_fail(L, "level %d: %d channels not divisible into %d groups", i,
                        c->block_out_channels[i], c->norm_groups);
            return false;
        }
    return true;
}

static void ld_vae_block(loader_t *L, vae_block_w *b, int32_t n, int64_t in, int64_t out,
                         const char *prefix, const char *sampler) {
    b->n_resnets = n;
    b->resnets = calloc((size_t)n, sizeof *b->resnets);
    if (b->resnets == NULL) {
        loader_oom(L);
        return;
    }
    char p[128];
    for (int32_t j = 0; j < n; j++) {
        snprintf(p, sizeof p, "%s.resnets.%d", prefix, (int)j);
        ld_resnet(L, &b->resnets[j], j == 0 ? in : out, out, 0, p);
    }
    if (sampler) b->sampler = ld_conv(L, out, out, 3, "%s.%s.0.conv", prefix, sampler);
}

static void ld_mid(loader_t *L, vae_mid_w *m, int64_t ch, bool attention, const char *prefix) {
    char p[128];
    snprintf(p, sizeof p, "%s.resnets.0", prefix);
    ld_resnet(L, &m->res[0], ch, ch, 0, p);
    m->has_attn = attention;
    if (attention) {
        snprintf(p, sizeof p, "%s.attentions.0", prefix);
        ld_vae_attention(L, &m->attn, ch, p);
    }
    snprintf(p, sizeof p, "%s.resnets.1", prefix);
    ld_resnet(L, &m->res[1], ch, ch, 0, p);
}

sd_status_t sd_vae_load(sd_ctx_t *ctx, const sd_vae_config_t *config, const sd_weight_t *weights,
                        int32_t n_weights, sd_model_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL || config == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "vae_load: NULL config or out");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    loader_t *L = loader_new(ctx, "vae", SD_MODEL_VAE, weights, n_weights, NULL);
    if (L == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    vae_net_t *net = calloc(1, sizeof *net);
    if (net == NULL) loader_oom(L);
    if (loader_status(L) != SD_STATUS_OK || !vae_config_ok(L, config))
        return loader_finish(L, net, vae_free, out);
    net->cfg = *config;
    const sd_vae_config_t *c = &net->cfg;
    const int levels = c->levels;
    int64_t ch[SD_MAX_LEVELS] = {0};
    for (int i = 0; i < levels; i++) ch[i] = c->block_out_channels[i];
    const int64_t lat = c->latent_channels, deep = ch[levels - 1];
    char p[64];

    net->enc_in = ld_conv(L, ch[0], c->in_channels, 3, "encoder.conv_in");
    for (int i = 0; i < levels; i++) {
        snprintf(p, sizeof p, "encoder.down_blocks.%d", i);
        ld_vae_block(L, &net->down[i], c->layers_per_block, i ? ch[i - 1] : ch[0], ch[i], p,
                     i < levels - 1 ? "downsamplers" : NULL);
    }
    ld_mid(L, &net->enc_mid, deep, c->mid_attention != 0, "encoder.mid_block");
    net->enc_norm = ld_norm(L, deep, "encoder.conv_norm_out");
    net->enc_out = ld_conv(L, 2 * lat, deep, 3, "encoder.conv_out");
    if (c->use_quant_conv) net->quant = ld_conv(L, 2 * lat, 2 * lat, 1, "quant_conv");

    if (c->use_post_quant_conv) net->post_quant = ld_conv(L, lat, lat, 1, "post_quant_conv");
    net->dec_in = ld_conv(L, deep, lat, 3, "decoder.conv_in");
    ld_mid(L, &net->dec_mid, deep, c->mid_attention != 0, "decoder.mid_block");
    for (int i = 0; i < levels; i++) {
        const int lv = levels - 1 - i;
        snprintf(p, sizeof p, "decoder.up_blocks.%d", i);
        ld_vae_block(L, &net->up[i], c->layers_per_block + 1, i ? ch[lv + 1] : deep, ch[lv], p,
                     i < levels - 1 ? "upsamplers" : NULL);
    }
    net->dec_norm = ld_norm(L, ch[0], "decoder.conv_norm_out");
    net->dec_out = ld_conv(L, c->out_channels, ch[0], 3, "decoder.conv_out");
    return loader_finish(L, net, vae_free, out);
}

/* Runs a chain of ResNets on x (a tensor of the build), freeing x and each intermediate. */
static sd_tensor_t *g_resnets(build_t *g, const vae_block_w *blk, sd_tensor_t *x, int32_t groups) {
    sd_tensor_t *h = x;
    for (int32_t j = 0; j < blk->n_resnets; j++)
        h = g_resnet_take(g, &blk->resnets[j], h, NULL, groups, VAE_EPS);
    return h;
}

static sd_tensor_t *g_mid(build_t *g, const vae_mid_w *m, const sd_tensor_t *x, int32_t groups) {
    sd_tensor_t *h = g_resnet(g, &m->res[0], x, NULL, groups, VAE_EPS);
    if (m->has_attn) {
        sd_tensor_t *a = g_vae_attention(g, &m->attn, h, groups, VAE_EPS);
        g_free(g, h);
        h = a;
    }
    sd_tensor_t *out = g_resnet(g, &m->res[1], h, NULL, groups, VAE_EPS);
    g_free(g, h);
    return out;
}

sd_status_t sd_vae_decode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *z,
                          sd_tensor_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_VAE, "vae_decode"));
    const vae_net_t *net = model->net;
    const sd_vae_config_t *c = &net->cfg;
    char b1[96], b2[96];
    if (z == NULL || out == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "vae_decode: NULL tensor");
    const int64_t b = z->shape[0], h = z->shape[2], w = z->shape[3],
                  f = (int64_t)1 << (c->levels - 1);
    if (z->ndim != 4 || z->shape[1] != c->latent_channels || out->ndim != 4 || out->shape[0] != b ||
        out->shape[1] != c->out_channels || out->shape[2] != h * f || out->shape[3] != w * f)
        return sd_fail(
            ctx, SD_STATUS_INVALID_ARGUMENT,
            "vae_decode: z %s, out %s: expected z (B, %d, h, w), out (B, %d, %lld h, %lld w)",
            sd_tensor_describe(z, b1, sizeof b1), sd_tensor_describe(out, b2, sizeof b2),
            c->latent_channels, c->out_channels, (long long)f, (long long)f);
    build_t gr = vae_build_begin(ctx, net), *g = &gr;
    const int32_t groups = c->norm_groups, levels = c->levels;
    const int64_t deep = c->block_out_channels[levels - 1];
    sd_tensor_t *zi = g_input(g, z);
    sd_tensor_t *lat = zi;
    if (net->post_quant.w != NULL) {
        lat = g_new(g, 4, b, c->latent_channels, h, w);
        g_conv(g, lat, zi, &net->post_quant, NULL, NULL, 1, 0, 0, 0, 0);
    }
    sd_tensor_t *x = g_new(g, 4, b, deep, h, w);
    g_conv(g, x, lat, &net->dec_in, NULL, NULL, 1, 1, 1, 1, 1);
    if (lat != zi) g_free(g, lat);
    g_release_input(g, z, zi);
    sd_tensor_t *hcur = g_mid(g, &net->dec_mid, x, groups);
    g_free(g, x);
    for (int i = 0; i < levels; i++) {
        const vae_block_w *blk = &net->up[i];
        hcur = g_resnets(g, blk, hcur, groups);
        if (blk->sampler.w != NULL && g->st == SD_STATUS_OK)
            hcur = g_upsample_take(g, &blk->sampler, hcur, 2 * hcur->shape[2], 2 * hcur->shape[3]);
    }
    G(g, sd_op_group_norm(ctx, hcur, hcur, net->dec_norm.gamma, net->dec_norm.beta, groups, VAE_EPS,
                          true));
    sd_tensor_t *res = out->dtype == g->act ? out : g_new(g, 4, b, c->out_channels, h * f, w * f);
    g_conv(g, res, hcur, &net->dec_out, NULL, NULL, 1, 1, 1, 1, 1);
    if (res != out) {
        g_output(g, out, res);
        g_free(g, res);
    }
    g_free(g, hcur);
    return g->st;
}

sd_status_t sd_vae_encode(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *x, sd_tensor_t *mean,
                          sd_tensor_t *logvar) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_VAE, "vae_encode"));
    const vae_net_t *net = model->net;
    const sd_vae_config_t *c = &net->cfg;
    if (x == NULL || x->ndim != 4 || x->shape[1] != c->in_channels)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "vae_encode: x must be (B, %d, H, W)",
                       c->in_channels);
    /* Each downsampler maps a side n to floor(n / 2) (pad 1 at the end, 3x3, stride 2). */
    const int64_t b = x->shape[0];
    int64_t lh = x->shape[2], lw = x->shape[3];
    for (int i = 0; i < c->levels - 1; i++) {
        if (lh < 2 || lw < 2)
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "vae_encode: image %lldx%lld too small",
                           (long long)x->shape[2], (long long)x->shape[3]);
        lh /= 2, lw /= 2;
    }
    const sd_tensor_t *outs[2] = {mean, logvar};
    for (int i = 0; i < 2; i++)
        if (outs[i] != NULL && (outs[i]->ndim != 4 || outs[i]->shape[0] != b ||
                                outs[i]->shape[1] != c->latent_channels ||
                                outs[i]->shape[2] != lh || outs[i]->shape[3] != lw))
            return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                           "vae_encode: %s must be (%lld, %d, %lld, %lld)", i ? "logvar" : "mean",
                           (long long)b, c->latent_channels, (long long)lh, (long long)lw);

    build_t gr = vae_build_begin(ctx, net), *g = &gr;
    const int32_t groups = c->norm_groups, levels = c->levels;
    const int64_t lat = c->latent_channels;
    sd_tensor_t *xi = g_input(g, x);
    sd_tensor_t *hcur = g_new(g, 4, b, c->block_out_channels[0], x->shape[2], x->shape[3]);
    g_conv(g, hcur, xi, &net->enc_in, NULL, NULL, 1, 1, 1, 1, 1);
    g_release_input(g, x, xi);
    for (int i = 0; i < levels; i++) {
        const vae_block_w *blk = &net->down[i];
        hcur = g_resnets(g, blk, hcur, groups);
        if (blk->sampler.w != NULL && g->st == SD_STATUS_OK) {
            sd_tensor_t *d = g_new(g, 4, b, hcur->shape[1], hcur->shape[2] / 2, hcur->shape[3] / 2);
            g_conv(g, d, hcur, &blk->sampler, NULL, NULL, 2, 0, 1, 0, 1);
            g_free(g, hcur);
            hcur = d;
        }
    }
    sd_tensor_t *m = g_mid(g, &net->enc_mid, hcur, groups);
    g_free(g, hcur);
    G(g,
      sd_op_group_norm(ctx, m, m, net->enc_norm.gamma, net->enc_norm.beta, groups, VAE_EPS, true));
    /* The last conv (quant_conv, or conv_out without it) is split by output rows, so mean
     * and logvar are written separately without slicing channels afterwards. */
    const sd_conv_w *last = &net->enc_out;
    sd_tensor_t *moments = NULL;
    if (net->quant.w != NULL) {
        moments = g_new(g, 4, b, 2 * lat, lh, lw);
        g_conv(g, moments, m, &net->enc_out, NULL, NULL, 1, 1, 1, 1, 1);
        last = &net->quant;
    }
    const int pad = last == &net->enc_out ? 1 : 0;
    const sd_tensor_t *src = moments ? moments : m;
    for (int i = 0; i < 2; i++) {
        if (outs[i] == NULL || g->st != SD_STATUS_OK) continue;
        sd_tensor_t w = sd_rows_view(last->w, i * lat, (i + 1) * lat);
        sd_tensor_t bias = sd_rows_view(last->b, i * lat, (i + 1) * lat);
        sd_conv_w half = {&w, &bias};
        sd_tensor_t *dst =
            outs[i]->dtype == g->act ? (sd_tensor_t *)outs[i] : g_new(g, 4, b, lat, lh, lw);
        g_conv(g, dst, src, &half, NULL, NULL, 1, pad, pad, pad, pad);
        if (i == 1) G(g, sd_op_clamp(ctx, dst, dst, -30.0f, 20.0f));
        if (dst != outs[i]) {
            g_output(g, (sd_tensor_t *)outs[i], dst);
            g_free(g, dst);
        }
    }
    g_free(g, moments);
    g_free(g, m);
    return g->st;
}
