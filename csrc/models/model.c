/* Model object, weight loader and the shared network blocks. */
#include "model.h"

#include <stdarg.h>
#include <string.h>

size_t sd_sizeof_weight(void) {
    return sizeof(sd_weight_t);
}

/* ---------------------------------------------------------------------------------------
 * Weight loader
 * ------------------------------------------------------------------------------------- */

typedef struct {
    const char *name; /* after prefix stripping; points into the caller's string */
    const sd_weight_t *w;
    int32_t index; /* in the caller's table, to report the first unused weight in its order */
    bool used;     /* looked up by the network: loader_finish refuses weights never used */
} wentry_t;

struct loader {
    sd_ctx_t *ctx;
    const char *what;
    sd_model_t *model;
    wentry_t *table;
    size_t cap;
    sd_status_t st;
};

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void fail(loader_t *L, sd_status_t st, const char *fmt, ...) {
    if (L->st != SD_STATUS_OK) return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    L->st = sd_fail(L->ctx, st, "%s: %s", L->what, msg);
}

void loader_fail(loader_t *L, const char *fmt, ...) {
    if (L->st != SD_STATUS_OK) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fail(L, SD_STATUS_BAD_MODEL, "%s", msg);
}

void loader_oom(loader_t *L) {
    fail(L, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
}

sd_status_t loader_status(const loader_t *L) {
    return L->st;
}

static void model_free_weights(sd_ctx_t *ctx, sd_model_t *m) {
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    for (int32_t i = 0; i < m->n_weights; i++) be->ops->weight_free(ctx, &m->weights[i]);
    for (int32_t i = 0; i < m->n_owned; i++) {
        be->ops->free(be, m->owned[i]->data);
        free(m->owned[i]);
    }
    free(m->weights);
    free(m->owned);
}

loader_t *loader_new(sd_ctx_t *ctx, const char *what, int32_t kind, const sd_weight_t *weights,
                     int32_t n, const char *strip_prefix) {
    loader_t *L = calloc(1, sizeof *L);
    if (L == NULL) return NULL;
    L->ctx = ctx;
    L->what = what;
    if (n < 0 || (n > 0 && weights == NULL)) {
        fail(L, SD_STATUS_INVALID_ARGUMENT, "weight table is NULL or has %d entries", (int)n);
        return L;
    }
    L->model = calloc(1, sizeof *L->model);
    L->cap = 16;
    while (L->cap < (size_t)n * 2) L->cap *= 2;
    L->table = calloc(L->cap, sizeof *L->table);
    if (L->model == NULL || L->table == NULL) {
        fail(L, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
        return L;
    }
    L->model->kind = kind;
    L->model->cap_weights = n;
    L->model->weights = calloc((size_t)(n > 0 ? n : 1), sizeof *L->model->weights);
    if (L->model->weights == NULL) {
        fail(L, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
        return L;
    }
    size_t plen = strip_prefix ? strlen(strip_prefix) : 0;
    for (int32_t i = 0; i < n; i++) {
        const char *name = weights[i].name;
        if (name == NULL) {
            fail(L, SD_STATUS_INVALID_ARGUMENT, "weight %d has no name", (int)i);
            return L;
        }
        if (plen && strncmp(name, strip_prefix, plen) == 0) name += plen;
        size_t at = hash_name(name) & (L->cap - 1);
        while (L->table[at].name != NULL && strcmp(L->table[at].name, name) != 0)
            at = (at + 1) & (L->cap - 1);
        /* Two entries for one tensor (also "text_model.x" beside "x"): one of them would be
         * silently ignored, which the strict rule of loader_finish exists to prevent. */
        if (L->table[at].name != NULL) {
            const char *first = L->table[at].w->name;
            if (strcmp(first, weights[i].name) == 0)
                fail(L, SD_STATUS_BAD_MODEL, "weight %s was given twice", first);
            else
                fail(L, SD_STATUS_BAD_MODEL, "weights %s and %s are the same tensor", first,
                     weights[i].name);
            return L;
        }
        L->table[at] = (wentry_t){name, &weights[i], i, false};
    }
    return L;
}

/* A weight the network never looked up is an error, not something to skip: the callers
 * pass only what the network's description lists (Go binds file tensors to its
 * TensorSpecs and drops the rest, position_ids included), so an unused one means the C
 * graph and that description have drifted apart, or a caller handed over a tensor it
 * believes is used. Reports the first such weight in the caller's order. */
static void check_all_used(loader_t *L) {
    const wentry_t *first = NULL;
    int32_t n_unused = 0;
    for (size_t i = 0; i < L->cap; i++) {
        const wentry_t *e = &L->table[i];
        if (e->name == NULL || e->used) continue;
        n_unused++;
        if (first == NULL || e->index < first->index) first = e;
    }
    if (first == NULL) return;
    char more[48] = "";
    if (n_unused > 1) snprintf(more, sizeof more, " (%d such weights)", (int)n_unused);
    fail(L, SD_STATUS_BAD_MODEL, "weight %s was given but the %s does not use it%s", first->w->name,
         L->what, more);
}

sd_status_t loader_finish(loader_t *L, void *net, void (*free_net)(sd_ctx_t *, void *),
                          sd_model_t **out) {
    if (L->st == SD_STATUS_OK) check_all_used(L);
    /* Weights made on the device by ops (fused biases, conversions) may still be queued on
     * this context's stream, which another context's stream does not wait for. */
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    if (L->st == SD_STATUS_OK && be->ops->synchronize != NULL) L->st = be->ops->synchronize(L->ctx);
    sd_status_t st = L->st;
    sd_model_t *m = L->model;
    if (st == SD_STATUS_OK) {
        m->net = net;
        m->free_net = free_net;
        /* Linked into the group so that its last sd_ctx_free frees it if no one else does. */
        sd_group_t *g = L->ctx->group;
        m->group = g;
        pthread_mutex_lock(&g->lock);
        m->next = g->models;
        if (g->models != NULL) g->models->prev = m;
        g->models = m;
        pthread_mutex_unlock(&g->lock);
        *out = m;
    } else {
        if (free_net && net) free_net(L->ctx, net);
        if (m) {
            model_free_weights(L->ctx, m);
            free(m);
        }
    }
    free(L->table);
    free(L);
    return st;
}

/* Finds a weight by its name (prefix stripped) and marks it used. */
static const sd_weight_t *lookup(loader_t *L, const char *name) {
    size_t at = hash_name(name) & (L->cap - 1);
    while (L->table[at].name != NULL) {
        if (strcmp(L->table[at].name, name) == 0) {
            L->table[at].used = true;
            return L->table[at].w;
        }
        at = (at + 1) & (L->cap - 1);
    }
    return NULL;
}

static const char *shape_str(char *buf, size_t len, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (n < len) snprintf(buf + n, len - n, ")");
    return buf;
}

/* Finds `name`, checks its shape against `shape` (a (N, K) expectation also accepts the
 * (N, K, 1, 1) of a 1x1 convolution), hands it to the backend and returns the backend
 * tensor reshaped to `shape`. */
static const sd_tensor_t *ld_weight(loader_t *L, int32_t role, int ndim, const int64_t *shape,
                                    const char *name, bool optional) {
    if (L->st != SD_STATUS_OK) return NULL;
    const sd_weight_t *w = lookup(L, name);
    if (w == NULL) {
        if (!optional) fail(L, SD_STATUS_BAD_MODEL, "missing weight %s", name);
        return NULL;
    }
    char want[96], got[96];
    bool ok = w->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = w->shape[i] == shape[i];
    if (!ok && ndim == 2 && w->ndim == 4)
        ok = w->shape[0] == shape[0] && w->shape[1] == shape[1] && w->shape[2] == 1 &&
             w->shape[3] == 1;
    if (!ok) {
        fail(L, SD_STATUS_BAD_MODEL, "weight %s has shape %s, expected %s", name,
             shape_str(got, sizeof got, w->ndim < 0 || w->ndim > SD_MAX_DIMS ? 0 : w->ndim,
                       w->shape),
             shape_str(want, sizeof want, ndim, shape));
        return NULL;
    }
    if (w->dtype != SD_DTYPE_F32 && w->dtype != SD_DTYPE_F16 && w->dtype != SD_DTYPE_BF16) {
        fail(L, SD_STATUS_BAD_MODEL, "weight %s has dtype %s, expected f32, f16 or bf16", name,
             sd_dtype_name(w->dtype));
        return NULL;
    }
    if (w->data == NULL) {
        fail(L, SD_STATUS_INVALID_ARGUMENT, "weight %s has no data", name);
        return NULL;
    }
    sd_model_t *m = L->model;
    SD_ASSERT(m->n_weights < m->cap_weights);
    sd_tensor_t host = sd_tensor_view((void *)w->data, w->dtype, ndim, shape);
    sd_tensor_t *dst = &m->weights[m->n_weights];
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    sd_status_t st = be->ops->weight_from_host(L->ctx, &host, role, dst);
    if (st != SD_STATUS_OK) {
        L->st = st;
        return NULL;
    }
    m->n_weights++;
    return dst;
}

static const sd_tensor_t *ld_named(loader_t *L, int32_t role, int ndim, const int64_t *shape,
                                   bool optional, const char *fmt, va_list ap) {
    char name[384];
    vsnprintf(name, sizeof name, fmt, ap);
    return ld_weight(L, role, ndim, shape, name, optional);
}

static void vprefix(char *buf, size_t len, const char *fmt, va_list ap) {
    vsnprintf(buf, len, fmt, ap);
}

static sd_linear_w ld_linear_role(loader_t *L, int32_t role, int64_t n_out, int64_t n_in, bool bias,
                                  const char *fmt, va_list ap) {
    char prefix[320], name[384];
    vprefix(prefix, sizeof prefix, fmt, ap);
    sd_linear_w l = {0};
    int64_t ws[2] = {n_out, n_in}, bs[1] = {n_out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    l.w = ld_weight(L, role, 2, ws, name, false);
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        l.b = ld_weight(L, SD_WEIGHT_VECTOR, 1, bs, name, false);
    }
    return l;
}

sd_linear_w ld_linear(loader_t *L, int64_t n_out, int64_t n_in, bool bias, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sd_linear_w l = ld_linear_role(L, SD_WEIGHT_MATRIX_B, n_out, n_in, bias, fmt, ap);
    va_end(ap);
    return l;
}

sd_linear_w ld_linear_cf(loader_t *L, int64_t n_out, int64_t n_in, bool bias, const char *fmt,
                         ...) {
    va_list ap;
    va_start(ap, fmt);
    sd_linear_w l = ld_linear_role(L, SD_WEIGHT_MATRIX_A, n_out, n_in, bias, fmt, ap);
    va_end(ap);
    return l;
}

sd_conv_w ld_conv(loader_t *L, int64_t c_out, int64_t c_in, int64_t k, const char *fmt, ...) {
    char prefix[320], name[384];
    va_list ap;
    va_start(ap, fmt);
    vprefix(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    sd_conv_w c = {0};
    int64_t ws[4] = {c_out, c_in, k, k}, bs[1] = {c_out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    c.w = ld_weight(L, SD_WEIGHT_MATRIX_A, 4, ws, name, false);
    snprintf(name, sizeof name, "%s.bias", prefix);
    c.b = ld_weight(L, SD_WEIGHT_VECTOR, 1, bs, name, false);
    return c;
}

sd_norm_w ld_norm(loader_t *L, int64_t c, const char *fmt, ...) {
    char prefix[320], name[384];
    va_list ap;
    va_start(ap, fmt);
    vprefix(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    sd_norm_w n = {0};
    int64_t s[1] = {c};
    snprintf(name, sizeof name, "%s.weight", prefix);
    n.gamma = ld_weight(L, SD_WEIGHT_VECTOR, 1, s, name, false);
    snprintf(name, sizeof name, "%s.bias", prefix);
    n.beta = ld_weight(L, SD_WEIGHT_VECTOR, 1, s, name, false);
    return n;
}

const sd_tensor_t *ld_table(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...) {
    int64_t s[2] = {rows, cols};
    va_list ap;
    va_start(ap, fmt);
    const sd_tensor_t *t = ld_named(L, SD_WEIGHT_TABLE, 2, s, false, fmt, ap);
    va_end(ap);
    return t;
}

/* A tensor the model owns in backend memory (freed with it); NULL after a failure. */
static sd_tensor_t *owned_tensor(loader_t *L, int32_t dtype, int ndim, const int64_t *shape) {
    if (L->st != SD_STATUS_OK) return NULL;
    sd_model_t *m = L->model;
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    if (m->n_owned == m->cap_owned) {
        int32_t cap = m->cap_owned ? 2 * m->cap_owned : 16;
        sd_tensor_t **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (o == NULL) {
            loader_oom(L);
            return NULL;
        }
        m->owned = o;
        m->cap_owned = cap;
    }
    sd_tensor_t *dst = malloc(sizeof *dst);
    if (dst == NULL) {
        loader_oom(L);
        return NULL;
    }
    *dst = sd_tensor_view(NULL, dtype, ndim, shape);
    dst->data = be->ops->alloc(be, dst->nbytes);
    if (dst->data == NULL) {
        fail(L, SD_STATUS_OUT_OF_MEMORY, "cannot allocate %zu bytes", dst->nbytes);
        free(dst);
        return NULL;
    }
    m->owned[m->n_owned++] = dst;
    return dst;
}

const sd_tensor_t *ld_act(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...) {
    int64_t s[2] = {rows, cols};
    va_list ap;
    va_start(ap, fmt);
    const sd_tensor_t *t = ld_named(L, SD_WEIGHT_VECTOR, 2, s, false, fmt, ap);
    va_end(ap);
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    if (t == NULL || t->dtype == be->act_dtype) return t;
    /* Convert once into a model-owned tensor of the activation dtype. */
    sd_tensor_t *dst = owned_tensor(L, be->act_dtype, 2, s);
    if (dst == NULL) return NULL;
    sd_status_t st = sd_op_convert(L->ctx, dst, t);
    if (st != SD_STATUS_OK) {
        L->st = st;
        return NULL;
    }
    return dst;
}

sd_tensor_t sd_rows_view(const sd_tensor_t *t, int64_t r0, int64_t r1) {
    sd_tensor_t v = *t;
    size_t row_bytes = t->nbytes / (size_t)t->shape[0];
    v.data = (char *)t->data + (size_t)r0 * row_bytes;
    v.shape[0] = r1 - r0;
    v.nbytes = (size_t)(r1 - r0) * row_bytes;
    v.kind = SD_TENSOR_VIEW;
    v.packed = NULL; /* a packed form covers all rows: the view reads data in place */
    v.prev = v.next = NULL;
    return v;
}

static void state_free(sd_model_ctx_state_t *s) {
    sd_graph_cache_clear(s->ctx, &s->graphs);
    free(s);
}

void sd_model_free(sd_ctx_t *ctx, sd_model_t *model) {
    if (ctx == NULL || model == NULL) return;
    sd_group_t *g = ctx->group;
    if (model->group != g) {
        sd_log(ctx, SD_LOG_ERROR,
               "model_free: the model was loaded in a context that this one does not share "
               "models with; not freed");
        return;
    }
    pthread_mutex_lock(&g->lock);
    if (model->prev != NULL)
        model->prev->next = model->next;
    else
        g->models = model->next;
    if (model->next != NULL) model->next->prev = model->prev;
    /* Under the lock: a context being freed meanwhile keeps its backend, which frees its
     * state's buffers, until it has taken the lock itself. */
    while (model->states != NULL) {
        sd_model_ctx_state_t *s = model->states;
        model->states = s->next;
        state_free(s);
    }
    pthread_mutex_unlock(&g->lock);
    if (model->free_net) model->free_net(ctx, model->net);
    model_free_weights(ctx, model);
    free(model);
}

void sd_models_free_all(sd_ctx_t *ctx) {
    while (ctx->group->models != NULL) sd_model_free(ctx, ctx->group->models);
}

void sd_models_forget_ctx_locked(sd_ctx_t *ctx) {
    for (sd_model_t *m = ctx->group->models; m != NULL; m = m->next) {
        for (sd_model_ctx_state_t **at = &m->states; *at != NULL; at = &(*at)->next) {
            if ((*at)->ctx != ctx) continue;
            sd_model_ctx_state_t *s = *at;
            *at = s->next;
            state_free(s);
            break;
        }
    }
}

sd_status_t sd_model_check(sd_ctx_t *ctx, const sd_model_t *model, int32_t kind, const char *op) {
    static const char *names[] = {"a text encoder", "a UNet", "a VAE"};
    if (model == NULL || model->kind != kind)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: not %s model", op, names[kind]);
    if (model->group != ctx->group)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: the model was loaded in a context that this one does not share "
                       "models with (see sd_ctx_init_shared)",
                       op);
    return SD_STATUS_OK;
}

sd_graph_cache_t *sd_model_graphs(sd_ctx_t *ctx, sd_model_t *model) {
    sd_group_t *g = ctx->group;
    pthread_mutex_lock(&g->lock);
    sd_model_ctx_state_t *s = model->states;
    while (s != NULL && s->ctx != ctx) s = s->next;
    if (s == NULL && (s = calloc(1, sizeof *s)) != NULL) {
        s->ctx = ctx;
        s->next = model->states;
        model->states = s;
    }
    pthread_mutex_unlock(&g->lock);
    if (s == NULL) sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    return s ? &s->graphs : NULL;
}

/* ---------------------------------------------------------------------------------------
 * Graph helpers
 * ------------------------------------------------------------------------------------- */

graph_t graph_begin(sd_ctx_t *ctx) {
    return (graph_t){ctx, SD_STATUS_OK, sd_ctx_backend_ptr(ctx)->act_dtype};
}

sd_tensor_t *g_new(graph_t *g, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    if (g->st != SD_STATUS_OK) return NULL;
    int64_t shape[4] = {d0, d1, d2, d3};
    sd_tensor_t *t = NULL;
    g->st = sd_scratch_new(g->ctx, g->act, ndim, shape, &t);
    return t;
}

void g_free(graph_t *g, sd_tensor_t *t) {
    sd_scratch_free(g->ctx, t);
}

sd_tensor_t *g_input(graph_t *g, const sd_tensor_t *x) {
    if (g->st != SD_STATUS_OK) return NULL;
    if (x->dtype == g->act) return (sd_tensor_t *)x;
    sd_tensor_t *t = NULL;
    g->st = sd_scratch_new(g->ctx, g->act, x->ndim, x->shape, &t);
    G(g, sd_op_convert(g->ctx, t, x));
    return t;
}

void g_release_input(graph_t *g, const sd_tensor_t *x, sd_tensor_t *converted) {
    if (converted != x) g_free(g, converted);
}

void g_output(graph_t *g, sd_tensor_t *out, const sd_tensor_t *result) {
    G(g, sd_op_convert(g->ctx, out, result));
}

void g_conv(graph_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_conv_w *c,
            const sd_tensor_t *bias_override, const sd_tensor_t *residual, int32_t stride,
            int32_t pad_top, int32_t pad_bottom, int32_t pad_left, int32_t pad_right) {
    sd_conv2d_params_t p = {stride, stride, pad_top, pad_bottom, pad_left, pad_right};
    G(g, sd_op_conv2d(g->ctx, out, x, c->w, bias_override ? bias_override : c->b, residual, &p));
}

void g_linear(graph_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_linear_w *l,
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
        int64_t bs[1] = {c_out};
        sd_tensor_t *fused = owned_tensor(L, SD_DTYPE_F32, 1, bs);
        if (fused != NULL) {
            sd_status_t st = sd_op_add(L->ctx, fused, r->temb.b, r->conv1.b);
            if (st != SD_STATUS_OK) L->st = st;
            r->temb.b = fused;
        }
    }
    r->norm2 = ld_norm(L, c_out, "%s.norm2", prefix);
    r->conv2 = ld_conv(L, c_out, c_out, 3, "%s.conv2", prefix);
    if (c_in != c_out) r->shortcut = ld_conv(L, c_out, c_in, 1, "%s.conv_shortcut", prefix);
}

sd_tensor_t *g_resnet(graph_t *g, const resnet_w *r, const sd_tensor_t *x,
                      const sd_tensor_t *temb_silu, int32_t groups, float eps) {
    if (g->st != SD_STATUS_OK) return NULL;
    const int64_t b = x->shape[0], h = x->shape[2], w = x->shape[3];
    sd_tensor_t *n1 = g_new(g, 4, b, r->c_in, h, w);
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
    g_free(g, n1);
    g_free(g, tb);
    G(g, sd_op_group_norm(g->ctx, h1, h1, r->norm2.gamma, r->norm2.beta, groups, eps, true));
    sd_tensor_t *sc = (sd_tensor_t *)x;
    if (r->shortcut.w != NULL) {
        sc = g_new(g, 4, b, r->c_out, h, w);
        g_conv(g, sc, x, &r->shortcut, NULL, NULL, 1, 0, 0, 0, 0);
    }
    sd_tensor_t *out = g_new(g, 4, b, r->c_out, h, w);
    g_conv(g, out, h1, &r->conv2, NULL, sc, 1, 1, 1, 1, 1);
    g_free(g, h1);
    if (sc != x) g_free(g, sc);
    if (g->st != SD_STATUS_OK) {
        g_free(g, out);
        return NULL;
    }
    return out;
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
static void g_attention_block(graph_t *g, sd_tensor_t *x, const sd_tensor_t *normed,
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

sd_tensor_t *g_transformer(graph_t *g, const transformer_w *t, const sd_tensor_t *x,
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

sd_tensor_t *g_vae_attention(graph_t *g, const vae_attn_w *a, const sd_tensor_t *x, int32_t groups,
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

sd_tensor_t *g_upsample(graph_t *g, const sd_conv_w *conv, const sd_tensor_t *x, int64_t oh,
                        int64_t ow) {
    if (g->st != SD_STATUS_OK) return NULL;
    const int64_t b = x->shape[0], c = x->shape[1];
    sd_tensor_t *up = g_new(g, 4, b, c, oh, ow);
    G(g, sd_op_upsample_nearest(g->ctx, up, x));
    sd_tensor_t *out = g_new(g, 4, b, conv->w ? conv->w->shape[0] : c, oh, ow);
    g_conv(g, out, up, conv, NULL, NULL, 1, 1, 1, 1, 1);
    g_free(g, up);
    if (g->st != SD_STATUS_OK) {
        g_free(g, out);
        return NULL;
    }
    return out;
}
