/* Activation arena: best-fit allocation with coalescing over large backend chunks.
 *
 * Bookkeeping lives in host memory (chunk bases may be device pointers), one sorted block
 * list per chunk. Model graphs hold at most a few dozen live tensors, so linear scans are
 * cheap next to any kernel. */
#include "sd-internal.h"

#include <stdint.h>
#include <string.h>

void sd_arena_init(sd_arena_t *a, sd_backend_t *backend, size_t alignment, size_t min_chunk) {
    memset(a, 0, sizeof *a);
    a->backend = backend;
    a->alignment = alignment < 64 ? 64 : alignment;
    a->min_chunk = min_chunk;
}

static void release_chunk(sd_arena_t *a, int32_t i) {
    sd_arena_chunk_t *c = &a->chunks[i];
    a->epoch++;
    a->backend->ops->free(a->backend, c->base);
    a->reserved -= c->size;
    free(c->blocks);
    memmove(c, c + 1, (size_t)(a->n_chunks - i - 1) * sizeof *c);
    a->n_chunks--;
}

void sd_arena_destroy(sd_arena_t *a) {
    while (a->n_chunks > 0) release_chunk(a, a->n_chunks - 1);
    free(a->chunks);
    memset(a, 0, sizeof *a);
}

static bool insert_block(sd_arena_chunk_t *c, int32_t at, sd_arena_block_t b) {
    if (c->n_blocks == c->cap_blocks) {
        int32_t cap = c->cap_blocks ? c->cap_blocks * 2 : 16;
        sd_arena_block_t *nb = realloc(c->blocks, (size_t)cap * sizeof *nb);
        if (nb == NULL) return false;
        c->blocks = nb;
        c->cap_blocks = cap;
    }
    memmove(&c->blocks[at + 1], &c->blocks[at], (size_t)(c->n_blocks - at) * sizeof b);
    c->blocks[at] = b;
    c->n_blocks++;
    return true;
}

static void remove_block(sd_arena_chunk_t *c, int32_t at) {
    memmove(&c->blocks[at], &c->blocks[at + 1], (size_t)(c->n_blocks - at - 1) * sizeof *c->blocks);
    c->n_blocks--;
}

/* Adds a chunk of `want` bytes (at least the minimum chunk size), or of exactly `need` where
 * that much is not available. */
static bool add_chunk(sd_arena_t *a, size_t need, size_t want) {
    size_t size = want > a->min_chunk ? want : a->min_chunk;
    if (a->n_chunks == a->cap_chunks) {
        int32_t cap = a->cap_chunks ? a->cap_chunks * 2 : 8;
        sd_arena_chunk_t *nc = realloc(a->chunks, (size_t)cap * sizeof *nc);
        if (nc == NULL) return false;
        a->chunks = nc;
        a->cap_chunks = cap;
    }
    void *base = a->backend->ops->alloc(a->backend, size);
    if (base == NULL && size > need) { /* the minimum chunk may be too much: try exact */
        size = need;
        base = a->backend->ops->alloc(a->backend, size);
    }
    if (base == NULL) return false;
    sd_arena_chunk_t *c = &a->chunks[a->n_chunks];
    memset(c, 0, sizeof *c);
    c->base = base;
    c->size = size;
    if (!insert_block(c, 0, (sd_arena_block_t){0, size, false})) {
        a->backend->ops->free(a->backend, base);
        return false;
    }
    a->n_chunks++;
    a->reserved += size;
    return true;
}

/* Makes room for a request no free block fits: the chunks that are wholly idle are given
 * back and one chunk of at least their joint size is added, so that the reserved memory
 * follows the largest working set rather than the sum of different ones (a UNet's many
 * mid-size tensors, then a VAE decoder's few large ones, which fit none of the UNet's
 * chunks). Out of backend memory, it falls back to a chunk of just `need`. */
static bool grow(sd_arena_t *a, size_t need) {
    size_t idle = 0;
    for (int32_t ci = 0; ci < a->n_chunks; ci++) {
        const sd_arena_chunk_t *c = &a->chunks[ci];
        if (c->n_blocks == 1 && !c->blocks[0].used) idle += c->size;
    }
    if (idle > 0) sd_arena_trim(a);
    return add_chunk(a, need, need > idle ? need : idle);
}

void *sd_arena_alloc(sd_arena_t *a, size_t nbytes) {
    if (nbytes == 0) nbytes = 1;
    size_t need = (nbytes + a->alignment - 1) / a->alignment * a->alignment;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t best_c = -1, best_b = -1;
        size_t best_size = SIZE_MAX;
        for (int32_t ci = 0; ci < a->n_chunks; ci++) {
            sd_arena_chunk_t *c = &a->chunks[ci];
            for (int32_t bi = 0; bi < c->n_blocks; bi++) {
                sd_arena_block_t *b = &c->blocks[bi];
                if (!b->used && b->size >= need && b->size < best_size) {
                    best_c = ci, best_b = bi, best_size = b->size;
                }
            }
        }
        if (best_c >= 0) {
            sd_arena_chunk_t *c = &a->chunks[best_c];
            sd_arena_block_t *b = &c->blocks[best_b];
            if (b->size > need) {
                sd_arena_block_t rest = {b->offset + need, b->size - need, false};
                if (!insert_block(c, best_b + 1, rest)) return NULL;
                b = &c->blocks[best_b]; /* insert_block may have moved the array */
                b->size = need;
            }
            b->used = true;
            a->in_use += need;
            if (a->in_use > a->peak) a->peak = a->in_use;
            return (char *)c->base + b->offset;
        }
        if (attempt == 0 && !grow(a, need)) return NULL;
    }
    return NULL;
}

void sd_arena_free(sd_arena_t *a, void *p) {
    if (p == NULL) return;
    uintptr_t up = (uintptr_t)p;
    for (int32_t ci = 0; ci < a->n_chunks; ci++) {
        sd_arena_chunk_t *c = &a->chunks[ci];
        uintptr_t base = (uintptr_t)c->base;
        if (up < base || up >= base + c->size) continue;
        size_t off = (size_t)(up - base);
        for (int32_t bi = 0; bi < c->n_blocks; bi++) {
            sd_arena_block_t *b = &c->blocks[bi];
            if (b->offset != off) continue;
            SD_ASSERT(b->used);
            b->used = false;
            a->in_use -= b->size;
            if (bi + 1 < c->n_blocks && !c->blocks[bi + 1].used) {
                b->size += c->blocks[bi + 1].size;
                remove_block(c, bi + 1);
            }
            if (bi > 0 && !c->blocks[bi - 1].used) {
                c->blocks[bi - 1].size += b->size;
                remove_block(c, bi);
            }
            return;
        }
        break;
    }
    SD_ASSERT(!"sd_arena_free: pointer not from this arena");
}

void sd_arena_trim(sd_arena_t *a) {
    for (int32_t ci = a->n_chunks - 1; ci >= 0; ci--) {
        sd_arena_chunk_t *c = &a->chunks[ci];
        if (c->n_blocks == 1 && !c->blocks[0].used) release_chunk(a, ci);
    }
}
