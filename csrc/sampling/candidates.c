/* candidates.c — partial selection, sorting, softmax and the weighted draw over candidates.
 *
 * Nothing sorts the whole vocabulary unless asked to: the best k come from one pass with a heap
 * of k (small k) or a quickselect (large k), and only those k get sorted. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "internal.h"
#include "janlib_sampling.h"

#include "fast_exp.h"

#define HEAP_SELECT_MAX 512   /* beyond this, quickselect's O(n) beats the heap's log k per insert */
#define INSERTION_SORT_MAX 16
#define SCAN_BLOCK 64          /* logits tested at once against the heap's worst entry */

/* e^x for x <= 0, the softmax's exponent (0 from -87 down), within 1.5 ulp. Free of branches
 * and calls so that loops over it vectorize, which expf does not: the selects are integer masks
 * because GCC keeps a float ?: as a branch under the default -ftrapping-math. */
static inline float exp_nonpositive(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int32_t underflow = -(int32_t)((uint32_t)(bits & 0x7fffffff) >= 0x42ae0000u); /* |x| >= 87 */
    bits = (bits & ~underflow) | ((int32_t)0xc2ae0000 & underflow);                      /* x = -87 */
    memcpy(&x, &bits, sizeof x);
    float e = jl_exp_normal_range(x);
    memcpy(&bits, &e, sizeof bits);
    bits &= ~underflow;
    memcpy(&e, &bits, sizeof e);
    return e;
}

double jl_sum_exp(const float *x, size_t n, float shift) {
    /* eight float lanes per block of 256 keep the loop vectorizable; blocks add up in double */
    double sum = 0.0;
    size_t i = 0;
    for (; i + 256 <= n; i += 256) {
        float lanes[8] = {0};
        for (size_t j = 0; j < 256; j += 8)
            for (size_t k = 0; k < 8; k++) lanes[k] += exp_nonpositive(x[i + j + k] - shift);
        for (size_t k = 0; k < 8; k++) sum += lanes[k];
    }
    for (; i < n; i++) sum += exp_nonpositive(x[i] - shift);
    return sum;
}

static inline void swap_tokens(jl_token_data *a, jl_token_data *b) {
    jl_token_data t = *a;
    *a = *b;
    *b = t;
}

/* A heap with the worst entry at the root, so each candidate costs one compare against it. */
static void sift_down(jl_token_data *heap, size_t n, size_t i) {
    jl_token_data x = heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && jl_token_better(&heap[child], &heap[child + 1])) child++;
        if (!jl_token_better(&x, &heap[child])) break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = x;
}

static void heap_build(jl_token_data *heap, size_t n) {
    for (size_t i = n / 2; i-- > 0;) sift_down(heap, n, i);
}

/* Repeatedly moves the worst to the back: the heap ends up best first. */
static void heap_sort(jl_token_data *heap, size_t n) {
    for (size_t end = n; end > 1; end--) {
        swap_tokens(&heap[0], &heap[end - 1]);
        sift_down(heap, end - 1, 0);
    }
}

static void insertion_sort(jl_token_data *a, size_t n) {
    for (size_t i = 1; i < n; i++) {
        jl_token_data x = a[i];
        size_t j = i;
        for (; j > 0 && jl_token_better(&x, &a[j - 1]); j--) a[j] = a[j - 1];
        a[j] = x;
    }
}

/* Hoare partition around a median of three; returns the size of the better part (0 < it < n).
 * Ids make every key distinct, so equal logits cannot degrade it. */
static size_t partition(jl_token_data *a, size_t n) {
    size_t mid = n / 2, last = n - 1;
    if (jl_token_better(&a[mid], &a[0])) swap_tokens(&a[mid], &a[0]);
    if (jl_token_better(&a[last], &a[0])) swap_tokens(&a[last], &a[0]);
    if (jl_token_better(&a[last], &a[mid])) swap_tokens(&a[last], &a[mid]);
    const jl_token_data pivot = a[mid];
    ptrdiff_t i = -1, j = (ptrdiff_t)n;
    for (;;) {
        do i++; while (jl_token_better(&a[i], &pivot));
        do j--; while (jl_token_better(&pivot, &a[j]));
        if (i >= j) return (size_t)j + 1;
        swap_tokens(&a[i], &a[j]);
    }
}

static void sort_best_first(jl_token_data *a, size_t n, int depth) {
    while (n > INSERTION_SORT_MAX) {
        if (depth-- == 0) {  /* introsort's guard against quadratic partitions */
            heap_build(a, n);
            heap_sort(a, n);
            return;
        }
        size_t left = partition(a, n);
        if (left < n - left) {
            sort_best_first(a, left, depth);
            a += left;
            n -= left;
        } else {
            sort_best_first(a + left, n - left, depth);
            n = left;
        }
    }
    insertion_sort(a, n);
}

/* Moves the best k of a[0 .. n) to the front, in no particular order. */
static void quickselect(jl_token_data *a, size_t n, size_t k) {
    while (n > INSERTION_SORT_MAX && k > 0 && k < n) {
        size_t left = partition(a, n);
        if (k <= left) {
            n = left;
        } else {
            a += left;
            n -= left;
            k -= left;
        }
    }
    insertion_sort(a, n);
}

static int depth_limit(size_t n) {
    int depth = 0;
    for (; n > 1; n >>= 1) depth += 2;
    return depth;
}

void jl_candidates_materialize(jl_candidates *c) {
    if (!c->dense) return;
    for (size_t i = 0; i < c->size; i++) c->data[i] = (jl_token_data){(int32_t)i, c->dense[i], 0.0f};
    c->dense = NULL;
}

void jl_candidates_sort_top(jl_candidates *c, size_t k) {
    jl_candidates_materialize(c);
    if (k > c->size) k = c->size;
    if (k <= c->n_sorted) return;
    /* the sorted prefix is already the best: only the rest needs looking at */
    jl_token_data *rest = c->data + c->n_sorted;
    size_t n = c->size - c->n_sorted, want = k - c->n_sorted;
    if (want <= HEAP_SELECT_MAX && want < n) {
        heap_build(rest, want);
        for (size_t i = want; i < n; i++) {
            if (jl_token_better(&rest[i], &rest[0])) {
                swap_tokens(&rest[i], &rest[0]);
                sift_down(rest, want, 0);
            }
        }
        heap_sort(rest, want);
    } else {
        quickselect(rest, n, want);
        sort_best_first(rest, want, depth_limit(want));
    }
    c->n_sorted = k;
}

void jl_candidates_keep_top(jl_candidates *c, size_t k) {
    if (k >= c->size) return;
    if (c->dense) {
        jl_logits_select_top(c->dense, c->size, k, c->data);
        c->dense = NULL;
        c->size = c->n_sorted = k;
        return;
    }
    jl_candidates_sort_top(c, k);
    jl_candidates_truncate(c, k);
}

size_t jl_candidates_select_top(const jl_token_data *src, size_t n, size_t k, jl_token_data *dst) {
    if (k > n) k = n;
    if (k == 0) return 0;
    memcpy(dst, src, k * sizeof *dst);
    heap_build(dst, k);
    for (size_t i = k; i < n; i++) {
        if (jl_token_better(&src[i], &dst[0])) {
            dst[0] = src[i];
            sift_down(dst, k, 0);
        }
    }
    heap_sort(dst, k);
    return k;
}

size_t jl_logits_select_top(const float *logits, size_t n, size_t k, jl_token_data *dst) {
    if (k > n) k = n;
    if (k == 0) return 0;
    for (size_t i = 0; i < k; i++) dst[i] = (jl_token_data){(int32_t)i, logits[i], 0.0f};
    heap_build(dst, k);
    /* in id order a later token enters only with a strictly higher logit (it loses ties), so a
     * block wholly at or below the worst kept is skipped by one vectorizable test */
    for (size_t i = k; i < n;) {
        const size_t end = i + SCAN_BLOCK < n ? i + SCAN_BLOCK : n;
        const float worst = dst[0].logit;
        int any_better = 0;
        for (size_t j = i; j < end; j++) any_better |= logits[j] > worst;
        for (; any_better && i < end; i++) {
            if (logits[i] > dst[0].logit) {
                dst[0] = (jl_token_data){(int32_t)i, logits[i], 0.0f};
                sift_down(dst, k, 0);
            }
        }
        i = end;
    }
    heap_sort(dst, k);
    return k;
}

static float max_logit(const jl_candidates *c) {
    if (c->n_sorted > 0) return c->data[0].logit;
    float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};  /* four chains hide the latency */
    size_t i = 0;
    for (; i + 4 <= c->size; i += 4)
        for (size_t k = 0; k < 4; k++) m[k] = c->data[i + k].logit > m[k] ? c->data[i + k].logit : m[k];
    for (; i < c->size; i++) m[0] = c->data[i].logit > m[0] ? c->data[i].logit : m[0];
    m[0] = m[1] > m[0] ? m[1] : m[0];
    m[2] = m[3] > m[2] ? m[3] : m[2];
    return m[2] > m[0] ? m[2] : m[0];
}

/* The largest logit, after bringing +inf ones (a tiny penalty divisor or temperature can push a
 * logit there) down to FLT_MAX: they then share the probability, as in the limit, instead of
 * turning inf - inf into NaN. */
static float finite_max_logit(jl_candidates *c) {
    const float max_l = max_logit(c);
    if (max_l != INFINITY) return max_l;
    for (size_t i = 0; i < c->size; i++)
        if (c->data[i].logit == INFINITY) c->data[i].logit = FLT_MAX;
    return FLT_MAX;
}

/* p = e^(logit - max_l) for every candidate; returns their sum, in lanes as jl_sum_exp */
static double exponentiate(jl_candidates *c, float max_l) {
    double sum = 0.0;
    size_t i = 0;
    for (; i + 256 <= c->size; i += 256) {
        float lanes[8] = {0};
        for (size_t j = 0; j < 256; j += 8) {
            for (size_t k = 0; k < 8; k++) {
                jl_token_data *d = &c->data[i + j + k];
                d->p = exp_nonpositive(d->logit - max_l);
                lanes[k] += d->p;
            }
        }
        for (size_t k = 0; k < 8; k++) sum += lanes[k];
    }
    for (; i < c->size; i++) {
        c->data[i].p = exp_nonpositive(c->data[i].logit - max_l);
        sum += c->data[i].p;
    }
    return sum;
}

float jl_candidates_softmax(jl_candidates *c) {
    jl_candidates_materialize(c);
    const float max_l = finite_max_logit(c);
    if (max_l == -INFINITY) {  /* nothing left: no probabilities rather than NaNs */
        for (size_t i = 0; i < c->size; i++) c->data[i].p = 0.0f;
        return max_l;
    }
    const float inv = (float)(1.0 / exponentiate(c, max_l));
    for (size_t i = 0; i < c->size; i++) c->data[i].p *= inv;
    return max_l;
}

void jl_candidates_truncate(jl_candidates *c, size_t n) {
    if (n >= c->size) return;
    jl_candidates_materialize(c);
    c->size = n;
    if (c->n_sorted > n) c->n_sorted = n;
}

jl_status jl_candidates_draw(jl_candidates *c, jl_rng *rng) {
    jl_candidates_materialize(c);
    const float max_l = c->size ? finite_max_logit(c) : -INFINITY;
    if (max_l == -INFINITY)
        return jl_fail(JL_ERR_INVALID_ARG, "no token can be sampled: every candidate is banned or masked");
    const double sum = exponentiate(c, max_l);
    /* `>` (not >=) never lands on a zero-probability token */
    const double target = sum * jl_rng_uniform(rng);
    double running = 0.0;
    size_t chosen = 0;
    while (chosen < c->size && (running += c->data[chosen].p) <= target) chosen++;
    if (chosen == c->size) {  /* target rounded up to the full sum: the last possible token */
        do chosen--; while (c->data[chosen].p == 0.0f);
    }
    c->selected = (int64_t)chosen;
    const float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < c->size; i++) c->data[i].p *= inv;
    return JL_OK;
}
