#include "harness.h"

#include "sd-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int test_failures;
int test_checks;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

void rng_seed(uint64_t seed) {
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
}

float rng_uniform(float lo, float hi) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    double u = (double)(rng_state >> 11) / 9007199254740992.0;
    return lo + (float)(u * (hi - lo));
}

void rng_fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(lo, hi);
}

static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

sd_tensor_t *make_tensor(sd_ctx_t *ctx, int32_t dtype, int ndim, const int64_t *shape,
                         const float *values, float *rounded) {
    sd_tensor_t *t = NULL;
    sd_status_t st = sd_tensor_new(ctx, dtype, ndim, shape, &t);
    if (st != SD_STATUS_OK) {
        fprintf(stderr, "make_tensor: %s: %s\n", sd_status_string(st), sd_ctx_last_error(ctx));
        exit(2);
    }
    int64_t n = numel(ndim, shape);
    void *buf = malloc((size_t)n * sd_dtype_size(dtype));
    for (int64_t i = 0; i < n; i++) {
        float v = values[i], r = v;
        switch (dtype) {
        case SD_DTYPE_F16:
            ((uint16_t *)buf)[i] = sd_f32_to_f16(v);
            r = sd_f16_to_f32(((uint16_t *)buf)[i]);
            break;
        case SD_DTYPE_BF16:
            ((uint16_t *)buf)[i] = sd_f32_to_bf16(v);
            r = sd_bf16_to_f32(((uint16_t *)buf)[i]);
            break;
        case SD_DTYPE_I32:
            ((int32_t *)buf)[i] = (int32_t)v;
            break;
        default:
            ((float *)buf)[i] = v;
        }
        if (rounded) rounded[i] = r;
    }
    st = sd_tensor_upload(ctx, t, buf, (size_t)n * sd_dtype_size(dtype));
    free(buf);
    if (st != SD_STATUS_OK) {
        fprintf(stderr, "make_tensor upload: %s\n", sd_ctx_last_error(ctx));
        exit(2);
    }
    return t;
}

sd_tensor_t *make_random(sd_ctx_t *ctx, int32_t dtype, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *v = malloc((size_t)n * sizeof(float));
    if (v == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    rng_fill(v, n, -1, 1);
    sd_tensor_t *t = make_tensor(ctx, dtype, ndim, shape, v, NULL);
    free(v);
    return t;
}

sd_tensor_t *make_empty(sd_ctx_t *ctx, int ndim, const int64_t *shape) {
    int64_t n = numel(ndim, shape);
    float *nan = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN; /* poison: every element must be written */
    sd_tensor_t *t = make_tensor(ctx, SD_DTYPE_F32, ndim, shape, nan, NULL);
    free(nan);
    return t;
}

float *fetch(sd_ctx_t *ctx, const sd_tensor_t *t) {
    size_t nb = sd_tensor_nbytes(t);
    float *out = malloc(nb);
    if (sd_tensor_download(ctx, t, out, nb) != SD_STATUS_OK) {
        fprintf(stderr, "fetch: %s\n", sd_ctx_last_error(ctx));
        exit(2);
    }
    return out;
}

int compare(const char *what, const float *got, const double *ref, int64_t n, double rtol,
            double atol) {
    double max_ref = 0, worst = -1;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) max_ref = fmax(max_ref, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++) {
        double d = isfinite(got[i]) ? fabs((double)got[i] - ref[i]) : INFINITY;
        if (d > worst) worst = d, at = i;
    }
    double tol = rtol * max_ref + atol;
    test_checks++;
    if (!(worst <= tol)) {
        test_failures++;
        fprintf(stderr, "FAIL %s: max |diff| %.3g at %lld (got %.8g, ref %.8g), tol %.3g\n", what,
                worst, (long long)at, (double)got[at], ref[at], tol);
        return 0;
    }
    return 1;
}

int compare_floats(const char *what, const float *got, const float *ref, int64_t n, double rtol,
                   double atol) {
    double *r = malloc((size_t)n * sizeof(double));
    if (r == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) r[i] = ref[i];
    int ok = compare(what, got, r, n, rtol, atol);
    free(r);
    return ok;
}

double ref_activation(int act, double x) {
    switch (act) {
    case SD_ACT_SILU:
        return x / (1 + exp(-x));
    case SD_ACT_GELU:
        return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case SD_ACT_GELU_TANH:
        return 0.5 * x * (1 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case SD_ACT_LEAKY_RELU:
        return x >= 0 ? x : 0.2 * x;
    default:
        return x / (1 + exp(-1.702 * x));
    }
}

int test_summary(const char *name) {
    printf("%s: %d checks, %d failures\n", name, test_checks, test_failures);
    return test_failures == 0 ? 0 : 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

bool bench_selected(const char *filter, const char *name) {
    return filter == NULL || strstr(name, filter) != NULL;
}
