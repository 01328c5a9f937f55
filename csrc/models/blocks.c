/* The sticky-error build context and the blocks the networks share. */
#include "blocks.h"

#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Build context
 * ------------------------------------------------------------------------------------- */

build_t build_begin(sd_ctx_t *ctx) {
    return (build_t){ctx, SD_STATUS_OK, sd_ctx_backend_ptr(ctx)->act_dtype};
}

sd_tensor_t *g_new(build_t *g, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    if (g->st != SD_STATUS_OK) return NULL;
    int64_t shape[4] = {d0, d1, d2, d3};
    sd_tensor_t *t = NULL;
    g->st = sd_scratch_new(g->ctx, g->act, ndim, shape, &t);
    return t;
}

void g_free(build_t *g, sd_tensor_t *t) {
    sd_scratch_free(g->ctx, t);
}

sd_tensor_t *g_input(build_t *g, const sd_tensor_t *x) {
    if (g->st != SD_STATUS_OK) return NULL;
    if (x->dtype == g->act) return (sd_tensor_t *)x;
    sd_tensor_t *t = NULL;
    g->st = sd_scratch_new(g->ctx, g->act, x->ndim, x->shape, &t);
    G(g, sd_op_convert(g->ctx, t, x));
    return t;
}

void g_release_input(build_t *g, const sd_tensor_t *x, sd_tensor_t *converted) {
    if (converted != x) g_free(g, converted);
}

void g_output(build_t *g, sd_tensor_t *out, const sd_tensor_t *result) {
    G(g, sd_op_convert(g->ctx, out, result));
}

void g_conv(build_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_conv_w *c,
            const sd_tensor_t *bias_override, const sd_tensor_t *residual, int32_t stride,
            int32_t pad_top, int32_t pad_bottom, int32_t pad_left, int32_t pad_right) {
    sd_conv2d_params_t p = {stride, stride, pad_top, pad_bottom, pad_left, pad_right};
    G(g, sd_op_conv2d(g->ctx, out, x, c->w, bias_override ? bias_override : c->b, residual, &p));
}

void g_linear(build_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_linear_w *l,
              const sd_tensor_t *residual, int32_t in_layout, int32_t out_layout) {
    sd_linear_params_t p = {in_layout, out_layout};
    G(g, sd_op_linear(g->ctx, out, x, l->w, l->b, residual, &p));
}

/* ---------------------------------------------------------------------------------------
 * ResnetBlock2D
 * ref: diffusers.models.resnet.ResnetBlock2D (time_embedding_norm "default",
 * output_scale_factor 1): h = conv1(silu(norm1(x))) + temb_proj(silu(temb));
 * out = shortcut(x) + conv2(silu(norm2(h))).
 * ------------------------------------------------------------------------------------- */

void ld_resnet(loader_t *L, resnet_w *r, int64_t c_in, int64_t c_out, int64_t temb_dim,
               const char *prefix) {
    memset(r, 0, sizeof *r);
    r->c_in = c_in;
    r->c_out = c_out;
    r->norm1 = ld_norm(L, c_in, "%s.norm1", prefix);
    r->conv1 = ld_conv(L, c_out, c_in, 3, "%s.conv1", prefix);
    if (temb_dim > 0) {
        r->temb = ld_linear(L, c_out, temb_dim, true, "%s.time_emb_proj", prefix);
        /* conv1's bias joins the time embedding's: one per-sample bias for conv1. */
        r->temb.b = ld_sum(L, r->temb.b, r->conv1.b);
    }
    r->norm2 = ld_norm(L, c_out, "%s.norm2", prefix);
    r->conv2 = ld_conv(L, c_out, c_out, 3, "%s.conv2", prefix);
    if (c_in != c_out) r->shortcut = ld_conv(L, c_out, c_in, 1, "%s.conv_shortcut", prefix);
}

/* One ResNet on x; take is x when the caller hands it over (freed here), else NULL. With a
 * shortcut conv and x taken, the shortcut runs first and norm1 in place on x. */
static sd_tensor_t *resnet(build_t *g, const resnet_w *r, const sd_tensor_t *x, sd_tensor_t *take,
                           const sd_tensor_t *temb_silu, int32_t groups, float eps) {
    if (g->st != SD_STATUS_OK) {
        g_free(g, take);
        return NULL;
    }
    const int64_t b = x->shape[0], h = x->shape[2], w = x->shape[3];
    const bool early = take != NULL && r->shortcut.w != NULL;
    sd_tensor_t *sc = NULL;
    if (early) {
        sc = g_new(g, 4, b, r->c_out, h, w);
        g_conv(g, sc, x, &r->shortcut, NULL, NULL, 1, 0, 0, 0, 0);
    }
    sd_tensor_t *n1 = early ? take : g_new(g, 4, b, r->c_in, h, w);
    G(g, sd_op_group_norm(g->ctx, n1, x, r->norm1.gamma, r->norm1.beta, groups, eps, true));
    /* The time embedding becomes a per-sample bias of conv1: temb_proj(..) + conv1.bias
     * (the two biases were summed at load). */
    sd_tensor_t *tb = NULL;
    if (temb_silu != NULL && r->temb.w != NULL) {
        tb = g_new(g, 2, b, r->c_out, 0, 0);
        g_linear(g, tb, temb_silu, &r->temb, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    }
    sd_tensor_t *h1 = g_new(g, 4, b, r->c_out, h, w);
    g_conv(g, h1, n1, &r->conv1, tb, NULL, 1, 1, 1, 1, 1);
    g_free(g, n1); /* x itself when taken early */
    g_free(g, tb);
    G(g, sd_op_group_norm(g->ctx, h1, h1, r->norm2.gamma, r->norm2.beta, groups, eps, true));
    if (r->shortcut.w != NULL && !early) {
        sc = g_new(g, 4, b, r->c_out, h, w);
        g_conv(g, sc, x, &r->shortcut, NULL, NULL, 1, 0, 0, 0, 0);
    }
    sd_tensor_t *out = g_new(g, 4, b, r->c_out, h, w);
    g_conv(g, out, h1, &r->conv2, NULL, sc != NULL ? sc : x, 1, 1, 1, 1, 1);
    g_free(g, h1);
    g_free(g, sc);
    if (!early) g_free(g, take);
    if (g->st != SD_STATUS_OK) {
        g_free(g, out);
        return NULL;
    }
    return out;
}

sd_tensor_t *g_resnet(build_t *g, const resnet_w *r, const sd_tensor_t *x,
                      const sd_tensor_t *temb_silu, int32_t groups, float eps) {
    return resnet(g, r, x, NULL, temb_silu, groups, eps);
}

sd_tensor_t *g_resnet_take(build_t *g, const resnet_w *r, sd_tensor_t *x,
                           const sd_tensor_t *temb_silu, int32_t groups, float eps) {
    return resnet(g, r, x, x, temb_silu, groups, eps);
}

/* ---------------------------------------------------------------------------------------
 * Transformer2DModel with BasicTransformerBlocks
 * ref: diffusers.models.transformers.transformer_2d.Transformer2DModel (continuous input):
 * GroupNorm(eps 1e-6) -> proj_in (1x1 conv, or linear after the permute: the same map)
 * -> blocks [x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x)] ->
 * (only_cross_attention: attn1(norm1 x, context), its to_k / to_v of context_dim inputs)
 * proj_out -> + input. Attention projections q/k/v have no bias; GEGLU feed-forward.
 * ------------------------------------------------------------------------------------- */

void ld_transformer(loader_t *L, transformer_w *t, int64_t channels, int64_t heads,
                    int64_t context_dim, int32_t n_blocks, int32_t only_cross, const char *prefix) {
    memset(t, 0, sizeof *t);
    t->only_cross = only_cross != 0;
    t->channels = channels;
    t->heads = heads;
    t->ff_inner = 4 * channels;
    t->n_blocks = n_blocks;
    t->norm = ld_norm(L, channels, "%s.norm", prefix);
    t->proj_in = ld_linear(L, channels, channels, true, "%s.proj_in", prefix);
    t->blocks = calloc((size_t)n_blocks, sizeof *t->blocks);
    if (t->blocks == NULL) {
        loader_oom(L);
        return;
    }
    for (int32_t i = 0; i < n_blocks; i++) {
        tblock_w *b = &t->blocks[i];
        char p[320];
        snprintf(p, sizeof p, "%s.transformer_blocks.%d", prefix, (int)i);
        b->norm1 = ld_norm(L, channels, "%s.norm1", p);
        b->q1 = ld_linear(L, channels, channels, false, "%s.attn1.to_q", p);
        const int64_t kv1 = t->only_cross ? context_dim : channels;
        b->k1 = ld_linear(L, channels, kv1, false, "%s.attn1.to_k", p);
        b->v1 = ld_linear(L, channels, kv1, false, "%s.attn1.to_v", p);
        b->o1 = ld_linear(L, channels, channels, true, "%s.attn1.to_out.0", p);
        b->norm2 = ld_norm(L, channels, "%s.norm2", p);
        b->q2 = ld_linear(L, channels, channels, false, "%s.attn2.to_q", p);
        b->k2 = ld_linear(L, channels, context_dim, false, "%s.attn2.to_k", p);
        b->v2 = ld_linear(L, channels, context_dim, false, "%s.attn2.to_v", p);
        b->o2 = ld_linear(L, channels, channels, true, "%s.attn2.to_out.0", p);
        b->norm3 = ld_norm(L, channels, "%s.norm3", p);
        b->ff1 = ld_linear(L, 2 * t->ff_inner, channels, true, "%s.ff.net.0.proj", p);
        b->ff2 = ld_linear(L, channels, t->ff_inner, true, "%s.ff.net.2", p);
    }
    t->proj_out = ld_linear_cf(L, channels, channels, true, "%s.proj_out", prefix);
}

void free_transformer(transformer_w *t) {
    free(t->blocks);
}

/* q, k, v projections, attention, output projection added into x (tokens). */
static void g_attention_block(build_t *g, sd_tensor_t *x, const sd_tensor_t *normed,
                              const sd_tensor_t *kv_src, const sd_linear_w *q, const sd_linear_w *k,
                              const sd_linear_w *v, const sd_linear_w *o, int64_t heads) {
    const int64_t b = x->shape[0], tq = x->shape[1], c = x->shape[2], tk = kv_src->shape[1];
    sd_tensor_t *qt = g_new(g, 3, b, tq, c, 0);
    sd_tensor_t *kt = g_new(g, 3, b, tk, c, 0);
    sd_tensor_t *vt = g_new(g, 3, b, tk, c, 0);
    g_linear(g, qt, normed, q, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_linear(g, kt, kv_src, k, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_linear(g, vt, kv_src, v, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    sd_tensor_t *a = g_new(g, 3, b, tq, c, 0);
    sd_attention_params_t ap = {(int32_t)heads, 0, 0.0f};
    G(g, sd_op_attention(g->ctx, a, qt, kt, vt, &ap));
    g_free(g, qt);
    g_free(g, kt);
    g_free(g, vt);
    g_linear(g, x, a, o, x, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, a);
}

sd_tensor_t *g_transformer(build_t *g, const transformer_w *t, const sd_tensor_t *x,
                           const sd_tensor_t *context, int32_t groups) {
    if (g->st != SD_STATUS_OK) return NULL;
    const int64_t b = x->shape[0], c = t->channels, h = x->shape[2], w = x->shape[3];
    const int64_t n = h * w;
    sd_tensor_t *gn = g_new(g, 4, b, c, h, w);
    G(g, sd_op_group_norm(g->ctx, gn, x, t->norm.gamma, t->norm.beta, groups, 1e-6f, false));
    sd_tensor_t *tok = g_new(g, 3, b, n, c, 0);
    g_linear(g, tok, gn, &t->proj_in, NULL, SD_LAYOUT_CHANNELS_FIRST, SD_LAYOUT_TOKENS);
    g_free(g, gn);
    sd_tensor_t *normed = g_new(g, 3, b, n, c, 0);
    for (int32_t i = 0; i < t->n_blocks && g->st == SD_STATUS_OK; i++) {
        const tblock_w *blk = &t->blocks[i];
        G(g, sd_op_layer_norm(g->ctx, normed, tok, blk->norm1.gamma, blk->norm1.beta, 1e-5f));
        g_attention_block(g, tok, normed, t->only_cross ? context : normed, &blk->q1, &blk->k1,
                          &blk->v1, &blk->o1, t->heads);
        G(g, sd_op_layer_norm(g->ctx, normed, tok, blk->norm2.gamma, blk->norm2.beta, 1e-5f));
        g_attention_block(g, tok, normed, context, &blk->q2, &blk->k2, &blk->v2, &blk->o2,
                          t->heads);
        G(g, sd_op_layer_norm(g->ctx, normed, tok, blk->norm3.gamma, blk->norm3.beta, 1e-5f));
        sd_tensor_t *proj = g_new(g, 3, b, n, 2 * t->ff_inner, 0);
        g_linear(g, proj, normed, &blk->ff1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
        sd_tensor_t *gated = g_new(g, 3, b, n, t->ff_inner, 0);
        G(g, sd_op_geglu(g->ctx, gated, proj));
        g_free(g, proj);
        g_linear(g, tok, gated, &blk->ff2, tok, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
        g_free(g, gated);
    }
    g_free(g, normed);
    sd_tensor_t *out = g_new(g, 4, b, c, h, w);
    g_linear(g, out, tok, &t->proj_out, x, SD_LAYOUT_TOKENS, SD_LAYOUT_CHANNELS_FIRST);
    g_free(g, tok);
    if (g->st != SD_STATUS_OK) {
        g_free(g, out);
        return NULL;
    }
    return out;
}

/* ---------------------------------------------------------------------------------------
 * VAE mid-block attention
 * ref: diffusers.models.attention_processor.Attention as UNetMidBlock2D builds it for the
 * VAE (one head of all channels, GroupNorm first, q/k/v/out with bias, residual added).
 * ------------------------------------------------------------------------------------- */

void ld_vae_attention(loader_t *L, vae_attn_w *a, int64_t channels, const char *prefix) {
    a->channels = channels;
    a->norm = ld_norm(L, channels, "%s.group_norm", prefix);
    a->q = ld_linear(L, channels, channels, true, "%s.to_q", prefix);
    a->k = ld_linear(L, channels, channels, true, "%s.to_k", prefix);
    a->v = ld_linear(L, channels, channels, true, "%s.to_v", prefix);
    a->o = ld_linear_cf(L, channels, channels, true, "%s.to_out.0", prefix);
}

sd_tensor_t *g_vae_attention(build_t *g, const vae_attn_w *a, const sd_tensor_t *x, int32_t groups,
                             float eps) {
    if (g->st != SD_STATUS_OK) return NULL;
    const int64_t b = x->shape[0], c = a->channels, h = x->shape[2], w = x->shape[3];
    sd_tensor_t *gn = g_new(g, 4, b, c, h, w);
    G(g, sd_op_group_norm(g->ctx, gn, x, a->norm.gamma, a->norm.beta, groups, eps, false));
    sd_tensor_t *q = g_new(g, 3, b, h * w, c, 0), *k = g_new(g, 3, b, h * w, c, 0);
    sd_tensor_t *v = g_new(g, 3, b, h * w, c, 0);
    g_linear(g, q, gn, &a->q, NULL, SD_LAYOUT_CHANNELS_FIRST, SD_LAYOUT_TOKENS);
    g_linear(g, k, gn, &a->k, NULL, SD_LAYOUT_CHANNELS_FIRST, SD_LAYOUT_TOKENS);
    g_linear(g, v, gn, &a->v, NULL, SD_LAYOUT_CHANNELS_FIRST, SD_LAYOUT_TOKENS);
    g_free(g, gn);
    sd_tensor_t *att = g_new(g, 3, b, h * w, c, 0);
    sd_attention_params_t ap = {1, 0, 0.0f};
    G(g, sd_op_attention(g->ctx, att, q, k, v, &ap));
    g_free(g, q);
    g_free(g, k);
    g_free(g, v);
    sd_tensor_t *out = g_new(g, 4, b, c, h, w);
    g_linear(g, out, att, &a->o, x, SD_LAYOUT_TOKENS, SD_LAYOUT_CHANNELS_FIRST);
    g_free(g, att);
    if (g->st != SD_STATUS_OK) {
        g_free(g, out);
        return NULL;
    }
    return out;
}

static sd_tensor_t *upsample(build_t *g, const sd_conv_w *conv, const sd_tensor_t *x,
                             sd_tensor_t *take, int64_t oh, int64_t ow) {
    if (g->st != SD_STATUS_OK) {
        g_free(g, take);
        return NULL;
    }
    const int64_t b = x->shape[0], c = x->shape[1];
    if (conv->w != NULL && oh == 2 * x->shape[2] && ow == 2 * x->shape[3]) {
        /* Fused where the backend can: the upsampled tensor is never made. */
        sd_tensor_t *out = g_new(g, 4, b, conv->w->shape[0], oh, ow);
        sd_status_t st = out ? sd_op_conv2d_up2(g->ctx, out, x, conv->w, conv->b) : g->st;
        if (st != SD_STATUS_UNSUPPORTED) {
            G(g, st);
            g_free(g, take);
            if (g->st == SD_STATUS_OK) return out;
            g_free(g, out);
            return NULL;
        }
        g_free(g, out);
    }
    sd_tensor_t *up = g_new(g, 4, b, c, oh, ow);
    G(g, sd_op_upsample_nearest(g->ctx, up, x));
    g_free(g, take);
    sd_tensor_t *out = g_new(g, 4, b, conv->w ? conv->w->shape[0] : c, oh, ow);
    g_conv(g, out, up, conv, NULL, NULL, 1, 1, 1, 1, 1);
    g_free(g, up);
    if (g->st != SD_STATUS_OK) {
        g_free(g, out);
        return NULL;
    }
    return out;
}

sd_tensor_t *g_upsample(build_t *g, const sd_conv_w *conv, const sd_tensor_t *x, int64_t oh,
                        int64_t ow) {
    return upsample(g, conv, x, NULL, oh, ow);
}

sd_tensor_t *g_upsample_take(build_t *g, const sd_conv_w *conv, sd_tensor_t *x, int64_t oh,
                             int64_t ow) {
    return upsample(g, conv, x, x, oh, ow);
}
