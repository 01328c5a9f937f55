/*
 * The runtime core: contexts, errors, cancellation, tensors, the arena, the thread pool and
 * its size (the CPUs the process may use), half-precision conversion, and every op's
 * argument validation (bad input returns the right status and message, never aborts).
 */
#define _GNU_SOURCE /* sched_getaffinity, pthread_setaffinity_np */
#include "harness.h"

#include "cpu.h"
#include "graph-cache.h"

#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static sd_ctx_t *ctx;

static void test_status_and_params(void) {
    const sd_status_t codes[] = {
        SD_STATUS_OK,          SD_STATUS_INVALID_ARGUMENT, SD_STATUS_IO,
        SD_STATUS_BAD_MODEL,   SD_STATUS_OUT_OF_MEMORY,    SD_STATUS_DEVICE,
        SD_STATUS_UNSUPPORTED, SD_STATUS_CANCELLED,        SD_STATUS_INTERNAL};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        CHECK(strcmp(sd_status_string(codes[i]), "unknown status") != 0, "code %d", (int)codes[i]);
    CHECK(strcmp(sd_status_string(-1000), "unknown status") == 0, "unknown code");
    CHECK(sd_abi_version() == SD_ABI_VERSION, "abi");
    CHECK(sd_sizeof_ctx_params() == sizeof(sd_ctx_params_t), "sizeof");

    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    sd_ctx_t *c = (sd_ctx_t *)0x1;
    char err[256];
    p.n_threads = -1;
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    CHECK(c == NULL && strstr(err, "n_threads") != NULL, "err: %s", err);
    sd_ctx_params_default(&p);
    p.backend = 99;
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    p.backend = SD_BACKEND_CUDA;
    sd_status_t st = sd_ctx_init(&p, &c, err, sizeof err);
#ifdef SD_WITH_CUDA
    CHECK(st == SD_STATUS_OK || st == SD_STATUS_DEVICE, "cuda init: %s", err);
    sd_ctx_free(c);
#else
    CHECK(st == SD_STATUS_UNSUPPORTED && strstr(err, "CUDA"), "cuda in a CPU build: %d %s", st,
          err);
    CHECK(!sd_backend_available(SD_BACKEND_CUDA, err, sizeof err), "cuda available");
#endif
    CHECK(sd_backend_available(SD_BACKEND_CPU, NULL, 0), "cpu available");
    CHECK_STATUS(sd_ctx_init(NULL, &c, err, sizeof err), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_ctx_init(&p, NULL, NULL, 0), SD_STATUS_INVALID_ARGUMENT);
    sd_ctx_free(NULL); /* no-op */
    CHECK(sd_ctx_activation_dtype(NULL) == -1, "activation dtype of NULL");
}

typedef struct {
    int count;
    int last_level;
    char last[256];
} log_sink_t;

static void log_cb(int32_t level, const char *msg, void *user) {
    log_sink_t *s = user;
    s->count++;
    s->last_level = level;
    snprintf(s->last, sizeof s->last, "%s", msg);
}

static void test_errors_cancel_log(void) {
    log_sink_t sink = {0};
    sd_ctx_set_log(ctx, log_cb, &sink);
    int64_t shape[2] = {2, 3};
    sd_tensor_t *t = NULL;
    CHECK_STATUS(sd_tensor_new(ctx, SD_DTYPE_F32, 2, shape, &t), SD_STATUS_OK);
    float buf[6] = {0};
    CHECK_STATUS(sd_tensor_upload(ctx, t, buf, 5), SD_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(sd_ctx_last_error(ctx), "5 bytes") != NULL, "msg: %s", sd_ctx_last_error(ctx));
    CHECK(sink.count > 0 && sink.last_level == SD_LOG_DEBUG, "log callback called");
    sd_ctx_set_log(ctx, NULL, NULL);

    sd_ctx_cancel(ctx);
    CHECK_STATUS(sd_op_activation(ctx, t, t, SD_ACT_SILU), SD_STATUS_CANCELLED);
    CHECK_STATUS(sd_tensor_upload(ctx, t, buf, sizeof buf), SD_STATUS_CANCELLED);
    sd_ctx_clear_cancel(ctx);
    CHECK_STATUS(sd_tensor_upload(ctx, t, buf, sizeof buf), SD_STATUS_OK);
    CHECK_STATUS(sd_op_activation(ctx, t, t, SD_ACT_SILU), SD_STATUS_OK);

    int64_t bad[2] = {2, 0}, huge[4] = {1 << 20, 1 << 20, 1 << 20, 1};
    sd_tensor_t *u = (sd_tensor_t *)0x1;
    CHECK_STATUS(sd_tensor_new(ctx, SD_DTYPE_F32, 2, bad, &u), SD_STATUS_INVALID_ARGUMENT);
    CHECK(u == NULL, "out cleared");
    CHECK_STATUS(sd_tensor_new(ctx, SD_DTYPE_F32, 4, huge, &u), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_tensor_new(ctx, 42, 2, shape, &u), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_tensor_new(ctx, SD_DTYPE_F32, 5, shape, &u), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_tensor_new(ctx, SD_DTYPE_F32, 2, NULL, &u), SD_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(sd_tensor_download(ctx, t, NULL, 24), SD_STATUS_INVALID_ARGUMENT);
    CHECK(sd_tensor_dim(t, 1) == 3 && sd_tensor_dim(t, 2) == 0 && sd_tensor_ndim(t) == 2, "dims");

    sd_memory_stats_t ms;
    CHECK_STATUS(sd_ctx_memory_stats(ctx, &ms), SD_STATUS_OK);
    CHECK(ms.tensors_bytes >= 24, "tensor bytes %llu", (unsigned long long)ms.tensors_bytes);
    /* t is left for sd_ctx_free to release. */
}

/* Every op rejects bad arguments with SD_STATUS_INVALID_ARGUMENT and a message. */
static void test_op_validation(void) {
    int64_t s4[4] = {1, 4, 5, 5}, s4b[4] = {1, 3, 5, 5}, w4[4] = {6, 4, 3, 3}, o4[4] = {1, 6, 5, 5};
    int64_t s3[3] = {1, 7, 8}, s3k[3] = {1, 9, 8}, s3c[3] = {1, 7, 6}, s2[2] = {7, 8}, s1[1] = {5};
    /* Filled, because the calls that pass validation run (valgrind checks what they read). */
    sd_tensor_t *x = make_random(ctx, SD_DTYPE_F32, 4, s4);
    sd_tensor_t *xb = make_random(ctx, SD_DTYPE_F32, 4, s4b);
    sd_tensor_t *w = make_random(ctx, SD_DTYPE_F16, 4, w4);
    sd_tensor_t *o = make_empty(ctx, 4, o4);
    sd_tensor_t *q = make_random(ctx, SD_DTYPE_F32, 3, s3);
    sd_tensor_t *k = make_random(ctx, SD_DTYPE_F32, 3, s3k);
    sd_tensor_t *qc = make_random(ctx, SD_DTYPE_F32, 3, s3c);
    sd_tensor_t *t2 = make_random(ctx, SD_DTYPE_F32, 2, s2);
    sd_tensor_t *v5 = make_random(ctx, SD_DTYPE_F32, 1, s1);
    sd_tensor_t *i2 = make_random(ctx, SD_DTYPE_I32, 2, s2);
    sd_conv2d_params_t cp;
    sd_conv2d_params_default(&cp);
    cp.pad_top = cp.pad_bottom = cp.pad_left = cp.pad_right = 1;
    const sd_status_t INV = SD_STATUS_INVALID_ARGUMENT;

    CHECK_STATUS(sd_op_conv2d(NULL, o, x, w, NULL, NULL, &cp), INV);
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, NULL, NULL, &cp), SD_STATUS_OK);
    CHECK_STATUS(sd_op_conv2d(ctx, NULL, x, w, NULL, NULL, &cp), INV);
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, NULL, NULL, NULL), INV);
    CHECK_STATUS(sd_op_conv2d(ctx, o, xb, w, NULL, NULL, &cp), INV); /* Cin mismatch */
    CHECK(strstr(sd_ctx_last_error(ctx), "conv2d: w") != NULL, "msg: %s", sd_ctx_last_error(ctx));
    CHECK_STATUS(sd_op_conv2d(ctx, x, x, w, NULL, NULL, &cp), INV); /* wrong out shape */
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, v5, NULL, &cp), INV);   /* bias (5) for 6 channels */
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, NULL, x, &cp), INV);    /* residual shape */
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, x, NULL, NULL, &cp), INV); /* weights shape */
    CHECK_STATUS(sd_op_conv2d(ctx, o, w, w, NULL, NULL, &cp), INV); /* f16 input */
    cp.stride_h = 0;
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, NULL, NULL, &cp), INV);
    sd_conv2d_params_default(&cp); /* no padding: 5x5 input, 3x3 kernel -> 3x3 out, not 5x5 */
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, NULL, NULL, &cp), INV);
    cp.pad_left = -1;
    CHECK_STATUS(sd_op_conv2d(ctx, o, x, w, NULL, NULL, &cp), INV);

    sd_linear_params_t lp;
    sd_linear_params_default(&lp);
    CHECK_STATUS(sd_op_linear(ctx, q, q, t2, NULL, NULL, &lp), INV);  /* out aliases x */
    CHECK_STATUS(sd_op_linear(ctx, q, qc, t2, NULL, NULL, &lp), INV); /* K mismatch */
    CHECK_STATUS(sd_op_linear(ctx, qc, q, t2, NULL, NULL, &lp), INV); /* N mismatch */
    lp.in_layout = 7;
    CHECK_STATUS(sd_op_linear(ctx, k, q, t2, NULL, NULL, &lp), INV);

    CHECK_STATUS(sd_op_group_norm(ctx, x, x, NULL, NULL, 3, 1e-5f, false), INV); /* 4 % 3 */
    CHECK_STATUS(sd_op_group_norm(ctx, x, x, NULL, NULL, 0, 1e-5f, false), INV);
    CHECK_STATUS(sd_op_group_norm(ctx, x, x, NULL, NULL, 2, 0.0f, false), INV);
    CHECK_STATUS(sd_op_group_norm(ctx, x, x, v5, NULL, 2, 1e-5f, false), INV);
    CHECK_STATUS(sd_op_group_norm(ctx, o, x, NULL, NULL, 2, 1e-5f, false), INV);
    CHECK_STATUS(sd_op_group_norm(ctx, x, x, NULL, NULL, 2, NAN, false), INV);
    CHECK_STATUS(sd_op_layer_norm(ctx, q, q, v5, NULL, 1e-5f), INV);
    CHECK_STATUS(sd_op_layer_norm(ctx, q, k, NULL, NULL, 1e-5f), INV);

    sd_attention_params_t ap;
    sd_attention_params_default(&ap);
    ap.heads = 3; /* 8 % 3 */
    CHECK_STATUS(sd_op_attention(ctx, o, q, k, k, &ap), INV);
    ap.heads = 3;
    CHECK_STATUS(sd_op_attention(ctx, qc, q, k, k, &ap), INV);
    ap.heads = 2;
    CHECK_STATUS(sd_op_attention(ctx, q, q, k, k, &ap), INV); /* out aliases q */
    ap.causal = 1;
    sd_tensor_t *oq = make_empty(ctx, 3, s3);
    CHECK_STATUS(sd_op_attention(ctx, oq, q, k, k, &ap), INV); /* causal needs Tq == Tk */
    ap.causal = 0;
    CHECK_STATUS(sd_op_attention(ctx, oq, q, k, k, &ap), SD_STATUS_OK);
    CHECK_STATUS(sd_op_attention(ctx, oq, q, k, qc, &ap), INV);
    ap.scale = -1;
    CHECK_STATUS(sd_op_attention(ctx, oq, q, k, k, &ap), INV);

    CHECK_STATUS(sd_op_activation(ctx, q, q, SD_ACT_COUNT), INV);
    CHECK_STATUS(sd_op_activation(ctx, q, k, SD_ACT_SILU), INV);
    CHECK_STATUS(sd_op_geglu(ctx, q, q), INV);
    CHECK_STATUS(sd_op_upsample_nearest(ctx, x, x), INV);
    CHECK_STATUS(sd_op_add(ctx, q, q, k), INV);
    CHECK_STATUS(sd_op_add(ctx, q, q, v5), INV);
    CHECK_STATUS(sd_op_add(ctx, q, q, t2), SD_STATUS_OK); /* (7, 8) suffix of (1, 7, 8) */
    CHECK_STATUS(sd_op_mul(ctx, q, i2, t2), INV);         /* i32 input */
    CHECK_STATUS(sd_op_concat(ctx, x, x, xb), INV);
    CHECK_STATUS(sd_op_concat(ctx, o, xb, x), INV); /* 3 + 4 != 6 */

    sd_timestep_embedding_params_t tp;
    sd_timestep_embedding_params_default(&tp);
    CHECK_STATUS(sd_op_timestep_embedding(ctx, t2, v5, &tp), INV); /* N 7 vs 5 */
    tp.max_period = 0;
    CHECK_STATUS(sd_op_timestep_embedding(ctx, t2, v5, &tp), INV);
    CHECK_STATUS(sd_op_embedding(ctx, q, t2, t2), INV); /* f32 ids */
    CHECK_STATUS(sd_op_embedding(ctx, q, i2, t2),
                 SD_STATUS_INVALID_ARGUMENT); /* out (1,7,8) vs (7,8,8) */
    sd_tensor_free(ctx, oq);
    /* The rest is freed by sd_ctx_free. */
}

static void test_half(void) {
    int mismatches = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sd_f16_to_f32((uint16_t)h);
        uint16_t back = sd_f32_to_f16(f);
        bool nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff);
        if (nan ? !isnan(f) || ((back >> 10) & 0x1f) != 0x1f || !(back & 0x3ff) : back != h)
            mismatches++;
    }
    CHECK(mismatches == 0, "%d f16 values do not round-trip", mismatches);
    /* Rounding to nearest even, overflow, underflow, subnormals. */
    CHECK(sd_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00, "tie rounds to even (down)");
    CHECK(sd_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02, "tie rounds to even (up)");
    CHECK(sd_f32_to_f16(65520.0f) == 0x7c00 && sd_f32_to_f16(65519.0f) == 0x7bff, "overflow");
    CHECK(sd_f32_to_f16(5.96e-8f) == 0x0001 && sd_f32_to_f16(2.0e-8f) == 0, "subnormal / zero");
    CHECK(sd_f16_to_f32(0x0001) == 5.9604644775390625e-08f, "smallest subnormal");
    CHECK(sd_bf16_to_f32(sd_f32_to_bf16(1.00390625f)) == 1.0f, "bf16 tie to even");
    CHECK(sd_bf16_to_f32(sd_f32_to_bf16(3.0f)) == 3.0f, "bf16 exact");
}

static void test_arena(void) {
    sd_arena_t a;
    sd_arena_init(&a, sd_ctx_backend_ptr(ctx), 64, 1 << 20);
    void *p1 = sd_arena_alloc(&a, 1000), *p2 = sd_arena_alloc(&a, 5000),
         *p3 = sd_arena_alloc(&a, 70);
    CHECK(p1 && p2 && p3 && ((uintptr_t)p2 % 64) == 0, "allocations aligned");
    CHECK(a.n_chunks == 1 && a.in_use == 1024 + 5056 + 128, "in use %zu", a.in_use);
    memset(p2, 1, 5000);
    sd_arena_free(&a, p2);
    void *p4 = sd_arena_alloc(&a, 4000); /* best fit reuses p2's block */
    CHECK(p4 == p2, "reuse");
    sd_arena_free(&a, p1), sd_arena_free(&a, p4), sd_arena_free(&a, p3);
    CHECK(a.in_use == 0 && a.chunks[0].n_blocks == 1, "coalesced: %d blocks", a.chunks[0].n_blocks);
    size_t peak = a.peak;
    /* A request larger than the chunk size gets its own chunk; the same sequence of requests
     * again yields the same addresses and no new memory. */
    void *big1 = sd_arena_alloc(&a, 3 << 20), *small1 = sd_arena_alloc(&a, 100);
    sd_arena_free(&a, big1), sd_arena_free(&a, small1);
    size_t reserved = a.reserved;
    void *big2 = sd_arena_alloc(&a, 3 << 20), *small2 = sd_arena_alloc(&a, 100);
    CHECK(big1 == big2 && small1 == small2 && a.reserved == reserved, "deterministic");
    CHECK(a.peak >= peak, "peak");
    sd_arena_free(&a, big2), sd_arena_free(&a, small2);
    /* A request no free block fits replaces the wholly idle chunks by one of their joint
     * size: the reserved memory stays at the largest working set, not the sum of them. */
    CHECK(a.n_chunks == 2 && a.reserved == (4 << 20), "two idle chunks, %zu bytes", a.reserved);
    void *bigger = sd_arena_alloc(&a, 3 << 20 | 1 << 19);
    CHECK(bigger != NULL && a.n_chunks == 1 && a.reserved == (4 << 20),
          "merged: %d chunks, %zu bytes", a.n_chunks, a.reserved);
    void *rest = sd_arena_alloc(&a, 1 << 19); /* what is left of the merged chunk */
    CHECK(rest != NULL && a.n_chunks == 1, "the merged chunk's rest is used");
    sd_arena_free(&a, bigger), sd_arena_free(&a, rest);
    sd_arena_trim(&a);
    CHECK(a.n_chunks == 0 && a.reserved == 0, "trimmed");
    sd_arena_destroy(&a);
}

typedef struct {
    _Atomic int64_t sum;
    _Atomic int hits[64];
} pool_job_t;

static void pool_task(void *arg, int64_t task, int thread) {
    pool_job_t *j = arg;
    atomic_fetch_add(&j->sum, task);
    atomic_fetch_add(&j->hits[task % 64], 1);
    (void)thread;
}

static void test_pool(void) {
    for (int threads = 1; threads <= 4; threads++) {
        sd_pool_t *pool = sd_pool_create(threads);
        CHECK(pool != NULL, "pool");
        for (int rep = 0; rep < 50; rep++) {
            pool_job_t job;
            memset(&job, 0, sizeof job);
            int64_t n = 1 + rep * 37;
            sd_pool_run(pool, n, pool_task, &job);
            CHECK(job.sum == n * (n - 1) / 2, "threads %d n %lld sum %lld", threads, (long long)n,
                  (long long)job.sum);
        }
        sd_pool_destroy(pool);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Many small jobs on a pool with more threads than CPUs: the caller must not wait for
 * workers that have not been scheduled yet, and waiting workers must give the CPU up (a
 * pool that spins for milliseconds per job takes seconds here). */
static void test_pool_oversubscribed(void) {
    cpu_set_t saved, one;
    if (pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0) return;
    int cpu = 0;
    while (!CPU_ISSET(cpu, &saved)) cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0, "pin to one CPU");
    sd_pool_t *pool = sd_pool_create(4); /* workers inherit the one-CPU mask */
    CHECK(pool != NULL, "pool");
    enum { JOBS = 2000 };
    int64_t bad = 0;
    const double t0 = now_s();
    for (int rep = 0; rep < JOBS; rep++) {
        pool_job_t job;
        memset(&job, 0, sizeof job);
        sd_pool_run(pool, 4, pool_task, &job);
        bad += job.sum != 6;
    }
    const double dt = now_s() - t0;
    sd_pool_destroy(pool);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    CHECK(bad == 0, "%lld jobs with a wrong sum", (long long)bad);
    CHECK(dt < 1.0, "%d jobs of 4 threads on one CPU took %.2f s", JOBS, dt);
}

/* n_threads is capped at the CPUs the process may use: 0 means that many, more is clamped
 * with a warning (delivered to the log callback set after sd_ctx_init). */
static void test_thread_cap(void) {
    const int avail = sd_cpu_available();
    cpu_set_t set;
    CPU_ZERO(&set);
    CHECK(sched_getaffinity(0, sizeof set, &set) == 0, "sched_getaffinity");
    CHECK(avail >= 1 && avail <= CPU_COUNT(&set), "%d available, affinity %d", avail,
          CPU_COUNT(&set));
    const int32_t asks[] = {0, 1, 1024, 1 << 20};
    for (size_t i = 0; i < sizeof asks / sizeof *asks; i++) {
        sd_ctx_params_t p;
        sd_ctx_params_default(&p);
        p.n_threads = asks[i];
        sd_ctx_t *c = NULL;
        char err[256];
        CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_OK);
        if (c == NULL) continue;
        CHECK(sd_ctx_activation_dtype(c) == SD_DTYPE_F32, "cpu activation dtype %d",
              (int)sd_ctx_activation_dtype(c));
        int threads = 0;
        sscanf(sd_ctx_backend_description(c), "cpu, %d threads", &threads);
        const int want = asks[i] == 0 || asks[i] > avail ? avail : asks[i];
        CHECK(threads == want, "n_threads %d: %s, want %d threads", asks[i],
              sd_ctx_backend_description(c), want);
        log_sink_t sink = {0};
        sd_ctx_set_log(c, log_cb, &sink);
        if (asks[i] > avail)
            CHECK(sink.count == 1 && sink.last_level == SD_LOG_WARN &&
                      strstr(sink.last, "n_threads") != NULL,
                  "n_threads %d: %d messages, last %s", asks[i], sink.count, sink.last);
        else
            CHECK(sink.count == 0, "n_threads %d: unexpected log %s", asks[i], sink.last);
        sd_ctx_set_log(c, log_cb, &sink); /* delivered once */
        CHECK(sink.count == (asks[i] > avail), "warning repeated");
        sd_ctx_free(c);
    }
}

/* Writes text to root/rel, creating the directories on the way. */
static void put_file(const char *root, const char *rel, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = path + strlen(root) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(path, 0700);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "create %s", path);
    if (f == NULL) return;
    fputs(text, f);
    fclose(f);
}

static void test_cgroup_limit(void) {
    char root[] = "/tmp/sd-cgroup-XXXXXX";
    if (mkdtemp(root) == NULL) {
        CHECK(false, "mkdtemp");
        return;
    }
    char self[600];
    snprintf(self, sizeof self, "%s/self", root);
    CHECK(sd_cgroup_cpu_limit(root, self) == 0, "no /proc/self/cgroup");

    /* v2: the tightest quota on the way up from the process's cgroup, rounded up. */
    put_file(root, "cpu.max", "max 100000\n");
    put_file(root, "self", "0::/\n");
    CHECK(sd_cgroup_cpu_limit(root, self) == 0, "v2 without a quota");
    put_file(root, "a/cpu.max", "250000 100000\n");
    put_file(root, "a/b/cpu.max", "max 100000\n");
    put_file(root, "self", "0::/a/b\n");
    CHECK(sd_cgroup_cpu_limit(root, self) == 3, "v2 parent quota: %d",
          sd_cgroup_cpu_limit(root, self));
    put_file(root, "a/b/cpu.max", "100000 100000\n");
    CHECK(sd_cgroup_cpu_limit(root, self) == 1, "v2 own quota: %d",
          sd_cgroup_cpu_limit(root, self));

    /* v1: the cpu controller's hierarchy, whose path in a container is the host's. */
    put_file(root, "cpu/cpu.cfs_quota_us", "-1\n");
    put_file(root, "cpu/cpu.cfs_period_us", "100000\n");
    put_file(root, "self", "4:memory:/docker/x\n3:cpuacct,cpu:/docker/x\n");
    CHECK(sd_cgroup_cpu_limit(root, self) == 0, "v1 without a quota");
    put_file(root, "cpu/cpu.cfs_quota_us", "50000\n");
    CHECK(sd_cgroup_cpu_limit(root, self) == 1, "v1 half a CPU: %d",
          sd_cgroup_cpu_limit(root, self));
    put_file(root, "cpu/cpu.cfs_quota_us", "400000\n");
    CHECK(sd_cgroup_cpu_limit(root, self) == 4, "v1 quota: %d", sd_cgroup_cpu_limit(root, self));
    put_file(root, "self", "3:cpuacct,cpu:/docker/x\n0::/a\n"); /* both: the smaller */
    CHECK(sd_cgroup_cpu_limit(root, self) == 3, "v1 and v2: %d", sd_cgroup_cpu_limit(root, self));

    const char *files[] = {"self",
                           "cpu.max",
                           "a/b/cpu.max",
                           "a/cpu.max",
                           "cpu/cpu.cfs_quota_us",
                           "cpu/cpu.cfs_period_us"};
    const char *dirs[] = {"a/b", "a", "cpu", ""};
    char path[600];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", root, files[i]);
        unlink(path);
    }
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        snprintf(path, sizeof path, "%s/%s", root, dirs[i]);
        rmdir(path);
    }
}

/* The text encoder's weight table for a 1-layer CLIP of width 4, each name under prefix
 * (e.g. "text_model." or ""), all pointing at one buffer of zeros large enough for any. */
#define CLIP_T_MAX 24
typedef struct {
    sd_weight_t w[CLIP_T_MAX];
    char names[CLIP_T_MAX][96];
    int n;
} clip_table_t;

static void clip_add(clip_table_t *t, const char *prefix, const char *name, int64_t d0,
                     int64_t d1) {
    static float zeros[64];
    sd_weight_t *w = &t->w[t->n];
    snprintf(t->names[t->n], sizeof t->names[t->n], "%s%s", prefix, name);
    *w = (sd_weight_t){t->names[t->n], SD_DTYPE_F32, d1 ? 2 : 1, {d0, d1}, zeros};
    t->n++;
}

static void clip_table(clip_table_t *t, const char *prefix) {
    static const char *lin[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                "self_attn.out_proj"};
    char n[96];
    t->n = 0;
    clip_add(t, prefix, "embeddings.token_embedding.weight", 8, 4);
    clip_add(t, prefix, "embeddings.position_embedding.weight", 4, 4);
    for (int i = 0; i < 4; i++) {
        snprintf(n, sizeof n, "encoder.layers.0.%s.weight", lin[i]);
        clip_add(t, prefix, n, 4, 4);
        snprintf(n, sizeof n, "encoder.layers.0.%s.bias", lin[i]);
        clip_add(t, prefix, n, 4, 0);
    }
    const char *norms[] = {"encoder.layers.0.layer_norm1", "encoder.layers.0.layer_norm2",
                           "final_layer_norm"};
    for (int i = 0; i < 3; i++) {
        snprintf(n, sizeof n, "%s.weight", norms[i]);
        clip_add(t, prefix, n, 4, 0);
        snprintf(n, sizeof n, "%s.bias", norms[i]);
        clip_add(t, prefix, n, 4, 0);
    }
    clip_add(t, prefix, "encoder.layers.0.mlp.fc1.weight", 8, 4);
    clip_add(t, prefix, "encoder.layers.0.mlp.fc1.bias", 8, 0);
    clip_add(t, prefix, "encoder.layers.0.mlp.fc2.weight", 4, 8);
    clip_add(t, prefix, "encoder.layers.0.mlp.fc2.bias", 4, 0);
}

/* The loader is strict both ways: a weight the network needs and lacks, and one it was given
 * but does not use, fail the load naming the weight (Go's diffusion/specs_test.go relies on
 * this to prove its TensorSpecs and the C graphs list the same tensors). Models never freed
 * are freed by sd_ctx_free (checked by the leak detector of `make sanitize`). */
static void test_loader_strict(void) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.n_threads = 1;
    sd_ctx_t *c = NULL;
    char err[256];
    CHECK_STATUS(sd_ctx_init(&p, &c, err, sizeof err), SD_STATUS_OK);
    if (c == NULL) return;
    sd_clip_config_t cfg;
    sd_clip_config_default(&cfg);
    cfg.vocab_size = 8;
    cfg.max_positions = 4;
    cfg.hidden = 4;
    cfg.intermediate = 8;
    cfg.layers = 1;
    cfg.heads = 1;
    cfg.eos_id = 7;
    static clip_table_t t;
    sd_model_t *m = NULL, *kept = NULL;

    /* Exactly the names the network uses, with or without transformers' prefix. */
    clip_table(&t, "text_model.");
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n, &kept), SD_STATUS_OK);
    CHECK(kept != NULL, "model");
    clip_table(&t, "");
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n, &m), SD_STATUS_OK);
    sd_model_free(c, m); /* unlinks it: freeing the context must not free it again */

    /* One extra weight, such as the position_ids buffer real files carry. */
    clip_table(&t, "text_model.");
    clip_add(&t, "text_model.", "embeddings.position_ids", 4, 0);
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n, &m), SD_STATUS_BAD_MODEL);
    CHECK(m == NULL, "no model after a failure (m held the freed one)");
    CHECK(strstr(sd_ctx_last_error(c), "text encoder: weight text_model.embeddings.position_ids "
                                       "was given but the text encoder does not use it") != NULL,
          "%s", sd_ctx_last_error(c));
    /* Two extra: the first in the caller's order is named, and the count given. */
    clip_add(&t, "", "aaa", 4, 0);
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n, &m), SD_STATUS_BAD_MODEL);
    CHECK(strstr(sd_ctx_last_error(c), "weight text_model.embeddings.position_ids was given but "
                                       "the text encoder does not use it (2 such weights)") != NULL,
          "%s", sd_ctx_last_error(c));

    /* One missing. */
    clip_table(&t, "text_model.");
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n - 1, &m), SD_STATUS_BAD_MODEL);
    CHECK(strstr(sd_ctx_last_error(c), "missing weight encoder.layers.0.mlp.fc2.bias") != NULL,
          "%s", sd_ctx_last_error(c));

    /* The same tensor twice, by its full and its stripped name, or by one name repeated. */
    clip_table(&t, "text_model.");
    clip_add(&t, "", "final_layer_norm.bias", 4, 0);
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n, &m), SD_STATUS_BAD_MODEL);
    CHECK(strstr(sd_ctx_last_error(c), "weights text_model.final_layer_norm.bias and "
                                       "final_layer_norm.bias are the same tensor") != NULL,
          "%s", sd_ctx_last_error(c));
    clip_table(&t, "");
    t.w[t.n] = t.w[0];
    t.n++;
    CHECK_STATUS(sd_clip_load(c, &cfg, t.w, t.n, &m), SD_STATUS_BAD_MODEL);
    CHECK(strstr(sd_ctx_last_error(c),
                 "weight embeddings.token_embedding.weight was given twice") != NULL,
          "%s", sd_ctx_last_error(c));

    sd_memory_stats_t ms;
    CHECK_STATUS(sd_ctx_memory_stats(c, &ms), SD_STATUS_OK);
    CHECK(ms.weights_bytes > 0, "the kept model holds its weights");
    sd_ctx_free(c); /* frees `kept`, never freed by hand */
}

/* Graph capture faked over the CPU backend, so the graph cache's keying, staging and
 * replacement run here: ops still execute while "recording", and a launch runs nothing, so
 * a replay leaves the staged result of the recording run in place. */
static int fake_begins, fake_launches, fake_frees;
static sd_status_t fake_graph_begin(sd_ctx_t *c) {
    (void)c;
    fake_begins++;
    return SD_STATUS_OK;
}
static sd_status_t fake_graph_end(sd_ctx_t *c, void **graph) {
    (void)c;
    *graph = malloc(1);
    return *graph != NULL ? SD_STATUS_OK : SD_STATUS_OUT_OF_MEMORY;
}
static sd_status_t fake_graph_launch(sd_ctx_t *c, void *graph) {
    (void)c, (void)graph;
    fake_launches++;
    return SD_STATUS_OK;
}
static void fake_graph_free(sd_backend_t *be, void *graph) {
    (void)be;
    fake_frees++;
    free(graph);
}

typedef struct {
    int calls;
    const sd_tensor_t *seen;
} cache_job_t;

/* out = in[0] + in[1], or 2 in[0] when in[1] is absent. */
static sd_status_t cache_add(sd_ctx_t *c, void *user, const sd_tensor_t *const *in,
                             sd_tensor_t *out) {
    cache_job_t *j = user;
    j->calls++;
    j->seen = in[0];
    return sd_op_add(c, out, in[0], in[1] != NULL ? in[1] : in[0]);
}

static float cache_run(sd_graph_cache_t *gc, cache_job_t *j, int64_t n, float a, float b,
                       bool with_b) {
    float va[8], vb[8], got[8];
    for (int i = 0; i < 8; i++) va[i] = a, vb[i] = b;
    const int64_t shape[1] = {n};
    sd_tensor_t *ta = make_tensor(ctx, SD_DTYPE_F32, 1, shape, va, NULL);
    sd_tensor_t *tb = make_tensor(ctx, SD_DTYPE_F32, 1, shape, vb, NULL);
    sd_tensor_t *out = make_empty(ctx, 1, shape);
    const sd_tensor_t *in[2] = {ta, with_b ? tb : NULL};
    const int32_t dtypes[2] = {SD_DTYPE_F32, SD_DTYPE_F32};
    CHECK_STATUS(
        sd_graph_cache_run(ctx, gc, "test", in, dtypes, 2, out, SD_DTYPE_F32, cache_add, j),
        SD_STATUS_OK);
    CHECK_STATUS(sd_tensor_download(ctx, out, got, (size_t)n * sizeof(float)), SD_STATUS_OK);
    CHECK(j->seen != ta || !sd_ctx_graphs_enabled(ctx), "staged, not the caller's tensor");
    sd_tensor_free(ctx, ta);
    sd_tensor_free(ctx, tb);
    sd_tensor_free(ctx, out);
    return got[n - 1];
}

static void test_graph_cache(void) {
    sd_graph_cache_t gc = {0};
    cache_job_t j = {0};
    /* The CPU backend has no graph capture: the forward runs on the caller's tensors. */
    CHECK(!sd_ctx_graphs_enabled(ctx), "cpu graphs");
    CHECK(cache_run(&gc, &j, 4, 1, 2, true) == 3 && j.calls == 1, "pass-through");
    for (int i = 0; i < SD_GRAPH_CACHE_ENTRIES; i++) CHECK(gc.entries[i] == NULL, "no entry");

    sd_backend_t *be = sd_ctx_backend_ptr(ctx);
    const sd_backend_ops_t *cpu_ops = be->ops;
    sd_backend_ops_t fake = *cpu_ops;
    fake.graph_begin = fake_graph_begin;
    fake.graph_end = fake_graph_end;
    fake.graph_launch = fake_graph_launch;
    fake.graph_free = fake_graph_free;
    be->ops = &fake;
    j = (cache_job_t){0};
    /* Eager on the staged buffers, then recorded (and launched), then replayed. */
    CHECK(cache_run(&gc, &j, 4, 1, 2, true) == 3 && j.calls == 1 && fake_begins == 0, "eager");
    CHECK(cache_run(&gc, &j, 4, 1, 3, true) == 4 && j.calls == 2 && fake_begins == 1 &&
              fake_launches == 1,
          "recorded");
    /* The fake replay computes nothing: the result recorded stays. */
    CHECK(cache_run(&gc, &j, 4, 1, 5, true) == 4 && j.calls == 2 && fake_launches == 2, "replayed");
    /* An absent input and another shape are other keys. */
    CHECK(cache_run(&gc, &j, 4, 1, 5, false) == 2 && j.calls == 3, "absent input");
    CHECK(cache_run(&gc, &j, 8, 1, 5, true) == 6 && j.calls == 4, "other shape");
    CHECK(cache_run(&gc, &j, 4, 1, 5, true) == 4 && j.calls == 4, "first key still cached");
    /* A fourth key fills the cache, a fifth replaces the least recently used entry (the
     * absent-input one, never recorded: no graph to free). */
    cache_run(&gc, &j, 2, 1, 5, true);
    cache_run(&gc, &j, 3, 1, 5, true);
    CHECK(fake_frees == 0, "unrecorded entries replaced (%d graphs freed)", fake_frees);
    CHECK(cache_run(&gc, &j, 4, 1, 5, false) == 2 && j.calls == 7, "evicted key runs eagerly");
    /* The recorded entry is now the least recently used: replacing it frees its graph. */
    cache_run(&gc, &j, 5, 1, 5, true);
    CHECK(fake_frees == 1, "%d graphs freed", fake_frees);
    sd_graph_cache_clear(ctx, &gc);
    for (int i = 0; i < SD_GRAPH_CACHE_ENTRIES; i++) CHECK(gc.entries[i] == NULL, "cleared");
    be->ops = cpu_ops;
}

int main(void) {
    test_status_and_params();
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.n_threads = 2;
    char err[256];
    if (sd_ctx_init(&p, &ctx, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "sd_ctx_init: %s\n", err);
        return 2;
    }
    test_errors_cancel_log();
    test_op_validation();
    test_half();
    test_arena();
    test_pool();
    test_pool_oversubscribed();
    test_loader_strict();
    test_graph_cache();
    sd_ctx_free(ctx);
    test_thread_cap();
    test_cgroup_limit();
    return test_summary("test_core");
}
