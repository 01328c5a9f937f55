/*
 * graph-cache.h - whole forward passes recorded once per combination of input shapes and
 * replayed (backends with graph capture: CUDA).
 *
 * A recorded graph has the addresses of its inputs, its output and its scratch memory baked
 * in, so a cache entry owns staging buffers: each call copies (converting to the staging
 * dtype) its inputs into them before the replay and the result out after it. An entry is
 * keyed on the presence, staging dtype and shape of every input and of the output: any
 * difference would change the ops recorded. Without graph capture (the CPU backend, or
 * while profiling) sd_graph_cache_run calls the forward directly on the caller's tensors,
 * with no copies.
 */
#ifndef SD_GRAPH_CACHE_H
#define SD_GRAPH_CACHE_H

#include "sd-internal.h"

/* A forward pass: reads in[0..n_in) (NULL for an absent input) and writes out. It must
 * accept inputs and out in any dtype the caller of sd_graph_cache_run may pass (the
 * staging dtypes when replaying, the caller's otherwise) and allocate only from the arena.
 * Returns the first failure. */
typedef sd_status_t (*sd_graph_fn)(sd_ctx_t *ctx, void *user, const sd_tensor_t *const *in,
                                   sd_tensor_t *out);

#define SD_GRAPH_CACHE_ENTRIES 4

typedef struct sd_graph_entry sd_graph_entry_t;

/* Zero-initialised is an empty cache. */
typedef struct sd_graph_cache {
    sd_graph_entry_t *entries[SD_GRAPH_CACHE_ENTRIES];
    uint64_t calls; /* for least-recently-used replacement */
} sd_graph_cache_t;

/* Frees every entry (its graph and buffers); the cache is empty afterwards. */
void sd_graph_cache_clear(sd_ctx_t *ctx, sd_graph_cache_t *c);

/* out = fn(in). in_dtypes[i] is the dtype input i is staged in; out_dtype that of the
 * staged result. `what` names the model in log messages. The first call of a key runs
 * eagerly on the staged buffers (it grows the arena to the key's needs, so recording
 * allocates nothing), the second records, later ones replay; a graph is dropped when the
 * arena has released memory since it was recorded, and a key whose recording fails runs
 * eagerly from then on (logged once). */
sd_status_t sd_graph_cache_run(sd_ctx_t *ctx, sd_graph_cache_t *c, const char *what,
                               const sd_tensor_t *const *in, const int32_t *in_dtypes, int32_t n_in,
                               sd_tensor_t *out, int32_t out_dtype, sd_graph_fn fn, void *user);

#endif /* SD_GRAPH_CACHE_H */
