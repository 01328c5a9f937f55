/*
 * clip.c - the CLIP text transformer of Stable Diffusion.
 *
 * ref: transformers.models.clip.modeling_clip.CLIPTextModel: token + position
 * embeddings; pre-LN layers [x += out_proj(causal_attn(ln1 x)); x += fc2(act(fc1(ln2 x)))];
 * final_layer_norm; pooled output at the first eos token. SD 2.x's OpenCLIP tower is the
 * same network once its weights are renamed (done on the Go side).
 * CLIPTextModelWithProjection (SDXL's text_encoder_2) adds text_projection, a Linear
 * without bias from the pooled output to text_embeds.
 */
#include "blocks.h"

#include <string.h>

typedef struct {
    sd_norm_w ln1, ln2;
    sd_linear_w q, k, v, o, fc1, fc2;
} clip_layer_w;

typedef struct {
    sd_clip_config_t cfg;
    const sd_tensor_t *token_embedding;    /* (vocab, hidden), file dtype */
    const sd_tensor_t *position_embedding; /* (max_positions, hidden), activation dtype */
    clip_layer_w *layers;
    sd_norm_w final_ln;
    sd_linear_w projection; /* (projection_dim, hidden), no bias; w NULL without */
} clip_net_t;

static void clip_free(sd_ctx_t *ctx, void *p) {
    (void)ctx;
    clip_net_t *n = p;
    if (n == NULL) return;
    free(n->layers);
    free(n);
}

void sd_clip_config_default(sd_clip_config_t *c) {
    if (c == NULL) return;
    *c = (sd_clip_config_t){
        .vocab_size = 49408,
        .max_positions = 77,
        .hidden = 768,
        .intermediate = 3072,
        .layers = 12,
        .heads = 12,
        .activation = SD_ACT_QUICK_GELU,
        .layer_norm_eps = 1e-5f,
        .eos_id = 49407,
        .projection_dim = 0,
    };
}

size_t sd_sizeof_clip_config(void) {
    return sizeof(sd_clip_config_t);
}

static bool clip_config_ok(loader_t *L, const sd_clip_config_t *c) {
    if (c->vocab_size < 1 || c->max_positions < 1 || c->hidden < 1 || c->intermediate < 1 ||
        c->layers < 1 || c->layers > 1024 || c->heads < 1 || c->hidden % c->heads != 0) {
        loader_fail(L,
                    "invalid config (vocab %d, positions %d, hidden %d, intermediate %d, "
                    "layers %d, heads %d)",
                    c->vocab_size, c->max_positions, c->hidden, c->intermediate, c->layers,
                    c->heads);
        return false;
    }
    if (c->activation < 0 || c->activation >= SD_ACT_COUNT || !(c->layer_norm_eps > 0)) {
        loader_fail(L, "invalid activation %d or layer norm eps %g", c->activation,
                    (double)c->layer_norm_eps);
        return false;
    }
    if (c->eos_id < 0 || c->eos_id >= c->vocab_size) {
        loader_fail(L, "eos id %d outside the vocabulary", c->eos_id);
        return false;
    }
    if (c->projection_dim < 0) {
        loader_fail(L, "invalid projection_dim %d", c->projection_dim);
        return false;
    }
    return true;
}

sd_status_t sd_clip_load(sd_ctx_t *ctx, const sd_clip_config_t *config, const sd_weight_t *weights,
                         int32_t n_weights, sd_model_t **out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    if (out == NULL || config == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "clip_load: NULL config or out");
    *out = NULL;
    SD_TRY(sd_ctx_check(ctx));
    loader_t *L = loader_new(ctx, "text encoder", SD_MODEL_CLIP, weights, n_weights, "text_model.");
    if (L == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    clip_net_t *net = calloc(1, sizeof *net);
    if (net == NULL) loader_oom(L);
    if (loader_status(L) != SD_STATUS_OK || !clip_config_ok(L, config))
        return loader_finish(L, net, clip_free, out);
    net->cfg = *config;
    const sd_clip_config_t *c = &net->cfg;
    net->token_embedding =
        ld_table(L, c->vocab_size, c->hidden, "embeddings.token_embedding.weight");
    net->position_embedding =
        ld_act(L, c->max_positions, c->hidden, "embeddings.position_embedding.weight");
    net->layers = calloc((size_t)c->layers, sizeof *net->layers);
    if (net->layers == NULL) loader_oom(L);
    for (int32_t i = 0; i < c->layers && loader_status(L) == SD_STATUS_OK; i++) {
        clip_layer_w *l = &net->layers[i];
        char p[96];
        snprintf(p, sizeof p, "encoder.layers.%d", (int)i);
        l->ln1 = ld_norm(L, c->hidden, "%s.layer_norm1", p);
        l->q = ld_linear(L, c->hidden, c->hidden, true, "%s.self_attn.q_proj", p);
        l->k = ld_linear(L, c->hidden, c->hidden, true, "%s.self_attn.k_proj", p);
        l->v = ld_linear(L, c->hidden, c->hidden, true, "%s.self_attn.v_proj", p);
        l->o = ld_linear(L, c->hidden, c->hidden, true, "%s.self_attn.out_proj", p);
        l->ln2 = ld_norm(L, c->hidden, "%s.layer_norm2", p);
        l->fc1 = ld_linear(L, c->intermediate, c->hidden, true, "%s.mlp.fc1", p);
        l->fc2 = ld_linear(L, c->hidden, c->intermediate, true, "%s.mlp.fc2", p);
    }
    net->final_ln = ld_norm(L, c->hidden, "final_layer_norm");
    /* Outside text_model. in transformers' naming, so not stripped. */
    if (c->projection_dim > 0)
        net->projection = ld_linear(L, c->projection_dim, c->hidden, false, "text_projection");
    return loader_finish(L, net, clip_free, out);
}

static void clip_layer(build_t *g, const clip_net_t *net, const clip_layer_w *l, sd_tensor_t *x) {
    const int64_t b = x->shape[0], t = x->shape[1], c = net->cfg.hidden, f = net->cfg.intermediate;
    const float eps = net->cfg.layer_norm_eps;
    sd_tensor_t *n = g_new(g, 3, b, t, c, 0);
    G(g, sd_op_layer_norm(g->ctx, n, x, l->ln1.gamma, l->ln1.beta, eps));
    sd_tensor_t *q = g_new(g, 3, b, t, c, 0), *k = g_new(g, 3, b, t, c, 0),
                *v = g_new(g, 3, b, t, c, 0);
    g_linear(g, q, n, &l->q, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_linear(g, k, n, &l->k, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_linear(g, v, n, &l->v, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    sd_tensor_t *a = g_new(g, 3, b, t, c, 0);
    sd_attention_params_t ap = {net->cfg.heads, 1, 0.0f};
    G(g, sd_op_attention(g->ctx, a, q, k, v, &ap));
    g_free(g, q);
    g_free(g, k);
    g_free(g, v);
    g_linear(g, x, a, &l->o, x, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, a);
    G(g, sd_op_layer_norm(g->ctx, n, x, l->ln2.gamma, l->ln2.beta, eps));
    sd_tensor_t *hdn = g_new(g, 3, b, t, f, 0);
    g_linear(g, hdn, n, &l->fc1, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    G(g, sd_op_activation(g->ctx, hdn, hdn, net->cfg.activation));
    g_linear(g, x, hdn, &l->fc2, x, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_free(g, hdn);
    g_free(g, n);
}

sd_status_t sd_clip_forward(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *ids,
                            int32_t skip_layers, bool final_norm, sd_tensor_t *hidden,
                            sd_tensor_t *pooled) {
    return sd_clip_forward_extra(ctx, model, ids, NULL, skip_layers, final_norm, hidden, pooled);
}

/* The token embeddings of ids when some select rows of extra: a per-call table of B*T + E
 * rows, row p (p = i*T + j) the token row of ids[i, j] (row 0 where it is an extra id), then
 * the E extra rows; the ids are remapped to p or B*T + (id - vocab). Small next to the
 * vocabulary (B*T + E rows instead of vocab + E). */
static void clip_embed_extra(build_t *g, const clip_net_t *net, const sd_tensor_t *ids,
                             const sd_tensor_t *extra, sd_tensor_t *x) {
    const int64_t b = ids->shape[0], t = ids->shape[1], c = net->cfg.hidden, e = extra->shape[0];
    const int32_t vocab = net->cfg.vocab_size;
    sd_backend_t *be = sd_ctx_backend_ptr(g->ctx);
    int32_t *host = malloc((size_t)(b * t) * sizeof *host);
    int32_t *tok = malloc((size_t)(b * t) * sizeof *tok);
    sd_tensor_t *tok_ids = NULL, *map_ids = NULL;
    if (host == NULL || tok == NULL) {
        g->st = sd_fail(g->ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
        goto done;
    }
    G(g, be->ops->download(g->ctx, host, ids->data, ids->nbytes));
    for (int64_t p = 0; p < b * t && g->st == SD_STATUS_OK; p++) {
        const int32_t id = host[p];
        if (id < 0 || id >= vocab + e) {
            g->st = sd_fail(g->ctx, SD_STATUS_INVALID_ARGUMENT,
                            "clip_forward: id %d not in [0, %d + %lld extra rows)", id, vocab,
                            (long long)e);
            break;
        }
        tok[p] = id < vocab ? id : 0;
        host[p] = id < vocab ? (int32_t)p : (int32_t)(b * t + (id - vocab));
    }
    int64_t s[2] = {1, b * t};
    if (g->st == SD_STATUS_OK) g->st = sd_scratch_new(g->ctx, SD_DTYPE_I32, 2, s, &tok_ids);
    if (g->st == SD_STATUS_OK) g->st = sd_scratch_new(g->ctx, SD_DTYPE_I32, 2, s, &map_ids);
    G(g, be->ops->upload(g->ctx, tok_ids->data, tok, (size_t)(b * t) * sizeof *tok));
    G(g, be->ops->upload(g->ctx, map_ids->data, host, (size_t)(b * t) * sizeof *host));
    sd_tensor_t *table = g_new(g, 2, b * t + e, c, 0, 0);
    if (g->st == SD_STATUS_OK) {
        int64_t ts[3] = {1, b * t, c};
        sd_tensor_t head = sd_rows_view(table, 0, b * t);
        sd_tensor_t head3 = sd_tensor_view(head.data, head.dtype, 3, ts);
        G(g, sd_op_embedding(g->ctx, &head3, tok_ids, net->token_embedding));
        sd_tensor_t tail = sd_rows_view(table, b * t, b * t + e);
        G(g, sd_op_convert(g->ctx, &tail, extra));
        int64_t xs[3] = {1, b * t, c};
        sd_tensor_t flat = sd_tensor_view(x->data, x->dtype, 3, xs);
        G(g, sd_op_embedding(g->ctx, &flat, map_ids, table));
    }
    g_free(g, table);
done:
    if (tok_ids != NULL) sd_scratch_free(g->ctx, tok_ids);
    if (map_ids != NULL) sd_scratch_free(g->ctx, map_ids);
    free(host);
    free(tok);
}

sd_status_t sd_clip_forward_extra(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *ids,
                                  const sd_tensor_t *extra, int32_t skip_layers, bool final_norm,
                                  sd_tensor_t *hidden, sd_tensor_t *pooled) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_CLIP, "clip_forward"));
    const clip_net_t *net = model->net;
    const sd_clip_config_t *cfg = &net->cfg;
    char buf[96];
    if (ids == NULL || ids->dtype != SD_DTYPE_I32 || ids->ndim != 2 ||
        ids->shape[1] > cfg->max_positions)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_forward: ids %s must be (B, T) i32 with T <= %d",
                       sd_tensor_describe(ids, buf, sizeof buf), cfg->max_positions);
    const int64_t b = ids->shape[0], t = ids->shape[1], c = cfg->hidden;
    if (skip_layers < 0 || skip_layers >= cfg->layers)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_forward: skip_layers %d not in [0, %d)", skip_layers, cfg->layers);
    if (hidden == NULL || hidden->ndim != 3 || hidden->shape[0] != b || hidden->shape[1] != t ||
        hidden->shape[2] != c)
        return sd_fail(
            ctx, SD_STATUS_INVALID_ARGUMENT, "clip_forward: hidden %s must be (%lld, %lld, %lld)",
            sd_tensor_describe(hidden, buf, sizeof buf), (long long)b, (long long)t, (long long)c);
    if (pooled != NULL && (pooled->ndim != 2 || pooled->shape[0] != b || pooled->shape[1] != c))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_forward: pooled %s must be (%lld, %lld)",
                       sd_tensor_describe(pooled, buf, sizeof buf), (long long)b, (long long)c);
    if (extra != NULL && (extra->dtype != SD_DTYPE_F32 || extra->ndim != 2 || extra->shape[0] < 1 ||
                          extra->shape[1] != c))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_forward: extra rows %s must be (E >= 1, %lld) f32",
                       sd_tensor_describe(extra, buf, sizeof buf), (long long)c);

    build_t gr = build_begin(ctx), *g = &gr;
    sd_tensor_t *x = g_new(g, 3, b, t, c, 0);
    if (extra != NULL)
        clip_embed_extra(g, net, ids, extra, x);
    else
        G(g, sd_op_embedding(ctx, x, ids, net->token_embedding));
    sd_tensor_t pos = sd_rows_view(net->position_embedding, 0, t);
    G(g, sd_op_add(ctx, x, x, &pos));

    /* Layers up to the one `hidden` reads; the rest only when pooled wants the last. */
    const int32_t keep = cfg->layers - skip_layers;
    const int32_t run = pooled != NULL ? cfg->layers : keep;
    sd_tensor_t *tmp = g_new(g, 3, b, t, c, 0);
    for (int32_t i = 0; i < run && g->st == SD_STATUS_OK; i++) {
        clip_layer(g, net, &net->layers[i], x);
        if (i + 1 == keep) {
            if (final_norm) {
                G(g, sd_op_layer_norm(ctx, tmp, x, net->final_ln.gamma, net->final_ln.beta,
                                      cfg->layer_norm_eps));
                g_output(g, hidden, tmp);
            } else {
                g_output(g, hidden, x);
            }
        }
    }
    if (pooled != NULL && g->st == SD_STATUS_OK) {
        G(g, sd_op_layer_norm(ctx, tmp, x, net->final_ln.gamma, net->final_ln.beta,
                              cfg->layer_norm_eps));
        /* Row of the first eos per sample (row 0 when there is none, as argmax gives). */
        int32_t *host_ids = malloc((size_t)(b * t) * sizeof *host_ids);
        int32_t *rows = malloc((size_t)b * sizeof *rows);
        sd_backend_t *be = sd_ctx_backend_ptr(ctx);
        if (host_ids == NULL || rows == NULL) {
            g->st = sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
        } else {
            G(g, be->ops->download(ctx, host_ids, ids->data, ids->nbytes));
            for (int64_t i = 0; i < b && g->st == SD_STATUS_OK; i++) {
                int64_t pos_eos = 0;
                for (int64_t j = 0; j < t; j++)
                    if (host_ids[i * t + j] == cfg->eos_id) {
                        pos_eos = j;
                        break;
                    }
                rows[i] = (int32_t)(i * t + pos_eos);
            }
            int64_t rs[2] = {1, b};
            sd_tensor_t *row_ids = NULL;
            if (g->st == SD_STATUS_OK) g->st = sd_scratch_new(ctx, SD_DTYPE_I32, 2, rs, &row_ids);
            G(g, be->ops->upload(ctx, row_ids->data, rows, (size_t)b * sizeof *rows));
            int64_t ts[2] = {b * t, c}, ps[3] = {1, b, c};
            sd_tensor_t table =
                sd_tensor_view(tmp ? tmp->data : NULL, tmp ? tmp->dtype : g->act, 2, ts);
            sd_tensor_t *rows_out = g_new(g, 3, 1, b, c, 0);
            G(g, sd_op_embedding(ctx, rows_out, row_ids, &table));
            if (g->st == SD_STATUS_OK) {
                sd_tensor_t pooled3 = sd_tensor_view(pooled->data, pooled->dtype, 3, ps);
                g_output(g, &pooled3, rows_out);
            }
            g_free(g, rows_out);
            sd_scratch_free(ctx, row_ids);
        }
        free(host_ids);
        free(rows);
    }
    g_free(g, tmp);
    g_free(g, x);
    return g->st;
}

sd_status_t sd_clip_project(sd_ctx_t *ctx, sd_model_t *model, const sd_tensor_t *pooled,
                            sd_tensor_t *out) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    SD_TRY(sd_ctx_check(ctx));
    SD_TRY(sd_model_check(ctx, model, SD_MODEL_CLIP, "clip_project"));
    const clip_net_t *net = model->net;
    const sd_clip_config_t *cfg = &net->cfg;
    char buf[96];
    if (cfg->projection_dim == 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_project: the text encoder has no text_projection");
    if (pooled == NULL || pooled->dtype != SD_DTYPE_F32 || pooled->ndim != 2 ||
        pooled->shape[1] != cfg->hidden)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_project: pooled %s must be (B, %d) f32",
                       sd_tensor_describe(pooled, buf, sizeof buf), cfg->hidden);
    const int64_t b = pooled->shape[0];
    if (out == NULL || out->dtype != SD_DTYPE_F32 || out->ndim != 2 || out->shape[0] != b ||
        out->shape[1] != cfg->projection_dim)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "clip_project: out %s must be (%lld, %d) f32",
                       sd_tensor_describe(out, buf, sizeof buf), (long long)b, cfg->projection_dim);
    build_t gr = build_begin(ctx), *g = &gr;
    sd_tensor_t *x = g_input(g, pooled);
    sd_tensor_t *y = g_new(g, 2, b, cfg->projection_dim, 0, 0);
    g_linear(g, y, x, &net->projection, NULL, SD_LAYOUT_TOKENS, SD_LAYOUT_TOKENS);
    g_output(g, out, y);
    g_free(g, y);
    g_release_input(g, pooled, x);
    return g->st;
}
