/* ref_attention.c — the scalar reference of the attend kernel (quant/traits.h), one query at a
 * time, spelling out the arithmetic every SIMD version reproduces bit for bit; and the tests'
 * entry that stores K and V as a cache would and runs a level's kernel on them.
 *
 * Per query, lane j (of 4) owns dimensions d = j (mod 4) of a score and positions p = j (mod 4)
 * of the weighted sum of V:
 *   score(p) = softcap(scale * ((part_0 + part_2) + (part_1 + part_3))),
 *              part_j = fma chain over i of q[4i + j] * k_p[4i + j], i increasing
 * and the pages it sees, in order, each update an online softmax (jl_softmax_block's rules):
 *   m = the page's largest visible score; new_max = max(max, m);
 *   rescale = 0 before the first page, else e^max(max - new_max, -87)
 *   w(p) = e^clamp(score(p) - new_max) where visible, else 0
 *   sum_j = sum_j * rescale + (w(j) + w(j + 4) + ... + w(j + 28))     (from 0, in order)
 *   o_j[d] = o_j[d] * rescale, then o_j[d] = fma(w(p), v_p[d], o_j[d]) for the visible p = j (mod 4), in order
 * and finally out[d] = ((o_0[d] + o_2[d]) + (o_1[d] + o_3[d])) * (1 / ((sum_0 + sum_2) + (sum_1 + sum_3))).
 * A page the query does not see would leave its state as it is (rescale 1, nothing added), so
 * only its own pages are walked here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fast_exp.h"
#include "internal.h"
#include "kv_cache.h"
#include "quant/fp16.h"
#include "quant/traits.h"

/* e^x clamped to where it is a normal float, as the softmax and the softcap take it */
static float exp_clamped(float x) {
    x = x < -87.0f ? -87.0f : x;
    return jl_exp_normal_range(x > 88.0f ? 88.0f : x);
}

static void page_to_float(const uint8_t *src, int is_f16, float *dst, int64_t n) {
    if (!is_f16) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = (const uint16_t *)src;
    for (int64_t i = 0; i < n; i++) dst[i] = jl_half_to_f32(h[i]);
}

static void ref_attend(const jl_attend_args *a, int is_f16) {
    const int dk = a->dk, dv = a->dv;
    float *k = a->scratch;                   /* (JL_KV_PAGE, dk) */
    float *vt = k + JL_KV_PAGE * dk;         /* (dv, JL_KV_PAGE) */
    float *o = vt + (size_t)dv * JL_KV_PAGE; /* (dv, 4) */
    for (int c = 0; c < a->nq; c++) {
        const float *q = a->q[c];
        float max = -INFINITY, sum[4] = {0};
        memset(o, 0, (size_t)dv * 4 * sizeof(float));
        for (int64_t page = a->first[c] / JL_KV_PAGE; page <= a->last[c] / JL_KV_PAGE; page++) {
            const uint8_t *block = a->base + (size_t)a->page_table[page] * a->page_bytes;
            page_to_float(block, is_f16, k, (int64_t)JL_KV_PAGE * dk);
            page_to_float(block + a->v_offset, is_f16, vt, (int64_t)dv * JL_KV_PAGE);
            const int64_t base = page * JL_KV_PAGE;
            float w[JL_KV_PAGE];
            int visible[JL_KV_PAGE];
            float page_max = -INFINITY;
            for (int p = 0; p < JL_KV_PAGE; p++) {
                visible[p] = base + p >= a->first[c] && base + p <= a->last[c];
                float part[4] = {0};
                for (int i = 0; i < dk / 4; i++)
                    for (int j = 0; j < 4; j++) part[j] = fmaf(q[4 * i + j], k[p * dk + 4 * i + j], part[j]);
                float s = ((part[0] + part[2]) + (part[1] + part[3])) * a->scale;
                if (a->softcap > 0.0f) s = a->softcap * (2.0f / (1.0f + exp_clamped(-2.0f * s / a->softcap)) - 1.0f);
                w[p] = s;
                if (visible[p] && s > page_max) page_max = s;
            }
            const float new_max = page_max > max ? page_max : max;
            const float rescale = max == -INFINITY ? 0.0f : exp_clamped(max - new_max);
            for (int p = 0; p < JL_KV_PAGE; p++) w[p] = visible[p] ? exp_clamped(w[p] - new_max) : 0.0f;
            for (int j = 0; j < 4; j++) {
                float page_sum = 0.0f;
                for (int p = j; p < JL_KV_PAGE; p += 4) page_sum += w[p];
                sum[j] = sum[j] * rescale + page_sum;
            }
            for (int d = 0; d < dv; d++)
                for (int j = 0; j < 4; j++) {
                    float acc = o[d * 4 + j] * rescale;
                    for (int p = j; p < JL_KV_PAGE; p += 4)
                        if (visible[p]) acc = fmaf(w[p], vt[d * JL_KV_PAGE + p], acc);
                    o[d * 4 + j] = acc;
                }
            max = new_max;
        }
        const float inv_sum = 1.0f / ((sum[0] + sum[2]) + (sum[1] + sum[3]));
        for (int d = 0; d < dv; d++)
            a->out[c][d] = ((o[d * 4] + o[d * 4 + 2]) + (o[d * 4 + 1] + o[d * 4 + 3])) * inv_sum;
    }
}

static void f16_attend(const jl_attend_args *a) { ref_attend(a, 1); }
static void f32_attend(const jl_attend_args *a) { ref_attend(a, 0); }

void jl_ref_attention_register(jl_type_traits *t) {
    t[JL_TYPE_F16].attend = f16_attend;
    t[JL_TYPE_F32].attend = f32_attend;
}

jl_status jl_attend_check(int isa, int type, int nq, int dk, int dv, int64_t n_pos, const float *q,
                          const float *k, const float *v, const int64_t *first, const int64_t *last,
                          float scale, float softcap, float *out) {
    if (nq < 1 || nq > JL_ATTEND_QUERIES || dk < 4 || dk % 4 || dv < 4 || dv % 4 || n_pos < 1)
        return jl_fail(JL_ERR_INVALID_ARG, "attend_check: nq %d, dk %d, dv %d or n_pos %lld out of range", nq, dk, dv,
                       (long long)n_pos);
    for (int c = 0; c < nq; c++)
        if (first[c] < 0 || first[c] > last[c] || last[c] >= n_pos)
            return jl_fail(JL_ERR_INVALID_ARG, "attend_check: query %d sees [%lld, %lld] of %lld positions", c,
                           (long long)first[c], (long long)last[c], (long long)n_pos);
    if (type != JL_TYPE_F16 && type != JL_TYPE_F32)
        return jl_fail(JL_ERR_INVALID_ARG, "attend_check: type %d is not a float cache type", type);
    if (isa > jl_isa_best()) return jl_fail(JL_ERR_UNSUPPORTED, "attend_check: this CPU cannot run ISA %d", isa);
    const jl_type_traits *t = jl_traits_for(isa, type);
    if (!t || !t->attend) return jl_fail(JL_ERR_UNSUPPORTED, "attend_check: ISA %d has no attend kernel", isa);
    const size_t elem = type == JL_TYPE_F16 ? 2 : 4, k_bytes = (size_t)JL_KV_PAGE * dk * elem,
                 page_bytes = k_bytes + (size_t)dv * JL_KV_PAGE * elem;
    const int32_t n_pages = jl_kv_pages_for(n_pos);
    uint8_t *pages = calloc((size_t)n_pages, page_bytes);
    int32_t *table = malloc((size_t)n_pages * sizeof *table);
    float *scratch = aligned_alloc(64, JL_ATTEND_SCRATCH_FLOATS(dk, dv) * sizeof(float));
    const float *q_rows[JL_ATTEND_QUERIES];
    float *out_rows[JL_ATTEND_QUERIES];
    if (!pages || !table || !scratch) {
        free(pages);
        free(table);
        free(scratch);
        return jl_fail(JL_ERR_NOMEM, "attend_check: out of memory");
    }
    for (int32_t i = 0; i < n_pages; i++) table[i] = n_pages - 1 - i;
    for (int64_t p = 0; p < n_pos; p++) {
        uint8_t *block = pages + (size_t)table[p / JL_KV_PAGE] * page_bytes;
        const int slot = (int)(p % JL_KV_PAGE);
        for (int d = 0; d < dk; d++) {
            const size_t at = (size_t)slot * dk + d;
            if (elem == 2) ((uint16_t *)block)[at] = jl_f32_to_half(k[p * dk + d]);
            else ((float *)block)[at] = k[p * dk + d];
        }
        for (int d = 0; d < dv; d++) {
            const size_t at = (size_t)d * JL_KV_PAGE + slot;
            if (elem == 2) ((uint16_t *)(block + k_bytes))[at] = jl_f32_to_half(v[p * dv + d]);
            else ((float *)(block + k_bytes))[at] = v[p * dv + d];
        }
    }
    for (int c = 0; c < nq; c++) {
        q_rows[c] = q + (size_t)c * dk;
        out_rows[c] = out + (size_t)c * dv;
    }
    const jl_attend_args args = {.nq = nq, .dk = dk, .dv = dv, .q = q_rows, .out = out_rows, .first = first,
                                 .last = last, .scale = scale, .softcap = softcap, .page_table = table,
                                 .base = pages, .page_bytes = page_bytes, .v_offset = k_bytes, .scratch = scratch};
    t->attend(&args);
    free(pages);
    free(table);
    free(scratch);
    return JL_OK;
}
