/* The model object (lifetime, per-context state) and the weight loader. */
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
    for (int32_t i = 0; i < m->n_weights; i++) {
        be->ops->weight_free(ctx, &m->weights[i]);
        free(m->origins[i].name);
    }
    for (int32_t i = 0; i < m->n_owned; i++) {
        be->ops->free(be, m->owned[i]->data);
        free(m->owned[i]);
    }
    free(m->weights);
    free(m->origins);
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
    L->model->origins = calloc((size_t)(n > 0 ? n : 1), sizeof *L->model->origins);
    if (L->model->weights == NULL || L->model->origins == NULL) {
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
    struct sd_weight_origin *o = &m->origins[m->n_weights];
    o->name = strdup(w->name);
    if (o->name == NULL) {
        loader_oom(L);
        return NULL;
    }
    o->role = role;
    o->ndim = w->ndim;
    memcpy(o->shape, w->shape, sizeof o->shape);
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    sd_status_t st = be->ops->weight_from_host(L->ctx, &host, role, dst);
    if (st != SD_STATUS_OK) {
        free(o->name);
        o->name = NULL;
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

sd_conv_w ld_conv_no_bias(loader_t *L, int64_t c_out, int64_t c_in, int64_t k, const char *fmt,
                          ...) {
    char prefix[320], name[384];
    va_list ap;
    va_start(ap, fmt);
    vprefix(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    int64_t ws[4] = {c_out, c_in, k, k};
    snprintf(name, sizeof name, "%s.weight", prefix);
    return (sd_conv_w){ld_weight(L, SD_WEIGHT_MATRIX_A, 4, ws, name, false), NULL};
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

/* Marks the loaded weight t (if it is one) as read into a tensor made at load, which
 * replacing it would not update. */
static void mark_folded(loader_t *L, const sd_tensor_t *t) {
    sd_model_t *m = L->model;
    for (int32_t i = 0; i < m->n_weights; i++)
        if (&m->weights[i] == t) m->origins[i].folded = true;
}

const sd_tensor_t *ld_sum(loader_t *L, const sd_tensor_t *a, const sd_tensor_t *b) {
    if (L->st != SD_STATUS_OK) return NULL;
    mark_folded(L, a);
    mark_folded(L, b);
    sd_tensor_t *sum = owned_tensor(L, SD_DTYPE_F32, a->ndim, a->shape);
    if (sum == NULL) return NULL;
    sd_status_t st = sd_op_add(L->ctx, sum, a, b);
    if (st != SD_STATUS_OK) L->st = st;
    return sum;
}

const sd_tensor_t *ld_act(loader_t *L, int64_t rows, int64_t cols, const char *fmt, ...) {
    int64_t s[2] = {rows, cols};
    va_list ap;
    va_start(ap, fmt);
    const sd_tensor_t *t = ld_named(L, SD_WEIGHT_VECTOR, 2, s, false, fmt, ap);
    va_end(ap);
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    if (t == NULL || t->dtype == be->act_dtype) return t;
    mark_folded(L, t);
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

const sd_tensor_t *ld_const(loader_t *L, int64_t n, const float *values) {
    if (L->st != SD_STATUS_OK) return NULL;
    sd_backend_t *be = sd_ctx_backend_ptr(L->ctx);
    int64_t s[1] = {n};
    sd_tensor_t *f32 = owned_tensor(L, SD_DTYPE_F32, 1, s);
    if (f32 == NULL) return NULL;
    sd_status_t st = be->ops->upload(L->ctx, f32->data, values, f32->nbytes);
    if (st == SD_STATUS_OK && be->act_dtype == SD_DTYPE_F32) return f32;
    sd_tensor_t *dst = st == SD_STATUS_OK ? owned_tensor(L, be->act_dtype, 1, s) : NULL;
    if (dst != NULL) st = sd_op_convert(L->ctx, dst, f32);
    if (st != SD_STATUS_OK) L->st = st;
    return L->st == SD_STATUS_OK ? dst : NULL;
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
    static const char *names[] = {"a text encoder", "a UNet",  "a VAE",
                                  "a ControlNet",   "a TAESD", "an ESRGAN"};
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
 * Replacing weights in place
 * ------------------------------------------------------------------------------------- */

/* At most this many slots of a model hold one table entry. */
enum { MAX_SLOTS = 4 };

/* The model's weight slots given by `name` (a net may load one table entry more than once),
 * in `slots` (at most `cap`); returns how many. */
static int32_t find_slots(const sd_model_t *m, const char *name, int32_t *slots, int32_t cap) {
    int32_t n = 0;
    for (int32_t i = 0; i < m->n_weights && n < cap; i++)
        if (strcmp(m->origins[i].name, name) == 0) slots[n++] = i;
    return n;
}

static sd_status_t check_replacement(sd_ctx_t *ctx, const char *op, const sd_model_t *m,
                                     const sd_weight_t *w, int32_t index, int32_t slot) {
    if (w->name == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: entry %d has no name", op, (int)index);
    if (slot < 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: the model has no weight %s", op,
                       w->name);
    const struct sd_weight_origin *o = &m->origins[slot];
    bool same = w->ndim == o->ndim;
    for (int i = 0; same && i < o->ndim; i++) same = w->shape[i] == o->shape[i];
    if (!same) {
        char want[96], got[96];
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: weight %s has shape %s, loaded as %s",
                       op, w->name,
                       shape_str(got, sizeof got,
                                 w->ndim < 0 || w->ndim > SD_MAX_DIMS ? 0 : w->ndim, w->shape),
                       shape_str(want, sizeof want, o->ndim, o->shape));
    }
    if (w->dtype != SD_DTYPE_F32 && w->dtype != SD_DTYPE_F16 && w->dtype != SD_DTYPE_BF16)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: weight %s has dtype %s, expected f32, f16 or bf16", op, w->name,
                       sd_dtype_name(w->dtype));
    if (w->data == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: weight %s has no data", op, w->name);
    if (o->folded)
        return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                       "%s: weight %s was folded into another tensor at load (a fused bias, a "
                       "converted table) and cannot be replaced; reload the model",
                       op, w->name);
    return SD_STATUS_OK;
}

sd_status_t sd_model_weight_copied(sd_ctx_t *ctx, const sd_model_t *model, const char *name,
                                   int32_t dtype, bool *copied) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    const char *op = "sd_model_weight_copied";
    if (model == NULL || model->group != ctx->group || name == NULL || copied == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: no model, name or result, or a model of a group this context does "
                       "not share models with",
                       op);
    int32_t slots[MAX_SLOTS];
    int32_t n = find_slots(model, name, slots, MAX_SLOTS);
    if (n == 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT, "%s: the model has no weight %s", op, name);
    const sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    *copied = true;
    for (int32_t j = 0; j < n; j++) {
        if (model->origins[slots[j]].folded)
            return sd_fail(ctx, SD_STATUS_UNSUPPORTED,
                           "%s: weight %s was folded into another tensor at load and cannot be "
                           "replaced",
                           op, name);
        *copied = *copied && be->ops->weight_copies(model->origins[slots[j]].role, dtype);
    }
    return SD_STATUS_OK;
}

sd_status_t sd_model_set_weights(sd_ctx_t *ctx, sd_model_t *model, const sd_weight_t *weights,
                                 int32_t n_weights) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    const char *op = "sd_model_set_weights";
    if (model == NULL || model->group != ctx->group)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: no model, or one of a group this context does not share models with",
                       op);
    if (n_weights < 0 || (n_weights > 0 && weights == NULL))
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: weight table is NULL or has %d entries", op, (int)n_weights);
    int32_t slots[MAX_SLOTS];
    /* Everything is checked first, so that a bad entry changes nothing. */
    for (int32_t i = 0; i < n_weights; i++) {
        const sd_weight_t *w = &weights[i];
        int32_t n = w->name ? find_slots(model, w->name, slots, MAX_SLOTS) : 0;
        SD_TRY(check_replacement(ctx, op, model, w, i, n > 0 ? slots[0] : -1));
    }
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    for (int32_t i = 0; i < n_weights; i++) {
        const sd_weight_t *w = &weights[i];
        int32_t n = find_slots(model, w->name, slots, MAX_SLOTS);
        for (int32_t j = 0; j < n; j++) {
            sd_tensor_t *t = &model->weights[slots[j]];
            /* The shape the net sees (a 1x1 convolution's kernel may be viewed as a matrix). */
            sd_tensor_t host = sd_tensor_view((void *)w->data, w->dtype, t->ndim, t->shape);
            SD_TRY(be->ops->weight_update(ctx, &host, model->origins[slots[j]].role, t));
        }
    }
    return SD_STATUS_OK;
}

sd_status_t sd_model_merge_weight(sd_ctx_t *ctx, sd_model_t *model, const sd_weight_t *base,
                                  const float *up, const float *down, int32_t rank, bool *merged) {
    if (ctx == NULL) return SD_STATUS_INVALID_ARGUMENT;
    const char *op = "sd_model_merge_weight";
    if (model == NULL || model->group != ctx->group || base == NULL || merged == NULL)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: no model, base weight or result, or a model of a group this context "
                       "does not share models with",
                       op);
    *merged = false;
    int32_t slots[MAX_SLOTS];
    int32_t n = base->name ? find_slots(model, base->name, slots, MAX_SLOTS) : 0;
    SD_TRY(check_replacement(ctx, op, model, base, 0, n > 0 ? slots[0] : -1));
    if (up == NULL || down == NULL || rank <= 0)
        return sd_fail(ctx, SD_STATUS_INVALID_ARGUMENT,
                       "%s: weight %s: no up or down factor, or rank %d", op, base->name,
                       (int)rank);
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    if (be->ops->weight_merges == NULL) return SD_STATUS_OK;
    for (int32_t j = 0; j < n; j++)
        if (!be->ops->weight_merges(&model->weights[slots[j]], model->origins[slots[j]].role))
            return SD_STATUS_OK;
    for (int32_t j = 0; j < n; j++) {
        sd_tensor_t *t = &model->weights[slots[j]];
        sd_tensor_t host = sd_tensor_view((void *)base->data, base->dtype, t->ndim, t->shape);
        SD_TRY(be->ops->weight_merge(ctx, &host, up, down, rank, model->origins[slots[j]].role, t));
    }
    *merged = true;
    return SD_STATUS_OK;
}
