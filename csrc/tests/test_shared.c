/* Contexts sharing models (sd_ctx_init_shared): one copy of the weights run by several
 * contexts concurrently, with results identical to a single context's, and lifetimes that
 * let any context of the group go first. Run under `make sanitize` for leaks and races on
 * freed memory; the threads also suit a ThreadSanitizer build. `test_shared cuda` runs it
 * on the GPU (device memory shared by contexts with streams of their own), exit 77 without
 * one. */
#include "harness.h"
#include "model.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static int32_t backend = SD_BACKEND_CPU;

/* A random 2-layer text encoder in F16, so the CPU backend both packs its matrices (the
 * linear layers' B panels) and widens its vectors: every kind of load-time weight. */
enum { HID = 32, FF = 64, VOCAB = 64, POS = 16, LAYERS = 2, B = 2, T = 12, MAX_W = 64 };

typedef struct {
    sd_weight_t w[MAX_W];
    char names[MAX_W][80];
    uint16_t *data[MAX_W];
    int n;
} table_t;

static void add(table_t *t, const char *name, int64_t d0, int64_t d1) {
    int64_t n = d0 * (d1 ? d1 : 1);
    uint16_t *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = sd_f32_to_f16(rng_uniform(-0.5f, 0.5f));
    snprintf(t->names[t->n], sizeof t->names[t->n], "%s", name);
    t->data[t->n] = d;
    t->w[t->n] = (sd_weight_t){t->names[t->n], SD_DTYPE_F16, d1 ? 2 : 1, {d0, d1}, d};
    t->n++;
}

static void make_table(table_t *t) {
    static const char *lin[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                "self_attn.out_proj"};
    char n[80];
    t->n = 0;
    add(t, "embeddings.token_embedding.weight", VOCAB, HID);
    add(t, "embeddings.position_embedding.weight", POS, HID);
    for (int l = 0; l < LAYERS; l++) {
        for (int i = 0; i < 4; i++) {
            snprintf(n, sizeof n, "encoder.layers.%d.%s.weight", l, lin[i]);
            add(t, n, HID, HID);
            snprintf(n, sizeof n, "encoder.layers.%d.%s.bias", l, lin[i]);
            add(t, n, HID, 0);
        }
        for (int i = 1; i <= 2; i++) {
            snprintf(n, sizeof n, "encoder.layers.%d.layer_norm%d.weight", l, i);
            add(t, n, HID, 0);
            snprintf(n, sizeof n, "encoder.layers.%d.layer_norm%d.bias", l, i);
            add(t, n, HID, 0);
        }
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc1.weight", l);
        add(t, n, FF, HID);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc1.bias", l);
        add(t, n, FF, 0);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc2.weight", l);
        add(t, n, HID, FF);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc2.bias", l);
        add(t, n, HID, 0);
    }
    add(t, "final_layer_norm.weight", HID, 0);
    add(t, "final_layer_norm.bias", HID, 0);
}

static void free_table(table_t *t) {
    for (int i = 0; i < t->n; i++) free(t->data[i]);
    t->n = 0;
}

static sd_clip_config_t config(void) {
    sd_clip_config_t c;
    sd_clip_config_default(&c);
    c.vocab_size = VOCAB;
    c.max_positions = POS;
    c.hidden = HID;
    c.intermediate = FF;
    c.layers = LAYERS;
    c.heads = 4;
    c.eos_id = VOCAB - 1;
    return c;
}

static table_t table;
static int32_t ids_host[B * T];

static sd_ctx_t *new_ctx(sd_ctx_t *share_with) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.backend = backend;
    p.n_threads = 2;
    sd_ctx_t *c = NULL;
    char err[256];
    sd_status_t st = share_with ? sd_ctx_init_shared(share_with, &p, &c, err, sizeof err)
                                : sd_ctx_init(&p, &c, err, sizeof err);
    if (st != SD_STATUS_OK) {
        fprintf(stderr, "creating a context: %s\n", err);
        exit(2);
    }
    return c;
}

static sd_model_t *load(sd_ctx_t *c) {
    sd_clip_config_t cfg = config();
    sd_model_t *m = NULL;
    sd_status_t st = sd_clip_load(c, &cfg, table.w, table.n, &m);
    CHECK(st == SD_STATUS_OK, "load: %s", sd_ctx_last_error(c));
    return m;
}

/* hidden (B, T, HID) then pooled (B, HID) of ids (B, T), with n_extra extra token rows
 * (sd_clip_forward_extra) when extra_host is not NULL, malloc'd; NULL on failure. */
static float *encode_ids(sd_ctx_t *c, sd_model_t *m, const int32_t *ids_in, const float *extra_host,
                         int64_t n_extra) {
    sd_tensor_t *ids = NULL, *extra = NULL, *hidden = NULL, *pooled = NULL;
    float *out = malloc((size_t)(B * T + B) * HID * sizeof(float));
    sd_status_t st = sd_tensor_new(c, SD_DTYPE_I32, 2, (int64_t[]){B, T}, &ids);
    if (st == SD_STATUS_OK) st = sd_tensor_upload(c, ids, ids_in, sizeof ids_host);
    if (st == SD_STATUS_OK && extra_host != NULL)
        st = sd_tensor_new(c, SD_DTYPE_F32, 2, (int64_t[]){n_extra, HID}, &extra);
    if (st == SD_STATUS_OK && extra_host != NULL)
        st = sd_tensor_upload(c, extra, extra_host, (size_t)(n_extra * HID) * sizeof(float));
    if (st == SD_STATUS_OK) st = sd_tensor_new(c, SD_DTYPE_F32, 3, (int64_t[]){B, T, HID}, &hidden);
    if (st == SD_STATUS_OK) st = sd_tensor_new(c, SD_DTYPE_F32, 2, (int64_t[]){B, HID}, &pooled);
    if (st == SD_STATUS_OK)
        st = extra != NULL ? sd_clip_forward_extra(c, m, ids, extra, 0, true, hidden, pooled)
                           : sd_clip_forward(c, m, ids, 0, true, hidden, pooled);
    if (st == SD_STATUS_OK) st = sd_tensor_download(c, hidden, out, sd_tensor_nbytes(hidden));
    if (st == SD_STATUS_OK)
        st = sd_tensor_download(c, pooled, out + B * T * HID, sd_tensor_nbytes(pooled));
    sd_tensor_free(c, ids);
    sd_tensor_free(c, extra);
    sd_tensor_free(c, hidden);
    sd_tensor_free(c, pooled);
    if (st != SD_STATUS_OK) {
        fprintf(stderr, "encode: %s: %s\n", sd_status_string(st), sd_ctx_last_error(c));
        free(out);
        return NULL;
    }
    return out;
}

static float *encode(sd_ctx_t *c, sd_model_t *m) {
    return encode_ids(c, m, ids_host, NULL, 0);
}

static const float *reference;

/* Bit-identical on the CPU, whose kernels are deterministic. On the GPU a difference that
 * sharing causes (a stream reading weights not yet written, another context's buffers) is
 * far larger than the tolerance. */
static bool same_as_reference(sd_ctx_t *c, sd_model_t *m) {
    const int64_t n = (B * T + B) * HID;
    float *got = encode(c, m);
    bool same = got != NULL;
    if (same && backend == SD_BACKEND_CPU) same = memcmp(got, reference, (size_t)n * 4) == 0;
    for (int64_t i = 0; same && backend != SD_BACKEND_CPU && i < n; i++)
        same = fabsf(got[i] - reference[i]) <= 1e-2f * (1 + fabsf(reference[i]));
    free(got);
    return same;
}

typedef struct {
    sd_ctx_t *ctx;
    sd_model_t *model;
    int runs, mismatches;
} runner_t;

static void *run_repeatedly(void *arg) {
    runner_t *r = arg;
    for (int i = 0; i < r->runs; i++)
        if (!same_as_reference(r->ctx, r->model)) r->mismatches++;
    return NULL;
}

/* A second model loaded and freed by one context again and again while others run. */
typedef struct {
    sd_ctx_t *ctx;
    int rounds, failures;
} loader_arg_t;

static void *load_and_free(void *arg) {
    loader_arg_t *a = arg;
    for (int i = 0; i < a->rounds; i++) {
        sd_clip_config_t cfg = config();
        sd_model_t *m = NULL;
        if (sd_clip_load(a->ctx, &cfg, table.w, table.n, &m) != SD_STATUS_OK) {
            a->failures++;
            continue;
        }
        if (!same_as_reference(a->ctx, m)) a->failures++;
        sd_model_free(a->ctx, m);
    }
    return NULL;
}

/* Two contexts run one model on two threads (each call identical to a lone context's),
 * while a third context of the group loads and frees another model. */
static void test_concurrent(void) {
    sd_ctx_t *a = new_ctx(NULL), *b = new_ctx(a), *c = new_ctx(b);
    sd_model_t *m = load(a);
    if (m == NULL) return;
    sd_memory_stats_t sa, sb;
    CHECK_STATUS(sd_ctx_memory_stats(a, &sa), SD_STATUS_OK);
    CHECK_STATUS(sd_ctx_memory_stats(b, &sb), SD_STATUS_OK);
    CHECK(sa.weights_bytes > 0 && sa.weights_bytes == sb.weights_bytes,
          "one copy of the weights, reported by both: %llu, %llu",
          (unsigned long long)sa.weights_bytes, (unsigned long long)sb.weights_bytes);

    runner_t ra = {a, m, 20, 0}, rb = {b, m, 20, 0};
    loader_arg_t lc = {c, 5, 0};
    pthread_t ta, tb, tc;
    pthread_create(&ta, NULL, run_repeatedly, &ra);
    pthread_create(&tb, NULL, run_repeatedly, &rb);
    pthread_create(&tc, NULL, load_and_free, &lc);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_join(tc, NULL);
    CHECK(ra.mismatches == 0 && rb.mismatches == 0, "%d and %d of 20 runs differ", ra.mismatches,
          rb.mismatches);
    CHECK(lc.failures == 0, "%d of %d loads or runs failed", lc.failures, lc.rounds);

    /* Per-context state of a shared model: one graph cache each, kept across calls. */
    sd_graph_cache_t *ga = sd_model_graphs(a, m), *gb = sd_model_graphs(b, m);
    CHECK(ga != NULL && gb != NULL && ga != gb, "a graph cache per context");
    CHECK(sd_model_graphs(a, m) == ga, "the same cache on the next call");
    sd_ctx_free(c);
    sd_ctx_free(b);
    CHECK(same_as_reference(a, m), "the loading context after the others left");
    sd_ctx_free(a); /* frees m (the leak check of `make sanitize` sees it) */
}

/* Any context of the group may go first; the models stay with the rest. */
static void test_lifetimes(void) {
    /* The loading context first. */
    sd_ctx_t *a = new_ctx(NULL), *b = new_ctx(a);
    sd_model_t *m = load(a);
    (void)sd_model_graphs(a, m); /* state of a that its sd_ctx_free must drop */
    sd_ctx_free(a);
    CHECK(same_as_reference(b, m), "the model outlives the context that loaded it");
    sd_memory_stats_t s;
    CHECK_STATUS(sd_ctx_memory_stats(b, &s), SD_STATUS_OK);
    CHECK(s.weights_bytes > 0, "the weights are still held");
    sd_model_free(b, m); /* through a context that did not load it */
    CHECK_STATUS(sd_ctx_memory_stats(b, &s), SD_STATUS_OK);
    CHECK(s.weights_bytes == 0, "%llu bytes of weights after freeing the only model",
          (unsigned long long)s.weights_bytes);
    sd_ctx_free(b);

    /* A model loaded on the joining context, run by the first; the joiner leaves first and
     * the first frees it with itself. */
    a = new_ctx(NULL);
    b = new_ctx(a);
    m = load(b);
    CHECK(same_as_reference(a, m), "a model loaded by the second context");
    sd_ctx_free(b);
    CHECK(same_as_reference(a, m), "after the loader left");
    sd_ctx_free(a);
}

static void test_outside_the_group(void) {
    sd_ctx_t *a = new_ctx(NULL), *other = new_ctx(NULL);
    sd_model_t *m = load(a);
    sd_tensor_t *ids = NULL, *hidden = NULL;
    CHECK_STATUS(sd_tensor_new(other, SD_DTYPE_I32, 2, (int64_t[]){B, T}, &ids), SD_STATUS_OK);
    CHECK_STATUS(sd_tensor_upload(other, ids, ids_host, sizeof ids_host), SD_STATUS_OK);
    CHECK_STATUS(sd_tensor_new(other, SD_DTYPE_F32, 3, (int64_t[]){B, T, HID}, &hidden),
                 SD_STATUS_OK);
    CHECK_STATUS(sd_clip_forward(other, m, ids, 0, true, hidden, NULL), SD_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(sd_ctx_last_error(other), "does not share models with") != NULL, "%s",
          sd_ctx_last_error(other));
    sd_model_free(other, m); /* refused: the model stays */
    CHECK(same_as_reference(a, m), "still usable in its own group");

    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.backend = backend == SD_BACKEND_CPU ? SD_BACKEND_CUDA : SD_BACKEND_CPU;
    sd_ctx_t *c = NULL;
    char err[256], want[64];
    snprintf(want, sizeof want, "the context to share with runs on backend %d", (int)backend);
    CHECK_STATUS(sd_ctx_init_shared(a, &p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    CHECK(c == NULL && strstr(err, want) != NULL, "%s", err);
    if (backend == SD_BACKEND_CUDA) { /* weights are memory of one device */
        p.backend = SD_BACKEND_CUDA;
        p.device = 1;
        CHECK_STATUS(sd_ctx_init_shared(a, &p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(err, "device 0") != NULL, "%s", err);
    }
    CHECK_STATUS(sd_ctx_init_shared(NULL, &p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    sd_ctx_free(other);
    sd_ctx_free(a);
}

/* sd_model_set_weights: a model whose GEMM weights (a packed linear, the MLP's) are
 * replaced in place by F32 values computes what a model loaded with those values computes,
 * through every context of the group, and the originals put back restore the first result;
 * bad entries change nothing. */
static void test_set_weights(void) {
    sd_ctx_t *a = new_ctx(NULL), *b = new_ctx(a);
    sd_model_t *m = load(a);
    if (m == NULL) return;
    /* Two of the table's matrices with new F32 values. */
    static const char *names[] = {"encoder.layers.0.self_attn.q_proj.weight",
                                  "encoder.layers.1.mlp.fc1.weight"};
    enum { N = 2 };
    sd_weight_t repl[N], orig[N];
    float *vals[N];
    table_t other = table;
    for (int i = 0; i < N; i++) {
        int k = 0;
        while (strcmp(table.names[k], names[i]) != 0) k++;
        orig[i] = table.w[k];
        int64_t n = orig[i].shape[0] * orig[i].shape[1];
        vals[i] = malloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++) vals[i][j] = rng_uniform(-0.5f, 0.5f);
        repl[i] = orig[i];
        repl[i].dtype = SD_DTYPE_F32;
        repl[i].data = vals[i];
        other.w[k] = repl[i];
    }
    sd_clip_config_t cfg = config();
    sd_model_t *m2 = NULL;
    CHECK_STATUS(sd_clip_load(a, &cfg, other.w, other.n, &m2), SD_STATUS_OK);
    float *want = m2 ? encode(a, m2) : NULL;
    float *before = encode(b, m); /* b's state for m exists before the change */
    CHECK(want != NULL && before != NULL, "reference forwards");
    const size_t bytes = (size_t)(B * T + B) * HID * sizeof(float);

    sd_memory_stats_t ms;
    CHECK_STATUS(sd_ctx_memory_stats(a, &ms), SD_STATUS_OK);
    const uint64_t f16_bytes = ms.weights_bytes;
    CHECK_STATUS(sd_model_set_weights(a, m, repl, N), SD_STATUS_OK);
    /* On the CPU the two weights are now packed in F32: 2 more bytes per element. */
    CHECK_STATUS(sd_ctx_memory_stats(a, &ms), SD_STATUS_OK);
    CHECK(backend != SD_BACKEND_CPU || ms.weights_bytes > f16_bytes,
          "%llu bytes of weights with F32 replacements, %llu before",
          (unsigned long long)ms.weights_bytes, (unsigned long long)f16_bytes);
    float *got_a = encode(a, m), *got_b = encode(b, m);
    bool close_a = got_a && want, close_b = got_b && want;
    for (int64_t i = 0; close_a && close_b && i < (int64_t)(bytes / 4); i++) {
        float tol = backend == SD_BACKEND_CPU ? 0 : 1e-2f * (1 + fabsf(want[i]));
        close_a = fabsf(got_a[i] - want[i]) <= tol;
        close_b = fabsf(got_b[i] - want[i]) <= tol;
    }
    CHECK(close_a && close_b, "replaced weights: as a model loaded with them (a %d, b %d)", close_a,
          close_b);
    CHECK(before && got_a && memcmp(before, got_a, bytes) != 0,
          "the replacement changed the output");

    /* Invalid entries: nothing changes. */
    sd_weight_t bad[2] = {orig[0], repl[1]};
    bad[1].name = "encoder.layers.9.mlp.fc1.weight";
    CHECK_STATUS(sd_model_set_weights(a, m, bad, 2), SD_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(sd_ctx_last_error(a), "has no weight encoder.layers.9") != NULL, "%s",
          sd_ctx_last_error(a));
    bad[1] = repl[1];
    bad[1].shape[0]++;
    CHECK_STATUS(sd_model_set_weights(a, m, bad, 2), SD_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(sd_ctx_last_error(a), "loaded as (64, 32)") != NULL, "%s", sd_ctx_last_error(a));
    bad[1] = repl[1];
    bad[1].data = NULL;
    CHECK_STATUS(sd_model_set_weights(a, m, bad, 2), SD_STATUS_INVALID_ARGUMENT);
    bad[1] = repl[1];
    bad[1].dtype = SD_DTYPE_I32;
    CHECK_STATUS(sd_model_set_weights(a, m, bad, 2), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_model_set_weights(a, m, NULL, 1), SD_STATUS_INVALID_ARGUMENT);
    float *still = encode(a, m);
    CHECK(still && got_a && memcmp(still, got_a, bytes) == 0, "refused calls change nothing");

    /* What the model copies: packed matrices and widened vectors; on the CPU not an F32
     * vector or the token table, read in place. */
    bool copied = false;
    CHECK_STATUS(sd_model_weight_copied(a, m, names[0], SD_DTYPE_F32, &copied), SD_STATUS_OK);
    CHECK(copied, "a packed matrix is copied");
    CHECK_STATUS(sd_model_weight_copied(b, m, "final_layer_norm.weight", SD_DTYPE_F16, &copied),
                 SD_STATUS_OK);
    CHECK(copied, "an F16 vector is copied");
    CHECK_STATUS(sd_model_weight_copied(b, m, "final_layer_norm.weight", SD_DTYPE_F32, &copied),
                 SD_STATUS_OK);
    CHECK(copied == (backend != SD_BACKEND_CPU), "an F32 vector: copied %d", copied);
    CHECK_STATUS(
        sd_model_weight_copied(a, m, "embeddings.token_embedding.weight", SD_DTYPE_F16, &copied),
        SD_STATUS_OK);
    CHECK(copied == (backend != SD_BACKEND_CPU), "the token table: copied %d", copied);
    CHECK_STATUS(
        sd_model_weight_copied(a, m, "encoder.layers.9.mlp.fc1.weight", SD_DTYPE_F32, &copied),
        SD_STATUS_INVALID_ARGUMENT);

    /* Another group's context. */
    sd_ctx_t *outsider = new_ctx(NULL);
    CHECK_STATUS(sd_model_set_weights(outsider, m, orig, N), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_model_weight_copied(outsider, m, names[0], SD_DTYPE_F32, &copied),
                 SD_STATUS_INVALID_ARGUMENT);
    sd_ctx_free(outsider);

    /* F32 again with other values: the CPU repacks in place; the same results as a model
     * loaded with them. */
    for (int i = 0; i < N; i++)
        for (int64_t j = 0; j < repl[i].shape[0] * repl[i].shape[1]; j++) vals[i][j] *= -0.5f;
    sd_model_t *m3 = NULL;
    CHECK_STATUS(sd_clip_load(a, &cfg, other.w, other.n, &m3), SD_STATUS_OK);
    float *want3 = m3 ? encode(a, m3) : NULL;
    CHECK_STATUS(sd_model_set_weights(a, m, repl, N), SD_STATUS_OK);
    float *got3 = encode(b, m);
    bool close3 = got3 && want3;
    for (int64_t i = 0; close3 && i < (int64_t)(bytes / 4); i++)
        close3 = fabsf(got3[i] - want3[i]) <=
                 (backend == SD_BACKEND_CPU ? 0 : 1e-2f * (1 + fabsf(want3[i])));
    CHECK(close3, "replaced again with F32 values");
    free(want3);
    free(got3);
    sd_model_free(a, m3);

    CHECK_STATUS(sd_ctx_memory_stats(a, &ms), SD_STATUS_OK);
    const uint64_t f32_bytes = ms.weights_bytes;
    CHECK_STATUS(sd_model_set_weights(b, m, orig, N), SD_STATUS_OK);
    CHECK(same_as_reference(a, m) && same_as_reference(b, m), "the originals restore the model");
    /* On the CPU the F16 originals went into the F32 packs the replacements made. */
    CHECK_STATUS(sd_ctx_memory_stats(a, &ms), SD_STATUS_OK);
    CHECK(backend != SD_BACKEND_CPU || ms.weights_bytes == f32_bytes,
          "%llu bytes of weights, %llu with the F32 replacements",
          (unsigned long long)ms.weights_bytes, (unsigned long long)f32_bytes);
    free(want);
    free(before);
    free(got_a);
    free(got_b);
    free(still);
    for (int i = 0; i < N; i++) free(vals[i]);
    sd_model_free(a, m2);
    sd_ctx_free(b);
    sd_ctx_free(a);
}

/* sd_model_merge_weight: on the CPU a GEMM weight given base + up·down computes what a model
 * loaded with those values (merged in double, rounded to F32) computes, through every context
 * of the group, and the base put back with sd_model_set_weights restores the first result; a
 * weight the backend does not merge (the token table; every weight on CUDA) and bad calls
 * change nothing. */
static void test_merge_weight(void) {
    sd_ctx_t *a = new_ctx(NULL), *b = new_ctx(a);
    sd_model_t *m = load(a);
    if (m == NULL) return;
    static const char *name = "encoder.layers.1.mlp.fc1.weight"; /* FF x HID */
    enum { R = 3 };
    int k = 0;
    while (strcmp(table.names[k], name) != 0) k++;
    const sd_weight_t base = table.w[k];
    float up[FF * R], down[R * HID], merged[FF * HID];
    for (int i = 0; i < FF * R; i++) up[i] = rng_uniform(-0.5f, 0.5f);
    for (int i = 0; i < R * HID; i++) down[i] = rng_uniform(-0.5f, 0.5f);
    for (int o = 0; o < FF; o++)
        for (int j = 0; j < HID; j++) {
            double v = sd_f16_to_f32(table.data[k][o * HID + j]);
            for (int d = 0; d < R; d++) v += (double)up[o * R + d] * down[d * HID + j];
            merged[o * HID + j] = (float)v;
        }
    table_t other = table;
    other.w[k].dtype = SD_DTYPE_F32;
    other.w[k].data = merged;
    sd_clip_config_t cfg = config();
    sd_model_t *m2 = NULL;
    CHECK_STATUS(sd_clip_load(a, &cfg, other.w, other.n, &m2), SD_STATUS_OK);
    float *want = m2 ? encode(a, m2) : NULL;
    const int64_t n = (B * T + B) * HID;

    bool done = true;
    CHECK_STATUS(sd_model_merge_weight(a, m, &base, up, down, R, &done), SD_STATUS_OK);
    CHECK(done == (backend == SD_BACKEND_CPU), "merged by the backend: %d", done);
    if (done) {
        float *got_a = encode(a, m), *got_b = encode(b, m);
        bool close = want && got_a && got_b;
        for (int64_t i = 0; close && i < n; i++)
            close =
                fabsf(got_a[i] - want[i]) <= 1e-5f * (1 + fabsf(want[i])) && got_b[i] == got_a[i];
        CHECK(close, "merged: as a model loaded with the merged values, in both contexts");
        CHECK(got_a && memcmp(got_a, reference, (size_t)n * 4) != 0,
              "the merge changed the output");
        free(got_a);
        free(got_b);
    } else {
        CHECK(same_as_reference(a, m), "not merged: unchanged");
    }

    /* Bad calls and weights the backend does not merge change nothing. */
    sd_weight_t bad = base;
    bad.name = "encoder.layers.9.mlp.fc1.weight";
    CHECK_STATUS(sd_model_merge_weight(a, m, &bad, up, down, R, &done), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_model_merge_weight(a, m, &base, up, down, 0, &done),
                 SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_model_merge_weight(a, m, &base, NULL, down, R, &done),
                 SD_STATUS_INVALID_ARGUMENT);
    bad = base;
    bad.shape[1]++;
    CHECK_STATUS(sd_model_merge_weight(a, m, &bad, up, down, R, &done), SD_STATUS_INVALID_ARGUMENT);
    float *before = encode(a, m);
    done = true;
    CHECK_STATUS(sd_model_merge_weight(a, m, &table.w[0], up, down, 1, &done), SD_STATUS_OK);
    CHECK(!done, "the token table is not merged by the backend");
    float *after = encode(a, m);
    CHECK(before && after && memcmp(before, after, (size_t)n * 4) == 0,
          "refused and declined merges change nothing");
    sd_ctx_t *outsider = new_ctx(NULL);
    CHECK_STATUS(sd_model_merge_weight(outsider, m, &base, up, down, R, &done),
                 SD_STATUS_INVALID_ARGUMENT);
    sd_ctx_free(outsider);

    CHECK_STATUS(sd_model_set_weights(b, m, &base, 1), SD_STATUS_OK);
    CHECK(same_as_reference(a, m) && same_as_reference(b, m), "the base restores the model");
    free(want);
    free(before);
    free(after);
    sd_model_free(a, m2);
    sd_ctx_free(b);
    sd_ctx_free(a);
}

/* Extra token rows by definition: ids VOCAB + k with extra row k set to the token table's
 * rows of the ids they replace give the plain forward's output; other rows change it; an id
 * past the extra rows is refused. */
static void test_extra_rows(void) {
    sd_ctx_t *c = new_ctx(NULL);
    sd_model_t *m = load(c);
    if (m == NULL) return;
    enum { E = 3 };
    static const int subst[E] = {1, 5, T + 2}; /* positions given extra ids, both rows */
    float extra[E * HID];
    int32_t ids[B * T];
    memcpy(ids, ids_host, sizeof ids);
    const uint16_t *tok = table.data[0]; /* embeddings.token_embedding.weight, F16 */
    for (int k = 0; k < E; k++) {
        for (int j = 0; j < HID; j++)
            extra[k * HID + j] = sd_f16_to_f32(tok[(size_t)ids[subst[k]] * HID + j]);
        ids[subst[k]] = VOCAB + k;
    }
    const size_t bytes = (size_t)(B * T + B) * HID * sizeof(float);
    float *got = encode_ids(c, m, ids, extra, E);
    bool close = got != NULL;
    for (int64_t i = 0; close && i < (int64_t)(bytes / 4); i++)
        close = fabsf(got[i] - reference[i]) <=
                (backend == SD_BACKEND_CPU ? 1e-6f : 1e-2f) * (1 + fabsf(reference[i]));
    CHECK(close, "extra rows equal to the token rows they stand for: the plain output");
    for (int j = 0; j < HID; j++) extra[HID + j] = -extra[HID + j];
    float *other = encode_ids(c, m, ids, extra, E);
    CHECK(other && memcmp(other, reference, bytes) != 0, "other extra rows change the output");
    ids[0] = VOCAB + E;
    float *bad = encode_ids(c, m, ids, extra, E);
    CHECK(bad == NULL && strstr(sd_ctx_last_error(c), "extra rows") != NULL, "%s",
          sd_ctx_last_error(c));
    free(got);
    free(other);
    free(bad);
    sd_model_free(c, m);
    sd_ctx_free(c);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "cuda") == 0) {
        char why[256];
        if (!sd_backend_available(SD_BACKEND_CUDA, why, sizeof why)) {
            fprintf(stderr, "test_shared cuda: skipped: %s\n", why);
            return 77;
        }
        backend = SD_BACKEND_CUDA;
    }
    rng_seed(7);
    make_table(&table);
    for (int i = 0; i < B * T; i++) ids_host[i] = (int32_t)(rng_uniform(0, 1) * (VOCAB - 1));
    ids_host[T - 3] = VOCAB - 1; /* an eos in row 0; row 1 has none */
    sd_ctx_t *lone = new_ctx(NULL);
    sd_model_t *m = load(lone);
    float *ref = m ? encode(lone, m) : NULL;
    sd_ctx_free(lone);
    if (ref == NULL) return test_summary("test_shared");
    reference = ref;
    test_concurrent();
    test_lifetimes();
    test_outside_the_group();
    test_set_weights();
    test_merge_weight();
    test_extra_rows();
    free(ref);
    free_table(&table);
    return test_summary("test_shared");
}
