/*
 * graph-cache.c - recorded forward passes keyed on input shapes (see graph-cache.h).
 */
#include "graph-cache.h"

#include <string.h>

struct sd_graph_entry {
    sd_tensor_t out; /* staged result (backend memory, not the arena) */
    void *graph;
    uint64_t epoch; /* the arena epoch the graph was recorded in */
    int eager_runs; /* the first run is eager: it sizes the arena */
    bool no_graph;  /* recording failed: always eager */
    uint64_t used;
    int32_t n_in;
    sd_tensor_t in[]; /* staged inputs; data NULL for an absent one */
};

static void entry_free(sd_ctx_t *ctx, sd_graph_entry_t *e) {
    if (e == NULL) return;
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    if (e->graph) be->ops->graph_free(be, e->graph);
    for (int32_t i = 0; i < e->n_in; i++)
        if (e->in[i].data) be->ops->free(be, e->in[i].data);
    if (e->out.data) be->ops->free(be, e->out.data);
    free(e);
}

void sd_graph_cache_clear(sd_ctx_t *ctx, sd_graph_cache_t *c) {
    for (int i = 0; i < SD_GRAPH_CACHE_ENTRIES; i++) {
        entry_free(ctx, c->entries[i]);
        c->entries[i] = NULL;
    }
}

/* Whether staged buffer s serves tensor t (both absent, or the same shape in dtype). */
static bool slot_matches(const sd_tensor_t *s, const sd_tensor_t *t, int32_t dtype) {
    if (t == NULL) return s->data == NULL;
    return s->data != NULL && s->dtype == dtype && sd_tensor_same_shape(s, t);
}

static bool entry_matches(const sd_graph_entry_t *e, const sd_tensor_t *const *in,
                          const int32_t *in_dtypes, int32_t n_in, const sd_tensor_t *out,
                          int32_t out_dtype) {
    if (e == NULL || e->n_in != n_in || !slot_matches(&e->out, out, out_dtype)) return false;
    for (int32_t i = 0; i < n_in; i++)
        if (!slot_matches(&e->in[i], in[i], in_dtypes[i])) return false;
    return true;
}

static bool alloc_like(sd_backend_t *be, sd_tensor_t *dst, int32_t dtype, const sd_tensor_t *like) {
    *dst = sd_tensor_view(NULL, dtype, like->ndim, like->shape);
    dst->data = be->ops->alloc(be, dst->nbytes);
    return dst->data != NULL;
}

/* The entry for this key, created (replacing the least recently used one) on first sight;
 * NULL when out of memory. */
static sd_graph_entry_t *entry_for(sd_ctx_t *ctx, sd_graph_cache_t *c, const sd_tensor_t *const *in,
                                   const int32_t *in_dtypes, int32_t n_in, const sd_tensor_t *out,
                                   int32_t out_dtype) {
    int slot = 0;
    for (int i = 0; i < SD_GRAPH_CACHE_ENTRIES; i++) {
        if (entry_matches(c->entries[i], in, in_dtypes, n_in, out, out_dtype)) {
            c->entries[i]->used = ++c->calls;
            return c->entries[i];
        }
        if (c->entries[slot] != NULL &&
            (c->entries[i] == NULL || c->entries[i]->used < c->entries[slot]->used))
            slot = i;
    }
    entry_free(ctx, c->entries[slot]);
    c->entries[slot] = NULL;
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    sd_graph_entry_t *e = calloc(1, sizeof *e + (size_t)n_in * sizeof e->in[0]);
    if (e == NULL) return NULL;
    e->n_in = n_in;
    bool ok = alloc_like(be, &e->out, out_dtype, out);
    for (int32_t i = 0; ok && i < n_in; i++)
        if (in[i] != NULL) ok = alloc_like(be, &e->in[i], in_dtypes[i], in[i]);
    if (!ok) {
        entry_free(ctx, e);
        return NULL;
    }
    e->used = ++c->calls;
    c->entries[slot] = e;
    return e;
}

sd_status_t sd_graph_cache_run(sd_ctx_t *ctx, sd_graph_cache_t *c, const char *what,
                               const sd_tensor_t *const *in, const int32_t *in_dtypes, int32_t n_in,
                               sd_tensor_t *out, int32_t out_dtype, sd_graph_fn fn, void *user) {
    if (!sd_ctx_graphs_enabled(ctx)) return fn(ctx, user, in, out);
    sd_graph_entry_t *e = entry_for(ctx, c, in, in_dtypes, n_in, out, out_dtype);
    if (e == NULL)
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "%s: cannot allocate graph buffers", what);
    enum { MAX_STAGED = 64 };
    const sd_tensor_t *staged_small[MAX_STAGED];
    const sd_tensor_t **staged = staged_small;
    if (n_in > MAX_STAGED && (staged = malloc((size_t)n_in * sizeof *staged)) == NULL)
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "out of host memory");
    sd_status_t st = SD_STATUS_OK;
    for (int32_t i = 0; i < n_in; i++) {
        staged[i] = in[i] != NULL ? &e->in[i] : NULL;
        if (in[i] != NULL && st == SD_STATUS_OK) st = sd_op_convert(ctx, &e->in[i], in[i]);
    }
    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    if (st == SD_STATUS_OK && e->graph != NULL && e->epoch != sd_ctx_arena_epoch(ctx)) {
        be->ops->graph_free(be, e->graph);
        e->graph = NULL;
        e->eager_runs = 0;
    }
    if (st == SD_STATUS_OK && e->graph == NULL && !e->no_graph && e->eager_runs > 0) {
        sd_status_t rec = be->ops->graph_begin(ctx);
        if (rec == SD_STATUS_OK) {
            st = fn(ctx, user, staged, &e->out);
            void *graph = NULL;
            rec = be->ops->graph_end(ctx, &graph);
            if (st == SD_STATUS_OK && rec == SD_STATUS_OK) {
                e->graph = graph;
                e->epoch = sd_ctx_arena_epoch(ctx);
            } else if (graph != NULL) {
                be->ops->graph_free(be, graph);
            }
        }
        if (e->graph == NULL && st != SD_STATUS_CANCELLED) {
            sd_log(ctx, SD_LOG_WARN, "%s: recording a graph failed (%s); running eagerly", what,
                   sd_ctx_last_error(ctx));
            e->no_graph = true;
            st = SD_STATUS_OK;
        }
    }
    if (st == SD_STATUS_OK) {
        if (e->graph != NULL) {
            st = be->ops->graph_launch(ctx, e->graph);
        } else {
            st = fn(ctx, user, staged, &e->out);
            e->eager_runs++;
        }
    }
    if (st == SD_STATUS_OK) st = sd_op_convert(ctx, out, &e->out);
    if (staged != staged_small) free(staged);
    return st;
}
