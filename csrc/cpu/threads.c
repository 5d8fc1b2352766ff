/* threads.c — the one persistent thread pool.
 *
 * Workers are created on first need and live for the process. A job wakes them through a
 * generation counter: they spin briefly after each job (a decode step dispatches hundreds of
 * small jobs back to back, too fast for a condition-variable wake-up each), then sleep. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
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
#define SPIN_NS 2000000   /* how long an idle worker spins before it sleeps: 2 ms */

typedef struct {
    pthread_mutex_t submit_lock;  /* one job at a time, whichever Python thread submits it */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    pthread_t workers[MAX_THREADS];
    unsigned start_generation[MAX_THREADS];  /* the generation a worker was created in */
    int n_workers;                /* worker i runs share ith = i + 1 */
    atomic_uint generation;
    atomic_int sleepers;
    atomic_int remaining;         /* shares still running in the current job */
    jl_task_fn fn;
    void *ctx;
    int nth;
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

static unsigned wait_for_job(unsigned seen) {
    int64_t spin_until = now_ns() + SPIN_NS;
    for (unsigned i = 1;; i++) {
        unsigned gen = atomic_load(&pool.generation);
        if (gen != seen) return gen;
        cpu_relax();
        if ((i & 255) == 0 && now_ns() > spin_until) break;
    }
    pthread_mutex_lock(&pool.sleep_lock);
    atomic_fetch_add(&pool.sleepers, 1);
    unsigned gen;
    while ((gen = atomic_load(&pool.generation)) == seen)
        pthread_cond_wait(&pool.wake, &pool.sleep_lock);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.sleep_lock);
    return gen;
}

static void *worker_main(void *arg) {
    int ith = (int)(intptr_t)arg;
    /* not the current generation: a job may have been published since pthread_create */
    unsigned seen = pool.start_generation[ith - 1];
    for (;;) {
        seen = wait_for_job(seen);
        if (ith < pool.nth) {
            pool.fn(pool.ctx, ith, pool.nth);
            atomic_fetch_sub(&pool.remaining, 1);
        }
    }
    return NULL;
}

/* After fork() only the forking thread exists: the child starts with an empty pool. */
static void reset_after_fork(void) {
    pthread_mutex_init(&pool.submit_lock, NULL);
    pthread_mutex_init(&pool.sleep_lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.n_workers = 0;
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.remaining, 0);
}

static void install_fork_handler(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

static jl_status grow_pool(int n_workers) {
    static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
    pthread_once(&fork_handler_once, install_fork_handler);
    while (pool.n_workers < n_workers) {
        int ith = pool.n_workers + 1;
        pool.start_generation[pool.n_workers] = atomic_load(&pool.generation);
        if (pthread_create(&pool.workers[pool.n_workers], NULL, worker_main, (void *)(intptr_t)ith))
            return jl_fail(JL_ERR_INTERNAL, "could not start worker thread %d", ith);
        pthread_detach(pool.workers[pool.n_workers]);
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
    pool.nth = nth;
    atomic_store(&pool.remaining, nth - 1);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.sleep_lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.sleep_lock);
    }
    fn(ctx, 0, nth);
    for (unsigned i = 1; atomic_load(&pool.remaining) > 0; i++) {
        cpu_relax();
        if ((i & 1023) == 0) sched_yield();
    }
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
