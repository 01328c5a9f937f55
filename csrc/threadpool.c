/* A small fork-join thread pool: one job at a time, tasks claimed with an atomic counter.
 * Workers spin briefly after a job (the next op usually follows within microseconds),
 * then sleep on a condition variable. */
#include "cpu.h"

#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define SD_HAVE_MXCSR 1
#endif

struct sd_pool {
    int n_threads; /* including the caller */
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    atomic_uint_fast64_t generation;
    bool stop;

    sd_task_fn fn;
    void *arg;
    int64_t n_tasks;
    atomic_int_fast64_t next_task;
    atomic_int running; /* workers not yet finished with the current job */
};

typedef struct {
    sd_pool_t *pool;
    int index;
} worker_arg_t;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

static unsigned flush_denormals(void) {
#ifdef SD_HAVE_MXCSR
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040); /* FTZ | DAZ */
    return old;
#else
    return 0;
#endif
}

static void restore_fp_state(unsigned old) {
#ifdef SD_HAVE_MXCSR
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

static void run_tasks(sd_pool_t *pool, int thread) {
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (t >= pool->n_tasks) break;
        pool->fn(pool->arg, t, thread);
    }
}

static void *worker_main(void *p) {
    worker_arg_t wa = *(worker_arg_t *)p;
    free(p);
    sd_pool_t *pool = wa.pool;
    flush_denormals();
    uint64_t seen = 0;
    for (;;) {
        /* Spin a little for the next job before sleeping. */
        for (int i = 0; i < 20000; i++) {
            if (atomic_load_explicit(&pool->generation, memory_order_acquire) != seen) break;
            cpu_relax();
        }
        pthread_mutex_lock(&pool->mu);
        while (!pool->stop && atomic_load(&pool->generation) == seen)
            pthread_cond_wait(&pool->start_cv, &pool->mu);
        if (pool->stop) {
            pthread_mutex_unlock(&pool->mu);
            return NULL;
        }
        seen = atomic_load(&pool->generation);
        pthread_mutex_unlock(&pool->mu);

        run_tasks(pool, wa.index);

        if (atomic_fetch_sub_explicit(&pool->running, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->done_cv);
            pthread_mutex_unlock(&pool->mu);
        }
    }
}

sd_pool_t *sd_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    sd_pool_t *pool = calloc(1, sizeof *pool);
    if (pool == NULL) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->start_cv, NULL);
    pthread_cond_init(&pool->done_cv, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->next_task, 0);
    atomic_init(&pool->running, 0);
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (pool->workers == NULL) goto fail;
        for (int i = 1; i < n_threads; i++) {
            worker_arg_t *wa = malloc(sizeof *wa);
            if (wa == NULL) goto fail_threads;
            *wa = (worker_arg_t){pool, i};
            if (pthread_create(&pool->workers[i - 1], NULL, worker_main, wa) != 0) {
                free(wa);
                goto fail_threads;
            }
            continue;
        fail_threads:
            pool->n_threads = i; /* the workers started so far */
            sd_pool_destroy(pool);
            return NULL;
        }
    }
    return pool;
fail:
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->start_cv);
    pthread_cond_destroy(&pool->done_cv);
    free(pool);
    return NULL;
}

void sd_pool_destroy(sd_pool_t *pool) {
    if (pool == NULL) return;
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->workers[i], NULL);
    free(pool->workers);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->start_cv);
    pthread_cond_destroy(&pool->done_cv);
    free(pool);
}

int sd_pool_threads(const sd_pool_t *pool) {
    return pool->n_threads;
}

void sd_pool_run(sd_pool_t *pool, int64_t n_tasks, sd_task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    unsigned fp = flush_denormals();
    if (pool->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(arg, t, 0);
        restore_fp_state(fp);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store(&pool->next_task, 0);
    atomic_store(&pool->running, pool->n_threads - 1);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->mu);

    run_tasks(pool, 0);

    for (int i = 0; i < 200000 && atomic_load_explicit(&pool->running, memory_order_acquire) > 0;
         i++)
        cpu_relax();
    if (atomic_load_explicit(&pool->running, memory_order_acquire) > 0) {
        pthread_mutex_lock(&pool->mu);
        while (atomic_load(&pool->running) > 0) pthread_cond_wait(&pool->done_cv, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
    }
    restore_fp_state(fp);
}
