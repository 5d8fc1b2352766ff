/* matmul.c — y = x @ W.T over a quantized W, and whole-tensor dequantization.
 *
 * x is quantized once per call to the activation format W's dot product pairs with, then W's
 * rows are split across the pool. Weights of one type that read the same x (a layer's q, k and v)
 * share that quantized x and one parallel step: their rows are shared out as one list. Activations are consumed in column blocks that stay in L2
 * while each thread streams its rows, and JL_NC_MAX columns at a time share one unpack of a
 * weight row.
 *
 * From GEMM_MIN_ROWS activation rows on, types with a GEMM (traits->gemm) take it instead: the
 * quantized rows are repacked once into the kernel's layout, and each thread repacks its weight
 * rows a strip of panels at a time (cache-resident) and runs the strip against every activation
 * row. Where the caller gives a packed-weight cache and the type's panels are worth keeping
 * (gemm->keep_packed), a tensor is packed whole at its first use and kept, so the GEMM pays from
 * CACHED_GEMM_MIN_ROWS rows, decode included; for many rows, kept nibble panels are widened a
 * strip at a time for a kernel with no unpacking. Types whose kernel reads W's rows as they are
 * (no gemm->pack_w: the float types) use W itself as the kept panels. Its outputs equal vec_dot's
 * bit for bit. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "quant/traits.h"

#define COL_BLOCK 64   /* activation rows kept hot in L2 per pass over a thread's weight rows */
#define GEMM_MIN_ROWS 8   /* below this the weight repacking costs more than the GEMM saves (measured: at 8 rows it wins or ties) */
#define CACHED_GEMM_MIN_ROWS 1   /* with packed weights kept (measured: from 1 row the GEMM wins) */
#define IN_PLACE_GEMM_MIN_ROWS 2   /* kernels that read W's rows unpacked (the float types) */
#define STRIP_PANELS 16   /* weight panels a GEMM thread repacks and keeps in L2 at a time */
#define WIDEN_MIN_ROWS 64   /* from here kept nibble panels are widened per strip: the tiles then skip the unpacking */

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
    uint8_t *panels;           /* (n_threads, STRIP_PANELS, strip_panel_bytes): each thread's repacked weights */
    const uint8_t *packed;     /* (n_panels, panel_bytes): all of them, kept; NULL: repacked in strips */
    size_t panel_bytes;
    int widen;                 /* kept panels are widened into the strips (gemm->widen) */
    size_t strip_panel_bytes;  /* panel_bytes, or the widened size */
    jl_row_fill_fn fill_row;   /* makes row r of x first, or NULL */
    void *fill_arg;
} matmul_job;

/* x's rows (made by fill_row where given) in the activation format (xq), then in the GEMM's packing (xp) where it has one */
static void prepare_x_task(void *ctx, int ith, int nth) {
    matmul_job *job = ctx;
    int64_t lo, hi;
    jl_split(job->n, ith, nth, 1, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        if (job->fill_row) job->fill_row(job->fill_arg, i);
        if (job->xq != (const uint8_t *)job->x)
            job->at->from_float(job->x + i * job->k, job->xq + i * job->xq_row_bytes, job->k);
        if (job->xp != job->xq) job->wt->gemm->pack_x(job->xq + i * job->xq_row_bytes, job->k, job->xp + i * job->xp_row_bytes);
    }
}

/* weight rows [r_lo, r_hi) against every activation row, one dot product per (row, column) */
static void dot_rows(const matmul_job *job, int64_t r_lo, int64_t r_hi) {
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

/* the weights' panels, the last one possibly short */
static int64_t n_panels(const matmul_job *job) {
    return (job->rows + job->wt->gemm->panel_rows - 1) / job->wt->gemm->panel_rows;
}

/* panels [p_lo, p_hi) of the weights, packed into out (p_hi - p_lo, panel_bytes) */
static void pack_panels(const matmul_job *job, int64_t p_lo, int64_t p_hi, uint8_t *out) {
    const jl_gemm_kernels *gemm = job->wt->gemm;
    const int64_t pr = gemm->panel_rows;
    for (int64_t p = p_lo; p < p_hi; p++) {
        const int64_t r = p * pr;
        gemm->pack_w(job->w + (size_t)r * job->w_row_bytes, job->w_row_bytes, job->rows - r < pr ? job->rows - r : pr,
                     job->k, out + (size_t)(p - p_lo) * job->panel_bytes);
    }
}

/* A thread takes STRIP_PANELS panels of its rows at a time (kept, or repacked into its strip),
 * then runs them against COL_BLOCK activation rows at a time, so both stay in L2. */
static void gemm_rows(const matmul_job *job, int64_t r_lo, int64_t r_hi, int ith) {
    const jl_gemm_kernels *gemm = job->wt->gemm;
    const int64_t pr = gemm->panel_rows, strip_rows = STRIP_PANELS * pr;
    const size_t stride = job->strip_panel_bytes;
    __typeof__(gemm->panel_dot) panel_dot = job->widen ? gemm->panel_dot_wide : gemm->panel_dot;
    uint8_t *own = job->panels ? job->panels + (size_t)ith * STRIP_PANELS * stride : NULL;
    for (int64_t r0 = r_lo; r0 < r_hi; r0 += strip_rows) {
        int64_t r_end = r0 + strip_rows < r_hi ? r0 + strip_rows : r_hi;
        const int64_t p_lo = r0 / pr, p_hi = (r_end + pr - 1) / pr;
        const uint8_t *strip = own;  /* (STRIP_PANELS, stride) */
        if (!job->packed) pack_panels(job, p_lo, p_hi, own);
        else if (job->widen)
            for (int64_t p = p_lo; p < p_hi; p++) gemm->widen(job->k, job->packed + (size_t)p * job->panel_bytes, own + (size_t)(p - p_lo) * stride);
        else strip = job->packed + (size_t)p_lo * job->panel_bytes;
        for (int64_t c0 = 0; c0 < job->n; c0 += COL_BLOCK) {
            int64_t nc = job->n - c0 < COL_BLOCK ? job->n - c0 : COL_BLOCK;
            for (int64_t r = r0; r < r_end; r += pr)
                panel_dot(job->k, strip + (size_t)((r - r0) / pr) * stride, r_end - r < pr ? r_end - r : pr,
                          job->xp + (size_t)c0 * job->xp_row_bytes, job->xp_row_bytes, nc,
                          job->y + c0 * job->rows + r, (size_t)job->rows);
        }
    }
}

/* The weights of one jl_matmul_shared call, each a job over the same activations, their rows
 * cut into units (a GEMM panel's rows, or one row) that the pool shares out as one list. */
typedef struct {
    matmul_job *jobs;  /* (n_jobs,) */
    int n_jobs;
    int gemm;          /* the jobs run gemm_rows, else dot_rows */
    int64_t unit_rows;
    int64_t n_units;   /* of all the jobs */
} shared_job;

static void shared_task(void *ctx, int ith, int nth) {
    const shared_job *sj = ctx;
    int64_t lo, hi;
    jl_split(sj->n_units, ith, nth, 1, &lo, &hi);
    for (int64_t j = 0, first = 0; j < sj->n_jobs && first < hi; j++) {  /* first: job j's first unit */
        const matmul_job *job = &sj->jobs[j];
        const int64_t units = (job->rows + sj->unit_rows - 1) / sj->unit_rows;
        const int64_t u_lo = lo > first ? lo : first, u_hi = hi < first + units ? hi : first + units;
        if (u_lo < u_hi) {
            const int64_t r_lo = (u_lo - first) * sj->unit_rows, r_end = (u_hi - first) * sj->unit_rows;
            const int64_t r_hi = r_end < job->rows ? r_end : job->rows;
            if (sj->gemm) gemm_rows(job, r_lo, r_hi, ith);
            else dot_rows(job, r_lo, r_hi);
        }
        first += units;
    }
}

/* ---- the packed-weight cache: an open-addressing table keyed by the weights' address ---- */

typedef struct {
    const void *w;                /* NULL: empty slot */
    const jl_gemm_kernels *gemm;  /* the layout (per ISA) */
    int64_t rows, k;
    uint8_t *panels;              /* (n_panels, panel_bytes) */
} packed_entry;

struct jl_packed_cache {
    pthread_mutex_t lock;
    packed_entry *slots;  /* (capacity,) */
    size_t capacity, used, bytes;
};

jl_packed_cache *jl_packed_cache_create(void) {
    jl_packed_cache *c = calloc(1, sizeof *c);
    if (c) pthread_mutex_init(&c->lock, NULL);
    return c;
}

void jl_packed_cache_free(jl_packed_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->capacity; i++) free(c->slots[i].panels);
    free(c->slots);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

size_t jl_packed_cache_bytes(jl_packed_cache *c) {
    pthread_mutex_lock(&c->lock);
    size_t bytes = c->bytes;
    pthread_mutex_unlock(&c->lock);
    return bytes;
}

static packed_entry *find_slot(packed_entry *slots, size_t capacity, const void *w, const jl_gemm_kernels *gemm,
                               int64_t rows, int64_t k) {
    size_t i = ((uintptr_t)w >> 6) * 0x9E3779B97F4A7C15ull >> 20;
    for (;; i++) {
        packed_entry *e = &slots[i & (capacity - 1)];
        if (!e->w || (e->w == w && e->gemm == gemm && e->rows == rows && e->k == k)) return e;
    }
}

static void pack_task(void *ctx, int ith, int nth) {
    const matmul_job *job = ctx;
    int64_t lo, hi;
    jl_split(n_panels(job), ith, nth, 1, &lo, &hi);
    pack_panels(job, lo, hi, (uint8_t *)job->packed + (size_t)lo * job->panel_bytes);
}

/* The kept panels replace the weights' own bytes, which matmul no longer reads: let the kernel
 * reclaim their whole pages (a file's pages leave the process's resident memory and are read
 * again if something else needs them; anonymous memory is swapped, or kept without swap). */
static void release_source(const void *w, size_t bytes) {
#ifdef MADV_PAGEOUT
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)w + page - 1) / page * page, hi = ((uintptr_t)w + bytes) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_PAGEOUT);  /* advice only: a refusal changes nothing */
#else
    (void)w, (void)bytes;
#endif
}

/* job->packed <- the kept panels of job's weights, packed now if this is their first use */
static jl_status find_packed(jl_packed_cache *c, matmul_job *job, int n_threads) {
    const jl_gemm_kernels *gemm = job->wt->gemm;
    jl_status st = JL_OK;
    pthread_mutex_lock(&c->lock);
    if (2 * (c->used + 1) > c->capacity) {  /* keep the table at most half full */
        size_t capacity = c->capacity ? 2 * c->capacity : 256;
        packed_entry *slots = calloc(capacity, sizeof *slots);
        if (!slots) {
            st = jl_fail(JL_ERR_NOMEM, "matmul: no memory for the packed-weight table");
            goto done;
        }
        for (size_t i = 0; i < c->capacity; i++)
            if (c->slots[i].w) *find_slot(slots, capacity, c->slots[i].w, c->slots[i].gemm, c->slots[i].rows, c->slots[i].k) = c->slots[i];
        free(c->slots);
        c->slots = slots;
        c->capacity = capacity;
    }
    packed_entry *e = find_slot(c->slots, c->capacity, job->w, gemm, job->rows, job->k);
    if (!e->w) {
        const size_t bytes = job->panel_bytes * (size_t)n_panels(job);
        uint8_t *panels = aligned_alloc(64, bytes);
        if (!panels) {
            st = jl_fail(JL_ERR_NOMEM, "matmul: no memory to keep %zu bytes of packed weights", bytes);
            goto done;
        }
        job->packed = panels;
        if ((st = jl_parallel(n_threads, pack_task, job)) != JL_OK) {
            free(panels);
            goto done;
        }
        release_source(job->w, job->w_row_bytes * (size_t)job->rows);
        *e = (packed_entry){.w = job->w, .gemm = gemm, .rows = job->rows, .k = job->k, .panels = panels};
        c->used++;
        c->bytes += bytes;
    }
    job->packed = e->panels;
done:
    pthread_mutex_unlock(&c->lock);
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
    return jl_matmul_cached(NULL, type, w, w_bytes, rows, k, x, n, y, n_threads);
}

jl_status jl_matmul_cached(jl_packed_cache *cache, int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                           const float *x, int64_t n, float *y, int n_threads) {
    const jl_matmul_weight weight = {.type = type, .w = w, .w_bytes = w_bytes, .rows = rows, .y = y};
    return jl_matmul_shared(cache, &weight, 1, k, x, n, NULL, NULL, n_threads);
}

/* Weights of different types read x in different formats: each takes it on its own (x made with the first). */
static jl_status matmul_each(jl_packed_cache *cache, const jl_matmul_weight *ws, int n_weights, int64_t k,
                             const float *x, int64_t n, jl_row_fill_fn fill_row, void *fill_arg, int n_threads) {
    jl_status st = JL_OK;
    for (int i = 0; i < n_weights && st == JL_OK; i++)
        st = jl_matmul_shared(cache, &ws[i], 1, k, x, n, i == 0 ? fill_row : NULL, fill_arg, n_threads);
    return st;
}

jl_status jl_matmul_shared(jl_packed_cache *cache, const jl_matmul_weight *ws, int n_weights, int64_t k,
                           const float *x, int64_t n, jl_row_fill_fn fill_row, void *fill_arg, int n_threads) {
    if (!ws || n_weights < 1 || n_weights > JL_MATMUL_SHARED_MAX)
        return jl_fail(JL_ERR_INVALID_ARG, "matmul: %d weights, one call takes 1 to %d", ws ? n_weights : 0,
                       JL_MATMUL_SHARED_MAX);
    for (int i = 1; i < n_weights; i++)
        if (ws[i].type != ws[0].type) return matmul_each(cache, ws, n_weights, k, x, n, fill_row, fill_arg, n_threads);
    const int type = ws[0].type;
    const jl_type_traits *wt = jl_traits(type);
    jl_status st = check_row_type(wt, type, k, "matmul");
    if (st != JL_OK) return st;
    if (!wt->vec_dot) return jl_fail(JL_ERR_UNSUPPORTED, "matmul: no dot product for %s weights", wt->name);
    if (wt->gemm && n < wt->gemm->min_rows) wt = wt->gemm->below;  /* a GEMM for many rows (AMX) leaves fewer to the level below */
    const jl_type_traits *at = jl_traits(wt->activation);
    if ((st = check_row_type(at, wt->activation, k, "matmul activations")) != JL_OK) return st;
    if (n <= 0) return jl_fail(JL_ERR_INVALID_ARG, "matmul: n (%lld) must be positive", (long long)n);
    const size_t w_row_bytes = jl_row_bytes(wt, k);
    for (int i = 0; i < n_weights; i++) {
        if (ws[i].rows <= 0) return jl_fail(JL_ERR_INVALID_ARG, "matmul: rows (%lld) must be positive", (long long)ws[i].rows);
        if ((size_t)ws[i].rows > ws[i].w_bytes / w_row_bytes)
            return jl_fail(JL_ERR_INVALID_ARG, "matmul: %lld rows of %zu bytes exceed the %zu bytes of W",
                           (long long)ws[i].rows, w_row_bytes, ws[i].w_bytes);
    }

    const jl_gemm_kernels *gemm = wt->gemm;
    const int keep = cache && gemm && gemm->keep_packed;
    const int in_place = gemm && !gemm->pack_w;  /* W's rows are the kernel's panels as they are */
    const int use_gemm = gemm && n >= (in_place ? IN_PLACE_GEMM_MIN_ROWS : keep ? CACHED_GEMM_MIN_ROWS : GEMM_MIN_ROWS);
    const int nth = jl_resolve_threads(n_threads);
    /* the activations, shared by every job: x quantized (x itself for float dot products), then packed */
    const size_t xq_row_bytes = jl_row_bytes(at, k);
    const int pack_x = use_gemm && gemm->pack_x;
    const size_t xp_row_bytes = pack_x ? gemm->x_bytes(k) : xq_row_bytes;
    uint8_t *xq = wt->activation == JL_TYPE_F32 ? (uint8_t *)x : aligned_alloc(64, (xq_row_bytes * (size_t)n + 63) / 64 * 64);
    uint8_t *xp = pack_x ? aligned_alloc(64, (xp_row_bytes * (size_t)n + 63) / 64 * 64) : xq;
    uint8_t *panels = NULL;  /* (nth, STRIP_PANELS, strip_panel_bytes): the threads' repacked strips */
    matmul_job jobs[JL_MATMUL_SHARED_MAX];
    shared_job sj = {.jobs = jobs, .n_jobs = n_weights, .gemm = use_gemm, .unit_rows = use_gemm ? gemm->panel_rows : 1};
    if (!xq || !xp) {
        st = jl_fail(JL_ERR_NOMEM, "matmul: no memory for %lld activation rows", (long long)n);
        goto done;
    }
    for (int i = 0; i < n_weights; i++) {
        matmul_job *job = &jobs[i];
        *job = (matmul_job){
            .wt = wt, .at = at, .w = ws[i].w, .w_row_bytes = w_row_bytes, .rows = ws[i].rows, .k = k, .x = x, .n = n,
            .xq = xq, .xq_row_bytes = xq_row_bytes, .y = ws[i].y, .xp = xp, .xp_row_bytes = xp_row_bytes,
            .fill_row = fill_row, .fill_arg = fill_arg,
        };
        if (!use_gemm) continue;
        if (in_place) {
            job->packed = ws[i].w;
            job->panel_bytes = gemm->panel_rows * w_row_bytes;
        } else {
            job->panel_bytes = (gemm->panel_bytes(k) + 63) / 64 * 64;
            if (keep && (st = find_packed(cache, job, n_threads)) != JL_OK) goto done;
        }
        job->widen = job->packed && gemm->widen && n >= WIDEN_MIN_ROWS;
        job->strip_panel_bytes = job->widen ? (gemm->wide_bytes(k) + 63) / 64 * 64 : job->panel_bytes;
    }
    if (use_gemm && (!jobs[0].packed || jobs[0].widen)) {  /* the same for every job: one type, k and n */
        panels = aligned_alloc(64, jobs[0].strip_panel_bytes * STRIP_PANELS * (size_t)nth);
        if (!panels) {
            st = jl_fail(JL_ERR_NOMEM, "matmul: no memory for the GEMM's weight strips");
            goto done;
        }
        for (int i = 0; i < n_weights; i++) jobs[i].panels = panels;
    }
    if (fill_row || xq != (uint8_t *)x || xp != xq) {
        if (n == 1) prepare_x_task(&jobs[0], 0, 1);
        else if ((st = jl_parallel(n_threads, prepare_x_task, &jobs[0])) != JL_OK) goto done;
    }
    for (int i = 0; i < n_weights; i++) sj.n_units += (jobs[i].rows + sj.unit_rows - 1) / sj.unit_rows;
    st = jl_parallel(nth, shared_task, &sj);
done:
    if (xp != xq) free(xp);
    if (xq != (uint8_t *)x) free(xq);
    free(panels);
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
    if (!t->from_float) return jl_fail(JL_ERR_UNSUPPORTED, "quantize: %s has no conversion from float32 (not an activation or KV cache format)", t->name);
    size_t row_bytes = jl_row_bytes(t, k);
    if (n < 0 || (size_t)n > dst_bytes / row_bytes)
        return jl_fail(JL_ERR_INVALID_ARG, "quantize: %lld rows of %zu bytes exceed the %zu-byte buffer",
                       (long long)n, row_bytes, dst_bytes);
    for (int64_t i = 0; i < n; i++) t->from_float(x + i * k, (uint8_t *)dst + i * row_bytes, k);
    return JL_OK;
}
