/* The CPU backend: host memory, thread pool, kernel selection, op table. */
#define _GNU_SOURCE /* sched_getaffinity and the CPU_*_S macros */
#include "cpu.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CPU_ALIGN 64

void *sd_host_alloc_large(size_t nbytes) {
    const size_t huge = (size_t)2 << 20;
    if (nbytes < huge) return aligned_alloc(64, (nbytes + 63) / 64 * 64);
    size_t size = (nbytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, size);
#ifdef MADV_HUGEPAGE
    if (p != NULL) madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
}

#ifdef __linux__
static const size_t HUGE_PAGE = (size_t)2 << 20;

static size_t map_length(size_t nbytes) {
    const size_t unit = nbytes >= HUGE_PAGE ? HUGE_PAGE : (size_t)sysconf(_SC_PAGESIZE);
    return (SD_MAX(nbytes, 1) + unit - 1) / unit * unit;
}

/* An address range of len bytes, 2 MiB aligned when len is whole 2 MiB pages: a mapping
 * of len plus 2 MiB with its unaligned ends cut off. */
static char *map_aligned(size_t len, int prot) {
    const size_t extra = len % HUGE_PAGE == 0 ? HUGE_PAGE : 0;
    /* A reservation (PROT_NONE) commits no memory. */
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | (prot == PROT_NONE ? MAP_NORESERVE : 0);
    char *raw = mmap(NULL, len + extra, prot, flags, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *p = raw;
    if (extra) {
        p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
        if (p > raw) munmap(raw, (size_t)(p - raw));
        if (raw + len + extra > p + len) munmap(p + len, (size_t)(raw + len + extra - (p + len)));
    }
    return p;
}

void *sd_host_map(size_t nbytes) {
    const size_t len = map_length(nbytes);
    char *p = map_aligned(len, PROT_READ | PROT_WRITE);
#ifdef MADV_HUGEPAGE
    if (p != NULL && len % HUGE_PAGE == 0) madvise(p, len, MADV_HUGEPAGE);
#endif
    return p;
}

void sd_host_unmap(void *p, size_t nbytes) {
    if (p != NULL) munmap(p, map_length(nbytes));
}

void *sd_host_remap(void *p, size_t old_nbytes, size_t nbytes) {
    const size_t old_len = map_length(old_nbytes), len = map_length(nbytes);
    if (len < old_len) return NULL;
    /* Moved to an aligned range reserved first, so that its 2 MiB pages stay whole. */
    char *at = map_aligned(len, PROT_NONE);
    if (at == NULL) return NULL;
    if (mremap(p, old_len, len, MREMAP_MAYMOVE | MREMAP_FIXED, at) == MAP_FAILED) {
        munmap(at, len);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (len % HUGE_PAGE == 0) madvise(at, len, MADV_HUGEPAGE);
#endif
    return at;
}
#else
void *sd_host_map(size_t nbytes) {
    return sd_host_alloc_large(nbytes);
}

void sd_host_unmap(void *p, size_t nbytes) {
    (void)nbytes;
    free(p);
}

void *sd_host_remap(void *p, size_t old_nbytes, size_t nbytes) {
    (void)p, (void)old_nbytes, (void)nbytes;
    return NULL;
}
#endif

static void *cpu_alloc(sd_backend_t *be, size_t nbytes) {
    (void)be;
    return sd_host_alloc_large(nbytes == 0 ? CPU_ALIGN : nbytes);
}

static void cpu_free(sd_backend_t *be, void *p) {
    (void)be;
    free(p);
}

static sd_status_t cpu_copy(sd_ctx_t *ctx, void *dst, const void *src, size_t nbytes) {
    (void)ctx;
    memcpy(dst, src, nbytes);
    return SD_STATUS_OK;
}

static void cpu_destroy(sd_backend_t *be) {
    sd_cpu_backend_t *cpu = (sd_cpu_backend_t *)be;
    int n = cpu->pool ? sd_pool_threads(cpu->pool) : 0;
    sd_pool_destroy(cpu->pool);
    for (int i = 0; i < n && cpu->scratch; i++) free(cpu->scratch[i]);
    free(cpu->scratch);
    free(cpu->scratch_floats);
    free(cpu);
}

/* Tables and conv weights stay in the caller's memory in their own dtype; the gather and
 * the GEMM packer (which transposes in registers) convert on the fly. Weights used as the
 * GEMM's B operand (linear layers with token output, W^T) are packed once into B panels,
 * still in their dtype, because their per-call packing is a strided transpose repeated by
 * every thread and dominated the small-row GEMMs of low-resolution transformer blocks and
 * the text encoder. Packing conv weights too would save another ~10% of a step but needs a
 * second copy of the UNet's largest weights while loading (peak memory over 4 GiB for SD
 * 1.5) and seconds of first-touch page faults. Small vectors are widened to F32. */
static sd_status_t cpu_weight_from_host(sd_ctx_t *ctx, const sd_tensor_t *host, int32_t role,
                                        sd_tensor_t *out) {
    *out = *host;
    out->prev = out->next = NULL;
    out->packed = NULL;
    out->kind = SD_TENSOR_VIEW;
    if (role == SD_WEIGHT_MATRIX_B) {
        int64_t rows = host->shape[0], k = sd_tensor_numel(host) / rows;
        sd_cpu_backend_t *cpu = sd_cpu(ctx);
        sd_packed_weight_t *p = sd_packed_weight_new(cpu->pool, cpu->kern, host->data, host->dtype,
                                                     rows, k, role == SD_WEIGHT_MATRIX_B);
        if (p == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "cannot pack a weight");
        out->packed = p;
        sd_ctx_add_weights_bytes(ctx, (int64_t)sd_packed_weight_bytes(p));
        return SD_STATUS_OK;
    }
    if (role != SD_WEIGHT_VECTOR || host->dtype == SD_DTYPE_F32) return SD_STATUS_OK;
    int64_t n = sd_tensor_numel(host);
    float *data = cpu_alloc(NULL, (size_t)n * sizeof(float));
    if (data == NULL) return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "cannot allocate a weight");
    sd_convert_to_f32(data, host->data, host->dtype, n);
    out->data = data;
    out->dtype = SD_DTYPE_F32;
    out->nbytes = (size_t)n * sizeof(float);
    out->kind = SD_TENSOR_OWNED;
    sd_ctx_add_weights_bytes(ctx, (int64_t)out->nbytes);
    return SD_STATUS_OK;
}

static void cpu_weight_free(sd_ctx_t *ctx, sd_tensor_t *w) {
    if (w->kind == SD_TENSOR_OWNED) {
        sd_ctx_add_weights_bytes(ctx, -(int64_t)w->nbytes);
        cpu_free(NULL, w->data);
    }
    if (w->packed != NULL) {
        sd_ctx_add_weights_bytes(ctx, -(int64_t)sd_packed_weight_bytes(w->packed));
        sd_packed_weight_free(w->packed);
    }
    w->data = NULL;
    w->packed = NULL;
}

/* No recorded graphs on the CPU: a GEMM B operand packed for the same dtype and shape, or
 * in F32 (so that the base weights put back after float32 adapter merges reuse the merges'
 * packs rather than fault in new ones), is packed again in place; otherwise a fresh weight
 * (a new pack, or a view of the new host data) replaces the old one, made first so that a
 * failure leaves the old one in place. */
static sd_status_t cpu_weight_update(sd_ctx_t *ctx, const sd_tensor_t *host, int32_t role,
                                     sd_tensor_t *w) {
    if (role == SD_WEIGHT_MATRIX_B && w->packed != NULL) {
        int64_t rows = host->shape[0], k = sd_tensor_numel(host) / rows;
        sd_cpu_backend_t *cpu = sd_cpu(ctx);
        if (sd_packed_weight_repack(cpu->pool, cpu->kern, w->packed, host->data, host->dtype, rows,
                                    k, true)) {
            sd_packed_weight_t *p = w->packed;
            *w = *host;
            w->prev = w->next = NULL;
            w->kind = SD_TENSOR_VIEW;
            w->packed = p;
            return SD_STATUS_OK;
        }
    }
    sd_tensor_t fresh;
    SD_TRY(cpu_weight_from_host(ctx, host, role, &fresh));
    cpu_weight_free(ctx, w);
    *w = fresh;
    return SD_STATUS_OK;
}

/* As cpu_weight_from_host: packed GEMM B operands and widened vectors are copies. */
static bool cpu_weight_copies(int32_t role, int32_t dtype) {
    return role == SD_WEIGHT_MATRIX_B || (role == SD_WEIGHT_VECTOR && dtype != SD_DTYPE_F32);
}

/* Adapters merge into GEMM B operands while they are packed, and into the matrices read in
 * place (convolution kernels, channels-first linear weights) as float32 memory of the
 * backend's own, which later merges reuse. */
static bool cpu_weight_merges(const sd_tensor_t *w, int32_t role) {
    const sd_packed_weight_t *p = w->packed;
    if (role == SD_WEIGHT_MATRIX_B) return p != NULL && p->as_b;
    return role == SD_WEIGHT_MATRIX_A && p == NULL;
}

static sd_status_t cpu_weight_merge(sd_ctx_t *ctx, const sd_tensor_t *base, const float *up,
                                    const float *down, int64_t rank, int32_t role, sd_tensor_t *w) {
    SD_ASSERT(cpu_weight_merges(w, role));
    sd_cpu_backend_t *cpu = sd_cpu(ctx);
    const int64_t n = sd_tensor_numel(w), rows = w->shape[0];
    const size_t bytes = (size_t)n * sizeof(float);
    if (role == SD_WEIGHT_MATRIX_B) {
        sd_packed_weight_t *p = w->packed;
        const int64_t before = (int64_t)sd_packed_weight_bytes(p);
        if (!sd_packed_weight_merge(cpu->pool, cpu->kern, p, base->data, base->dtype, up, down,
                                    rank))
            return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "cannot merge an adapter into a weight");
        sd_ctx_add_weights_bytes(ctx, (int64_t)sd_packed_weight_bytes(p) - before);
        /* The values are only in the pack now. */
        w->data = NULL;
        w->dtype = SD_DTYPE_F32;
        w->nbytes = bytes;
        return SD_STATUS_OK;
    }
    const bool reuse = w->kind == SD_TENSOR_OWNED && w->dtype == SD_DTYPE_F32;
    float *dst = reuse ? w->data : cpu_alloc(NULL, bytes);
    if (dst == NULL ||
        !sd_weight_merge_rows(cpu, dst, base->data, base->dtype, rows, n / rows, up, down, rank)) {
        if (!reuse) cpu_free(NULL, dst);
        return sd_fail(ctx, SD_STATUS_OUT_OF_MEMORY, "cannot merge an adapter into a weight");
    }
    if (!reuse) {
        cpu_weight_free(ctx, w);
        w->data = dst;
        w->dtype = SD_DTYPE_F32;
        w->nbytes = bytes;
        w->kind = SD_TENSOR_OWNED;
        sd_ctx_add_weights_bytes(ctx, (int64_t)bytes);
    }
    return SD_STATUS_OK;
}

static const sd_backend_ops_t cpu_ops = {
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .weight_from_host = cpu_weight_from_host,
    .weight_free = cpu_weight_free,
    .weight_update = cpu_weight_update,
    .weight_copies = cpu_weight_copies,
    .weight_merges = cpu_weight_merges,
    .weight_merge = cpu_weight_merge,
    .conv2d = sd_cpu_conv2d,
    .conv2d_up2 = sd_cpu_conv2d_up2,
    .copy_rows = sd_cpu_copy_rows,
    .linear = sd_cpu_linear,
    .group_norm = sd_cpu_group_norm,
    .layer_norm = sd_cpu_layer_norm,
    .attention = sd_cpu_attention,
    .activation = sd_cpu_activation,
    .geglu = sd_cpu_geglu,
    .upsample_nearest = sd_cpu_upsample_nearest,
    .binary = sd_cpu_binary,
    .concat = sd_cpu_concat,
    .clamp = sd_cpu_clamp,
    .tanh_clamp = sd_cpu_tanh_clamp,
    .convert = sd_cpu_convert,
    .timestep_embedding = sd_cpu_timestep_embedding,
    .embedding = sd_cpu_embedding,
};

const sd_cpu_kernels_t *sd_cpu_select_kernels(char *why, size_t why_len) {
    const char *want = getenv("SD_CPU_ISA");
    const sd_cpu_kernels_t *best = &sd_cpu_kernels_generic;
#if defined(__x86_64__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512)
        best = &sd_cpu_kernels_avx512;
    else if (avx2)
        best = &sd_cpu_kernels_avx2;
    if (want != NULL && *want != '\0') {
        if (strcmp(want, "generic") == 0) return &sd_cpu_kernels_generic;
        if (strcmp(want, "avx2") == 0 && avx2) return &sd_cpu_kernels_avx2;
        if (strcmp(want, "avx512") == 0 && avx512) return &sd_cpu_kernels_avx512;
        snprintf(why, why_len, "SD_CPU_ISA=%s is not available on this CPU; using %s", want,
                 best->name);
    }
#else
    if (want != NULL && *want != '\0' && strcmp(want, "generic") != 0)
        snprintf(why, why_len, "SD_CPU_ISA=%s is not available on this CPU; using generic", want);
#endif
    return best;
}

const sd_cpu_bf16_kernels_t *sd_cpu_select_bf16(const sd_cpu_kernels_t *kern, char *why,
                                                size_t why_len) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) {
        snprintf(why, why_len, "this CPU has no AVX512_BF16");
        return NULL;
    }
    if (kern != &sd_cpu_kernels_avx512) {
        snprintf(why, why_len, "it needs the avx512 kernels, and %s are in use (SD_CPU_ISA)",
                 kern->name);
        return NULL;
    }
    return &sd_cpu_bf16_avx512;
#else
    (void)kern;
    snprintf(why, why_len, "AVX512_BF16 is an x86-64 feature");
    return NULL;
#endif
}

/* Reads up to two integers from root/dir/name; returns how many were read (0 when the file
 * is missing or starts with something else, e.g. cgroup v2's "max"). */
static int read_numbers(const char *root, const char *dir, const char *name, long long v[2]) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s%s/%s", root, dir, name) >= (int)sizeof path) return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    int n = fscanf(f, "%lld %lld", &v[0], &v[1]);
    fclose(f);
    return n < 0 ? 0 : n;
}

/* The smallest CPU quota (quota / period, rounded up) of root/rel and its parents up to root
 * (rel is "" or starts with '/'); 0 when none is set. cgroup v2 keeps "quota period" (or
 * "max period") in cpu.max, v1 the two numbers in separate files. */
static int quota_in_tree(const char *root, const char *rel, bool v2) {
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", rel) >= (int)sizeof dir) return 0;
    int best = 0;
    for (;;) {
        long long quota[2] = {-1, 0}, period[2] = {0, 0};
        bool set = v2 ? read_numbers(root, dir, "cpu.max", quota) == 2
                      : read_numbers(root, dir, "cpu.cfs_quota_us", quota) >= 1 &&
                            read_numbers(root, dir, "cpu.cfs_period_us", period) >= 1;
        const long long q = quota[0], per = v2 ? quota[1] : period[0];
        if (set && q > 0 && per > 0) {
            long long cpus = (q + per - 1) / per;
            int c = cpus > 1 << 20 ? 1 << 20 : (int)cpus;
            if (best == 0 || c < best) best = c;
        }
        char *slash = strrchr(dir, '/');
        if (slash == NULL) break;
        *slash = '\0';
    }
    return best;
}

int sd_cgroup_cpu_limit(const char *root, const char *self_cgroup) {
    FILE *f = fopen(self_cgroup, "r");
    if (f == NULL) return 0;
    char line[4096], v1_root[4096];
    int best = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        /* "id:controllers:path"; v2 is "0::path", v1 lists its controllers, e.g. "cpu,cpuacct" */
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL) continue;
        *c1 = *c2 = '\0';
        char *controllers = c1 + 1;
        const char *rel = strcmp(c2 + 1, "/") == 0 ? "" : c2 + 1;
        int limit = 0;
        if (strcmp(line, "0") == 0 && controllers[0] == '\0') {
            limit = quota_in_tree(root, rel, true);
        } else {
            bool has_cpu = false;
            char *save = NULL;
            for (char *c = strtok_r(controllers, ",", &save); c && !has_cpu;
                 c = strtok_r(NULL, ",", &save))
                has_cpu = strcmp(c, "cpu") == 0;
            if (!has_cpu) continue;
            /* The v1 hierarchy is mounted at root/cpu (often a link to cpu,cpuacct). In a
             * container the path may name the host's cgroup, which is not mounted: the walk
             * up then ends at the container's own. */
            if (snprintf(v1_root, sizeof v1_root, "%s/cpu", root) < (int)sizeof v1_root)
                limit = quota_in_tree(v1_root, rel, false);
        }
        if (limit > 0 && (best == 0 || limit < best)) best = limit;
    }
    fclose(f);
    return best;
}

int sd_cpu_available(void) {
    int n = 0;
#ifdef __linux__
    /* The affinity mask (taskset, cpusets), in a set large enough for any machine. */
    for (int size = 1024; size <= 1 << 18; size *= 4) {
        cpu_set_t *set = CPU_ALLOC(size);
        if (set == NULL) break;
        size_t bytes = CPU_ALLOC_SIZE(size);
        int rc = sched_getaffinity(0, bytes, set), err = errno;
        if (rc == 0) n = CPU_COUNT_S(bytes, set);
        CPU_FREE(set);
        if (rc == 0 || err != EINVAL) break; /* EINVAL: the set is smaller than the kernel's */
    }
#endif
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 ? (int)online : 1;
    }
#ifdef __linux__
    int quota = sd_cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup");
    if (quota > 0 && quota < n) n = quota;
#endif
    return n;
}

sd_status_t sd_backend_cpu_create(const sd_ctx_params_t *p, sd_backend_t **out, char *err,
                                  size_t err_len) {
    sd_cpu_backend_t *cpu = calloc(1, sizeof *cpu);
    if (cpu == NULL) {
        snprintf(err, err_len, "out of host memory");
        return SD_STATUS_OUT_OF_MEMORY;
    }
    /* More threads than CPUs only slow a fork-join pool down: a descheduled thread holds
     * up every op it has a task of. */
    const int avail = sd_cpu_available();
    int n = p->n_threads == 0 ? avail : p->n_threads;
    if (n > avail) {
        snprintf(cpu->base.warning, sizeof cpu->base.warning,
                 "n_threads %d is more than the %d CPUs available to this process; using %d", n,
                 avail, avail);
        n = avail;
    }
    char why[160] = "";
    cpu->kern = sd_cpu_select_kernels(why, sizeof why);
    if (p->precision == SD_PRECISION_BF16) {
        char no[160] = "";
        const sd_cpu_bf16_kernels_t *bf16 = sd_cpu_select_bf16(cpu->kern, no, sizeof no);
        if (bf16 == NULL) {
            free(cpu);
            snprintf(err, err_len, "sd_ctx_init: bf16 precision is not available: %s", no);
            return SD_STATUS_UNSUPPORTED;
        }
        SD_ASSERT(bf16->mr == cpu->kern->mr && bf16->nr == cpu->kern->nr);
        cpu->kern_bf16 = *cpu->kern;
        cpu->kern_bf16.bf16 = bf16;
        cpu->kern = &cpu->kern_bf16;
    }
    cpu->base.ops = &cpu_ops;
    cpu->base.kind = SD_BACKEND_CPU;
    cpu->base.alignment = CPU_ALIGN;
    cpu->base.act_dtypes = 1u << SD_DTYPE_F32;
    cpu->base.act_dtype = SD_DTYPE_F32;
    cpu->pool = sd_pool_create(n);
    cpu->scratch = calloc((size_t)n, sizeof *cpu->scratch);
    cpu->scratch_floats = calloc((size_t)n, sizeof *cpu->scratch_floats);
    if (cpu->pool == NULL || cpu->scratch == NULL || cpu->scratch_floats == NULL) {
        cpu_destroy(&cpu->base);
        snprintf(err, err_len, "cannot start %d threads", n);
        return SD_STATUS_OUT_OF_MEMORY;
    }
    snprintf(cpu->base.description, sizeof cpu->base.description,
             "cpu, %d threads, %s kernels%s%s%s", n, cpu->kern->name,
             cpu->kern->bf16 ? ", bf16 compute" : "", why[0] ? "; " : "", why);
    *out = &cpu->base;
    return SD_STATUS_OK;
}

float *sd_cpu_scratch(sd_cpu_backend_t *cpu, int thread, size_t n) {
    if (cpu->scratch_floats[thread] < n) {
        free(cpu->scratch[thread]);
        cpu->scratch_floats[thread] = 0;
        cpu->scratch[thread] = cpu_alloc(NULL, n * sizeof(float));
        if (cpu->scratch[thread] == NULL) return NULL;
        cpu->scratch_floats[thread] = n;
    }
    return cpu->scratch[thread];
}

bool sd_cpu_scratch_reserve(sd_cpu_backend_t *cpu, size_t n) {
    for (int i = 0; i < sd_pool_threads(cpu->pool); i++)
        if (sd_cpu_scratch(cpu, i, n) == NULL) return false;
    return true;
}
