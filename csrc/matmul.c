/* matmul.c — y = x @ W.T over a quantized W, and whole-tensor dequantization.
 *
 * x is quantized once per call to the activation format W's dot product pairs with, then W's
 * rows are split across the pool. Activations are consumed in column blocks that stay in L2
 * while each thread streams its rows, and JL_NC_MAX columns at a time share one unpack of a
 * weight row.
 *
 * From GEMM_MIN_ROWS activation rows on, types with a GEMM (traits->gemm) take it instead: the
 * quantized rows are repacked once into the kernel's layout, and each thread repacks its weight
 * rows a strip of panels at a time (cache-resident, so no repacked copy of any tensor is kept)
 * and runs the strip against every activation row. Its outputs equal vec_dot's bit for bit. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quant/traits.h"

#define COL_BLOCK 64   /* activation rows kept hot in L2 per pass over a thread's weight rows */
#define GEMM_MIN_ROWS 8   /* below this the weight repacking costs more than the GEMM saves (measured: at 8 rows it wins or ties) */
#define STRIP_PANELS 16   /* weight panels a GEMM thread repacks and keeps in L2 at a time */

typedef struct {
    const jl_type_traits *wt;  /* weight type */
    const jl_type_traits *at;  /* activation type */
    const uint8_t *w;          /* (rows, w_row_bytes) */
    size_t w_row_bytes;
    int64_t rows, k;
    const float *x;            /* (n, k) */
    int64_t n;
    uint8_t *xq;               /* (n, xq_row_bytes): x in the activation format */
    size_t xq_row_bytes;
    float *y;                  /* (n, rows) */
    uint8_t *xp;               /* (n, xp_row_bytes): the GEMM's packed activation rows */
    size_t xp_row_bytes;
    uint8_t *panels;           /* (n_threads, STRIP_PANELS, panel_bytes): each thread's repacked weights */
    size_t panel_bytes;
} matmul_job;

static void quantize_task(void *ctx, int ith, int nth) {
    matmul_job *job = ctx;
    int64_t lo, hi;
    jl_split(job->n, ith, nth, 1, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        job->at->from_float(job->x + i * job->k, job->xq + i * job->xq_row_bytes, job->k);
}

static void dot_task(void *ctx, int ith, int nth) {
    matmul_job *job = ctx;
    int64_t r_lo, r_hi;
    jl_split(job->rows, ith, nth, 1, &r_lo, &r_hi);
    jl_vec_dot_fn vec_dot = job->wt->vec_dot;
    float s[JL_NC_MAX];
    for (int64_t c0 = 0; c0 < job->n; c0 += COL_BLOCK) {
        int64_t c_end = c0 + COL_BLOCK < job->n ? c0 + COL_BLOCK : job->n;
        for (int64_t r = r_lo; r < r_hi; r++) {
            const uint8_t *w_row = job->w + (size_t)r * job->w_row_bytes;
            for (int64_t c = c0; c < c_end; c += JL_NC_MAX) {
                int nc = c_end - c < JL_NC_MAX ? (int)(c_end - c) : JL_NC_MAX;
                vec_dot(job->k, w_row, job->xq + (size_t)c * job->xq_row_bytes, job->xq_row_bytes, nc, s);
                for (int j = 0; j < nc; j++) job->y[(c + j) * job->rows + r] = s[j];
            }
        }
    }
}

static void pack_x_task(void *ctx, int ith, int nth) {
    matmul_job *job = ctx;
    int64_t lo, hi;
    jl_split(job->n, ith, nth, 1, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        job->wt->gemm->pack_x(job->xq + i * job->xq_row_bytes, job->k, job->xp + i * job->xp_row_bytes);
}

/* A thread repacks STRIP_PANELS panels of its rows at a time, then runs them against COL_BLOCK
 * activation rows at a time, so both the strip and the column block stay in L2. */
static void gemm_task(void *ctx, int ith, int nth) {
    matmul_job *job = ctx;
    const jl_gemm_kernels *gemm = job->wt->gemm;
    const int64_t pr = gemm->panel_rows, strip_rows = STRIP_PANELS * pr;
    int64_t r_lo, r_hi;
    jl_split(job->rows, ith, nth, pr, &r_lo, &r_hi);
    uint8_t *strip = job->panels + (size_t)ith * STRIP_PANELS * job->panel_bytes;  /* (STRIP_PANELS, panel_bytes) */
    for (int64_t r0 = r_lo; r0 < r_hi; r0 += strip_rows) {
        int64_t r_end = r0 + strip_rows < r_hi ? r0 + strip_rows : r_hi;
        for (int64_t r = r0; r < r_end; r += pr)
            gemm->pack_w(job->w + (size_t)r * job->w_row_bytes, job->w_row_bytes, r_end - r < pr ? r_end - r : pr,
                         job->k, strip + (size_t)((r - r0) / pr) * job->panel_bytes);
        for (int64_t c0 = 0; c0 < job->n; c0 += COL_BLOCK) {
            int64_t nc = job->n - c0 < COL_BLOCK ? job->n - c0 : COL_BLOCK;
            for (int64_t r = r0; r < r_end; r += pr)
                gemm->panel_dot(job->k, strip + (size_t)((r - r0) / pr) * job->panel_bytes, r_end - r < pr ? r_end - r : pr,
                                job->xp + (size_t)c0 * job->xp_row_bytes, job->xp_row_bytes, nc,
                                job->y + c0 * job->rows + r, (size_t)job->rows);
        }
    }
}

/* x is already quantized into job->xq */
static jl_status run_gemm(matmul_job *job, int n_threads) {
    const jl_gemm_kernels *gemm = job->wt->gemm;
    int nth = jl_resolve_threads(n_threads);
    uint8_t *packed_x = NULL;
    job->xp = job->xq;
    job->xp_row_bytes = job->xq_row_bytes;
    if (gemm->pack_x) {
        job->xp_row_bytes = gemm->x_bytes(job->k);
        job->xp = packed_x = aligned_alloc(64, job->xp_row_bytes * (size_t)job->n);
    }
    job->panel_bytes = (gemm->panel_bytes(job->k) + 63) / 64 * 64;
    job->panels = aligned_alloc(64, job->panel_bytes * STRIP_PANELS * (size_t)nth);
    jl_status st = JL_OK;
    if (!job->xp || !job->panels)
        st = jl_fail(JL_ERR_NOMEM, "matmul: no memory for the GEMM's packed rows (%lld x %zu bytes)",
                     (long long)job->n, job->xp_row_bytes);
    if (st == JL_OK && packed_x) st = jl_parallel(n_threads, pack_x_task, job);
    if (st == JL_OK) st = jl_parallel(nth, gemm_task, job);
    free(packed_x);
    free(job->panels);
    return st;
}

static jl_status check_row_type(const jl_type_traits *t, int type, int64_t k, const char *what) {
    if (!t) return jl_fail(JL_ERR_UNSUPPORTED, "%s: tensor type id %d is not supported", what, type);
    if (k <= 0 || k % t->block_size != 0)
        return jl_fail(JL_ERR_INVALID_ARG, "%s: row length %lld is not a positive multiple of the %s block size %lld",
                       what, (long long)k, t->name, (long long)t->block_size);
    return JL_OK;
}

jl_status jl_matmul(int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                    const float *x, int64_t n, float *y, int n_threads) {
    const jl_type_traits *wt = jl_traits(type);
    jl_status st = check_row_type(wt, type, k, "matmul");
    if (st != JL_OK) return st;
    if (!wt->vec_dot) return jl_fail(JL_ERR_UNSUPPORTED, "matmul: no dot product for %s weights", wt->name);
    const jl_type_traits *at = jl_traits(wt->activation);
    if ((st = check_row_type(at, wt->activation, k, "matmul activations")) != JL_OK) return st;
    if (rows <= 0 || n <= 0)
        return jl_fail(JL_ERR_INVALID_ARG, "matmul: rows (%lld) and n (%lld) must be positive",
                       (long long)rows, (long long)n);
    size_t w_row_bytes = jl_row_bytes(wt, k);
    if ((size_t)rows > w_bytes / w_row_bytes)
        return jl_fail(JL_ERR_INVALID_ARG, "matmul: %lld rows of %zu bytes exceed the %zu bytes of W",
                       (long long)rows, w_row_bytes, w_bytes);

    matmul_job job = {
        .wt = wt, .at = at, .w = w, .w_row_bytes = w_row_bytes, .rows = rows, .k = k,
        .x = x, .n = n, .xq_row_bytes = jl_row_bytes(at, k), .y = y,
    };
    uint8_t *scratch = NULL;
    if (wt->activation == JL_TYPE_F32) {
        job.xq = (uint8_t *)x;  /* float dot products read x as it is */
    } else {
        scratch = aligned_alloc(64, (job.xq_row_bytes * (size_t)n + 63) / 64 * 64);
        if (!scratch) return jl_fail(JL_ERR_NOMEM, "matmul: no memory for %lld quantized activation rows", (long long)n);
        job.xq = scratch;
        if (n == 1) quantize_task(&job, 0, 1);
        else if ((st = jl_parallel(n_threads, quantize_task, &job)) != JL_OK) goto done;
    }
    if (wt->gemm && n >= GEMM_MIN_ROWS) st = run_gemm(&job, n_threads);
    else st = jl_parallel(n_threads, dot_task, &job);
done:
    free(scratch);
    return st;
}

typedef struct {
    const jl_type_traits *t;
    const uint8_t *src;
    float *dst;
    int64_t n_blocks;
} dequantize_job;

static void dequantize_task(void *ctx, int ith, int nth) {
    dequantize_job *job = ctx;
    int64_t lo, hi;
    jl_split(job->n_blocks, ith, nth, 64, &lo, &hi);
    if (hi > lo)
        job->t->to_float(job->src + lo * job->t->type_size, job->dst + lo * job->t->block_size,
                         (hi - lo) * job->t->block_size);
}

jl_status jl_dequantize(int type, const void *src, size_t src_bytes, float *dst, int64_t n,
                        int n_threads) {
    const jl_type_traits *t = jl_traits(type);
    jl_status st = check_row_type(t, type, n, "dequantize");
    if (st != JL_OK) return st;
    if (jl_row_bytes(t, n) > src_bytes)
        return jl_fail(JL_ERR_INVALID_ARG, "dequantize: %lld %s values need %zu bytes, got %zu",
                       (long long)n, t->name, jl_row_bytes(t, n), src_bytes);
    dequantize_job job = {.t = t, .src = src, .dst = dst, .n_blocks = n / t->block_size};
    return jl_parallel(n_threads, dequantize_task, &job);
}

jl_status jl_quantize_rows(int act_type, const float *x, int64_t n, int64_t k, void *dst,
                           size_t dst_bytes) {
    const jl_type_traits *t = jl_traits(act_type);
    jl_status st = check_row_type(t, act_type, k, "quantize");
    if (st != JL_OK) return st;
    if (!t->from_float) return jl_fail(JL_ERR_UNSUPPORTED, "quantize: %s is not an activation format", t->name);
    size_t row_bytes = jl_row_bytes(t, k);
    if (n < 0 || (size_t)n > dst_bytes / row_bytes)
        return jl_fail(JL_ERR_INVALID_ARG, "quantize: %lld rows of %zu bytes exceed the %zu-byte buffer",
                       (long long)n, row_bytes, dst_bytes);
    for (int64_t i = 0; i < n; i++) t->from_float(x + i * k, (uint8_t *)dst + i * row_bytes, k);
    return JL_OK;
}
