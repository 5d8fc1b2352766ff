/* lora.c — LoRA adapters, applied unmerged: y = W x + scale * (alpha / rank) * B (A x).
 *
 * The rows of a chunk that use an adapter in a projection are gathered and multiplied by A in one
 * float32 matmul, t = x @ A.T; then each row adds sum_j (s t_j) B[:, j] to its output, column j of B
 * being row j of B^T (contiguous): rank passes over the row, where a matmul by B would take one short
 * dot product (and its horizontal sum) per output. Float matmul rows are bit-identical however many
 * rows share the call and each row's update reads only its own t, so a row's result depends only on
 * its own input and scales. A row with scale 0 does none of this work: the base model bit for bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lora.h"
#include "quant/traits.h"

struct jl_lora {
    const jl_model *model;
    int32_t n_layer;
    jl_lora_pair *pairs;   /* (n_layer, JL_LORA_N_TARGETS) */
    float *pair_scale;     /* (n_layer, JL_LORA_N_TARGETS) alpha / rank, or 1 without alpha */
    int64_t rank_max;
};

static const char *const TARGET_NAMES[JL_LORA_N_TARGETS] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
};

static const jl_tensor *target_weight(const jl_layer_desc *L, int target) {
    switch (target) {
    case JL_LORA_ATTN_Q: return &L->attn_q;
    case JL_LORA_ATTN_K: return &L->attn_k;
    case JL_LORA_ATTN_V: return &L->attn_v;
    case JL_LORA_ATTN_OUTPUT: return &L->attn_output;
    case JL_LORA_FFN_GATE: return &L->ffn_gate;
    case JL_LORA_FFN_UP: return &L->ffn_up;
    default: return &L->ffn_down;
    }
}

/* transposed: t holds the named matrix transposed, and the message gives the named matrix's shapes */
static jl_status check_f32(const jl_tensor *t, int64_t rows, int64_t k, const char *name, int transposed) {
    if (t->type != JL_TYPE_F32)
        return jl_fail(JL_ERR_INVALID_ARG, "lora: %s must be F32, got type id %d", name, t->type);
    if (t->ne0 != k || t->ne1 != rows || t->ne2 != 1) {
        long long has[2] = {(long long)t->ne1, (long long)t->ne0}, needs[2] = {(long long)rows, (long long)k};
        return jl_fail(JL_ERR_INVALID_ARG, "lora: %s has shape (%lld, %lld), the model needs (%lld, %lld)", name,
                       has[transposed], has[!transposed], needs[transposed], needs[!transposed]);
    }
    if (t->nbytes < (size_t)(rows * k) * sizeof(float))
        return jl_fail(JL_ERR_INVALID_ARG, "lora: %s holds %zu bytes, its shape needs %zu", name, t->nbytes,
                       (size_t)(rows * k) * sizeof(float));
    return JL_OK;
}

static jl_status check_pair(const jl_model_desc *d, const jl_lora_pair *p, int il, int target) {
    const jl_tensor *w = target_weight(&d->layers[il], target);
    char a_name[80], b_name[80];
    snprintf(a_name, sizeof a_name, "blk.%d.%s.weight.lora_a", il, TARGET_NAMES[target]);
    snprintf(b_name, sizeof b_name, "blk.%d.%s.weight.lora_b", il, TARGET_NAMES[target]);
    if (!p->a.data != !p->b_t.data)
        return jl_fail(JL_ERR_INVALID_ARG, "lora: %s comes without its partner", p->a.data ? a_name : b_name);
    if (!p->a.data) return JL_OK;
    if (!w->data)
        return jl_fail(JL_ERR_INVALID_ARG, "lora: the adapter changes blk.%d.%s.weight, which this model does not have",
                       il, TARGET_NAMES[target]);
    const int64_t rank = p->a.ne1;
    if (rank < 1) return jl_fail(JL_ERR_INVALID_ARG, "lora: %s has rank %lld", a_name, (long long)rank);
    jl_status st = check_f32(&p->a, rank, w->ne0, a_name, 0);
    if (st == JL_OK) st = check_f32(&p->b_t, rank, w->ne1, b_name, 1);
    return st;
}

jl_status jl_lora_create(const jl_model *model, const jl_lora_pair *pairs, float alpha, jl_lora **out) {
    if (!model || !pairs || !out) return jl_fail(JL_ERR_INVALID_ARG, "lora: NULL model, pairs or output pointer");
    *out = NULL;
    if (!isfinite(alpha)) return jl_fail(JL_ERR_INVALID_ARG, "lora: alpha %g is not finite", alpha);
    const jl_model_desc *d = jl_model_description(model);
    const int64_t n_pairs = (int64_t)d->n_layer * JL_LORA_N_TARGETS;
    int64_t rank_max = 0;
    for (int il = 0; il < d->n_layer; il++)
        for (int target = 0; target < JL_LORA_N_TARGETS; target++) {
            const jl_lora_pair *p = &pairs[il * JL_LORA_N_TARGETS + target];
            jl_status st = check_pair(d, p, il, target);
            if (st != JL_OK) return st;
            if (p->a.data && p->a.ne1 > rank_max) rank_max = p->a.ne1;
        }
    if (rank_max == 0) return jl_fail(JL_ERR_INVALID_ARG, "lora: the adapter changes no projection");
    jl_lora *lora = calloc(1, sizeof *lora);
    if (!lora) return jl_fail(JL_ERR_NOMEM, "lora: out of memory");
    lora->pairs = malloc((size_t)n_pairs * sizeof *lora->pairs);
    lora->pair_scale = malloc((size_t)n_pairs * sizeof *lora->pair_scale);
    if (!lora->pairs || !lora->pair_scale) {
        jl_lora_free(lora);
        return jl_fail(JL_ERR_NOMEM, "lora: out of memory");
    }
    memcpy(lora->pairs, pairs, (size_t)n_pairs * sizeof *pairs);
    for (int64_t i = 0; i < n_pairs; i++)
        lora->pair_scale[i] = pairs[i].a.data && alpha != 0.0f ? alpha / (float)pairs[i].a.ne1 : 1.0f;
    lora->model = model;
    lora->n_layer = d->n_layer;
    lora->rank_max = rank_max;
    *out = lora;
    return JL_OK;
}

void jl_lora_free(jl_lora *lora) {
    if (!lora) return;
    free(lora->pairs);
    free(lora->pair_scale);
    free(lora);
}

/* ---- in the forward pass ------------------------------------------------------------------ */

jl_status jl_lora_check_batch(const jl_model *model, const jl_batch *b) {
    if (b->n_lora == 0) return JL_OK;
    if (b->n_lora < 0 || !b->lora || !b->lora_scales)
        return jl_fail(JL_ERR_INVALID_ARG, "decode: %d adapters need their list and a (n_tokens, n_lora) scale table",
                       b->n_lora);
    for (int32_t j = 0; j < b->n_lora; j++)
        if (!b->lora[j] || b->lora[j]->model != model)
            return jl_fail(JL_ERR_INVALID_ARG, "decode: adapter %d was not made for this context's model", j);
    for (int64_t i = 0; i < b->n_tokens * b->n_lora; i++)
        if (!isfinite(b->lora_scales[i]))
            return jl_fail(JL_ERR_INVALID_ARG, "decode: the LoRA scale of row %lld, adapter %lld is not finite",
                           (long long)(i / b->n_lora), (long long)(i % b->n_lora));
    return JL_OK;
}

/* *buf holds at least n floats (or int32s, as large) afterwards */
static int grow(void **buf, int64_t *cap, int64_t n) {
    if (n <= *cap) return 1;
    void *fresh = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) / 64 * 64);
    if (!fresh) return 0;
    free(*buf);
    *buf = fresh;
    *cap = n;
    return 1;
}

jl_status jl_lora_begin(jl_lora_rows *lr, const jl_batch *b, int64_t n_batch, int64_t width_max) {
    lr->n_lora = b->n_lora;
    lr->lora = b->lora;
    if (b->n_lora == 0) return JL_OK;
    int64_t rank_max = 0;
    for (int32_t j = 0; j < b->n_lora; j++)
        if (b->lora[j]->rank_max > rank_max) rank_max = b->lora[j]->rank_max;
    if (!grow((void **)&lr->scales, &lr->scales_cap, n_batch * b->n_lora) ||
        !grow((void **)&lr->rows, &lr->rows_cap, n_batch) || !grow((void **)&lr->x, &lr->x_cap, n_batch * width_max) ||
        !grow((void **)&lr->t, &lr->t_cap, n_batch * rank_max))
        return jl_fail(JL_ERR_NOMEM, "decode: out of memory for the LoRA products of %lld-row chunks", (long long)n_batch);
    return JL_OK;
}

void jl_lora_load_rows(jl_lora_rows *lr, const jl_batch *b, int64_t first, int64_t n_rows) {
    if (lr->n_lora)
        memcpy(lr->scales, b->lora_scales + first * lr->n_lora, (size_t)(n_rows * lr->n_lora) * sizeof(float));
}

void jl_lora_move_row(jl_lora_rows *lr, int64_t dst, int64_t src) {
    if (lr->n_lora)
        memcpy(lr->scales + dst * lr->n_lora, lr->scales + src * lr->n_lora, (size_t)lr->n_lora * sizeof(float));
}

/* Below this many multiply-adds a product runs on the calling thread: a dispatch costs more. */
#define MIN_PARALLEL_MACS (1 << 18)

typedef struct {
    const jl_lora_rows *lr;
    int32_t j;                /* the adapter */
    const float *b_t;         /* (rank, width) */
    int64_t rank, width, n;   /* n rows: lr->rows[0 .. n) */
    float pair_scale;
    float *y;                 /* (n_rows, width) */
} update_job;

/* y[row] += sum over i of (scale * t[row, i]) * B^T[i] for each of the job's rows */
static void update_task(void *arg, int ith, int nth) {
    const update_job *job = arg;
    const jl_lora_rows *lr = job->lr;
    int64_t lo, hi;
    jl_split(job->n, ith, nth, 1, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const int64_t r = lr->rows[i];
        const float s = lr->scales[r * lr->n_lora + job->j] * job->pair_scale;
        float *restrict yr = job->y + r * job->width;
        for (int64_t q = 0; q < job->rank; q++) {
            const float c = s * lr->t[i * job->rank + q];
            const float *restrict b = job->b_t + q * job->width;
            for (int64_t col = 0; col < job->width; col++) yr[col] += c * b[col];
        }
    }
}

jl_status jl_lora_apply(jl_lora_rows *lr, int layer, int target, const float *x, int64_t k, int64_t n_rows, float *y,
                        int64_t width, int n_threads) {
    const int64_t at = (int64_t)layer * JL_LORA_N_TARGETS + target;
    for (int32_t j = 0; j < lr->n_lora; j++) {
        const jl_lora *lora = lr->lora[j];
        const jl_lora_pair *p = &lora->pairs[at];
        if (!p->a.data) continue;
        int64_t n = 0;
        for (int64_t r = 0; r < n_rows; r++)
            if (lr->scales[r * lr->n_lora + j] != 0.0f) lr->rows[n++] = (int32_t)r;
        if (n == 0) continue;
        const float *xs = x;
        if (n < n_rows) {
            for (int64_t i = 0; i < n; i++)
                memcpy(lr->x + i * k, x + (int64_t)lr->rows[i] * k, (size_t)k * sizeof(float));
            xs = lr->x;
        }
        const int64_t rank = p->a.ne1;
        const int nth = n * rank * (k + width) < MIN_PARALLEL_MACS ? 1 : n_threads;
        jl_status st = jl_matmul(JL_TYPE_F32, p->a.data, p->a.nbytes, rank, k, xs, n, lr->t, nth);
        update_job job = {.lr = lr, .j = j, .b_t = p->b_t.data, .rank = rank, .width = width, .n = n,
                          .pair_scale = lora->pair_scale[at], .y = y};
        if (st == JL_OK) st = jl_parallel(nth, update_task, &job);
        if (st != JL_OK) return st;
    }
    return JL_OK;
}

void jl_lora_rows_free(jl_lora_rows *lr) {
    free(lr->scales);
    free(lr->rows);
    free(lr->x);
    free(lr->t);
}
