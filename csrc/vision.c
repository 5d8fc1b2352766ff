/* vision.c — the vision encoder of a multimodal projector: a ViT over image patches.
 *
 * Every projection is a jl_matmul over all images' rows at once (the weights stream once per call);
 * attention runs per image and head as two float32 matmuls on the same kernels (scores = q k^T with
 * k as the "weights", then out = p v with v transposed), each image seeing only its own patches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ops.h"
#include "quant/traits.h"
#include "vision.h"

struct jl_vit {
    jl_vit_desc desc;
    jl_vit_layer_desc *layers;  /* (n_layer,) the copied descriptions */
    float *position;            /* (n_pos, n_embd) the position embeddings as floats */
    int64_t n_pos;
};

/* a layer's tensors are named "blk.IL.NAME" in messages, the others (il < 0) by NAME alone */
static const char *tensor_name(char buf[64], const char *name, int il) {
    if (il < 0) return name;
    snprintf(buf, 64, "blk.%d.%s", il, name);
    return buf;
}

static jl_status check_matrix(const jl_tensor *t, int64_t rows, int64_t k, const char *name, int il) {
    char buf[64];
    if (!t->data) return jl_fail(JL_ERR_INVALID_ARG, "vision: %s is missing", tensor_name(buf, name, il));
    const jl_type_traits *tr = jl_traits(t->type);
    if (!tr || !tr->vec_dot)
        return jl_fail(JL_ERR_UNSUPPORTED, "vision: %s has type id %d, which this build cannot multiply",
                       tensor_name(buf, name, il), t->type);
    if (t->ne0 != k || t->ne1 != rows || t->ne2 != 1)
        return jl_fail(JL_ERR_INVALID_ARG, "vision: %s has shape (%lld, %lld), expected (%lld, %lld)",
                       tensor_name(buf, name, il), (long long)t->ne1, (long long)t->ne0, (long long)rows, (long long)k);
    if (k % tr->block_size != 0)
        return jl_fail(JL_ERR_UNSUPPORTED, "vision: %s: %lld columns are not whole %s blocks",
                       tensor_name(buf, name, il), (long long)k, tr->name);
    if (t->nbytes < jl_row_bytes(tr, k) * (size_t)rows)
        return jl_fail(JL_ERR_INVALID_ARG, "vision: %s holds %zu bytes, too few for its shape",
                       tensor_name(buf, name, il), t->nbytes);
    return JL_OK;
}

/* optional vectors may be absent; present ones are F32 of n values */
static jl_status check_vector(const jl_tensor *t, int64_t n, const char *name, int il, int required) {
    char buf[64];
    if (!t->data)
        return required ? jl_fail(JL_ERR_INVALID_ARG, "vision: %s is missing", tensor_name(buf, name, il)) : JL_OK;
    if (t->type != JL_TYPE_F32 || t->ne0 != n || t->ne1 != 1 || t->ne2 != 1 || t->nbytes < (size_t)n * sizeof(float))
        return jl_fail(JL_ERR_INVALID_ARG, "vision: %s must be F32 of %lld values (type id %d, %lld x %lld)",
                       tensor_name(buf, name, il), (long long)n, t->type, (long long)t->ne0, (long long)t->ne1);
    return JL_OK;
}

static jl_status check_layer(const jl_vit_desc *d, const jl_vit_layer_desc *L, int il) {
    const int64_t e = d->n_embd, f = d->n_ff;
    jl_status st = JL_OK;
#define MATRIX(field, rows, k) if (st == JL_OK) st = check_matrix(&L->field, rows, k, #field, il)
#define VECTOR(field, n, required) if (st == JL_OK) st = check_vector(&L->field, n, #field, il, required)
    VECTOR(ln1, e, 1); VECTOR(ln1_bias, e, 0); VECTOR(ln2, e, 1); VECTOR(ln2_bias, e, 0);
    MATRIX(attn_q, e, e); MATRIX(attn_k, e, e); MATRIX(attn_v, e, e); MATRIX(attn_out, e, e);
    VECTOR(attn_q_bias, e, 0); VECTOR(attn_k_bias, e, 0); VECTOR(attn_v_bias, e, 0); VECTOR(attn_out_bias, e, 0);
    MATRIX(ffn_up, f, e); MATRIX(ffn_down, e, f); VECTOR(ffn_up_bias, f, 0); VECTOR(ffn_down_bias, e, 0);
#undef MATRIX
#undef VECTOR
    return st;
}

jl_status jl_vit_create(const jl_vit_desc *desc, jl_vit **out) {
    if (!desc || !out) return jl_fail(JL_ERR_INVALID_ARG, "vision: NULL description or output pointer");
    *out = NULL;
    const jl_vit_desc *d = desc;
    if (d->n_layer < 1 || d->n_embd < 1 || d->n_head < 1 || d->n_ff < 1 || d->patch_dim < 1 || d->n_patches < 1 ||
        d->n_embd % d->n_head != 0 || !d->layers)
        return jl_fail(JL_ERR_INVALID_ARG,
                       "vision: bad sizes n_layer=%d n_embd=%d n_head=%d n_ff=%d patch_dim=%d n_patches=%d", d->n_layer,
                       d->n_embd, d->n_head, d->n_ff, d->patch_dim, d->n_patches);
    if (d->ffn_activation != JL_FFN_GELU_TANH && d->ffn_activation != JL_FFN_GELU_ERF &&
        d->ffn_activation != JL_FFN_SILU && d->ffn_activation != JL_VIT_GELU_QUICK)
        return jl_fail(JL_ERR_INVALID_ARG, "vision: unknown FFN activation %d", d->ffn_activation);
    const int64_t e = d->n_embd, n_pos = d->n_patches + (d->class_embd.data ? 1 : 0);
    jl_status st = check_matrix(&d->patch_embd, e, d->patch_dim, "patch_embd", -1);
    if (st == JL_OK) st = check_vector(&d->patch_bias, e, "patch_bias", -1, 0);
    if (st == JL_OK) st = check_vector(&d->class_embd, e, "class_embd", -1, 0);
    if (st == JL_OK) st = check_vector(&d->pre_ln, e, "pre_ln", -1, 0);
    if (st == JL_OK) st = check_vector(&d->pre_ln_bias, e, "pre_ln_bias", -1, 0);
    if (st == JL_OK) st = check_vector(&d->post_ln, e, "post_ln", -1, 0);
    if (st == JL_OK) st = check_vector(&d->post_ln_bias, e, "post_ln_bias", -1, 0);
    for (int il = 0; st == JL_OK && il < d->n_layer; il++) st = check_layer(d, &d->layers[il], il);
    if (st != JL_OK) return st;
    const jl_tensor *pos = &d->position_embd;
    const jl_type_traits *pt = pos->data ? jl_traits(pos->type) : NULL;
    if (!pt || !pt->to_float || pos->ne0 != e || pos->ne1 < n_pos || e % pt->block_size != 0 ||
        pos->nbytes < jl_row_bytes(pt, e) * (size_t)n_pos)
        return jl_fail(JL_ERR_INVALID_ARG, "vision: position_embd must hold %lld rows of %lld values (has %lld x %lld)",
                       (long long)n_pos, (long long)e, (long long)pos->ne1, (long long)pos->ne0);

    jl_vit *vit = calloc(1, sizeof *vit);
    if (!vit) return jl_fail(JL_ERR_NOMEM, "vision: no memory for the tower");
    vit->layers = malloc(sizeof(jl_vit_layer_desc) * (size_t)d->n_layer);
    vit->position = malloc(sizeof(float) * (size_t)(n_pos * e));
    if (!vit->layers || !vit->position) {
        jl_vit_free(vit);
        return jl_fail(JL_ERR_NOMEM, "vision: no memory for the tower");
    }
    memcpy(vit->layers, d->layers, sizeof(jl_vit_layer_desc) * (size_t)d->n_layer);
    vit->desc = *d;
    vit->desc.layers = vit->layers;
    vit->n_pos = n_pos;
    for (int64_t p = 0; p < n_pos; p++)
        pt->to_float((const uint8_t *)pos->data + jl_row_bytes(pt, e) * (size_t)p, vit->position + p * e, e);
    *out = vit;
    return JL_OK;
}

void jl_vit_free(jl_vit *vit) {
    if (!vit) return;
    free(vit->layers);
    free(vit->position);
    free(vit);
}

/* y (n, t.rows) = x (n, t.k) @ t.T (+ bias) */
static jl_status linear(const jl_tensor *w, const jl_tensor *bias, const float *x, int64_t n, float *y, int n_threads) {
    jl_status st = jl_matmul(w->type, w->data, w->nbytes, w->ne1, w->ne0, x, n, y, n_threads);
    if (st != JL_OK || !bias->data) return st;
    const float *b = bias->data;
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < w->ne1; i++) y[r * w->ne1 + i] += b[i];
    return JL_OK;
}

static void add_rows(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

typedef struct {
    float *scores;  /* (n, n) */
    int64_t n;
} softmax_job;

static void softmax_task(void *ctx, int ith, int nth) {
    softmax_job *job = ctx;
    int64_t lo, hi;
    jl_split(job->n, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) jl_softmax(job->scores + r * job->n, job->n);
}

/* Scratch of one encode call. */
typedef struct {
    float *x, *h, *q, *k, *v, *attn, *ffn;  /* (rows, n_embd), ffn (rows, n_ff) */
    float *qh, *kh, *vt, *oh, *scores;      /* (n_pos, head_dim), vt (head_dim, n_pos), scores (n_pos, n_pos) */
} vit_scratch;

/* attn (n_pos, n_embd) <- softmax(q k^T / sqrt(head_dim)) v, head by head, for one image's rows */
static jl_status attention(const jl_vit *vit, vit_scratch *s, const float *q, const float *k, const float *v,
                           float *attn, int n_threads) {
    const int64_t n = vit->n_pos, e = vit->desc.n_embd, dh = e / vit->desc.n_head;
    const float scale = 1.0f / sqrtf((float)dh);
    softmax_job job = {s->scores, n};
    for (int64_t h = 0; h < vit->desc.n_head; h++) {
        for (int64_t r = 0; r < n; r++)
            for (int64_t i = 0; i < dh; i++) {
                s->qh[r * dh + i] = q[r * e + h * dh + i] * scale;
                s->kh[r * dh + i] = k[r * e + h * dh + i];
                s->vt[i * n + r] = v[r * e + h * dh + i];
            }
        jl_status st = jl_matmul(JL_TYPE_F32, s->kh, sizeof(float) * (size_t)(n * dh), n, dh, s->qh, n, s->scores,
                                 n_threads);
        if (st == JL_OK) st = jl_parallel(n_threads, softmax_task, &job);
        if (st == JL_OK)
            st = jl_matmul(JL_TYPE_F32, s->vt, sizeof(float) * (size_t)(n * dh), dh, n, s->scores, n, s->oh, n_threads);
        if (st != JL_OK) return st;
        for (int64_t r = 0; r < n; r++) memcpy(attn + r * e + h * dh, s->oh + r * dh, sizeof(float) * (size_t)dh);
    }
    return JL_OK;
}

static void activation(float *x, int64_t n, int type) {
    if (type != JL_VIT_GELU_QUICK) {
        jl_glu(x, NULL, n, type);
        return;
    }
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

static jl_status encode(const jl_vit *vit, vit_scratch *s, const float *patches, int64_t n_images, float *out,
                        int n_threads) {
    const jl_vit_desc *d = &vit->desc;
    const int64_t e = d->n_embd, n_pos = vit->n_pos, rows = n_images * n_pos, n_patches = d->n_patches;
    const int64_t first = n_pos - n_patches;  /* 1 with the class row, else 0 */
    /* patch embeddings land in h (n_images * n_patches, e), then take their rows of x beside the class row */
    jl_status st = linear(&d->patch_embd, &d->patch_bias, patches, n_images * n_patches, s->h, n_threads);
    if (st != JL_OK) return st;
    for (int64_t im = 0; im < n_images; im++) {
        float *xi = s->x + im * n_pos * e;
        if (first) memcpy(xi, d->class_embd.data, sizeof(float) * (size_t)e);
        memcpy(xi + first * e, s->h + im * n_patches * e, sizeof(float) * (size_t)(n_patches * e));
        add_rows(xi, vit->position, n_pos * e);
    }
    float *x = s->x;
    if (d->pre_ln.data) jl_layernorm(x, x, d->pre_ln.data, d->pre_ln_bias.data, rows, e, d->norm_eps);
    for (int il = 0; il < d->n_layer; il++) {
        const jl_vit_layer_desc *L = &d->layers[il];
        jl_layernorm(s->h, x, L->ln1.data, L->ln1_bias.data, rows, e, d->norm_eps);
        st = linear(&L->attn_q, &L->attn_q_bias, s->h, rows, s->q, n_threads);
        if (st == JL_OK) st = linear(&L->attn_k, &L->attn_k_bias, s->h, rows, s->k, n_threads);
        if (st == JL_OK) st = linear(&L->attn_v, &L->attn_v_bias, s->h, rows, s->v, n_threads);
        for (int64_t im = 0; st == JL_OK && im < n_images; im++) {
            const int64_t at = im * n_pos * e;
            st = attention(vit, s, s->q + at, s->k + at, s->v + at, s->attn + at, n_threads);
        }
        if (st == JL_OK) st = linear(&L->attn_out, &L->attn_out_bias, s->attn, rows, s->h, n_threads);
        if (st != JL_OK) return st;
        add_rows(x, s->h, rows * e);
        jl_layernorm(s->h, x, L->ln2.data, L->ln2_bias.data, rows, e, d->norm_eps);
        st = linear(&L->ffn_up, &L->ffn_up_bias, s->h, rows, s->ffn, n_threads);
        if (st != JL_OK) return st;
        activation(s->ffn, rows * d->n_ff, d->ffn_activation);
        st = linear(&L->ffn_down, &L->ffn_down_bias, s->ffn, rows, s->h, n_threads);
        if (st != JL_OK) return st;
        add_rows(x, s->h, rows * e);
    }
    if (d->post_ln.data) jl_layernorm(out, x, d->post_ln.data, d->post_ln_bias.data, rows, e, d->norm_eps);
    else memcpy(out, x, sizeof(float) * (size_t)(rows * e));
    return JL_OK;
}

jl_status jl_vit_encode(const jl_vit *vit, const float *patches, int64_t n_images, float *out, int n_threads) {
    if (!vit || !patches || !out || n_images < 1)
        return jl_fail(JL_ERR_INVALID_ARG, "vision: NULL tower, patches or output, or %lld images",
                       (long long)n_images);
    const jl_vit_desc *d = &vit->desc;
    const int64_t e = d->n_embd, n = vit->n_pos, rows = n_images * n, dh = e / d->n_head;
    /* h also takes the patch embeddings, n_images * n_patches <= rows of them */
    const size_t sizes[] = {rows * e, rows * e, rows * e, rows * e, rows * e, rows * e, rows * d->n_ff,
                            n * dh, n * dh, dh * n, n * dh, n * n};
    vit_scratch s;
    float **bufs[] = {&s.x, &s.h, &s.q, &s.k, &s.v, &s.attn, &s.ffn, &s.qh, &s.kh, &s.vt, &s.oh, &s.scores};
    const int n_bufs = sizeof bufs / sizeof bufs[0];
    int ok = 1;
    for (int i = 0; i < n_bufs; i++) ok &= (*bufs[i] = malloc(sizeof(float) * sizes[i])) != NULL;
    jl_status st = ok ? encode(vit, &s, patches, n_images, out, n_threads)
                      : jl_fail(JL_ERR_NOMEM, "vision: no memory for %lld images' scratch", (long long)n_images);
    for (int i = 0; i < n_bufs; i++) free(*bufs[i]);
    return st;
}
