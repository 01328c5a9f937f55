/* A minimal test harness: CHECK records failures and keeps going; helpers for tensors and
 * reference comparison. */
#ifndef SD_TEST_HARNESS_H
#define SD_TEST_HARNESS_H

#include "sd.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

extern int test_failures;
extern int test_checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        test_checks++;                                                                             \
        if (!(cond)) {                                                                             \
            test_failures++;                                                                       \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

#define CHECK_STATUS(expr, want)                                                                   \
    do {                                                                                           \
        sd_status_t got_ = (expr);                                                                 \
        CHECK(got_ == (want), "%s returned %d (%s), want %d (%s)", #expr, (int)got_,               \
              sd_status_string(got_), (int)(want), sd_status_string(want));                        \
    } while (0)

/* Deterministic uniform numbers in [lo, hi). */
void rng_seed(uint64_t seed);
float rng_uniform(float lo, float hi);
void rng_fill(float *x, int64_t n, float lo, float hi);

/* Creates a tensor of dtype with the given shape holding `values` (float32, converted to the
 * dtype). When `rounded` is not NULL it receives the values as the tensor holds them
 * (rounded to f16/bf16), which is what a reference must use. Aborts the test on failure. */
sd_tensor_t *make_tensor(sd_ctx_t *ctx, int32_t dtype, int ndim, const int64_t *shape,
                         const float *values, float *rounded);
sd_tensor_t *make_empty(sd_ctx_t *ctx, int ndim, const int64_t *shape);
/* A tensor of the given dtype filled with uniform values in [-1, 1) from the test rng. */
sd_tensor_t *make_random(sd_ctx_t *ctx, int32_t dtype, int ndim, const int64_t *shape);
/* Downloads an F32 tensor into a malloc'd buffer. */
float *fetch(sd_ctx_t *ctx, const sd_tensor_t *t);

/* max |got - ref| <= rtol * max |ref| + atol; prints the worst element on failure. */
int compare(const char *what, const float *got, const double *ref, int64_t n, double rtol,
            double atol);
/* compare() against a float reference (another backend's result). */
int compare_floats(const char *what, const float *got, const float *ref, int64_t n, double rtol,
                   double atol);

/* The activations of sd_op_activation in double precision (SD_ACT_*). */
double ref_activation(int act, double x);

int test_summary(const char *name);

/* Benchmarks: the median of v[0..n) (reorders v), and whether the benchmark called name runs
 * under a command-line filter (NULL: every one; else a substring of name). */
double median(double *v, int n);
bool bench_selected(const char *filter, const char *name);

#endif
