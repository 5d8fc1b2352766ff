/* model.c — the transformer forward pass over a KV cache, one function for every architecture
 * the description can express (they differ only in flags, scales and optional tensors).
 *
 * The input: x = embedding_scale * token_embd[token], or a row of the batch's embd as given (an image's
 * embeddings), (+ token_types[0] + position_embd[pos], then a norm: bert).
 * Per layer, on the n rows of a batch:
 *   xn = norm(x)                         RMSNorm or LayerNorm (+ bias); none when the layer has no weights
 *   q, k, v = xn @ Wq.T, Wk.T, Wv.T (+ biases); rmsnorm of q, k (per head or whole row); rope(q, k)
 *                                        on the first n_rot dimensions (not on NoPE layers); k, v -> cache
 *   a = softmax(softcap(scale * q . K)) . V   over the cache: causal, windowed on sliding layers; an
 *                                        encoder (non_causal) sees its whole sequence, a row of a
 *                                        non-causal block its whole block
 *   x += residual_scale * post_norm(a @ Wo.T (+ bias));  x = norm(x) where the layer has an attn_output_norm (bert)
 *   xn = norm(x)
 *   x += residual_scale * post_norm(ffn(xn)), then x = norm(x) where it has a layer_output_norm; ffn one of
 *        down(act(xn @ Wg.T) * (xn @ Wu.T))  gated (+ biases)
 *        down(act(xn @ Wu.T))                 plain (+ biases)
 *        sum over the top-k experts e of w_e * down_e(act(gate_e(xn)) * up_e(xn))   mixture of experts
 * and at the end logits = softcap(logit_scale * norm(x) @ Wout.T), or the hidden states norm(x) themselves
 * (embeddings), for the requested rows only (the last layer already drops the other rows once their K
 * and V are in the cache).
 *
 * The cache keeps K as (n_ctx, head_dim_k) rows per KV head and a float V transposed, (head_dim_v,
 * n_ctx) per KV head, so both attention products are the kernel table's dot products: one cache
 * row against up to JL_NC_MAX query rows per call, the queries in the K type's activation format
 * (float32, or Q8_0 for a Q8_0 / Q4_0 K). A quantized V is kept as rows and each visible row is
 * dequantized once and added in, weighted, position by position. Where the active ISA has an
 * attend kernel for a float cache (K and V of one type), every item, of up to JL_ATTEND_QUERIES
 * queries, goes through it instead: its lanes are queries, so a page is read once for all of them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "internal.h"
#include "kv_cache.h"
#include "lora.h"
#include "ops.h"
#include "quant/fp16.h"
#include "quant/traits.h"

struct jl_model {
    jl_model_desc desc;       /* desc.layers points at layers */
    jl_layer_desc *layers;    /* (n_layer,) */
    int n_rope;               /* distinct RoPE tables (frequencies and attention factor) among the layers */
    int *layer_rope;          /* (2, n_layer): the table of each layer in short and long contexts; -1: NoPE */
    double *rope_inv_freq;    /* (n_rope, n_rot / 2): angle of pair i = pos * inv_freq[i] */
    float *rope_mscale;       /* (n_rope,) cos and sin are multiplied by it */
    jl_packed_cache *packed;  /* weights repacked for the GEMM, kept from their first batched use */
};

/* Attention walks the keys in position-aligned blocks of this many pages (flash-style): a block's
 * weights are the only scores held, and a transposed V's dot products run over a whole block. */
#define ATTN_BLOCK_PAGES 16
#define ATTN_BLOCK (ATTN_BLOCK_PAGES * JL_KV_PAGE)

struct jl_context {
    const jl_model *model;
    const int *layer_rope;     /* (n_layer,) the model's tables for this context's n_ctx */
    int64_t n_batch;
    jl_kv_cache kv;            /* shared by the sequences */
    jl_chunk rows;             /* the rows of the chunk being evaluated */
    jl_lora_rows lora;         /* the batch's adapters and the chunk rows' scales */
    /* one chunk of at most n_batch rows */
    float *x;                  /* (n_batch, n_embd) the residual stream */
    float *xn;                 /* (n_batch, n_embd) normed input of a block */
    float *q;                  /* (n_batch, n_head * head_dim_k) */
    float *k;                  /* (n_batch, n_head_kv * head_dim_k) */
    float *v;                  /* (n_batch, n_head_kv * head_dim_v) */
    float *attn;               /* (n_batch, n_head * head_dim_v) attention output */
    float *proj;               /* (n_batch, n_embd) output of attn_output and ffn_down */
    float *gate;               /* (n_batch, max(n_ff, n_ff_exp)) */
    float *up;                 /* (n_batch, max(n_ff, n_ff_exp)) */
    /* mixture of experts (NULL without) */
    float *router;             /* (n_batch, n_expert) router probabilities */
    int32_t *expert_of;        /* (n_batch, n_expert_used) each row's experts, best first */
    float *expert_weight;      /* (n_batch, n_expert_used) their weights */
    int32_t *expert_entries;   /* (n_batch * n_expert_used,) row * n_expert_used + slot, grouped by expert */
    int64_t *expert_start;     /* (n_expert + 1,) expert e's entries are [expert_start[e], expert_start[e + 1]) */
    float *expert_x;           /* (n_batch, n_embd) one expert's gathered input rows, then its output rows */
    float *expert_out;         /* (n_batch * n_expert_used, n_embd) each (row, slot)'s expert output */
    float *rope_cos;           /* (n_batch, n_rope, n_rot / 2) for each row's position */
    float *rope_sin;           /* (n_batch, n_rope, n_rot / 2) */
    int64_t *seq_next;         /* (n_seq_max,) each sequence's length after the batch */
    int64_t *seq_old_len;      /* (n_seq_max,) each sequence's length before it */
    float *attn_scratch;       /* (attn_scratch_threads, attn_scratch_floats) */
    int attn_scratch_threads;
    size_t attn_scratch_floats;  /* JL_NC_MAX gathered queries + JL_NC_MAX rows of weights, or the attend kernel's */
    jl_attend_fn attend;       /* the chunk's attend kernel (NULL: the dot products), chosen as its rows are grouped */
};

/* ---- validating a description ------------------------------------------------------------- */

enum tensor_use { USE_VECTOR, USE_MATMUL, USE_LOOKUP, USE_EXPERTS };

/* A weight's presence, type, shape and size: (rows, k), n_mats of them stacked (USE_EXPERTS; else 1). */
static jl_status check_tensor_n(const jl_tensor *t, int layer, const char *name, enum tensor_use use,
                                int64_t rows, int64_t k, int64_t n_mats, int required) {
    char full[96];
    if (layer >= 0) snprintf(full, sizeof full, "blk.%d.%s", layer, name);
    else snprintf(full, sizeof full, "%s", name);
    if (!t->data) return required ? jl_fail(JL_ERR_INVALID_ARG, "model: %s is missing", full) : JL_OK;
    const jl_type_traits *tt = jl_traits(t->type);
    if (!tt) return jl_fail(JL_ERR_UNSUPPORTED, "model: %s has type id %d, which janlib does not support", full, t->type);
    if (use == USE_VECTOR && (t->ne0 != k || t->ne1 != 1))
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s has shape (%lld, %lld), expected (%lld,)", full,
                       (long long)t->ne1, (long long)t->ne0, (long long)k);
    if (use != USE_VECTOR && (t->ne0 != k || t->ne1 != rows || t->ne2 != n_mats))
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s has shape (%lld, %lld, %lld), expected (%lld, %lld, %lld)", full,
                       (long long)t->ne2, (long long)t->ne1, (long long)t->ne0, (long long)n_mats, (long long)rows,
                       (long long)k);
    if (use == USE_VECTOR && t->type != JL_TYPE_F32)
        return jl_fail(JL_ERR_UNSUPPORTED, "model: %s is %s; norm and bias vectors must be F32", full, tt->name);
    if (k % tt->block_size != 0)
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s row length %lld is not a multiple of the %s block size %lld",
                       full, (long long)k, tt->name, (long long)tt->block_size);
    size_t need = jl_row_bytes(tt, k) * (size_t)(use == USE_VECTOR ? 1 : rows * n_mats);
    if (t->nbytes < need)
        return jl_fail(JL_ERR_INVALID_ARG, "model: %s holds %zu bytes, its shape needs %zu", full, t->nbytes, need);
    if (use == USE_LOOKUP && !tt->to_float)
        return jl_fail(JL_ERR_UNSUPPORTED, "model: %s: no conversion from %s to float", full, tt->name);
    if (use == USE_MATMUL || use == USE_EXPERTS) {
        const jl_type_traits *at = jl_traits(tt->activation);
        if (!tt->vec_dot || !at)
            return jl_fail(JL_ERR_UNSUPPORTED, "model: %s: no dot product for %s weights", full, tt->name);
        if (k % at->block_size != 0)
            return jl_fail(JL_ERR_UNSUPPORTED, "model: %s: %s weights quantize their input to %s, whose block size %lld does not divide k=%lld",
                           full, tt->name, at->name, (long long)at->block_size, (long long)k);
    }
    return JL_OK;
}

static jl_status check_tensor(const jl_tensor *t, int layer, const char *name, enum tensor_use use,
                              int64_t rows, int64_t k, int required) {
    return check_tensor_n(t, layer, name, use, rows, k, 1, required);
}

static jl_status check_layer(const jl_model_desc *d, int il) {
    const jl_layer_desc *L = &d->layers[il];
    const int64_t E = d->n_embd, QK = (int64_t)d->n_head * d->head_dim_k,
                  KK = (int64_t)d->n_head_kv * d->head_dim_k, KV = (int64_t)d->n_head_kv * d->head_dim_v,
                  QV = (int64_t)d->n_head * d->head_dim_v, F = d->n_ff, D = d->head_dim_k, X = d->n_expert,
                  FX = d->n_ff_exp;
    const int moe = L->ffn_gate_inp.data != NULL, dense = !moe;
    /* a q/k norm is per head or over the whole row */
    const int64_t q_norm = L->attn_q_norm.ne0 == QK ? QK : D, k_norm = L->attn_k_norm.ne0 == KK ? KK : D;
    const struct { const jl_tensor *t; const char *name; enum tensor_use use; int64_t rows, k, n; int required; } checks[] = {
        {&L->attn_norm, "attn_norm.weight", USE_VECTOR, 1, E, 1, 0},
        {&L->attn_norm_bias, "attn_norm.bias", USE_VECTOR, 1, E, 1, 0},
        {&L->attn_q, "attn_q.weight", USE_MATMUL, QK, E, 1, 1},
        {&L->attn_k, "attn_k.weight", USE_MATMUL, KK, E, 1, 1},
        {&L->attn_v, "attn_v.weight", USE_MATMUL, KV, E, 1, 1},
        {&L->attn_q_bias, "attn_q.bias", USE_VECTOR, 1, QK, 1, 0},
        {&L->attn_k_bias, "attn_k.bias", USE_VECTOR, 1, KK, 1, 0},
        {&L->attn_v_bias, "attn_v.bias", USE_VECTOR, 1, KV, 1, 0},
        {&L->attn_q_norm, "attn_q_norm.weight", USE_VECTOR, 1, q_norm, 1, 0},
        {&L->attn_k_norm, "attn_k_norm.weight", USE_VECTOR, 1, k_norm, 1, 0},
        {&L->attn_output, "attn_output.weight", USE_MATMUL, E, QV, 1, 1},
        {&L->attn_output_bias, "attn_output.bias", USE_VECTOR, 1, E, 1, 0},
        {&L->post_attention_norm, "post_attention_norm.weight", USE_VECTOR, 1, E, 1, 0},
        {&L->attn_output_norm, "attn_output_norm.weight", USE_VECTOR, 1, E, 1, 0},
        {&L->attn_output_norm_bias, "attn_output_norm.bias", USE_VECTOR, 1, E, 1, 0},
        {&L->layer_output_norm, "layer_output_norm.weight", USE_VECTOR, 1, E, 1, 0},
        {&L->layer_output_norm_bias, "layer_output_norm.bias", USE_VECTOR, 1, E, 1, 0},
        {&L->ffn_norm, "ffn_norm.weight", USE_VECTOR, 1, E, 1, 0},
        {&L->ffn_norm_bias, "ffn_norm.bias", USE_VECTOR, 1, E, 1, 0},
        {&L->ffn_gate, "ffn_gate.weight", USE_MATMUL, F, E, 1, 0},
        {&L->ffn_up, "ffn_up.weight", USE_MATMUL, F, E, 1, dense},
        {&L->ffn_down, "ffn_down.weight", USE_MATMUL, E, F, 1, dense},
        {&L->ffn_gate_bias, "ffn_gate.bias", USE_VECTOR, 1, F, 1, 0},
        {&L->ffn_up_bias, "ffn_up.bias", USE_VECTOR, 1, F, 1, 0},
        {&L->ffn_down_bias, "ffn_down.bias", USE_VECTOR, 1, E, 1, 0},
        {&L->ffn_gate_inp, "ffn_gate_inp.weight", USE_MATMUL, X, E, 1, 0},
        {&L->ffn_gate_exps, "ffn_gate_exps.weight", USE_EXPERTS, FX, E, X, moe},
        {&L->ffn_up_exps, "ffn_up_exps.weight", USE_EXPERTS, FX, E, X, moe},
        {&L->ffn_down_exps, "ffn_down_exps.weight", USE_EXPERTS, E, FX, X, moe},
        {&L->post_ffw_norm, "post_ffw_norm.weight", USE_VECTOR, 1, E, 1, 0},
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        jl_status st = check_tensor_n(checks[i].t, il, checks[i].name, checks[i].use, checks[i].rows, checks[i].k,
                                      checks[i].n, checks[i].required);
        if (st != JL_OK) return st;
    }
    if (moe && (X < 1 || d->n_expert_used < 1 || d->n_expert_used > X || FX < 1))
        return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d has experts but n_expert %d, n_expert_used %d, n_ff_exp %d",
                       il, d->n_expert, d->n_expert_used, d->n_ff_exp);
    if (moe && (L->ffn_gate.data || L->ffn_up.data || L->ffn_down.data))
        return jl_fail(JL_ERR_UNSUPPORTED, "model: layer %d has both experts and a dense FFN (shared experts are not supported)", il);
    if ((L->attn_norm_bias.data && !L->attn_norm.data) || (L->ffn_norm_bias.data && !L->ffn_norm.data) ||
        (L->attn_output_norm_bias.data && !L->attn_output_norm.data) ||
        (L->layer_output_norm_bias.data && !L->layer_output_norm.data))
        return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d has a norm bias without its norm weight", il);
    for (int variant = 0; variant < 2; variant++) {
        const double *f = variant ? L->rope_inv_freq_long : L->rope_inv_freq;
        for (int i = 0; f && i < d->n_rot / 2; i++)
            if (!(f[i] >= 0.0) || !isfinite(f[i]))
                return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d RoPE frequency %d is %g", il, i, f[i]);
    }
    if (L->rope_inv_freq_long && !L->rope_inv_freq)
        return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d has long-context RoPE frequencies but no RoPE", il);
    if (!(L->rope_attn_factor > 0.0f) || !isfinite(L->rope_attn_factor))
        return jl_fail(JL_ERR_INVALID_ARG, "model: layer %d RoPE attention factor %g must be positive", il, L->rope_attn_factor);
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
    if (d->n_rot < 2 || d->n_rot % 2 != 0 || d->n_rot > d->head_dim_k)
        return jl_fail(JL_ERR_INVALID_ARG, "model: n_rot %d must be even and in [2, head_dim_k = %d]", d->n_rot, d->head_dim_k);
    if (d->norm_type != JL_NORM_RMS && d->norm_type != JL_NORM_LAYER)
        return jl_fail(JL_ERR_INVALID_ARG, "model: unknown norm type %d", d->norm_type);
    if (d->n_expert < 0 || d->n_expert_used < 0 || d->n_ff_exp < 0 || d->n_expert_used > d->n_expert ||
        !isfinite(d->expert_weights_scale) || !isfinite(d->residual_scale) || !isfinite(d->logit_scale) ||
        !(d->attn_logit_softcap >= 0.0f))
        return jl_fail(JL_ERR_INVALID_ARG, "model: n_expert %d, n_expert_used %d, n_ff_exp %d, expert_weights_scale %g, "
                       "residual_scale %g, logit_scale %g or attn_logit_softcap %g out of range",
                       d->n_expert, d->n_expert_used, d->n_ff_exp, d->expert_weights_scale, d->residual_scale,
                       d->logit_scale, d->attn_logit_softcap);
    if (d->ffn_activation != JL_FFN_SILU && d->ffn_activation != JL_FFN_GELU_TANH && d->ffn_activation != JL_FFN_GELU_ERF)
        return jl_fail(JL_ERR_INVALID_ARG, "model: unknown FFN activation %d", d->ffn_activation);
    if (!(d->norm_eps >= 0.0f) || !isfinite(d->embedding_scale) || !(d->attention_scale > 0.0f) ||
        !isfinite(d->attention_scale) || !(d->final_logit_softcap >= 0.0f))
        return jl_fail(JL_ERR_INVALID_ARG, "model: norm_eps %g, embedding_scale %g, attention_scale %g or final_logit_softcap %g out of range",
                       d->norm_eps, d->embedding_scale, d->attention_scale, d->final_logit_softcap);
    if (!d->layers) return jl_fail(JL_ERR_INVALID_ARG, "model: no layer descriptions");
    jl_status st;
    if ((st = check_tensor(&d->token_embd, -1, "token_embd.weight", USE_LOOKUP, d->n_vocab, d->n_embd, 1)) != JL_OK ||
        (st = check_tensor(&d->token_types, -1, "token_types.weight", USE_LOOKUP, d->token_types.ne1, d->n_embd, 0)) != JL_OK ||
        (st = check_tensor(&d->position_embd, -1, "position_embd.weight", USE_LOOKUP, d->position_embd.ne1, d->n_embd, 0)) != JL_OK ||
        (st = check_tensor(&d->token_embd_norm, -1, "token_embd_norm.weight", USE_VECTOR, 1, d->n_embd, 0)) != JL_OK ||
        (st = check_tensor(&d->token_embd_norm_bias, -1, "token_embd_norm.bias", USE_VECTOR, 1, d->n_embd, 0)) != JL_OK ||
        (st = check_tensor(&d->output_norm, -1, "output_norm.weight", USE_VECTOR, 1, d->n_embd, 0)) != JL_OK ||
        (st = check_tensor(&d->output_norm_bias, -1, "output_norm.bias", USE_VECTOR, 1, d->n_embd, 0)) != JL_OK ||
        (st = check_tensor(&d->output, -1, "output.weight", USE_MATMUL, d->n_vocab, d->n_embd, 0)) != JL_OK)
        return st;
    if ((d->output_norm_bias.data && !d->output_norm.data) || (d->token_embd_norm_bias.data && !d->token_embd_norm.data))
        return jl_fail(JL_ERR_INVALID_ARG, "model: a norm bias without its norm weight");
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
    free(model->rope_mscale);
    jl_packed_cache_free(model->packed);
    free(model);
}

/* Layers sharing RoPE frequencies and attention factor share one table of angles per batch. */
static void index_rope_configs(jl_model *m) {
    const jl_model_desc *d = &m->desc;
    const int half = d->n_rot / 2;
    m->n_rope = 0;
    for (int variant = 0; variant < 2; variant++)
        for (int il = 0; il < d->n_layer; il++) {
            const jl_layer_desc *L = &m->layers[il];
            const double *f = variant && L->rope_inv_freq_long ? L->rope_inv_freq_long : L->rope_inv_freq;
            int *slot = &m->layer_rope[variant * d->n_layer + il];
            if (!f) {
                *slot = -1;
                continue;
            }
            int c = 0;
            while (c < m->n_rope && (m->rope_mscale[c] != L->rope_attn_factor ||
                                     memcmp(m->rope_inv_freq + (size_t)c * half, f, (size_t)half * sizeof *f) != 0))
                c++;
            if (c == m->n_rope) {
                memcpy(m->rope_inv_freq + (size_t)c * half, f, (size_t)half * sizeof *f);
                m->rope_mscale[c] = L->rope_attn_factor;
                m->n_rope++;
            }
            *slot = c;
        }
}

jl_status jl_model_create(const jl_model_desc *desc, jl_model **model) {
    if (!desc || !model) return jl_fail(JL_ERR_INVALID_ARG, "model: NULL description or output pointer");
    *model = NULL;
    jl_status st = check_desc(desc);
    if (st != JL_OK) return st;
    jl_model *m = calloc(1, sizeof *m);
    if (!m) return jl_fail(JL_ERR_NOMEM, "model: out of memory");
    const int n_layer = desc->n_layer, half = desc->n_rot / 2;
    m->layers = malloc((size_t)n_layer * sizeof *m->layers);
    m->layer_rope = malloc((size_t)2 * n_layer * sizeof *m->layer_rope);
    m->rope_inv_freq = malloc((size_t)2 * n_layer * half * sizeof *m->rope_inv_freq);
    m->rope_mscale = malloc((size_t)2 * n_layer * sizeof *m->rope_mscale);
    m->packed = jl_packed_cache_create();
    if (!m->layers || !m->layer_rope || !m->rope_inv_freq || !m->rope_mscale || !m->packed) {
        jl_model_free(m);
        return jl_fail(JL_ERR_NOMEM, "model: out of memory for %d layer descriptions", n_layer);
    }
    memcpy(m->layers, desc->layers, (size_t)n_layer * sizeof *m->layers);
    m->desc = *desc;
    m->desc.layers = m->layers;
    index_rope_configs(m);
    for (int il = 0; il < n_layer; il++)  /* the model keeps its own copies of the tables */
        m->layers[il].rope_inv_freq = m->layers[il].rope_inv_freq_long = NULL;
    *model = m;
    return JL_OK;
}

const jl_model_desc *jl_model_description(const jl_model *model) { return &model->desc; }

/* ---- context ---------------------------------------------------------------------------- */

void jl_context_free(jl_context *ctx) {
    if (!ctx) return;
    float *buffers[] = {ctx->x, ctx->xn, ctx->q, ctx->k, ctx->v, ctx->attn, ctx->proj, ctx->gate, ctx->up,
                        ctx->rope_cos, ctx->rope_sin, ctx->attn_scratch, ctx->router, ctx->expert_weight,
                        ctx->expert_x, ctx->expert_out};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) free(buffers[i]);
    free(ctx->expert_of);
    free(ctx->expert_entries);
    free(ctx->expert_start);
    free(ctx->rows.pos);
    free(ctx->rows.last);
    free(ctx->rows.seq);
    free(ctx->rows.out_rows);
    free(ctx->rows.group_rows);
    free(ctx->rows.group_start);
    free(ctx->rows.seq_count);
    free(ctx->seq_next);
    free(ctx->seq_old_len);
    jl_lora_rows_free(&ctx->lora);
    jl_kv_release(&ctx->kv);
    free(ctx);
}

static float *alloc_floats(int64_t rows, int64_t cols) {
    return aligned_alloc(64, ((size_t)rows * (size_t)cols * sizeof(float) + 63) / 64 * 64);
}

jl_status jl_context_create(const jl_model *model, int64_t n_ctx, int32_t n_seq_max, int64_t n_cells, int type_k,
                            int type_v, int64_t n_batch, int swa_full, jl_context **out) {
    if (!model || !out) return jl_fail(JL_ERR_INVALID_ARG, "context: NULL model or output pointer");
    *out = NULL;
    if (n_ctx < 1 || n_ctx > INT32_MAX || n_batch < 1 || n_seq_max < 1 || n_cells < 1)
        return jl_fail(JL_ERR_INVALID_ARG, "context: n_ctx %lld must be in [1, 2^31), n_batch %lld, n_seq_max %d and n_cells %lld positive",
                       (long long)n_ctx, (long long)n_batch, n_seq_max, (long long)n_cells);
    const jl_model_desc *d = &model->desc;
    jl_context *ctx = calloc(1, sizeof *ctx);
    /* the sliding-window layers' caches keep only their windows, unless asked to keep everything */
    int32_t *layer_window = malloc((size_t)d->n_layer * sizeof *layer_window);
    if (!ctx || !layer_window) {
        free(ctx);
        free(layer_window);
        return jl_fail(JL_ERR_NOMEM, "context: out of memory");
    }
    for (int il = 0; il < d->n_layer; il++) layer_window[il] = d->non_causal ? 0 : d->layers[il].sliding_window;
    jl_status st = jl_kv_init(&ctx->kv, d->n_layer, swa_full ? NULL : layer_window, d->n_head_kv, d->head_dim_k,
                              d->head_dim_v, type_k, type_v, n_ctx, n_seq_max, n_cells);
    free(layer_window);
    if (st != JL_OK) {
        free(ctx);
        return st;
    }
    ctx->model = model;
    /* longrope: the long-context factors serve contexts longer than the original training context */
    ctx->layer_rope = model->layer_rope + (n_ctx > d->rope_n_ctx_orig ? d->n_layer : 0);
    ctx->n_batch = n_batch;
    const int64_t B = n_batch, half = d->n_rot / 2, n_ff = d->n_ff > d->n_ff_exp ? d->n_ff : d->n_ff_exp;
    ctx->x = alloc_floats(B, d->n_embd);
    ctx->xn = alloc_floats(B, d->n_embd);
    ctx->q = alloc_floats(B, (int64_t)d->n_head * d->head_dim_k);
    ctx->k = alloc_floats(B, (int64_t)d->n_head_kv * d->head_dim_k);
    ctx->v = alloc_floats(B, (int64_t)d->n_head_kv * d->head_dim_v);
    ctx->attn = alloc_floats(B, (int64_t)d->n_head * d->head_dim_v);
    ctx->proj = alloc_floats(B, d->n_embd);
    ctx->gate = alloc_floats(B, n_ff);
    ctx->up = alloc_floats(B, n_ff);
    int moe_ok = 1;
    if (d->n_expert > 0) {
        const int64_t K = d->n_expert_used;
        ctx->router = alloc_floats(B, d->n_expert);
        ctx->expert_weight = alloc_floats(B, K);
        ctx->expert_x = alloc_floats(B, d->n_embd);
        ctx->expert_out = alloc_floats(B * K, d->n_embd);
        ctx->expert_of = malloc((size_t)(B * K) * sizeof *ctx->expert_of);
        ctx->expert_entries = malloc((size_t)(B * K) * sizeof *ctx->expert_entries);
        ctx->expert_start = malloc((size_t)(d->n_expert + 1) * sizeof *ctx->expert_start);
        moe_ok = ctx->router && ctx->expert_weight && ctx->expert_x && ctx->expert_out && ctx->expert_of &&
                 ctx->expert_entries && ctx->expert_start;
    }
    const int64_t n_rope = model->n_rope > 0 ? model->n_rope : 1;  /* all layers NoPE: unused */
    ctx->rope_cos = alloc_floats(B * n_rope, half);
    ctx->rope_sin = alloc_floats(B * n_rope, half);
    ctx->rows.pos = malloc((size_t)B * sizeof *ctx->rows.pos);
    ctx->rows.last = malloc((size_t)B * sizeof *ctx->rows.last);
    ctx->rows.seq = malloc((size_t)B * sizeof *ctx->rows.seq);
    ctx->rows.out_rows = malloc((size_t)B * sizeof *ctx->rows.out_rows);
    ctx->rows.group_rows = malloc((size_t)B * sizeof *ctx->rows.group_rows);
    ctx->rows.group_start = malloc((size_t)(B + 1) * sizeof *ctx->rows.group_start);
    ctx->rows.seq_count = malloc((size_t)(n_seq_max + 1) * sizeof *ctx->rows.seq_count);
    ctx->seq_next = malloc((size_t)n_seq_max * sizeof *ctx->seq_next);
    ctx->seq_old_len = malloc((size_t)n_seq_max * sizeof *ctx->seq_old_len);
    /* per thread: JL_NC_MAX gathered queries (an activation row takes at most 4 bytes a value),
     * their weights over one block of keys, one dequantized V row; or the attend kernel's scratch;
     * whole cache lines, each thread's share aligned: nothing grows with the context */
    const size_t dot_floats = (size_t)JL_NC_MAX * ((size_t)d->head_dim_k + ATTN_BLOCK) + (size_t)d->head_dim_v,
                 attend_floats = JL_ATTEND_SCRATCH_FLOATS(d->head_dim_k, d->head_dim_v);
    ctx->attn_scratch_floats = ((dot_floats > attend_floats ? dot_floats : attend_floats) + 15) / 16 * 16;
    if (!ctx->x || !ctx->xn || !ctx->q || !ctx->k || !ctx->v || !ctx->attn || !ctx->proj || !ctx->gate || !ctx->up ||
        !ctx->rope_cos || !ctx->rope_sin || !ctx->rows.pos || !ctx->rows.last || !ctx->rows.seq || !ctx->rows.out_rows ||
        !ctx->rows.group_rows || !ctx->rows.group_start || !ctx->rows.seq_count || !ctx->seq_next || !ctx->seq_old_len ||
        !moe_ok) {
        jl_context_free(ctx);
        return jl_fail(JL_ERR_NOMEM, "context: out of memory for %lld-token batches", (long long)B);
    }
    *out = ctx;
    return JL_OK;
}

int64_t jl_context_n_ctx(const jl_context *ctx) { return ctx ? ctx->kv.n_ctx : 0; }
int32_t jl_context_n_seq_max(const jl_context *ctx) { return ctx ? ctx->kv.n_seq : 0; }
/* every pool has the same pages; the one with the fewest free ones bounds what still fits */
int64_t jl_context_n_cells(const jl_context *ctx) { return ctx ? (int64_t)ctx->kv.pools[0].n_pages * JL_KV_PAGE : 0; }
int64_t jl_context_n_free_cells(const jl_context *ctx) {
    if (!ctx) return 0;
    int32_t n_free = ctx->kv.pools[0].n_free;
    for (int i = 1; i < ctx->kv.n_pools; i++) n_free = ctx->kv.pools[i].n_free < n_free ? ctx->kv.pools[i].n_free : n_free;
    return (int64_t)n_free * JL_KV_PAGE;
}
size_t jl_context_kv_bytes(const jl_context *ctx) { return ctx ? jl_kv_bytes_in_use(&ctx->kv) : 0; }
int64_t jl_context_page_size(void) { return JL_KV_PAGE; }

static jl_status check_seq(const jl_context *ctx, int32_t seq, const char *what) {
    if (!ctx) return jl_fail(JL_ERR_INVALID_ARG, "%s: NULL context", what);
    if (seq < 0 || seq >= ctx->kv.n_seq)
        return jl_fail(JL_ERR_INVALID_ARG, "%s: sequence id %d is outside [0, n_seq_max = %d)", what, seq, ctx->kv.n_seq);
    return JL_OK;
}

jl_status jl_context_seq_len(const jl_context *ctx, int32_t seq, int64_t *len) {
    jl_status st = check_seq(ctx, seq, "seq_len");
    if (st == JL_OK) *len = ctx->kv.len[seq];
    return st;
}

jl_status jl_context_seq_pos_min(const jl_context *ctx, int32_t seq, int64_t *pos_min, int64_t *cut_min) {
    jl_status st = check_seq(ctx, seq, "seq_pos_min");
    if (st != JL_OK) return st;
    *pos_min = jl_kv_pos_min(&ctx->kv, seq);
    *cut_min = jl_kv_cut_min(&ctx->kv, seq);
    return JL_OK;
}

jl_status jl_context_seq_rm(jl_context *ctx, int32_t seq, int64_t p0, int64_t p1) {
    jl_status st = check_seq(ctx, seq, "seq_rm");
    if (st != JL_OK) return st;
    const int64_t len = ctx->kv.len[seq];
    if (p0 < 0 || (p1 >= 0 && p1 < p0))
        return jl_fail(JL_ERR_INVALID_ARG, "seq_rm: bad range [%lld, %lld)", (long long)p0, (long long)p1);
    if (p1 >= 0 && p1 < len && p0 < p1)
        return jl_fail(JL_ERR_INVALID_ARG, "seq_rm: only a suffix can be removed: [%lld, %lld) ends before the %lld cached positions of sequence %d",
                       (long long)p0, (long long)p1, (long long)len, seq);
    if (p0 < len && !jl_kv_can_cut(&ctx->kv, seq, p0))
        return jl_fail(JL_ERR_INVALID_ARG, "seq_rm: sequence %d can be cut back to 0 or to %lld positions or more, not %lld: "
                       "its sliding-window layers gave back the positions before %lld (recompute them)",
                       seq, (long long)jl_kv_cut_min(&ctx->kv, seq), (long long)p0, (long long)jl_kv_pos_min(&ctx->kv, seq));
    if (p0 < len) jl_kv_truncate(&ctx->kv, seq, p0);
    return JL_OK;
}

jl_status jl_context_seq_cp(jl_context *ctx, int32_t src, int32_t dst, int64_t p0, int64_t p1) {
    jl_status st;
    if ((st = check_seq(ctx, src, "seq_cp")) != JL_OK || (st = check_seq(ctx, dst, "seq_cp")) != JL_OK) return st;
    const int64_t src_len = ctx->kv.len[src];
    if (p1 < 0) p1 = src_len;
    if (p0 < 0 || p0 > p1 || p1 > src_len)
        return jl_fail(JL_ERR_INVALID_ARG, "seq_cp: positions [%lld, %lld) are not within the %lld cached positions of sequence %d",
                       (long long)p0, (long long)p1, (long long)src_len, src);
    if (ctx->kv.len[dst] < p0)
        return jl_fail(JL_ERR_INVALID_ARG, "seq_cp: sequence %d holds %lld positions, fewer than p0 = %lld",
                       dst, (long long)ctx->kv.len[dst], (long long)p0);
    return src == dst ? JL_OK : jl_kv_copy(&ctx->kv, src, dst, p0, p1);
}

static jl_status check_shift(const jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard) {
    jl_status st = check_seq(ctx, seq, "shift");
    if (st != JL_OK) return st;
    const int64_t len = ctx->kv.len[seq];
    if (n_keep < 0 || n_discard <= 0 || n_keep + n_discard > len)
        return jl_fail(JL_ERR_INVALID_ARG, "shift: cannot keep %lld and discard %lld of %lld cached positions",
                       (long long)n_keep, (long long)n_discard, (long long)len);
    return JL_OK;
}

jl_status jl_context_seq_can_shift(const jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard, int *ok) {
    jl_status st = check_shift(ctx, seq, n_keep, n_discard);
    if (st == JL_OK) *ok = jl_kv_can_shift(&ctx->kv, seq, n_keep, n_discard);
    return st;
}

jl_status jl_context_seq_shift(jl_context *ctx, int32_t seq, int64_t n_keep, int64_t n_discard) {
    jl_status st = check_shift(ctx, seq, n_keep, n_discard);
    if (st != JL_OK) return st;
    const jl_model *m = ctx->model;
    const jl_model_desc *d = &m->desc;
    const int half = d->head_dim_k / 2, rot_half = d->n_rot / 2;
    float *angles = malloc((size_t)d->n_layer * 2 * half * sizeof(float));
    if (!angles) return jl_fail(JL_ERR_NOMEM, "shift: out of memory");
    float *cos_a = angles, *sin_a = angles + (size_t)d->n_layer * half;
    for (int il = 0; il < d->n_layer; il++) {  /* a rotation by -n_discard positions; none on NoPE layers */
        const int c = ctx->layer_rope[il];
        for (int i = 0; c < 0 && i < rot_half; i++) {
            cos_a[(size_t)il * half + i] = 1.0f;
            sin_a[(size_t)il * half + i] = 0.0f;
        }
        if (c >= 0)
            jl_rope_angles(-n_discard, m->rope_inv_freq + (size_t)c * rot_half, rot_half, 1.0f, cos_a + (size_t)il * half,
                           sin_a + (size_t)il * half);
    }
    st = jl_kv_shift(&ctx->kv, seq, n_keep, n_discard, cos_a, sin_a, d->n_rot, d->rope_layout);
    free(angles);
    return st;
}

/* Per-thread attention scratch grows with the thread count, which changes rarely. */
static jl_status reserve_attention_scratch(jl_context *ctx, int n_threads) {
    if (n_threads <= ctx->attn_scratch_threads) return JL_OK;
    float *scratch = alloc_floats(n_threads, (int64_t)ctx->attn_scratch_floats);
    if (!scratch) return jl_fail(JL_ERR_NOMEM, "decode: out of memory for attention scratch of %d threads", n_threads);
    free(ctx->attn_scratch);
    ctx->attn_scratch = scratch;
    ctx->attn_scratch_threads = n_threads;
    return JL_OK;
}

/* ---- the steps of one layer ------------------------------------------------------------- */

static jl_status matmul(const jl_model *m, const jl_tensor *w, const float *x, int64_t n, float *y, int n_threads) {
    return jl_matmul_cached(m->packed, w->type, w->data, w->nbytes, w->ne1, w->ne0, x, n, y, n_threads);
}

/* One projection of a layer: its weight, LoRA target, bias (NULL: none) and output y (n, w->ne1). */
typedef struct {
    int target;
    const jl_tensor *w, *bias;
    float *y;
} projection;

/* Each projection's y = x @ W.T, plus the rows' LoRA terms for its target in layer il, plus its bias
 * (when given and present) on every row. Projections of one weight type share the quantized x and
 * one parallel step. fill_row(fill_arg, r), when given, first makes row r of x. */
static jl_status project_all(jl_context *ctx, int il, const projection *ps, int n_proj, const float *x, int64_t n,
                             jl_row_fill_fn fill_row, void *fill_arg, int n_threads) {
    jl_matmul_weight ws[JL_MATMUL_SHARED_MAX];
    for (int i = 0; i < n_proj; i++)
        ws[i] = (jl_matmul_weight){.type = ps[i].w->type, .w = ps[i].w->data, .w_bytes = ps[i].w->nbytes,
                                   .rows = ps[i].w->ne1, .y = ps[i].y};
    jl_status st = jl_matmul_shared(ctx->model->packed, ws, n_proj, ps[0].w->ne0, x, n, fill_row, fill_arg, n_threads);
    for (int i = 0; st == JL_OK && i < n_proj; i++) {
        const int64_t width = ps[i].w->ne1;
        if (ctx->lora.n_lora) st = jl_lora_apply(&ctx->lora, il, ps[i].target, x, ps[i].w->ne0, n, ps[i].y, width, n_threads);
        const float *b = ps[i].bias ? ps[i].bias->data : NULL;
        for (int64_t r = 0; b && st == JL_OK && r < n; r++)
            for (int64_t j = 0; j < width; j++) ps[i].y[r * width + j] += b[j];
    }
    return st;
}

static jl_status project(jl_context *ctx, int il, int target, const jl_tensor *w, const jl_tensor *bias, const float *x,
                         int64_t n, float *y, int n_threads) {
    const projection p = {.target = target, .w = w, .bias = bias, .y = y};
    return project_all(ctx, il, &p, 1, x, n, NULL, NULL, n_threads);
}

/* expert e's matrix of a stacked (n_expert, rows, k) tensor: only its bytes are read */
static jl_status matmul_expert(const jl_tensor *w, int64_t e, const float *x, int64_t n, float *y, int n_threads) {
    const size_t bytes = jl_row_bytes(jl_traits(w->type), w->ne0) * (size_t)w->ne1;
    return jl_matmul(w->type, (const uint8_t *)w->data + (size_t)e * bytes, bytes, w->ne1, w->ne0, x, n, y, n_threads);
}

static void add_bias(float *x, const jl_tensor *bias, int64_t n) {
    const float *b = bias->data;
    if (b)
        for (int64_t i = 0; i < n; i++) x[i] += b[i];
}

/* y (n_rows, n_embd) = the block's norm of x, or x itself when the block has no norm weights */
static void block_norm(const jl_model_desc *d, float *y, const float *x, const jl_tensor *w, const jl_tensor *b,
                       int64_t n_rows) {
    if (!w->data)
        memcpy(y, x, (size_t)n_rows * d->n_embd * sizeof(float));
    else if (d->norm_type == JL_NORM_LAYER)
        jl_layernorm(y, x, w->data, b->data, n_rows, d->n_embd, d->norm_eps);
    else
        jl_rmsnorm(y, x, w->data, n_rows, d->n_embd, d->norm_eps);
}

/* x += scale * y, the residual connection */
static void add_scaled_rows(float *x, const float *y, int64_t n, float scale) {
    if (scale == 1.0f)
        for (int64_t i = 0; i < n; i++) x[i] += y[i];
    else
        for (int64_t i = 0; i < n; i++) x[i] += scale * y[i];
}

/* The residual connection that closes a sublayer and the norm that opens the next, row by row: each
 * row's input is made on the thread that then quantizes it (see project_all). */
typedef struct {
    jl_context *ctx;
    const jl_tensor *post_norm;                 /* proj's norm before it joins x; NULL: no sublayer to close */
    const jl_tensor *out_norm, *out_norm_bias;  /* x's norm after */
    const jl_tensor *norm, *norm_bias;          /* xn = norm(x), the next sublayer's input */
} sublayer_input;

static void close_residual(const sublayer_input *in, int64_t r) {
    const jl_model_desc *d = &in->ctx->model->desc;
    const int64_t E = d->n_embd;
    float *x = in->ctx->x + r * E, *proj = in->ctx->proj + r * E;
    if (in->post_norm->data) jl_rmsnorm(proj, proj, in->post_norm->data, 1, E, d->norm_eps);
    add_scaled_rows(x, proj, E, d->residual_scale);
    if (in->out_norm->data) block_norm(d, x, x, in->out_norm, in->out_norm_bias, 1);
}

/* The input that norm opens, after the residual of layer il - 1's FFN (none before layer 0). */
static sublayer_input after_ffn(jl_context *ctx, int il, const jl_tensor *norm, const jl_tensor *norm_bias) {
    const jl_layer_desc *prev = il > 0 ? &ctx->model->desc.layers[il - 1] : NULL;
    return (sublayer_input){.ctx = ctx, .post_norm = prev ? &prev->post_ffw_norm : NULL,
                            .out_norm = prev ? &prev->layer_output_norm : NULL,
                            .out_norm_bias = prev ? &prev->layer_output_norm_bias : NULL, .norm = norm, .norm_bias = norm_bias};
}

static void sublayer_input_row(void *arg, int64_t r) {
    const sublayer_input *in = arg;
    const jl_model_desc *d = &in->ctx->model->desc;
    if (in->post_norm) close_residual(in, r);
    block_norm(d, in->ctx->xn + r * d->n_embd, in->ctx->x + r * d->n_embd, in->norm, in->norm_bias, 1);
}

/* Less work than this per thread runs on the calling thread: a dispatch costs more. Work is counted
 * in elementwise steps (an add of one element, about 0.1 ns with SIMD), so 16384 are about 2 us. */
#define MIN_PARALLEL_WORK 16384
/* Steps per element of the dearer elementwise work, from a profile of SmolLM2 decode steps (Zen 4):
 * an exponential and a division (about 0.9 ns); a query or key element's RoPE rotation with its
 * head's share of the KV cache writes, f16 conversions and V scattered into its transposed page
 * (about 2 ns). */
#define GLU_COST 8
#define PREPARE_COST 16

static int threads_for(int64_t work, int n_threads) {
    int64_t useful = work / MIN_PARALLEL_WORK;
    return useful < 1 ? 1 : useful < n_threads ? (int)useful : n_threads;
}

typedef struct {
    jl_context *ctx;
    int layer;
    int do_q, do_kv;
} prepare_job;

/* Biases, per-head norms and RoPE on q and/or k rows; k and v then go into their sequence's page. */
static void prepare_task(void *arg, int ith, int nth) {
    const prepare_job *job = arg;
    jl_context *ctx = job->ctx;
    const jl_model *m = ctx->model;
    const jl_model_desc *d = &m->desc;
    const jl_layer_desc *L = &d->layers[job->layer];
    const jl_kv_cache *kv = &ctx->kv;
    const int Dk = d->head_dim_k, Dv = d->head_dim_v, half = d->n_rot / 2, rope = ctx->layer_rope[job->layer];
    const int64_t q_width = (int64_t)d->n_head * Dk, k_width = (int64_t)d->n_head_kv * Dk,
                  v_width = (int64_t)d->n_head_kv * Dv;
    int64_t lo, hi;
    jl_split(ctx->rows.n_rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const size_t angles = ((size_t)r * m->n_rope + (size_t)(rope < 0 ? 0 : rope)) * half;
        const float *cos_a = ctx->rope_cos + angles, *sin_a = ctx->rope_sin + angles;
        if (job->do_q) {
            float *q = ctx->q + r * q_width;
            add_bias(q, &L->attn_q_bias, q_width);
            if (L->attn_q_norm.data)  /* per head, or the whole row (olmo2) */
                jl_rmsnorm(q, q, L->attn_q_norm.data, q_width / L->attn_q_norm.ne0, L->attn_q_norm.ne0, d->norm_eps);
            if (rope >= 0) jl_rope(q, d->n_head, Dk, d->n_rot, d->rope_layout, cos_a, sin_a);
        }
        if (job->do_kv) {
            float *k = ctx->k + r * k_width, *v = ctx->v + r * v_width;
            add_bias(k, &L->attn_k_bias, k_width);
            add_bias(v, &L->attn_v_bias, v_width);
            if (L->attn_k_norm.data)
                jl_rmsnorm(k, k, L->attn_k_norm.data, k_width / L->attn_k_norm.ne0, L->attn_k_norm.ne0, d->norm_eps);
            if (rope >= 0) jl_rope(k, d->n_head_kv, Dk, d->n_rot, d->rope_layout, cos_a, sin_a);
            const int64_t pos = ctx->rows.pos[r], slot = pos % JL_KV_PAGE;
            const int32_t page = jl_kv_page(kv, job->layer, ctx->rows.seq[r], pos);
            for (int g = 0; g < d->n_head_kv; g++)
                jl_kv_write(kv, job->layer, page, g, (int)slot, k + (int64_t)g * Dk, v + (int64_t)g * Dv);
        }
    }
}

/* Attention work items: one KV head and a group of rows of one sequence, up to JL_NC_MAX
 * (query head, row) pairs that share the head, so every cache row is read once per item. The
 * split depends only on the model and the rows, never on the thread count. */
typedef struct {
    jl_context *ctx;
    int layer;
    int heads_per_item;
    int64_t head_chunks, n_items;
    jl_vec_dot_fn k_dot;            /* of the K cache type, at the active ISA */
    jl_vec_dot_pages_fn v_dot_pages;  /* of a transposed V */
    jl_from_float_fn q_convert;     /* a query into the K type's activation format */
    size_t q_bytes;                 /* bytes of one converted query */
    jl_to_float_fn v_to_float;      /* a V row (a quantized V) */
} attention_job;

/* One item: KV head g, query heads [h0, h0 + nh) of its group, rows[0 .. nr) of one sequence. */
typedef struct {
    int64_t g;
    int h0, nh, nr;
    const int32_t *rows;
} attention_item;

static attention_item item_of(const attention_job *job, int64_t item) {
    const jl_model_desc *d = &job->ctx->model->desc;
    const jl_chunk *ch = &job->ctx->rows;
    const int group = d->n_head / d->n_head_kv;
    const int64_t chunk = item % job->head_chunks, grp = item / (job->head_chunks * d->n_head_kv);
    const int heads_left = (int)(group - chunk * job->heads_per_item);
    attention_item it = {.g = item / job->head_chunks % d->n_head_kv, .rows = ch->group_rows + ch->group_start[grp],
                         .nh = heads_left < job->heads_per_item ? heads_left : job->heads_per_item,
                         .nr = (int)(ch->group_start[grp + 1] - ch->group_start[grp])};
    it.h0 = (int)(it.g * group + chunk * job->heads_per_item);
    return it;
}

/* The last position row r sees (set with the chunk's rows). */
static inline int64_t last_visible(const jl_context *ctx, int64_t r) {
    return ctx->rows.last[r];
}

/* Flash-style: an item walks the position-aligned key blocks its queries see in increasing order,
 * and each query keeps an online softmax (running max and sum, and its output row as the running
 * weighted sum of V, rescaled when the max grows), so no score buffer grows with the context.
 * Each query's result is a function of its own position and sequence alone: its scores are one
 * dot product per cache row; in a block its weights are zero outside [q_first, q_last]; its
 * running state changes only on the blocks it sees, always in the same order; a transposed V
 * sums a block's pages in order, a value's place in the sum fixed by its place in its page, so
 * the pages other queries of the item add where this one's weights are zero add exact zeros. */
static void attention_task(void *arg, int ith, int nth) {
    const attention_job *job = arg;
    jl_context *ctx = job->ctx;
    const jl_chunk *ch = &ctx->rows;
    const jl_kv_cache *kv = &ctx->kv;
    const jl_model_desc *d = &ctx->model->desc;
    const jl_layer_desc *L = &d->layers[job->layer];
    const int Dk = d->head_dim_k, Dv = d->head_dim_v;
    const int64_t window = L->sliding_window;
    float *scratch = ctx->attn_scratch + (size_t)ith * ctx->attn_scratch_floats;
    uint8_t *queries = (uint8_t *)scratch;                  /* (JL_NC_MAX, q_bytes) */
    float *probs = scratch + (size_t)JL_NC_MAX * Dk;        /* (JL_NC_MAX, ATTN_BLOCK) one block's weights */
    float *v_row = probs + (size_t)JL_NC_MAX * ATTN_BLOCK;  /* (Dv,) */
    const uint8_t *pages[ATTN_BLOCK_PAGES];                 /* the Vᵀ blocks of the block's pages an item reads */
    float s[JL_NC_MAX], q_max[JL_NC_MAX], q_sum[JL_NC_MAX], rescale[JL_NC_MAX];
    int64_t q_first[JL_NC_MAX], q_last[JL_NC_MAX];  /* each query sees positions [q_first, q_last] */
    float *out[JL_NC_MAX];  /* (Dv,) each query's output row: its running weighted sum of V */
    /* items interleave across threads: later rows see longer spans, so contiguous shares would not balance */
    for (int64_t item = ith; item < job->n_items; item += nth) {
        const attention_item it = item_of(job, item);
        const int32_t *rows = it.rows;
        const int h0 = it.h0, nh = it.nh, nq = it.nh * it.nr;
        const jl_kv_view view = jl_kv_view_of(kv, job->layer, ch->seq[rows[0]], (int)it.g);
        int64_t lo = INT64_MAX, hi = 0;  /* the span of positions any of the queries sees */
        for (int qi = 0; qi < nq; qi++) {
            const int64_t row = rows[qi / nh], head = h0 + qi % nh;
            q_last[qi] = last_visible(ctx, row);
            q_first[qi] = d->non_causal ? 0 : jl_kv_first_visible(ch->pos[row], window);
            lo = q_first[qi] < lo ? q_first[qi] : lo;
            hi = q_last[qi] > hi ? q_last[qi] : hi;
            job->q_convert(ctx->q + (row * d->n_head + head) * Dk, queries + (size_t)qi * job->q_bytes, Dk);
            out[qi] = ctx->attn + (row * d->n_head + head) * Dv;
            memset(out[qi], 0, (size_t)Dv * sizeof(float));
            q_max[qi] = -INFINITY;
            q_sum[qi] = 0.0f;
        }

        for (int64_t block = lo / ATTN_BLOCK; block <= hi / ATTN_BLOCK; block++) {
            const int64_t base = block * ATTN_BLOCK, p_lo = lo > base ? lo : base,
                          p_hi = hi < base + ATTN_BLOCK - 1 ? hi : base + ATTN_BLOCK - 1;
            for (int64_t p = p_lo; p <= p_hi; p++) {
                const uint8_t *k_row = jl_kv_at(&view, p) + (size_t)(p % JL_KV_PAGE) * kv->k_row;
                job->k_dot(Dk, k_row, queries, job->q_bytes, nq, s);
                for (int qi = 0; qi < nq; qi++) probs[qi * ATTN_BLOCK + (p - base)] = s[qi] * d->attention_scale;
            }
            int seen = 0;  /* bit qi: query qi sees part of this block */
            for (int qi = 0; qi < nq; qi++) {
                float *w = probs + qi * ATTN_BLOCK;
                const int64_t a = (q_first[qi] > base ? q_first[qi] : base) - base, b = q_last[qi] + 1 - base;
                const int64_t end = b < ATTN_BLOCK ? b : ATTN_BLOCK;
                if (a >= end) {
                    memset(w, 0, ATTN_BLOCK * sizeof(float));
                    continue;
                }
                seen |= 1 << qi;
                if (d->attn_logit_softcap > 0.0f) jl_softcap(w + a, end - a, d->attn_logit_softcap);
                rescale[qi] = jl_softmax_block(w, ATTN_BLOCK, a, end, &q_max[qi], &q_sum[qi]);
            }
            if (kv->v_trans) {
                const int64_t page_lo = p_lo / JL_KV_PAGE, n_pages = p_hi / JL_KV_PAGE - page_lo + 1;
                for (int64_t i = 0; i < n_pages; i++)
                    pages[i] = jl_kv_at(&view, (page_lo + i) * JL_KV_PAGE) + kv->k_bytes;
                const float *block_probs = probs + (page_lo * JL_KV_PAGE - base);
                for (int dim = 0; dim < Dv; dim++) {
                    job->v_dot_pages(JL_KV_PAGE, n_pages, pages, (size_t)dim * JL_KV_PAGE * kv->v_elem, block_probs,
                                     ATTN_BLOCK * sizeof(float), nq, s);
                    for (int qi = 0; qi < nq; qi++)
                        if (seen >> qi & 1) out[qi][dim] = out[qi][dim] * rescale[qi] + s[qi];
                }
                continue;
            }
            /* V rows: positions in order, each query adding only the ones it sees */
            for (int qi = 0; qi < nq; qi++)
                if (seen >> qi & 1)
                    for (int dim = 0; dim < Dv; dim++) out[qi][dim] *= rescale[qi];
            for (int64_t p = p_lo; p <= p_hi; p++) {
                job->v_to_float(jl_kv_at(&view, p) + kv->k_bytes + (size_t)(p % JL_KV_PAGE) * kv->v_row,
                                v_row, Dv);
                for (int qi = 0; qi < nq; qi++) {
                    if (p < q_first[qi] || p > q_last[qi]) continue;
                    const float weight = probs[qi * ATTN_BLOCK + (p - base)];
                    for (int dim = 0; dim < Dv; dim++) out[qi][dim] += weight * v_row[dim];
                }
            }
        }
        for (int qi = 0; qi < nq; qi++) {
            const float inv_sum = 1.0f / q_sum[qi];
            for (int dim = 0; dim < Dv; dim++) out[qi][dim] *= inv_sum;
        }
    }
}

/* The same items through the attend kernel: each query's state lives in the kernel for the
 * item's whole walk, and its arithmetic is the kernel's per-query definition whatever the item. */
static void attend_task(void *arg, int ith, int nth) {
    const attention_job *job = arg;
    jl_context *ctx = job->ctx;
    const jl_chunk *ch = &ctx->rows;
    const jl_model_desc *d = &ctx->model->desc;
    const int Dk = d->head_dim_k, Dv = d->head_dim_v;
    const int64_t window = d->layers[job->layer].sliding_window;
    const float *q[JL_ATTEND_QUERIES];
    float *out[JL_ATTEND_QUERIES];
    int64_t first[JL_ATTEND_QUERIES], last[JL_ATTEND_QUERIES];
    jl_attend_args args = {.dk = Dk, .dv = Dv, .q = q, .out = out, .first = first, .last = last,
                           .scale = d->attention_scale, .softcap = d->attn_logit_softcap, .v_offset = ctx->kv.k_bytes,
                           .scratch = ctx->attn_scratch + (size_t)ith * ctx->attn_scratch_floats};
    for (int64_t item = ith; item < job->n_items; item += nth) {
        const attention_item it = item_of(job, item);
        const int32_t *rows = it.rows;
        const int h0 = it.h0, nh = it.nh;
        const jl_kv_view view = jl_kv_view_of(&ctx->kv, job->layer, ch->seq[rows[0]], (int)it.g);
        args.nq = it.nh * it.nr;
        for (int qi = 0; qi < args.nq; qi++) {
            const int64_t row = rows[qi / nh], head = h0 + qi % nh;
            last[qi] = last_visible(ctx, row);
            first[qi] = d->non_causal ? 0 : jl_kv_first_visible(ch->pos[row], window);
            q[qi] = ctx->q + (row * d->n_head + head) * Dk;
            out[qi] = ctx->attn + (row * d->n_head + head) * Dv;
        }
        args.page_table = view.table;
        args.base = view.base;
        args.page_bytes = view.page_bytes;
        ctx->attend(&args);
    }
}

/* Queries an item holds: its cache rows are read once for all of them. */
static int queries_per_item(const jl_context *ctx) { return ctx->attend ? JL_ATTEND_QUERIES : JL_NC_MAX; }

static jl_status attention(jl_context *ctx, int layer, int n_threads) {
    const jl_model_desc *d = &ctx->model->desc;
    const int group = d->n_head / d->n_head_kv, per_item = queries_per_item(ctx);
    const int64_t window = d->layers[layer].sliding_window;
    const jl_type_traits *tk = jl_traits(ctx->kv.type_k), *tq = jl_traits(tk->activation), *tv = jl_traits(ctx->kv.type_v);
    attention_job job = {.ctx = ctx, .layer = layer, .k_dot = tk->vec_dot, .v_dot_pages = tv->vec_dot_pages,
                         .q_convert = tq->from_float, .q_bytes = jl_row_bytes(tq, d->head_dim_k), .v_to_float = tv->to_float};
    job.heads_per_item = group < per_item ? group : per_item;
    job.head_chunks = (group + job.heads_per_item - 1) / job.heads_per_item;
    job.n_items = ctx->rows.n_groups * d->n_head_kv * job.head_chunks;
    int64_t span = 0;
    for (int64_t r = 0; r < ctx->rows.n_rows; r++)
        span += last_visible(ctx, r) + 1 - (d->non_causal ? 0 : jl_kv_first_visible(ctx->rows.pos[r], window));
    /* a multiply-add in a SIMD dot product costs far less than an elementwise step */
    int64_t work = d->n_head * span * (d->head_dim_k + d->head_dim_v) / 16;
    int nth = threads_for(work, n_threads);
    if (nth > job.n_items) nth = (int)job.n_items;
    return jl_parallel(nth, ctx->attend ? attend_task : attention_task, &job);
}

/* The active ISA's attend kernel for a cache whose K and V are one float type (head dimensions
 * multiples of 4); NULL: the dot products. One choice for every row: a row's result must not
 * depend on the rows beside it. */
static jl_attend_fn attend_kernel(const jl_context *ctx) {
    const jl_kv_cache *kv = &ctx->kv;
    if (!kv->v_trans || kv->type_k != kv->type_v || kv->head_dim_k % 4 || kv->head_dim_v % 4) return NULL;
    return jl_traits(kv->type_k)->attend;
}

/* Heads of one KV group share an item first; when a group has fewer heads than an item holds
 * queries, rows of one sequence join it. */
static void group_rows(jl_context *ctx) {
    ctx->attend = attend_kernel(ctx);
    const int group = ctx->model->desc.n_head / ctx->model->desc.n_head_kv, per_item = queries_per_item(ctx);
    jl_chunk_group_rows(&ctx->rows, ctx->kv.n_seq, group < per_item ? per_item / group : 1);
}

typedef struct {
    float *gate;       /* (n_rows, n_ff) */
    const float *up;   /* (n_rows, n_ff), or NULL: no gating */
    int64_t n_rows, n_ff;
    int activation;
} glu_job;

static void glu_task(void *arg, int ith, int nth) {
    const glu_job *job = arg;
    int64_t lo, hi;
    jl_split(job->n_rows, ith, nth, 1, &lo, &hi);
    if (hi > lo)
        jl_glu(job->gate + lo * job->n_ff, job->up ? job->up + lo * job->n_ff : NULL, (hi - lo) * job->n_ff,
               job->activation);
}

/* row r of the gated activations, made just before the down projection quantizes it */
static void glu_row(void *arg, int64_t r) {
    const glu_job *job = arg;
    jl_glu(job->gate + r * job->n_ff, job->up ? job->up + r * job->n_ff : NULL, job->n_ff, job->activation);
}

static jl_status glu(float *gate, const float *up, int64_t n_rows, int64_t n_ff, int activation, int n_threads) {
    glu_job job = {.gate = gate, .up = up, .n_rows = n_rows, .n_ff = n_ff, .activation = activation};
    return jl_parallel(threads_for(n_rows * n_ff * GLU_COST, n_threads), glu_task, &job);
}

/* proj (rows, n_embd) = the dense FFN of xn, made by `in`: gated when the layer has ffn_gate, biases where given */
static jl_status dense_ffn(jl_context *ctx, int il, int64_t rows, sublayer_input *in, int n_threads) {
    const jl_model_desc *d = &ctx->model->desc;
    const jl_layer_desc *L = &d->layers[il];
    jl_status st;
    const int gated = L->ffn_gate.data != NULL;
    const projection gate_up[] = {{JL_LORA_FFN_GATE, &L->ffn_gate, &L->ffn_gate_bias, ctx->gate},
                                  {JL_LORA_FFN_UP, &L->ffn_up, &L->ffn_up_bias, ctx->up}};
    const projection up_alone = {JL_LORA_FFN_UP, &L->ffn_up, &L->ffn_up_bias, ctx->gate};
    const projection down = {JL_LORA_FFN_DOWN, &L->ffn_down, &L->ffn_down_bias, ctx->proj};
    glu_job act = {.gate = ctx->gate, .up = gated ? ctx->up : NULL, .n_rows = rows, .n_ff = d->n_ff,
                   .activation = d->ffn_activation};
    if ((st = project_all(ctx, il, gated ? gate_up : &up_alone, gated ? 2 : 1, ctx->xn, rows, sublayer_input_row, in,
                          n_threads)) != JL_OK)
        return st;
    return project_all(ctx, il, &down, 1, ctx->gate, rows, glu_row, &act, n_threads);
}

/* Each row's experts: softmax of the router logits, the n_expert_used most probable (ties to the
 * lower id), their probabilities as weights, normalized and scaled as the model says; then the
 * (row, slot) entries grouped by expert, rows ascending within an expert. */
static void route_experts(jl_context *ctx, int64_t rows) {
    const jl_model_desc *d = &ctx->model->desc;
    const int X = d->n_expert, K = d->n_expert_used;
    memset(ctx->expert_start, 0, (size_t)(X + 1) * sizeof *ctx->expert_start);
    for (int64_t r = 0; r < rows; r++) {
        float *probs = ctx->router + r * X;
        int32_t *chosen = ctx->expert_of + r * K;
        float *w = ctx->expert_weight + r * K;
        jl_softmax(probs, X);
        float sum = 0.0f;
        for (int slot = 0; slot < K; slot++) {
            int best = -1;
            for (int e = 0; e < X; e++) {
                int taken = 0;
                for (int j = 0; j < slot; j++) taken |= chosen[j] == e;
                if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
            }
            chosen[slot] = best;
            w[slot] = probs[best];
            sum += w[slot];
            ctx->expert_start[best + 1]++;
        }
        /* the sum is clamped as llama.cpp clamps it, to the smallest normal fp16 */
        const float inv = d->expert_weights_norm ? 1.0f / (sum > 6.103515625e-5f ? sum : 6.103515625e-5f) : 1.0f;
        for (int slot = 0; slot < K; slot++) w[slot] = w[slot] * inv * d->expert_weights_scale;
    }
    for (int e = 0; e < X; e++) ctx->expert_start[e + 1] += ctx->expert_start[e];
    int64_t *fill = ctx->expert_start;  /* advanced while filling, then moved back */
    for (int64_t r = 0; r < rows; r++)
        for (int slot = 0; slot < K; slot++) ctx->expert_entries[fill[ctx->expert_of[r * K + slot]]++] = (int32_t)(r * K + slot);
    for (int e = X; e > 0; e--) fill[e] = fill[e - 1];
    fill[0] = 0;
}

/* proj (rows, n_embd) = the mixture of experts of xn. The rows routed to an expert are gathered
 * and multiplied together, so only the routed experts' weights are read, once per batch. A matmul
 * row is bit-identical however many rows share the call, and each row adds its experts' outputs
 * in its own slot order: the result of a row does not depend on the other rows. */
static jl_status moe_ffn(jl_context *ctx, const jl_layer_desc *L, int64_t rows, int n_threads) {
    const jl_model_desc *d = &ctx->model->desc;
    const int64_t E = d->n_embd, FX = d->n_ff_exp, K = d->n_expert_used;
    jl_status st = matmul(ctx->model, &L->ffn_gate_inp, ctx->xn, rows, ctx->router, n_threads);
    if (st != JL_OK) return st;
    route_experts(ctx, rows);
    for (int e = 0; e < d->n_expert; e++) {
        const int64_t first = ctx->expert_start[e], n = ctx->expert_start[e + 1] - first;
        if (n == 0) continue;
        const int32_t *entries = ctx->expert_entries + first;
        for (int64_t i = 0; i < n; i++)
            memcpy(ctx->expert_x + i * E, ctx->xn + (entries[i] / K) * E, (size_t)E * sizeof(float));
        if ((st = matmul_expert(&L->ffn_gate_exps, e, ctx->expert_x, n, ctx->gate, n_threads)) != JL_OK ||
            (st = matmul_expert(&L->ffn_up_exps, e, ctx->expert_x, n, ctx->up, n_threads)) != JL_OK ||
            (st = glu(ctx->gate, ctx->up, n, FX, d->ffn_activation, n_threads)) != JL_OK ||
            (st = matmul_expert(&L->ffn_down_exps, e, ctx->gate, n, ctx->expert_x, n_threads)) != JL_OK)
            return st;
        for (int64_t i = 0; i < n; i++)
            memcpy(ctx->expert_out + (int64_t)entries[i] * E, ctx->expert_x + i * E, (size_t)E * sizeof(float));
    }
    for (int64_t r = 0; r < rows; r++) {
        float *y = ctx->proj + r * E;
        for (int64_t slot = 0; slot < K; slot++) {
            const float w = ctx->expert_weight[r * K + slot], *out = ctx->expert_out + (r * K + slot) * E;
            if (slot == 0)
                for (int64_t i = 0; i < E; i++) y[i] = w * out[i];
            else
                for (int64_t i = 0; i < E; i++) y[i] += w * out[i];
        }
    }
    return JL_OK;
}

/* Keep only the rows that produce logits (strictly increasing, so the copies go forward). */
static void keep_rows(jl_context *ctx) {
    const jl_model *m = ctx->model;
    const int64_t E = m->desc.n_embd, angles = (int64_t)m->n_rope * (m->desc.n_rot / 2);
    jl_chunk *ch = &ctx->rows;
    for (int64_t i = 0; i < ch->n_out; i++) {
        const int64_t src = ch->out_rows[i];
        if (src == i) continue;
        memcpy(ctx->x + i * E, ctx->x + src * E, (size_t)E * sizeof(float));
        memcpy(ctx->xn + i * E, ctx->xn + src * E, (size_t)E * sizeof(float));
        memcpy(ctx->rope_cos + i * angles, ctx->rope_cos + src * angles, (size_t)angles * sizeof(float));
        memcpy(ctx->rope_sin + i * angles, ctx->rope_sin + src * angles, (size_t)angles * sizeof(float));
        ch->pos[i] = ch->pos[src];
        ch->last[i] = ch->last[src];
        ch->seq[i] = ch->seq[src];
        jl_lora_move_row(&ctx->lora, i, src);
    }
    ch->n_rows = ch->n_out;
    group_rows(ctx);
}

/* x (n_embd,) += row `row` of an embedding table (token_types, position_embd), converted into tmp (n_embd,) */
static void add_embedding_row(float *x, const jl_tensor *table, int64_t row, int64_t n_embd, float *tmp) {
    const jl_type_traits *tt = jl_traits(table->type);
    tt->to_float((const uint8_t *)table->data + (size_t)row * jl_row_bytes(tt, n_embd), tmp, n_embd);
    for (int64_t i = 0; i < n_embd; i++) x[i] += tmp[i];
}

/* One chunk: ctx->rows describes its rows, tokens (n_rows,) their tokens, embd (the JL_TOKEN_EMBD rows
 * among them, n_embd wide) their inputs in order; for the rows out_rows, out gets logits (n_out, n_vocab)
 * or, with embeddings, the final hidden states (n_out, n_embd). */
static jl_status eval_chunk(jl_context *ctx, const int32_t *tokens, const float *embd, float *out, int embeddings,
                            int n_threads) {
    const jl_model *m = ctx->model;
    const jl_model_desc *d = &m->desc;
    jl_chunk *ch = &ctx->rows;
    const int64_t E = d->n_embd, half = d->n_rot / 2;
    jl_status st;

    const jl_type_traits *embd_type = jl_traits(d->token_embd.type);
    const size_t embd_row = jl_row_bytes(embd_type, E);
    for (int64_t r = 0; r < ch->n_rows; r++) {
        float *x = ctx->x + r * E;
        if (tokens[r] == JL_TOKEN_EMBD) {
            memcpy(x, embd, (size_t)E * sizeof *x);
            embd += E;
        } else {
            embd_type->to_float((const uint8_t *)d->token_embd.data + (size_t)tokens[r] * embd_row, x, E);
            if (d->embedding_scale != 1.0f)
                for (int64_t i = 0; i < E; i++) x[i] *= d->embedding_scale;
        }
        if (d->token_types.data) add_embedding_row(x, &d->token_types, 0, E, ctx->xn + r * E);
        if (d->position_embd.data) add_embedding_row(x, &d->position_embd, ch->pos[r], E, ctx->xn + r * E);
        for (int c = 0; c < m->n_rope; c++) {
            const size_t at = ((size_t)r * m->n_rope + (size_t)c) * half;
            jl_rope_angles(ch->pos[r], m->rope_inv_freq + (size_t)c * half, (int)half, m->rope_mscale[c], ctx->rope_cos + at,
                           ctx->rope_sin + at);
        }
    }
    if (d->token_embd_norm.data) block_norm(d, ctx->x, ctx->x, &d->token_embd_norm, &d->token_embd_norm_bias, ch->n_rows);
    group_rows(ctx);

    for (int il = 0; il < d->n_layer; il++) {
        const jl_layer_desc *L = &d->layers[il];
        const int64_t n_rows = ch->n_rows;
        const int drop_rows = il == d->n_layer - 1 && ch->n_out < n_rows;
        prepare_job prep = {.ctx = ctx, .layer = il, .do_q = 1, .do_kv = 1};
        const int64_t prep_work = n_rows * ((int64_t)d->n_head + d->n_head_kv) * d->head_dim_k * PREPARE_COST;

        const projection qkv[] = {{JL_LORA_ATTN_Q, &L->attn_q, NULL, ctx->q}, {JL_LORA_ATTN_K, &L->attn_k, NULL, ctx->k},
                                  {JL_LORA_ATTN_V, &L->attn_v, NULL, ctx->v}};
        sublayer_input attn_in = after_ffn(ctx, il, &L->attn_norm, &L->attn_norm_bias);
        sublayer_input ffn_in = {.ctx = ctx, .post_norm = &L->post_attention_norm, .out_norm = &L->attn_output_norm,
                                 .out_norm_bias = &L->attn_output_norm_bias, .norm = &L->ffn_norm, .norm_bias = &L->ffn_norm_bias};

        /* every row's K and V go into the cache; with drop_rows only the output rows go on, to q and on */
        if ((st = project_all(ctx, il, drop_rows ? qkv + 1 : qkv, drop_rows ? 2 : 3, ctx->xn, n_rows, sublayer_input_row,
                              &attn_in, n_threads)) != JL_OK)
            return st;
        if (drop_rows) {
            prep.do_q = 0;
            if ((st = jl_parallel(threads_for(prep_work, n_threads), prepare_task, &prep)) != JL_OK) return st;
            keep_rows(ctx);
            if (ch->n_rows == 0) return JL_OK;
            if ((st = project_all(ctx, il, qkv, 1, ctx->xn, ch->n_rows, NULL, NULL, n_threads)) != JL_OK) return st;
            prep = (prepare_job){.ctx = ctx, .layer = il, .do_q = 1, .do_kv = 0};
        }
        const int64_t rows = ch->n_rows;
        if ((st = jl_parallel(threads_for(prep_work, n_threads), prepare_task, &prep)) != JL_OK ||
            (st = attention(ctx, il, n_threads)) != JL_OK ||
            (st = project(ctx, il, JL_LORA_ATTN_OUTPUT, &L->attn_output, &L->attn_output_bias, ctx->attn, rows, ctx->proj,
                          n_threads)) != JL_OK)
            return st;
        if (L->ffn_gate_inp.data) {
            for (int64_t r = 0; r < rows; r++) sublayer_input_row(&ffn_in, r);
            st = moe_ffn(ctx, L, rows, n_threads);
        } else {
            st = dense_ffn(ctx, il, rows, &ffn_in, n_threads);
        }
        if (st != JL_OK) return st;
    }
    /* the last layer's FFN residual is closed with the output norm */
    sublayer_input out_in = after_ffn(ctx, d->n_layer, &d->output_norm, &d->output_norm_bias);
    const int64_t n_out = ch->n_out;
    if (n_out == 0) return JL_OK;
    if (embeddings) {
        for (int64_t r = 0; r < n_out; r++) close_residual(&out_in, r);
        block_norm(d, out, ctx->x, &d->output_norm, &d->output_norm_bias, n_out);
        return JL_OK;
    }
    float *logits = out;
    const jl_matmul_weight head = {.type = d->output.type, .w = d->output.data, .w_bytes = d->output.nbytes,
                                   .rows = d->output.ne1, .y = logits};
    if ((st = jl_matmul_shared(m->packed, &head, 1, E, ctx->xn, n_out, sublayer_input_row, &out_in, n_threads)) != JL_OK)
        return st;
    if (d->logit_scale != 1.0f)
        for (int64_t i = 0; i < n_out * d->n_vocab; i++) logits[i] *= d->logit_scale;
    if (d->final_logit_softcap > 0.0f) jl_softcap(logits, n_out * d->n_vocab, d->final_logit_softcap);
    return JL_OK;
}

/* The end of the chunk that starts at row c0: n_batch rows, fewer where that would split a non-causal block
 * (the block then starts the next chunk; check_batch saw that none is longer than n_batch). */
static int64_t chunk_end(const jl_context *ctx, const jl_batch *b, int64_t c0) {
    const int32_t *blocks = b->non_causal_blocks;
    int64_t end = b->n_tokens - c0 < ctx->n_batch ? b->n_tokens : c0 + ctx->n_batch;
    if (blocks && end < b->n_tokens)
        while (end > c0 + 1 && blocks[end] != 0 && blocks[end] == blocks[end - 1]) end--;
    return end;
}

/* Every token, sequence and position of the batch is valid; seq_next ends as each sequence's length after it. */
static jl_status check_batch(jl_context *ctx, const jl_batch *b, float *logits, int embeddings) {
    const jl_model_desc *d = &ctx->model->desc;
    jl_kv_cache *kv = &ctx->kv;
    if (!b || b->n_tokens < 1 || !b->tokens || !b->positions || !b->seq_ids || !b->want_logits)
        return jl_fail(JL_ERR_INVALID_ARG, "decode: needs at least one token with its position, sequence and logits flag");
    memcpy(ctx->seq_next, kv->len, (size_t)kv->n_seq * sizeof *ctx->seq_next);
    int64_t n_wanted = 0, n_embd_rows = 0, block_rows = 0;
    for (int64_t i = 0; i < b->n_tokens; i++) {
        const int32_t seq = b->seq_ids[i];
        n_embd_rows += b->tokens[i] == JL_TOKEN_EMBD;
        if (b->tokens[i] != JL_TOKEN_EMBD && (b->tokens[i] < 0 || b->tokens[i] >= d->n_vocab))
            return jl_fail(JL_ERR_INVALID_ARG, "decode: token %d at row %lld is outside the vocabulary [0, %d)",
                           b->tokens[i], (long long)i, d->n_vocab);
        if (seq < 0 || seq >= kv->n_seq)
            return jl_fail(JL_ERR_INVALID_ARG, "decode: sequence id %d at row %lld is outside [0, n_seq_max = %d)",
                           seq, (long long)i, kv->n_seq);
        if (b->positions[i] != ctx->seq_next[seq])
            return jl_fail(JL_ERR_INVALID_ARG,
                           "decode: position %lld at row %lld of sequence %d should be %lld: a sequence's tokens are appended "
                           "at consecutive positions from its length (remove positions first to overwrite them)",
                           (long long)b->positions[i], (long long)i, seq, (long long)ctx->seq_next[seq]);
        if (b->positions[i] >= kv->n_ctx)
            return jl_fail(JL_ERR_INVALID_ARG, "decode: position %lld at row %lld does not fit the context of n_ctx = %lld positions",
                           (long long)b->positions[i], (long long)i, (long long)kv->n_ctx);
        if (d->position_embd.data && b->positions[i] >= d->position_embd.ne1)
            return jl_fail(JL_ERR_INVALID_ARG, "decode: position %lld at row %lld is past the model's %lld position embeddings",
                           (long long)b->positions[i], (long long)i, (long long)d->position_embd.ne1);
        ctx->seq_next[seq]++;
        n_wanted += b->want_logits[i] != 0;
        if (b->non_causal_blocks && b->non_causal_blocks[i] != 0) {
            const int continues = i > 0 && b->non_causal_blocks[i] == b->non_causal_blocks[i - 1];
            if (continues && seq != b->seq_ids[i - 1])
                return jl_fail(JL_ERR_INVALID_ARG, "decode: non-causal block %d spans sequences %d and %d at row %lld",
                               b->non_causal_blocks[i], b->seq_ids[i - 1], seq, (long long)i);
            block_rows = continues ? block_rows + 1 : 1;
            if (block_rows > ctx->n_batch)
                return jl_fail(JL_ERR_INVALID_ARG, "decode: non-causal block %d at row %lld is longer than n_batch = %lld "
                               "rows: its rows attend to each other, so they must be evaluated in one chunk",
                               b->non_causal_blocks[i], (long long)i, (long long)ctx->n_batch);
        }
    }
    if (n_embd_rows != b->n_embd_rows || (n_embd_rows > 0 && !b->embd))
        return jl_fail(JL_ERR_INVALID_ARG, "decode: %lld rows take an embedding (token %d) but %lld embedding rows were given",
                       (long long)n_embd_rows, JL_TOKEN_EMBD, (long long)(b->embd ? b->n_embd_rows : 0));
    jl_status st = jl_lora_check_batch(ctx->model, b);
    if (st != JL_OK) return st;
    if (n_wanted > 0 && !logits) return jl_fail(JL_ERR_INVALID_ARG, "decode: %lld rows want logits but no buffer was given", (long long)n_wanted);
    if (n_wanted > 0 && !embeddings && !d->output.data)
        return jl_fail(JL_ERR_INVALID_ARG, "decode: the model has no output head (an encoder): it gives embeddings, not logits");
    if (d->non_causal && b->n_tokens > ctx->n_batch)
        return jl_fail(JL_ERR_INVALID_ARG, "decode: an encoder's batch of %lld tokens must fit one chunk of n_batch = %lld "
                       "(every token attends to its whole sequence)", (long long)b->n_tokens, (long long)ctx->n_batch);
    jl_kv_plan_begin(kv);
    for (int64_t c0 = 0, c1; c0 < b->n_tokens; c0 = c1) {
        c1 = chunk_end(ctx, b, c0);
        jl_kv_plan_chunk(kv, b->seq_ids + c0, c1 - c0);
    }
    for (int i = 0; i < kv->n_pools; i++)
        if (kv->plan_need[i] > kv->pools[i].n_free)
            return jl_fail(JL_ERR_KV_FULL, "decode: the KV cache is full: the batch needs %lld more cells%s, %lld of %lld are free",
                           (long long)kv->plan_need[i] * JL_KV_PAGE, kv->pools[i].window ? " in its sliding-window layers" : "",
                           (long long)kv->pools[i].n_free * JL_KV_PAGE, (long long)kv->pools[i].n_pages * JL_KV_PAGE);
    return JL_OK;
}

/* The most outputs or inputs of a layer projection: the LoRA scratch's row width. */
static int64_t widest_projection(const jl_model_desc *d) {
    const int64_t widths[] = {d->n_embd, d->n_ff, (int64_t)d->n_head * d->head_dim_k, (int64_t)d->n_head * d->head_dim_v,
                              (int64_t)d->n_head_kv * d->head_dim_k, (int64_t)d->n_head_kv * d->head_dim_v};
    int64_t widest = 0;
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) widest = widths[i] > widest ? widths[i] : widest;
    return widest;
}

static jl_status decode(jl_context *ctx, const jl_batch *batch, float *out, int embeddings, int n_threads) {
    if (!ctx) return jl_fail(JL_ERR_INVALID_ARG, "decode: NULL context");
    jl_status st = check_batch(ctx, batch, out, embeddings);
    if (st != JL_OK) return st;
    const int nth = jl_resolve_threads(n_threads);
    if ((st = reserve_attention_scratch(ctx, nth)) != JL_OK ||
        (st = jl_lora_begin(&ctx->lora, batch, ctx->n_batch, widest_projection(&ctx->model->desc))) != JL_OK)
        return st;

    jl_kv_cache *kv = &ctx->kv;
    memcpy(ctx->seq_old_len, kv->len, (size_t)kv->n_seq * sizeof *ctx->seq_old_len);
    const jl_model_desc *d = &ctx->model->desc;
    const int64_t out_width = embeddings ? d->n_embd : d->n_vocab;
    const int32_t *blocks = batch->non_causal_blocks;
    const float *embd = batch->embd;  /* the chunk's first embedding row */
    jl_chunk *ch = &ctx->rows;
    for (int64_t c0 = 0, c1; c0 < batch->n_tokens; c0 = c1) {
        c1 = chunk_end(ctx, batch, c0);
        ch->n_rows = c1 - c0;  /* keep_rows cuts it to the output rows */
        ch->n_out = 0;
        int64_t n_embd_rows = 0;
        for (int64_t r = ch->n_rows - 1; r >= 0; r--) {  /* backwards: a block's rows take its last row's position */
            const int64_t i = c0 + r;
            ch->pos[r] = batch->positions[i];
            ch->seq[r] = batch->seq_ids[i];
            if (d->non_causal) ch->last[r] = ctx->seq_next[ch->seq[r]] - 1;
            else if (blocks && blocks[i] != 0 && r + 1 < ch->n_rows && blocks[i + 1] == blocks[i]) ch->last[r] = ch->last[r + 1];
            else ch->last[r] = ch->pos[r];
            n_embd_rows += batch->tokens[i] == JL_TOKEN_EMBD;
        }
        for (int64_t r = 0; r < ch->n_rows; r++)
            if (batch->want_logits[c0 + r]) ch->out_rows[ch->n_out++] = r;
        jl_lora_load_rows(&ctx->lora, batch, c0, ch->n_rows);
        /* pages are taken chunk by chunk and windowed ones given back after each: a long prompt
         * never holds more than its window and a chunk */
        jl_kv_begin_chunk(kv, ch->seq, ch->n_rows);
        if ((st = eval_chunk(ctx, batch->tokens + c0, embd, out, embeddings, nth)) != JL_OK) {
            /* a sequence whose earlier chunks gave back windowed pages its old length needs starts over */
            for (int32_t s = 0; s < kv->n_seq; s++)
                jl_kv_truncate(kv, s, jl_kv_can_cut(kv, s, ctx->seq_old_len[s]) ? ctx->seq_old_len[s] : 0);
            return st;
        }
        jl_kv_end_chunk(kv);
        if (out) out += ch->n_out * out_width;
        if (n_embd_rows) embd += n_embd_rows * d->n_embd;
    }
    return JL_OK;
}

jl_status jl_context_decode(jl_context *ctx, const jl_batch *batch, float *logits, int n_threads) {
    return decode(ctx, batch, logits, 0, n_threads);
}

jl_status jl_context_decode_embeddings(jl_context *ctx, const jl_batch *batch, float *embeddings, int n_threads) {
    return decode(ctx, batch, embeddings, 1, n_threads);
}
