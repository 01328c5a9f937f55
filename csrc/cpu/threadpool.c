/* A small fork-join thread pool: one job at a time, tasks claimed with an atomic counter.
 *
 * Waiting threads (workers between jobs, the caller for the workers still busy with its job)
 * spin only briefly, because the next op usually follows within microseconds, and then
 * sleep on a condition variable: on a busy machine (another process on a core, more threads
 * than cores) a longer spin takes the core from the thread that holds the work.
 *
 * A worker joins a job by taking a reference on it, and the caller closes the job once every
 * task is claimed, so the caller waits only for workers that are running one of its tasks,
 * never for a worker that has not woken up yet (or is descheduled): that one finds the job
 * closed and waits for the next. */
#include "cpu.h"

#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define SD_HAVE_MXCSR 1
#endif

/* The job state word: the job's generation, whether it is closed to joining workers, and how
 * many workers have joined and not yet left. One word so a worker joins only the open job it
 * saw, with one compare-and-swap. */
#define JOB_GEN(s)  ((uint32_t)((s) >> 32))
#define JOB_CLOSED  ((uint64_t)1 << 31)
#define JOB_REFS(s) ((s) & (JOB_CLOSED - 1))

/* How long a waiting thread spins before it sleeps. Waking a sleeping thread costs tens of
 * microseconds, so this covers the gap between consecutive ops without holding a core
 * through anything longer. */
#define SPIN_NS 50000

struct sd_pool {
    int n_threads; /* including the caller */
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    atomic_uint_fast64_t state;
    atomic_bool stop;

    sd_task_fn fn;
    void *arg;
    int64_t n_tasks;
    atomic_int_fast64_t next_task;
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

/* A bounded busy-wait. The budget is time, not a count of pauses, because a pause takes
 * from a few to ~150 cycles depending on the CPU; the clock is read every 64 pauses. */
typedef struct {
    uint64_t deadline;
    unsigned n;
} spin_t;

static spin_t spin_start(void) {
    return (spin_t){sd_now_ns() + SPIN_NS, 0};
}

/* Pauses once; false when the budget is spent. */
static bool spin_again(spin_t *s) {
    cpu_relax();
    return (++s->n & 63) != 0 || sd_now_ns() < s->deadline;
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

/* Waits for a job newer than generation `seen` (or for stop); returns the state seen. */
static uint64_t wait_for_job(sd_pool_t *pool, uint32_t seen) {
    uint64_t s = atomic_load_explicit(&pool->state, memory_order_acquire);
    for (spin_t sp = spin_start(); JOB_GEN(s) == seen && spin_again(&sp);)
        s = atomic_load_explicit(&pool->state, memory_order_acquire);
    if (JOB_GEN(s) != seen) return s;
    pthread_mutex_lock(&pool->mu);
    while (!atomic_load(&pool->stop) && JOB_GEN(s = atomic_load(&pool->state)) == seen)
        pthread_cond_wait(&pool->start_cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    return s;
}

/* Takes a reference on job generation JOB_GEN(s) if it is still open. */
static bool join_job(sd_pool_t *pool, uint64_t s) {
    const uint32_t gen = JOB_GEN(s);
    while (JOB_GEN(s) == gen && !(s & JOB_CLOSED))
        if (atomic_compare_exchange_weak_explicit(&pool->state, &s, s + 1, memory_order_acquire,
                                                  memory_order_acquire))
            return true;
    return false;
}

static void leave_job(sd_pool_t *pool) {
    uint64_t s = atomic_fetch_sub_explicit(&pool->state, 1, memory_order_release) - 1;
    if ((s & JOB_CLOSED) && JOB_REFS(s) == 0) { /* the caller may be asleep waiting for us */
        pthread_mutex_lock(&pool->mu);
        pthread_cond_signal(&pool->done_cv);
        pthread_mutex_unlock(&pool->mu);
    }
}

static void *worker_main(void *p) {
    worker_arg_t wa = *(worker_arg_t *)p;
    free(p);
    sd_pool_t *pool = wa.pool;
    flush_denormals();
    uint32_t seen = 0;
    for (;;) {
        uint64_t s = wait_for_job(pool, seen);
        if (atomic_load(&pool->stop)) return NULL;
        seen = JOB_GEN(s);
        if (join_job(pool, s)) {
            run_tasks(pool, wa.index);
            leave_job(pool);
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
    atomic_init(&pool->state, JOB_CLOSED); /* generation 0: no job */
    atomic_init(&pool->stop, false);
    atomic_init(&pool->next_task, 0);
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
    atomic_store(&pool->stop, true);
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
    /* The previous job is closed with no references left, so no worker reads these now. */
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    const uint32_t gen = JOB_GEN(atomic_load_explicit(&pool->state, memory_order_relaxed)) + 1;
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->state, (uint64_t)gen << 32, memory_order_release);
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->mu);

    run_tasks(pool, 0);

    /* Every task is claimed: close the job and wait for the workers still running one. */
    uint64_t s = atomic_fetch_or_explicit(&pool->state, JOB_CLOSED, memory_order_acq_rel);
    for (spin_t sp = spin_start(); JOB_REFS(s) > 0 && spin_again(&sp);)
        s = atomic_load_explicit(&pool->state, memory_order_acquire);
    if (JOB_REFS(s) > 0) {
        pthread_mutex_lock(&pool->mu);
        while (JOB_REFS(atomic_load(&pool->state)) > 0)
            pthread_cond_wait(&pool->done_cv, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
    }
    restore_fp_state(fp);
}
