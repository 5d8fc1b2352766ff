/* model.c — the transformer forward pass over a KV cache, one function for every architecture
 * the description can express (llama, qwen2, gemma3 differ only in flags and optional tensors).
 *
 * Per layer, on the n rows of a batch:
 *   xn = rmsnorm(x)
 *   q, k, v = xn @ Wq.T, Wk.T, Wv.T (+ biases); per-head rmsnorm of q, k; rope(q, k); k, v -> cache
 *   a = softmax(scale * q . K) . V       over the cache: causal, windowed on sliding layers
 *   x += post_norm(a @ Wo.T)
 *   xn = rmsnorm(x)
 *   x += post_norm(down(act(xn @ Wg.T) * (xn @ Wu.T)))
 * and at the end logits = rmsnorm(x) @ Wout.T, for the requested rows only (the last layer
 * already drops the other rows once their K and V are in the cache).
 *
 * The cache keeps K as (n_ctx, head_dim_k) rows per KV head and V transposed, (head_dim_v, n_ctx)
 * per KV head, so both attention products are the kernel table's F16 (or F32) x float32 dot
 * products: one cache row against up to JL_NC_MAX query rows per call. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ops.h"
#include "quant/fp16.h"
#include "quant/traits.h"

struct jl_model {
    jl_model_desc desc;       /* desc.layers points at layers */
    jl_layer_desc *layers;    /* (n_layer,) */
    int n_rope;               /* distinct (rope_base, rope_freq_scale) pairs among the layers */
    int *layer_rope;          /* (n_layer,) which pair each layer uses */
    double *rope_inv_freq;    /* (n_rope, head_dim_k / 2): angle of pair i = pos * inv_freq[i] */
};

struct jl_context {
    const jl_model *model;
    int64_t n_ctx, n_batch, n_past;
    int kv_type;               /* F16 or F32: their dot products take float32 queries */
    size_t kv_elem;            /* bytes per cached value */
    uint8_t *k_cache;          /* (n_layer, n_head_kv, n_ctx, head_dim_k) */
    uint8_t *vt_cache;         /* (n_layer, n_head_kv, head_dim_v, n_ctx): V transposed */
    /* one chunk of at most n_batch rows */
    float *x;                  /* (n_batch, n_embd) the residual stream */
    float *xn;                 /* (n_batch, n_embd) normed input of a block */
    float *q;                  /* (n_batch, n_head * head_dim_k) */
    float *k;                  /* (n_batch, n_head_kv * head_dim_k) */
    float *v;                  /* (n_batch, n_head_kv * head_dim_v) */
    float *attn;               /* (n_batch, n_head * head_dim_v) attention output */
    float *proj;               /* (n_batch, n_embd) output of attn_output and ffn_down */
    float *gate;               /* (n_batch, n_ff) */
    float *up;                 /* (n_batch, n_ff) */
    int64_t *pos;              /* (n_batch,) position of each row */
    int64_t *out_rows;         /* (n_batch,) the rows of the chunk that produce logits */
    float *rope_cos;           /* (n_rope, n_batch, head_dim_k / 2) for positions chunk_pos0 + i */
    float *rope_sin;           /* (n_rope, n_batch, head_dim_k / 2) */
    float *attn_scratch;       /* (attn_scratch_threads, attn_scratch_floats) */
    int attn_scratch_threads;
    size_t attn_scratch_floats;  /* JL_NC_MAX gathered queries + JL_NC_MAX rows of probabilities */
};

/* ---- validating a description ------------------------------------------------------------- */

enum tensor_use { USE_VECTOR, USE_MATMUL, USE_LOOKUP };

static jl_status check_tensor(const jl_tensor *t, int layer, const char *name, enum tensor_use use,
                              int64_t rows, int64_t k, int required) {
    char full[96];
    if (layer >= 0) snprintf(full, sizeof full, "blk.%d.%s", layer, name);
    else snprintf(full, sizeof full, "%s", name);
    if (!t->data) return required ? jl_fail(JL_ERR_INVALID_ARG, "model: %s is missing", full) : JL_OK;
    const jl_type_traits *tt = jl_traits(t->type);
    if (!tt) return jl_fail(JL_ERR_UNSUPPORTED, "model: %s has type id %d, which janlib does not support", full, t->type);
    if (use == USE_VECTOR && (t->ne0 != k || t->ne1 != 1))
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s has shape (%lld, %lld), expected (%lld,)", full,
                       (long long)t->ne1, (long long)t->ne0, (long long)k);
    if (use != USE_VECTOR && (t->ne0 != k || t->ne1 != rows))
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s has shape (%lld, %lld), expected (%lld, %lld)", full,
                       (long long)t->ne1, (long long)t->ne0, (long long)rows, (long long)k);
    if (use == USE_VECTOR && t->type != JL_TYPE_F32)
        return jl_fail(JL_ERR_UNSUPPORTED, "model: %s is %s; norm and bias vectors must be F32", full, tt->name);
    if (k % tt->block_size != 0)
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s row length %lld is not a multiple of the %s block size %lld",
                       full, (long long)k, tt->name, (long long)tt->block_size);
    size_t need = jl_row_bytes(tt, k) * (size_t)(use == USE_VECTOR ? 1 : rows);
    if (t->nbytes < need)
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s holds %zu bytes, its shape needs %zu", full, t->nbytes, need);
    if (use == USE_LOOKUP && !tt->to_float)
        return jl_fail(JL_ERR_UNSUPPORTED, "model: %s: no conversion from %s to float", full, tt->name);
    if (use == USE_MATMUL) {
        const jl_type_traits *at = jl_traits(tt->activation);
        if (!tt->vec_dot || !at)
            return jl_fail(JL_ERR_UNSUPPORTED, "model: %s: no dot product for %s weights", full, tt->name);
        if (k % at->block_size != 0)
            return jl_fail(JL_ERR_UNSUPPORTED, "model: %s: %s weights quantize their input to %s, whose block size %lld does not divide k=%lld",
                           full, tt->name, at->name, (long long)at->block_size, (long long)k);
    }
    return JL_OK;
}

static jl_status check_layer(const jl_model_desc *d, int il) {
    const jl_layer_desc *L = &d->layers[il];
    const int64_t E = d->n_embd, QK = (int64_t)d->n_head * d->head_dim_k,
                  KK = (int64_t)d->n_head_kv * d->head_dim_k, KV = (int64_t)d->n_head_kv * d->head_dim_v,
                  QV = (int64_t)d->n_head * d->head_dim_v, F = d->n_ff, D = d->head_dim_k;
    const struct { const jl_tensor *t; const char *name; enum tensor_use use; int64_t rows, k; int required; } checks[] = {
        {&L->attn_norm, "attn_norm.weight", USE_VECTOR, 1, E, 1},
        {&L->attn_q, "attn_q.weight", USE_MATMUL, QK, E, 1},
        {&L->attn_k, "attn_k.weight", USE_MATMUL, KK, E, 1},
        {&L->attn_v, "attn_v.weight", USE_MATMUL, KV, E, 1},
        {&L->attn_q_bias, "attn_q.bias", USE_VECTOR, 1, QK, 0},
        {&L->attn_k_bias, "attn_k.bias", USE_VECTOR, 1, KK, 0},
        {&L->attn_v_bias, "attn_v.bias", USE_VECTOR, 1, KV, 0},
        {&L->attn_q_norm, "attn_q_norm.weight", USE_VECTOR, 1, D, 0},
        {&L->attn_k_norm, "attn_k_norm.weight", USE_VECTOR, 1, D, 0},
        {&L->attn_output, "attn_output.weight", USE_MATMUL, E, QV, 1},
        {&L->post_attention_norm, "post_attention_norm.weight", USE_VECTOR, 1, E, 0},
        {&L->ffn_norm, "ffn_norm.weight", USE_VECTOR, 1, E, 1},
        {&L->ffn_gate, "ffn_gate.weight", USE_MATMUL, F, E, 1},
        {&L->ffn_up, "ffn_up.weight", USE_MATMUL, F, E, 1},
        {&L->ffn_down, "ffn_down.weight", USE_MATMUL, E, F, 1},
        {&L->post_ffw_norm, "post_ffw_norm.weight", USE_VECTOR, 1, E, 0},
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        jl_status st = check_tensor(checks[i].t, il, checks[i].name, checks[i].use, checks[i].rows, checks[i].k,
                                    checks[i].required);
        if (st != JL_OK) return st;
    }
    if (!(L->rope_base > 0.0f) || !(L->rope_freq_scale > 0.0f) || !isfinite(L->rope_base) || !isfinite(L->rope_freq_scale))
        return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d rope base %g and frequency scale %g must be positive",
                       il, L->rope_base, L->rope_freq_scale);
    if (L->sliding_window < 0)
        return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d sliding window %d is negative", il, L->sliding_window);
    return JL_OK;
}

static jl_status check_desc(const jl_model_desc *d) {
    if (d->n_layer < 1 || d->n_embd < 1 || d->n_head < 1 || d->n_head_kv < 1 || d->head_dim_v < 1 ||
        d->n_ff < 1 || d->n_vocab < 1 || d->head_dim_k < 2 || d->head_dim_k % 2 != 0)
        return jl_fail(JL_ERR_INVALID_ARG,
                       "model: n_layer %d, n_embd %d, n_head %d, n_head_kv %d, head_dim_v %d, n_ff %d, n_vocab %d "
                       "must be positive and head_dim_k %d positive and even",
                       d->n_layer, d->n_embd, d->n_head, d->n_head_kv, d->head_dim_v, d->n_ff, d->n_vocab, d->head_dim_k);
    if (d->n_head % d->n_head_kv != 0)
        return jl_fail(JL_ERR_INVALID_ARG, "model: n_head %d is not a multiple of n_head_kv %d", d->n_head, d->n_head_kv);
    if (d->rope_layout != JL_ROPE_ADJACENT && d->rope_layout != JL_ROPE_NEOX)
        return jl_fail(JL_ERR_INVALID_ARG, "model: unknown rope layout %d", d->rope_layout);
    if (d->ffn_activation != JL_FFN_SILU && d->ffn_activation != JL_FFN_GELU_TANH)
        return jl_fail(JL_ERR_INVALID_ARG, "model: unknown FFN activation %d", d->ffn_activation);
    if (!(d->norm_eps >= 0.0f) || !isfinite(d->embedding_scale) || !(d->attention_scale > 0.0f) ||
        !isfinite(d->attention_scale) || !(d->final_logit_softcap >= 0.0f))
        return jl_fail(JL_ERR_INVALID_ARG, "model: norm_eps %g, embedding_scale %g, attention_scale %g or final_logit_softcap %g out of range",
                       d->norm_eps, d->embedding_scale, d->attention_scale, d->final_logit_softcap);
    if (!d->layers) return jl_fail(JL_ERR_INVALID_ARG, "model: no layer descriptions");
    jl_status st;
    if ((st = check_tensor(&d->token_embd, -1, "token_embd.weight", USE_LOOKUP, d->n_vocab, d->n_embd, 1)) != JL_OK ||
        (st = check_tensor(&d->output_norm, -1, "output_norm.weight", USE_VECTOR, 1, d->n_embd, 1)) != JL_OK ||
        (st = check_tensor(&d->output, -1, "output.weight", USE_MATMUL, d->n_vocab, d->n_embd, 1)) != JL_OK ||
        (st = check_tensor(&d->rope_freqs, -1, "rope_freqs.weight", USE_VECTOR, 1, d->head_dim_k / 2, 0)) != JL_OK)
        return st;
    for (int il = 0; il < d->n_layer; il++)
        if ((st = check_layer(d, il)) != JL_OK) return st;
    return JL_OK;
}

/* ---- model ------------------------------------------------------------------------------ */

void jl_model_free(jl_model *model) {
    if (!model) return;
    free(model->layers);
    free(model->layer_rope);
    free(model->rope_inv_freq);
    free(model);
}

/* Layers sharing a rope base and scale share one table of angles per batch. */
static void index_rope_configs(jl_model *m) {
    const jl_model_desc *d = &m->desc;
    const int half = d->head_dim_k / 2;
    const float *factors = d->rope_freqs.data;
    m->n_rope = 0;
    for (int il = 0; il < d->n_layer; il++) {
        const jl_layer_desc *L = &m->layers[il];
        int jl = 0;
        while (jl < il && (m->layers[jl].rope_base != L->rope_base || m->layers[jl].rope_freq_scale != L->rope_freq_scale))
            jl++;
        if (jl < il) {
            m->layer_rope[il] = m->layer_rope[jl];
            continue;
        }
        double *inv_freq = m->rope_inv_freq + (size_t)m->n_rope * half;
        for (int i = 0; i < half; i++) {
            inv_freq[i] = (double)L->rope_freq_scale * pow((double)L->rope_base, -2.0 * i / d->head_dim_k);
            if (factors) inv_freq[i] /= factors[i];
        }
        m->layer_rope[il] = m->n_rope++;
    }
}

jl_status jl_model_create(const jl_model_desc *desc, jl_model **model) {
    if (!desc || !model) return jl_fail(JL_ERR_INVALID_ARG, "model: NULL description or output pointer");
    *model = NULL;
    jl_status st = check_desc(desc);
    if (st != JL_OK) return st;
    jl_model *m = calloc(1, sizeof *m);
    if (!m) return jl_fail(JL_ERR_NOMEM, "model: out of memory");
    const int n_layer = desc->n_layer, half = desc->head_dim_k / 2;
    m->layers = malloc((size_t)n_layer * sizeof *m->layers);
    m->layer_rope = malloc((size_t)n_layer * sizeof *m->layer_rope);
    m->rope_inv_freq = malloc((size_t)n_layer * half * sizeof *m->rope_inv_freq);
    if (!m->layers || !m->layer_rope || !m->rope_inv_freq) {
        jl_model_free(m);
        return jl_fail(JL_ERR_NOMEM, "model: out of memory for %d layer descriptions", n_layer);
    }
    memcpy(m->layers, desc->layers, (size_t)n_layer * sizeof *m->layers);
    m->desc = *desc;
    m->desc.layers = m->layers;
    index_rope_configs(m);
    *model = m;
    return JL_OK;
}

/* ---- context ---------------------------------------------------------------------------- */

void jl_context_free(jl_context *ctx) {
    if (!ctx) return;
    float *buffers[] = {ctx->x, ctx->xn, ctx->q, ctx->k, ctx->v, ctx->attn, ctx->proj, ctx->gate, ctx->up,
                        ctx->rope_cos, ctx->rope_sin, ctx->attn_scratch};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) free(buffers[i]);
    free(ctx->pos);
    free(ctx->out_rows);
    free(ctx->k_cache);
    free(ctx->vt_cache);
    free(ctx);
}

static float *alloc_floats(int64_t rows, int64_t cols) {
    return aligned_alloc(64, ((size_t)rows * (size_t)cols * sizeof(float) + 63) / 64 * 64);
}

jl_status jl_context_create(const jl_model *model, int64_t n_ctx, int kv_type, int64_t n_batch,
                            jl_context **out) {
    if (!model || !out) return jl_fail(JL_ERR_INVALID_ARG, "context: NULL model or output pointer");
    *out = NULL;
    if (kv_type != JL_TYPE_F16 && kv_type != JL_TYPE_F32)
        return jl_fail(JL_ERR_INVALID_ARG, "context: the KV cache type must be F16 or F32, got type id %d", kv_type);
    if (n_ctx < 1 || n_ctx > INT32_MAX || n_batch < 1)
        return jl_fail(JL_ERR_INVALID_ARG, "context: n_ctx %lld must be in [1, 2^31) and n_batch %lld positive",
                       (long long)n_ctx, (long long)n_batch);
    const jl_model_desc *d = &model->desc;
    jl_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return jl_fail(JL_ERR_NOMEM, "context: out of memory");
    ctx->model = model;
    ctx->n_ctx = n_ctx;
    ctx->n_batch = n_batch < n_ctx ? n_batch : n_ctx;
    ctx->kv_type = kv_type;
    ctx->kv_elem = (size_t)jl_traits(kv_type)->type_size;
    const int64_t B = ctx->n_batch, half = d->head_dim_k / 2;
    size_t cache_values = (size_t)d->n_layer * d->n_head_kv * (size_t)n_ctx;
    ctx->k_cache = malloc(cache_values * d->head_dim_k * ctx->kv_elem);
    ctx->vt_cache = malloc(cache_values * d->head_dim_v * ctx->kv_elem);
    ctx->x = alloc_floats(B, d->n_embd);
    ctx->xn = alloc_floats(B, d->n_embd);
    ctx->q = alloc_floats(B, (int64_t)d->n_head * d->head_dim_k);
    ctx->k = alloc_floats(B, (int64_t)d->n_head_kv * d->head_dim_k);
    ctx->v = alloc_floats(B, (int64_t)d->n_head_kv * d->head_dim_v);
    ctx->attn = alloc_floats(B, (int64_t)d->n_head * d->head_dim_v);
    ctx->proj = alloc_floats(B, d->n_embd);
    ctx->gate = alloc_floats(B, d->n_ff);
    ctx->up = alloc_floats(B, d->n_ff);
    ctx->pos = malloc((size_t)B * sizeof *ctx->pos);
    ctx->out_rows = malloc((size_t)B * sizeof *ctx->out_rows);
    ctx->rope_cos = alloc_floats((int64_t)model->n_rope * B, half);
    ctx->rope_sin = alloc_floats((int64_t)model->n_rope * B, half);
    ctx->attn_scratch_floats = (size_t)JL_NC_MAX * ((size_t)d->head_dim_k + (size_t)n_ctx);
    if (!ctx->k_cache || !ctx->vt_cache || !ctx->x || !ctx->xn || !ctx->q || !ctx->k || !ctx->v || !ctx->attn ||
        !ctx->proj || !ctx->gate || !ctx->up || !ctx->pos || !ctx->out_rows || !ctx->rope_cos || !ctx->rope_sin) {
        jl_context_free(ctx);
        return jl_fail(JL_ERR_NOMEM, "context: out of memory for a %lld-position KV cache and %lld-token batches",
                       (long long)n_ctx, (long long)B);
    }
    *out = ctx;
    return JL_OK;
}

int64_t jl_context_n_ctx(const jl_context *ctx) { return ctx ? ctx->n_ctx : 0; }
int64_t jl_context_n_past(const jl_context *ctx) { return ctx ? ctx->n_past : 0; }

jl_status jl_context_seq_rm(jl_context *ctx, int64_t from_pos) {
    if (!ctx) return jl_fail(JL_ERR_INVALID_ARG, "seq_rm: NULL context");
    if (from_pos < 0) return jl_fail(JL_ERR_INVALID_ARG, "seq_rm: from_pos %lld is negative", (long long)from_pos);
    if (from_pos < ctx->n_past) ctx->n_past = from_pos;
    return JL_OK;
}

/* n values src[i * src_stride] -> consecutive cache values at dst */
static void store_kv_values(const jl_context *ctx, const float *src, int64_t src_stride, int64_t n, uint8_t *dst) {
    if (ctx->kv_type == JL_TYPE_F16)
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = jl_f32_to_half(src[i * src_stride]);
    else
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = src[i * src_stride];
}

/* n consecutive cache values at src -> dst (n,) */
static void load_kv_values(const jl_context *ctx, const uint8_t *src, int64_t n, float *dst) {
    if (ctx->kv_type == JL_TYPE_F16)
        for (int64_t i = 0; i < n; i++) dst[i] = jl_half_to_f32(((const uint16_t *)src)[i]);
    else
        memcpy(dst, src, (size_t)n * sizeof(float));
}

jl_status jl_context_shift(jl_context *ctx, int64_t n_keep, int64_t n_discard) {
    if (!ctx) return jl_fail(JL_ERR_INVALID_ARG, "shift: NULL context");
    if (n_keep < 0 || n_discard <= 0 || n_keep + n_discard > ctx->n_past)
        return jl_fail(JL_ERR_INVALID_ARG, "shift: cannot keep %lld and discard %lld of %lld cached positions",
                       (long long)n_keep, (long long)n_discard, (long long)ctx->n_past);
    const jl_model *m = ctx->model;
    const jl_model_desc *d = &m->desc;
    const int Dk = d->head_dim_k, Dv = d->head_dim_v, half = Dk / 2;
    const int64_t first_moved = n_keep + n_discard, n_moved = ctx->n_past - first_moved;
    float *angles = malloc(((size_t)m->n_rope * 2 * half + (size_t)Dk) * sizeof(float));
    if (!angles) return jl_fail(JL_ERR_NOMEM, "shift: out of memory");
    float *cos_a = angles, *sin_a = angles + (size_t)m->n_rope * half, *key = sin_a + (size_t)m->n_rope * half;
    for (int r = 0; r < m->n_rope; r++)  /* a rotation by -n_discard positions, per rope config */
        jl_rope_angles(-n_discard, m->rope_inv_freq + (size_t)r * half, half, cos_a + (size_t)r * half,
                       sin_a + (size_t)r * half);
    const size_t k_row = (size_t)Dk * ctx->kv_elem;
    for (int layer = 0; layer < d->n_layer; layer++) {
        const size_t rope = (size_t)m->layer_rope[layer] * half;
        for (int g = 0; g < d->n_head_kv; g++) {
            const size_t head = (size_t)layer * d->n_head_kv + (size_t)g;
            uint8_t *k_head = ctx->k_cache + head * ctx->n_ctx * k_row;  /* (n_ctx, Dk) */
            for (int64_t p = first_moved; p < ctx->n_past; p++) {
                load_kv_values(ctx, k_head + (size_t)p * k_row, Dk, key);
                jl_rope(key, 1, Dk, d->rope_layout, cos_a + rope, sin_a + rope);
                store_kv_values(ctx, key, 1, Dk, k_head + (size_t)(p - n_discard) * k_row);
            }
            for (int dim = 0; dim < Dv; dim++) {  /* Vᵀ rows: (n_ctx,) per dimension */
                uint8_t *vt = ctx->vt_cache + ((head * Dv + (size_t)dim) * ctx->n_ctx) * ctx->kv_elem;
                memmove(vt + (size_t)n_keep * ctx->kv_elem, vt + (size_t)first_moved * ctx->kv_elem,
                        (size_t)n_moved * ctx->kv_elem);
            }
        }
    }
    free(angles);
    ctx->n_past -= n_discard;
    return JL_OK;
}

/* Per-thread attention scratch grows with the thread count, which changes rarely. */
static jl_status reserve_attention_scratch(jl_context *ctx, int n_threads) {
    if (n_threads <= ctx->attn_scratch_threads) return JL_OK;
    float *scratch = alloc_floats(n_threads, (int64_t)ctx->attn_scratch_floats);
    if (!scratch) return jl_fail(JL_ERR_NOMEM, "eval: out of memory for attention scratch of %d threads", n_threads);
    free(ctx->attn_scratch);
    ctx->attn_scratch = scratch;
    ctx->attn_scratch_threads = n_threads;
    return JL_OK;
}

/* ---- the steps of one layer ------------------------------------------------------------- */

static jl_status matmul(const jl_tensor *w, const float *x, int64_t n, float *y, int n_threads) {
    return jl_matmul(w->type, w->data, w->nbytes, w->ne1, w->ne0, x, n, y, n_threads);
}

static void add_bias(float *x, const jl_tensor *bias, int64_t n) {
    const float *b = bias->data;
    if (b)
        for (int64_t i = 0; i < n; i++) x[i] += b[i];
}

static void add_rows(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

/* Fewer elements than this per thread run on the calling thread: a dispatch costs more. */
#define MIN_PARALLEL_WORK 16384

static int threads_for(int64_t work, int n_threads) {
    int64_t useful = work / MIN_PARALLEL_WORK;
    return useful < 1 ? 1 : useful < n_threads ? (int)useful : n_threads;
}

typedef struct {
    jl_context *ctx;
    int layer;
    int64_t n_rows;
    int64_t chunk_pos0;  /* the rope tables hold positions chunk_pos0 + i */
    int do_q, do_kv;
} prepare_job;

/* Biases, per-head norms and RoPE on q and/or k rows; k and v then go into the cache (whose
 * rows are consecutive positions whenever do_kv is set: no rows were dropped yet). */
static void prepare_task(void *arg, int ith, int nth) {
    const prepare_job *job = arg;
    jl_context *ctx = job->ctx;
    const jl_model *m = ctx->model;
    const jl_model_desc *d = &m->desc;
    const jl_layer_desc *L = &d->layers[job->layer];
    const int Dk = d->head_dim_k, Dv = d->head_dim_v, half = Dk / 2;
    const int64_t q_width = (int64_t)d->n_head * Dk, k_width = (int64_t)d->n_head_kv * Dk,
                  v_width = (int64_t)d->n_head_kv * Dv;
    int64_t lo, hi;
    jl_split(job->n_rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const int64_t pos = ctx->pos[r];
        const size_t angles = ((size_t)m->layer_rope[job->layer] * ctx->n_batch + (size_t)(pos - job->chunk_pos0)) * half;
        const float *cos_a = ctx->rope_cos + angles, *sin_a = ctx->rope_sin + angles;
        if (job->do_q) {
            float *q = ctx->q + r * q_width;
            add_bias(q, &L->attn_q_bias, q_width);
            if (L->attn_q_norm.data) jl_rmsnorm(q, q, L->attn_q_norm.data, d->n_head, Dk, d->norm_eps);
            jl_rope(q, d->n_head, Dk, d->rope_layout, cos_a, sin_a);
        }
        if (job->do_kv) {
            float *k = ctx->k + r * k_width;
            add_bias(k, &L->attn_k_bias, k_width);
            add_bias(ctx->v + r * v_width, &L->attn_v_bias, v_width);
            if (L->attn_k_norm.data) jl_rmsnorm(k, k, L->attn_k_norm.data, d->n_head_kv, Dk, d->norm_eps);
            jl_rope(k, d->n_head_kv, Dk, d->rope_layout, cos_a, sin_a);
            for (int g = 0; g < d->n_head_kv; g++) {
                const size_t head = (size_t)job->layer * d->n_head_kv + (size_t)g;
                store_kv_values(ctx, k + (int64_t)g * Dk, 1, Dk,
                                ctx->k_cache + (head * ctx->n_ctx + (size_t)pos) * Dk * ctx->kv_elem);
            }
        }
    }
    /* V transposed: per dimension, this share's positions are one contiguous run */
    if (job->do_kv && hi > lo)
        for (int g = 0; g < d->n_head_kv; g++)
            for (int dim = 0; dim < Dv; dim++) {
                const size_t vt_row = ((size_t)job->layer * d->n_head_kv + (size_t)g) * Dv + (size_t)dim;
                store_kv_values(ctx, ctx->v + lo * v_width + (int64_t)g * Dv + dim, v_width, hi - lo,
                                ctx->vt_cache + (vt_row * ctx->n_ctx + (size_t)ctx->pos[lo]) * ctx->kv_elem);
            }
}

/* Attention work items: one KV head, up to JL_NC_MAX (query head, row) pairs that share it, so
 * every cache row is read once per item. The split depends only on the model, never on the
 * thread count, so results are the same for any n_threads. */
typedef struct {
    jl_context *ctx;
    int layer;
    int64_t n_rows;
    int heads_per_item, rows_per_item;
    int64_t head_chunks, n_items;
    jl_vec_dot_fn dot;  /* of the cache type, at the active ISA */
} attention_job;

/* The first cache position a token at pos sees: the window keeps positions > pos - window. */
static inline int64_t first_visible(int64_t pos, int64_t window) {
    return window > 0 && pos >= window ? pos - window + 1 : 0;
}

static void attention_task(void *arg, int ith, int nth) {
    const attention_job *job = arg;
    jl_context *ctx = job->ctx;
    const jl_model_desc *d = &ctx->model->desc;
    const jl_layer_desc *L = &d->layers[job->layer];
    const int Dk = d->head_dim_k, Dv = d->head_dim_v, group = d->n_head / d->n_head_kv;
    const int64_t n_ctx = ctx->n_ctx, window = L->sliding_window;
    const size_t elem = ctx->kv_elem;
    const jl_vec_dot_fn dot = job->dot;
    float *queries = ctx->attn_scratch + (size_t)ith * ctx->attn_scratch_floats;  /* (JL_NC_MAX, Dk) */
    float *probs = queries + (size_t)JL_NC_MAX * Dk;                             /* (JL_NC_MAX, n_ctx) */
    float s[JL_NC_MAX];
    /* items interleave across threads: later rows see longer spans, so contiguous shares would not balance */
    for (int64_t item = ith; item < job->n_items; item += nth) {
        const int64_t chunk = item % job->head_chunks, g = item / job->head_chunks % d->n_head_kv,
                      block = item / (job->head_chunks * d->n_head_kv);
        const int h0 = (int)(g * group + chunk * job->heads_per_item);
        const int heads_left = (int)(group - chunk * job->heads_per_item);
        const int nh = heads_left < job->heads_per_item ? heads_left : job->heads_per_item;
        const int64_t r0 = block * job->rows_per_item;
        const int nr = (int)(job->n_rows - r0 < job->rows_per_item ? job->n_rows - r0 : job->rows_per_item);
        const int nq = nh * nr;
        int64_t lo = INT64_MAX, hi = 0;  /* the span of cache positions any of the queries sees */
        for (int rr = 0; rr < nr; rr++) {
            const int64_t pos = ctx->pos[r0 + rr], first = first_visible(pos, window);
            lo = first < lo ? first : lo;
            hi = pos > hi ? pos : hi;
        }
        const int64_t span = hi - lo + 1;
        for (int qi = 0; qi < nq; qi++)
            memcpy(queries + (size_t)qi * Dk, ctx->q + ((r0 + qi / nh) * d->n_head + h0 + qi % nh) * Dk, (size_t)Dk * sizeof(float));

        const size_t head = (size_t)job->layer * d->n_head_kv + (size_t)g;
        const uint8_t *k_rows = ctx->k_cache + (head * n_ctx + (size_t)lo) * Dk * elem;  /* (span, Dk) */
        for (int64_t j = 0; j < span; j++) {
            dot(Dk, k_rows + (size_t)j * Dk * elem, queries, (size_t)Dk * sizeof(float), nq, s);
            for (int qi = 0; qi < nq; qi++) probs[(size_t)qi * n_ctx + j] = s[qi] * d->attention_scale;
        }
        for (int qi = 0; qi < nq; qi++) {
            const int64_t pos = ctx->pos[r0 + qi / nh], first = first_visible(pos, window);
            float *p = probs + (size_t)qi * n_ctx;
            /* positions another query of the item sees but this one must not weigh */
            for (int64_t j = 0; j < first - lo; j++) p[j] = 0.0f;
            for (int64_t j = pos - lo + 1; j < span; j++) p[j] = 0.0f;
            jl_softmax(p + (first - lo), pos - first + 1);
        }
        const uint8_t *vt_rows = ctx->vt_cache + head * Dv * n_ctx * elem + (size_t)lo * elem;  /* (Dv, n_ctx) from lo */
        for (int dim = 0; dim < Dv; dim++) {
            dot(span, vt_rows + (size_t)dim * n_ctx * elem, probs, (size_t)n_ctx * sizeof(float), nq, s);
            for (int qi = 0; qi < nq; qi++)
                ctx->attn[((r0 + qi / nh) * d->n_head + h0 + qi % nh) * Dv + dim] = s[qi];
        }
    }
}

static jl_status attention(jl_context *ctx, int layer, int64_t n_rows, int n_threads) {
    const jl_model_desc *d = &ctx->model->desc;
    const int group = d->n_head / d->n_head_kv;
    attention_job job = {.ctx = ctx, .layer = layer, .n_rows = n_rows, .dot = jl_traits(ctx->kv_type)->vec_dot};
    /* heads of one KV group first; when a group has fewer than JL_NC_MAX heads, add rows */
    job.heads_per_item = group < JL_NC_MAX ? group : JL_NC_MAX;
    job.rows_per_item = group < JL_NC_MAX ? JL_NC_MAX / group : 1;
    job.head_chunks = (group + job.heads_per_item - 1) / job.heads_per_item;
    job.n_items = (n_rows + job.rows_per_item - 1) / job.rows_per_item * d->n_head_kv * job.head_chunks;
    int64_t span = ctx->pos[n_rows - 1] + 1;
    if (d->layers[layer].sliding_window > 0 && span > d->layers[layer].sliding_window) span = d->layers[layer].sliding_window;
    /* a multiply-add in a SIMD dot product costs far less than an elementwise step */
    int64_t work = n_rows * d->n_head * span * (d->head_dim_k + d->head_dim_v) / 16;
    int nth = threads_for(work, n_threads);
    if (nth > job.n_items) nth = (int)job.n_items;
    return jl_parallel(nth, attention_task, &job);
}

typedef struct {
    jl_context *ctx;
    int64_t n_rows;
} glu_job;

static void glu_task(void *arg, int ith, int nth) {
    const glu_job *job = arg;
    const jl_model_desc *d = &job->ctx->model->desc;
    int64_t lo, hi;
    jl_split(job->n_rows, ith, nth, 1, &lo, &hi);
    if (hi > lo)
        jl_glu(job->ctx->gate + lo * d->n_ff, job->ctx->up + lo * d->n_ff, (hi - lo) * d->n_ff, d->ffn_activation);
}

/* Keep only the rows that produce logits (strictly increasing, so the copies go forward). */
static void keep_rows(jl_context *ctx, int64_t n_out) {
    const int64_t E = ctx->model->desc.n_embd;
    for (int64_t i = 0; i < n_out; i++) {
        const int64_t src = ctx->out_rows[i];
        if (src == i) continue;
        memcpy(ctx->x + i * E, ctx->x + src * E, (size_t)E * sizeof(float));
        memcpy(ctx->xn + i * E, ctx->xn + src * E, (size_t)E * sizeof(float));
        ctx->pos[i] = ctx->pos[src];
    }
}

/* One chunk of n <= n_batch tokens at positions pos0.. ; logits for the n_out rows ctx->out_rows. */
static jl_status eval_chunk(jl_context *ctx, const int32_t *tokens, int64_t n, int64_t pos0, int64_t n_out,
                            float *logits, int n_threads) {
    const jl_model *m = ctx->model;
    const jl_model_desc *d = &m->desc;
    const int64_t E = d->n_embd, half = d->head_dim_k / 2;
    jl_status st;

    const jl_type_traits *embd = jl_traits(d->token_embd.type);
    const size_t embd_row = jl_row_bytes(embd, E);
    for (int64_t r = 0; r < n; r++) {
        float *x = ctx->x + r * E;
        embd->to_float((const uint8_t *)d->token_embd.data + (size_t)tokens[r] * embd_row, x, E);
        if (d->embedding_scale != 1.0f)
            for (int64_t i = 0; i < E; i++) x[i] *= d->embedding_scale;
        ctx->pos[r] = pos0 + r;
    }
    for (int c = 0; c < m->n_rope; c++)
        for (int64_t r = 0; r < n; r++) {
            const size_t at = ((size_t)c * ctx->n_batch + (size_t)r) * half;
            jl_rope_angles(pos0 + r, m->rope_inv_freq + (size_t)c * half, (int)half, ctx->rope_cos + at, ctx->rope_sin + at);
        }

    int64_t n_rows = n;
    for (int il = 0; il < d->n_layer; il++) {
        const jl_layer_desc *L = &d->layers[il];
        const int drop_rows = il == d->n_layer - 1 && n_out < n_rows;
        prepare_job prep = {.ctx = ctx, .layer = il, .n_rows = n_rows, .chunk_pos0 = pos0, .do_q = 1, .do_kv = 1};
        const int64_t prep_work = n_rows * ((int64_t)d->n_head + d->n_head_kv) * d->head_dim_k;

        jl_rmsnorm(ctx->xn, ctx->x, L->attn_norm.data, n_rows, E, d->norm_eps);
        if ((st = matmul(&L->attn_k, ctx->xn, n_rows, ctx->k, n_threads)) != JL_OK ||
            (st = matmul(&L->attn_v, ctx->xn, n_rows, ctx->v, n_threads)) != JL_OK)
            return st;
        if (drop_rows) {
            /* every row's K and V go into the cache; only the output rows go on */
            prep.do_q = 0;
            if ((st = jl_parallel(threads_for(prep_work, n_threads), prepare_task, &prep)) != JL_OK) return st;
            keep_rows(ctx, n_out);
            n_rows = n_out;
            if (n_rows == 0) return JL_OK;
            prep = (prepare_job){.ctx = ctx, .layer = il, .n_rows = n_rows, .chunk_pos0 = pos0, .do_q = 1, .do_kv = 0};
        }
        if ((st = matmul(&L->attn_q, ctx->xn, n_rows, ctx->q, n_threads)) != JL_OK ||
            (st = jl_parallel(threads_for(prep_work, n_threads), prepare_task, &prep)) != JL_OK ||
            (st = attention(ctx, il, n_rows, n_threads)) != JL_OK ||
            (st = matmul(&L->attn_output, ctx->attn, n_rows, ctx->proj, n_threads)) != JL_OK)
            return st;
        if (L->post_attention_norm.data) jl_rmsnorm(ctx->proj, ctx->proj, L->post_attention_norm.data, n_rows, E, d->norm_eps);
        add_rows(ctx->x, ctx->proj, n_rows * E);

        jl_rmsnorm(ctx->xn, ctx->x, L->ffn_norm.data, n_rows, E, d->norm_eps);
        glu_job glu = {.ctx = ctx, .n_rows = n_rows};
        if ((st = matmul(&L->ffn_gate, ctx->xn, n_rows, ctx->gate, n_threads)) != JL_OK ||
            (st = matmul(&L->ffn_up, ctx->xn, n_rows, ctx->up, n_threads)) != JL_OK ||
            (st = jl_parallel(threads_for(n_rows * d->n_ff, n_threads), glu_task, &glu)) != JL_OK ||
            (st = matmul(&L->ffn_down, ctx->gate, n_rows, ctx->proj, n_threads)) != JL_OK)
            return st;
        if (L->post_ffw_norm.data) jl_rmsnorm(ctx->proj, ctx->proj, L->post_ffw_norm.data, n_rows, E, d->norm_eps);
        add_rows(ctx->x, ctx->proj, n_rows * E);
    }
    if (n_out == 0) return JL_OK;
    jl_rmsnorm(ctx->xn, ctx->x, d->output_norm.data, n_out, E, d->norm_eps);
    if ((st = matmul(&d->output, ctx->xn, n_out, logits, n_threads)) != JL_OK) return st;
    if (d->final_logit_softcap > 0.0f) jl_softcap(logits, n_out * d->n_vocab, d->final_logit_softcap);
    return JL_OK;
}

jl_status jl_context_eval(jl_context *ctx, const int32_t *tokens, int64_t n_tokens, int64_t pos0,
                          const int64_t *output_rows, int64_t n_outputs, float *logits, int n_threads) {
    if (!ctx || !tokens || n_tokens < 1)
        return jl_fail(JL_ERR_INVALID_ARG, "eval: needs a context and at least one token");
    const jl_model_desc *d = &ctx->model->desc;
    if (pos0 < 0 || pos0 > ctx->n_past)
        return jl_fail(JL_ERR_INVALID_ARG, "eval: pos0 %lld must be in [0, n_past = %lld]: the cache holds positions [0, %lld)",
                       (long long)pos0, (long long)ctx->n_past, (long long)ctx->n_past);
    if (n_tokens > ctx->n_ctx - pos0)
        return jl_fail(JL_ERR_INVALID_ARG, "eval: positions %lld..%lld do not fit the context of n_ctx = %lld positions",
                       (long long)pos0, (long long)(pos0 + n_tokens - 1), (long long)ctx->n_ctx);
    for (int64_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= d->n_vocab)
            return jl_fail(JL_ERR_INVALID_ARG, "eval: token %d at row %lld is outside the vocabulary [0, %d)",
                           tokens[i], (long long)i, d->n_vocab);
    if (n_outputs < 0 || n_outputs > n_tokens || (n_outputs > 0 && (!output_rows || !logits)))
        return jl_fail(JL_ERR_INVALID_ARG, "eval: %lld output rows for %lld tokens, or no row list or logits buffer",
                       (long long)n_outputs, (long long)n_tokens);
    for (int64_t i = 0; i < n_outputs; i++)
        if (output_rows[i] < (i > 0 ? output_rows[i - 1] + 1 : 0) || output_rows[i] >= n_tokens)
            return jl_fail(JL_ERR_INVALID_ARG, "eval: output rows must be strictly increasing in [0, %lld); row %lld is %lld",
                           (long long)n_tokens, (long long)i, (long long)output_rows[i]);
    const int nth = jl_resolve_threads(n_threads);
    jl_status st = reserve_attention_scratch(ctx, nth);
    if (st != JL_OK) return st;

    ctx->n_past = pos0;
    int64_t first_out = 0;
    for (int64_t c0 = 0; c0 < n_tokens; c0 += ctx->n_batch) {
        const int64_t n = n_tokens - c0 < ctx->n_batch ? n_tokens - c0 : ctx->n_batch;
        int64_t end_out = first_out;
        for (; end_out < n_outputs && output_rows[end_out] < c0 + n; end_out++)
            ctx->out_rows[end_out - first_out] = output_rows[end_out] - c0;
        st = eval_chunk(ctx, tokens + c0, n, pos0 + c0, end_out - first_out,
                        logits ? logits + first_out * d->n_vocab : NULL, nth);
        if (st != JL_OK) {
            ctx->n_past = pos0;
            return st;
        }
        ctx->n_past = pos0 + c0 + n;
        first_out = end_out;
    }
    return JL_OK;
}
