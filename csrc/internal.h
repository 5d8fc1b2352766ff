/* internal.h — helpers shared by the C core, not seen by the binding. */
#ifndef JANLIB_INTERNAL_H
#define JANLIB_INTERNAL_H

#include "janlib.h"

/* Record a message for jl_last_error() and return the status, so callers write
 * `return jl_fail(JL_ERR_INVALID_ARG, "k=%lld ...", ...);` */
jl_status jl_fail(jl_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The persistent pool runs fn(ctx, ith, nth) once for each ith in [0, nth), on whichever of its
 * threads (the caller's included) claims the share, and returns when all are done. */
typedef void (*jl_task_fn)(void *ctx, int ith, int nth);
jl_status jl_parallel(int n_threads, jl_task_fn fn, void *ctx);
int jl_resolve_threads(int n_threads);

/* Contiguous share [*lo, *hi) of n items for worker ith of nth, in multiples of `quantum`. */
static inline void jl_split(int64_t n, int ith, int nth, int64_t quantum, int64_t *lo, int64_t *hi) {
    int64_t units = (n + quantum - 1) / quantum;
    int64_t per = units / nth, extra = units % nth;
    int64_t start = ith * per + (ith < extra ? ith : extra);
    int64_t count = per + (ith < extra ? 1 : 0);
    *lo = start * quantum < n ? start * quantum : n;
    *hi = (start + count) * quantum < n ? (start + count) * quantum : n;
}

#endif
