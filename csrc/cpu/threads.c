/* threads.c — the one persistent thread pool.
 *
 * Workers are created on first need and live for the process. A job is published as one 64-bit
 * ticket {generation, nth, next share}; every thread (the caller included) claims shares by a
 * compare-and-swap on that word, so a share runs exactly once and only while its job is live:
 * a worker that wakes late, or for a job that has ended, finds the generation moved on or no
 * share left, and never touches the job's fields. The caller returns once every claimed share
 * has finished.
 *
 * Waiting is spin, then yield, then sleep: a decode step dispatches hundreds of small jobs back
 * to back, too fast for a sleep and wake-up each, but with more threads than free cores (an
 * oversubscribed n_threads, or a core held by another process) spinning threads would take the
 * time of the ones holding work. */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "internal.h"

#define MAX_THREADS 256
#define SPIN_PAUSES 4096     /* pause-loop iterations before a waiter starts yielding its core: ~20-40 us */
#define IDLE_NS 2000000      /* how long an idle worker stays awake after a job: 2 ms */
#define CALLER_YIELDS 64     /* yields before the caller sleeps until the last share ends */

/* ticket = generation << 32 | nth << 16 | next share to claim */
static inline uint32_t ticket_generation(uint64_t t) { return (uint32_t)(t >> 32); }
static inline int ticket_nth(uint64_t t) { return (int)((t >> 16) & 0xffff); }
static inline int ticket_next(uint64_t t) { return (int)(t & 0xffff); }

typedef struct {
    pthread_mutex_t submit_lock;  /* one job at a time, whichever Python thread submits it */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    int n_workers;
    atomic_uint_fast64_t ticket;
    atomic_int sleepers;          /* workers asleep on `wake` */
    atomic_int unfinished;        /* shares of the live job not yet finished; the caller's futex word */
    atomic_int caller_asleep;
    jl_task_fn fn;                /* the live job: written before its ticket, read only after a claim */
    void *ctx;
} thread_pool;

static thread_pool pool = {
    .submit_lock = PTHREAD_MUTEX_INITIALIZER,
    .sleep_lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};
static atomic_int default_threads;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Claim a share of job `generation`: its index, or -1 when the job has none left or has ended. */
static int claim_share(uint32_t generation) {
    uint64_t t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
    while (ticket_generation(t) == generation && ticket_next(t) < ticket_nth(t))
        if (atomic_compare_exchange_weak_explicit(&pool.ticket, &t, t + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return ticket_next(t);
    return -1;
}

static void finish_share(void) {
    if (atomic_fetch_sub(&pool.unfinished, 1) == 1 && atomic_load(&pool.caller_asleep))
        syscall(SYS_futex, &pool.unfinished, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Run shares of job `generation` until none is left to claim. */
static void run_shares(uint32_t generation, int nth) {
    for (int ith; (ith = claim_share(generation)) >= 0;) {
        pool.fn(pool.ctx, ith, nth);
        finish_share();
    }
}

/* Wait for a ticket of another generation than `seen`. */
static uint64_t wait_for_job(uint32_t seen) {
    const int64_t awake_until = now_ns() + IDLE_NS;
    for (unsigned i = 1;; i++) {
        uint64_t t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
        if (ticket_generation(t) != seen) return t;
        if (i < SPIN_PAUSES) {
            cpu_relax();
        } else {
            sched_yield();
            if (now_ns() > awake_until) break;
        }
    }
    pthread_mutex_lock(&pool.sleep_lock);
    atomic_fetch_add(&pool.sleepers, 1);  /* seq_cst, paired with the publisher's ticket store */
    uint64_t t;
    while (ticket_generation(t = atomic_load(&pool.ticket)) == seen)
        pthread_cond_wait(&pool.wake, &pool.sleep_lock);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.sleep_lock);
    return t;
}

static void *worker_main(void *arg) {
    uint32_t seen = (uint32_t)(uintptr_t)arg;  /* the generation when the worker was created */
    for (;;) {
        uint64_t t = wait_for_job(seen);
        seen = ticket_generation(t);
        run_shares(seen, ticket_nth(t));
    }
    return NULL;
}

/* The caller, once no share is left to claim, waits for the claimed ones to finish. */
static void wait_for_shares(void) {
    for (unsigned i = 1; atomic_load_explicit(&pool.unfinished, memory_order_acquire) > 0; i++) {
        if (i < SPIN_PAUSES) {
            cpu_relax();
        } else if (i < SPIN_PAUSES + CALLER_YIELDS) {
            sched_yield();
        } else {
            atomic_store(&pool.caller_asleep, 1);  /* seq_cst, paired with finish_share's decrement */
            int left = atomic_load(&pool.unfinished);
            if (left > 0) syscall(SYS_futex, &pool.unfinished, FUTEX_WAIT_PRIVATE, left, NULL, NULL, 0);
            atomic_store(&pool.caller_asleep, 0);
        }
    }
}

/* After fork() only the forking thread exists: the child starts with an empty pool. */
static void reset_after_fork(void) {
    pthread_mutex_init(&pool.submit_lock, NULL);
    pthread_mutex_init(&pool.sleep_lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.n_workers = 0;
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.unfinished, 0);
    atomic_store(&pool.caller_asleep, 0);
}

static void install_fork_handler(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

static jl_status grow_pool(int n_workers) {
    static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
    pthread_once(&fork_handler_once, install_fork_handler);
    while (pool.n_workers < n_workers) {
        pthread_t worker;
        uintptr_t generation = ticket_generation(atomic_load(&pool.ticket));
        if (pthread_create(&worker, NULL, worker_main, (void *)generation))
            return jl_fail(JL_ERR_INTERNAL, "could not start worker thread %d", pool.n_workers + 1);
        pthread_detach(worker);
        pool.n_workers++;
    }
    return JL_OK;
}

jl_status jl_parallel(int n_threads, jl_task_fn fn, void *ctx) {
    int nth = jl_resolve_threads(n_threads);
    if (nth == 1) {
        fn(ctx, 0, 1);
        return JL_OK;
    }
    pthread_mutex_lock(&pool.submit_lock);
    jl_status st = grow_pool(nth - 1);
    if (st != JL_OK) {
        pthread_mutex_unlock(&pool.submit_lock);
        return st;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store(&pool.unfinished, nth);
    uint32_t generation = ticket_generation(atomic_load(&pool.ticket)) + 1;
    atomic_store(&pool.ticket, (uint64_t)generation << 32 | (uint64_t)nth << 16);  /* seq_cst: see sleepers */
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.sleep_lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.sleep_lock);
    }
    run_shares(generation, nth);
    wait_for_shares();
    pthread_mutex_unlock(&pool.submit_lock);
    return JL_OK;
}

/* Distinct (package, core) pairs among the CPUs this process may run on. */
int jl_physical_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    long seen[MAX_THREADS];
    int n_seen = 0, n_cpus = CPU_COUNT(&set);
    for (int cpu = 0; cpu < CPU_SETSIZE && n_seen < MAX_THREADS; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        char path[96];
        long core = -1, package = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        FILE *f = fopen(path, "r");
        if (!f || fscanf(f, "%ld", &core) != 1) core = -1;
        if (f) fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        f = fopen(path, "r");
        if (!f || fscanf(f, "%ld", &package) != 1) package = 0;
        if (f) fclose(f);
        if (core < 0) return n_cpus > 0 ? n_cpus : 1;  /* no topology: count logical CPUs */
        long key = package * 100000 + core;
        int known = 0;
        for (int i = 0; i < n_seen; i++) known |= seen[i] == key;
        if (!known) seen[n_seen++] = key;
    }
    return n_seen > 0 ? n_seen : 1;
}

int jl_default_threads(void) {
    int n = atomic_load(&default_threads);
    if (n <= 0) {
        n = jl_physical_cores();
        atomic_store(&default_threads, n);
    }
    return n;
}

jl_status jl_set_default_threads(int n_threads) {
    if (n_threads < 1 || n_threads > MAX_THREADS)
        return jl_fail(JL_ERR_INVALID_ARG, "n_threads must be in [1, %d], got %d", MAX_THREADS, n_threads);
    atomic_store(&default_threads, n_threads);
    return JL_OK;
}

int jl_resolve_threads(int n_threads) {
    if (n_threads <= 0) return jl_default_threads();
    return n_threads > MAX_THREADS ? MAX_THREADS : n_threads;
}

/* ---- self-check ------------------------------------------------------------------------------ */

typedef struct {
    atomic_int runs[MAX_THREADS];  /* (nth,) runs of each share */
    atomic_int strays;             /* shares that ran with another job's nth or after the job ended */
    atomic_int live;
    int nth;
    uint64_t rng;
} stress_job;

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void stress_task(void *arg, int ith, int nth) {
    stress_job *job = arg;
    if (!atomic_load(&job->live) || nth != job->nth) atomic_fetch_add(&job->strays, 1);
    uint64_t spin_state = job->rng + (uint64_t)ith;
    for (uint64_t i = splitmix64(&spin_state) % 512; i > 0; i--) cpu_relax();  /* widen the windows */
    atomic_fetch_add(&job->runs[ith], 1);
}

jl_status jl_pool_stress(int64_t n_jobs, uint64_t seed, int64_t *n_bad) {
    static const int thread_counts[] = {1, 2, 3, 5, 8, 16};
    /* on the heap and freed only after a grace period: a share that outlives its job must not hit freed memory */
    stress_job *job = calloc(1, sizeof *job);
    if (!job) return jl_fail(JL_ERR_NOMEM, "pool stress: out of memory");
    uint64_t rng = seed;
    int64_t bad = 0;
    jl_status st = JL_OK;
    for (int64_t j = 0; j < n_jobs && st == JL_OK; j++) {
        job->nth = thread_counts[splitmix64(&rng) % 6];
        job->rng = splitmix64(&rng);
        for (int i = 0; i < MAX_THREADS; i++) atomic_store(&job->runs[i], 0);
        atomic_store(&job->strays, 0);
        atomic_store(&job->live, 1);
        st = jl_parallel(job->nth, stress_task, job);
        atomic_store(&job->live, 0);
        int ok = atomic_load(&job->strays) == 0;
        for (int i = 0; i < MAX_THREADS; i++) ok &= atomic_load(&job->runs[i]) == (i < job->nth);
        bad += !ok;
    }
    struct timespec grace = {0, 50 * 1000 * 1000};
    nanosleep(&grace, NULL);
    bad += atomic_load(&job->strays) != 0;
    free(job);
    *n_bad = bad;
    return st;
}
