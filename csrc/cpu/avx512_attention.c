/* avx512_attention.c — the attend kernel (quant/traits.h) in AVX-512 for F16 and F32 caches,
 * reproducing quant/ref_attention.c bit for bit.
 *
 * The lanes are queries: a vector holds 4 queries x their 4 phase lanes (lane j of a query takes
 * dimensions j mod 4 of a score and positions j mod 4 of the weighted sum), and an item of up to
 * 16 queries is up to 4 such groups. So every product is a vertical multiply-add:
 *   scores: acc(position) += q[4i .. 4i + 3] (each query's own chunk) * k_p[4i .. 4i + 3] broadcast
 *           to the 4 chunks, for 4 positions at once, then one in-lane transpose adds the phases
 *           and leaves the 4 positions' scores in the query's 4 lanes;
 *   softmax: maxima, exponentials and sums lane by lane (one in-chunk max per page);
 *   V: o[d] += w(4t .. 4t + 3) * vᵀ[d][4t .. 4t + 3] broadcast, the weights already in that layout.
 * A page's K and V are converted to float once per item, for all its queries. There are no
 * horizontal sums over positions, and a query's lanes never mix with another query's. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kv_cache.h"
#include "quant/traits.h"

_Static_assert(JL_KV_PAGE == 32, "a page is 8 steps of 4 positions");
#define STEPS (JL_KV_PAGE / 4)
#define GROUPS (JL_ATTEND_QUERIES / 4)
#define PREFETCH_PAGES 2

/* e^x lane by lane as jl_exp_normal_range, x clamped to [-87, 88] first */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), magic), magic);
    const __m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                   _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.0f));
    const __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(e, _mm512_castsi512_ps(scale));
}

/* Lane j of chunk c <- (a_j[c, 0] + a_j[c, 2]) + (a_j[c, 1] + a_j[c, 3]): each chunk's 4 phase
 * lanes of the 4 vectors added up, in the reference's order. */
static inline __m512 combine_phases(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512d s01 = _mm512_castps_pd(_mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1)));
    const __m512d s23 = _mm512_castps_pd(_mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3)));
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(s01, s23)), _mm512_castpd_ps(_mm512_unpackhi_pd(s01, s23)));
}

/* every lane <- the largest of its chunk's 4 lanes */
static inline __m512 chunk_max(__m512 x) {
    x = _mm512_max_ps(x, _mm512_permute_ps(x, 0xB1));
    return _mm512_max_ps(x, _mm512_permute_ps(x, 0x4E));
}

static inline __m512 chunk_broadcast(const float *p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }

static void half_to_float(const uint8_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * i))));
}

/* ng groups of 4 queries (compile-time after inlining); dt output dimensions per pass over V */
static inline __attribute__((always_inline)) void attend(const jl_attend_args *a, const int is_f16, const int ng,
                                                         const int dt) {
    const int dk = a->dk, dv = a->dv, nq = a->nq, chunks = dk / 4;
    float *qrep = a->scratch;                          /* (ng, chunks, 16): chunk i of each of the group's queries */
    float *kf = qrep + (size_t)16 * dk;                /* (JL_KV_PAGE, dk) a page's K as float */
    float *vf = kf + (size_t)JL_KV_PAGE * dk;          /* (dv, JL_KV_PAGE) its Vᵀ */
    float *w = vf + (size_t)dv * JL_KV_PAGE;           /* (GROUPS, STEPS, 16) scores, then weights */
    int32_t *lane_first = (int32_t *)(w + GROUPS * STEPS * 16);  /* (GROUPS, 16) the page's visible slots */
    int32_t *lane_end = lane_first + GROUPS * 16;                /* [first, end) of each lane's query */
    __mmask16 *visible = (__mmask16 *)(lane_end + GROUPS * 16);  /* (GROUPS, STEPS) */
    float *o = (float *)(lane_end + GROUPS * 16) + 16; /* (ng, dv, 16) the weighted sums of V */

    int64_t lo = INT64_MAX, hi = 0;
    for (int c = 0; c < nq; c++) {
        lo = a->first[c] < lo ? a->first[c] : lo;
        hi = a->last[c] > hi ? a->last[c] : hi;
    }
    for (int g = 0; g < ng; g++)
        for (int i = 0; i < chunks; i++)
            for (int q = 0; q < 4; q++) {
                float *dst = qrep + ((size_t)g * chunks + i) * 16 + 4 * q;
                if (4 * g + q < nq) memcpy(dst, a->q[4 * g + q] + 4 * i, 4 * sizeof(float));
                else memset(dst, 0, 4 * sizeof(float));
            }
    memset(o, 0, (size_t)ng * dv * 16 * sizeof(float));
    __m512 max[GROUPS], sum[GROUPS], rescale[GROUPS];
    for (int g = 0; g < ng; g++) {
        max[g] = _mm512_set1_ps(-INFINITY);
        sum[g] = _mm512_setzero_ps();
    }
    const __m512i phase = _mm512_set_epi32(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    const __m512 scale = _mm512_set1_ps(a->scale), cap = _mm512_set1_ps(a->softcap);
    const size_t prefetch_step = (a->v_offset + (size_t)dv * JL_KV_PAGE * (is_f16 ? 2 : 4) + 64 * STEPS - 1) / (64 * STEPS) * 64;

    /* the cache was written a whole forward pass ago and is cold: the first pages are asked for
     * at once, before the walk that prefetches the later ones */
    for (int64_t page = lo / JL_KV_PAGE; page < lo / JL_KV_PAGE + PREFETCH_PAGES && page <= hi / JL_KV_PAGE; page++) {
        const char *block = (const char *)a->base + (size_t)a->page_table[page] * a->page_bytes;
        for (size_t at = 0; at < STEPS * prefetch_step; at += 64) _mm_prefetch(block + at, _MM_HINT_T1);
    }
    for (int64_t page = lo / JL_KV_PAGE; page <= hi / JL_KV_PAGE; page++) {
        const int64_t base = page * JL_KV_PAGE;
        const uint8_t *block = a->base + (size_t)a->page_table[page] * a->page_bytes;
        const float *k = (const float *)block, *vt = (const float *)(block + a->v_offset);
        /* pages lie apart, beyond the hardware prefetcher's reach: the one PREFETCH_PAGES on is
         * fetched into L2 (L1 holds this page's floats) while this one's scores compute, an eighth
         * of it a step */
        const int64_t ahead = page + PREFETCH_PAGES;
        const uint8_t *next = ahead <= hi / JL_KV_PAGE ? a->base + (size_t)a->page_table[ahead] * a->page_bytes : NULL;
        if (is_f16) {
            half_to_float(block, kf, (int64_t)JL_KV_PAGE * dk);
            half_to_float(block + a->v_offset, vf, (int64_t)dv * JL_KV_PAGE);
            k = kf;
            vt = vf;
        }
        for (int c = 0; c < 4 * ng; c++) {
            int64_t first = 0, end = 0;  /* a missing query sees nothing */
            if (c < nq) {
                first = a->first[c] - base;
                end = a->last[c] + 1 - base;
                first = first < 0 ? 0 : first > JL_KV_PAGE ? JL_KV_PAGE : first;
                end = end < 0 ? 0 : end > JL_KV_PAGE ? JL_KV_PAGE : end;
            }
            for (int j = 0; j < 4; j++) {
                lane_first[4 * c + j] = (int32_t)first;
                lane_end[4 * c + j] = (int32_t)end;
            }
        }

        /* scores of 4 positions at a time, and each query's largest visible one */
        __m512 page_max[GROUPS];
        for (int g = 0; g < ng; g++) page_max[g] = _mm512_set1_ps(-INFINITY);
        for (int t = 0; t < STEPS; t++) {
            __m512 acc[GROUPS][4];
            for (int g = 0; g < ng; g++)
                for (int p = 0; p < 4; p++) acc[g][p] = _mm512_setzero_ps();
            const float *kp = k + (size_t)4 * t * dk;
            if (next)
                for (size_t at = t * prefetch_step; at < (t + 1) * prefetch_step; at += 64)
                    _mm_prefetch((const char *)next + at, _MM_HINT_T1);
            for (int i = 0; i < chunks; i++) {
                const __m512 k0 = chunk_broadcast(kp + 4 * i), k1 = chunk_broadcast(kp + dk + 4 * i),
                             k2 = chunk_broadcast(kp + 2 * dk + 4 * i), k3 = chunk_broadcast(kp + 3 * dk + 4 * i);
                for (int g = 0; g < ng; g++) {
                    const __m512 qv = _mm512_load_ps(qrep + ((size_t)g * chunks + i) * 16);
                    acc[g][0] = _mm512_fmadd_ps(qv, k0, acc[g][0]);
                    acc[g][1] = _mm512_fmadd_ps(qv, k1, acc[g][1]);
                    acc[g][2] = _mm512_fmadd_ps(qv, k2, acc[g][2]);
                    acc[g][3] = _mm512_fmadd_ps(qv, k3, acc[g][3]);
                }
            }
            const __m512i slot = _mm512_add_epi32(phase, _mm512_set1_epi32(4 * t));
            for (int g = 0; g < ng; g++) {
                __m512 s = _mm512_mul_ps(combine_phases(acc[g][0], acc[g][1], acc[g][2], acc[g][3]), scale);
                if (a->softcap > 0.0f) {
                    const __m512 e = exp16(_mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), s), cap));
                    s = _mm512_mul_ps(cap, _mm512_sub_ps(_mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e)),
                                                         _mm512_set1_ps(1.0f)));
                }
                const __mmask16 seen = _mm512_cmpge_epi32_mask(slot, _mm512_load_si512(lane_first + 16 * g)) &
                                       _mm512_cmplt_epi32_mask(slot, _mm512_load_si512(lane_end + 16 * g));
                visible[g * STEPS + t] = seen;
                _mm512_store_ps(w + (g * STEPS + t) * 16, s);
                page_max[g] = _mm512_mask_max_ps(page_max[g], seen, page_max[g], s);
            }
        }

        /* the online softmax's step, lane by lane */
        for (int g = 0; g < ng; g++) {
            const __m512 new_max = _mm512_max_ps(max[g], chunk_max(page_max[g]));
            /* before a query's first page max - new_max is NaN (-inf - -inf): the max yields -87, and the rescale is 0 */
            const __m512 r = exp16(_mm512_max_ps(_mm512_sub_ps(max[g], new_max), _mm512_set1_ps(-87.0f)));
            rescale[g] = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(max[g], _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ),
                                            _mm512_setzero_ps());
            __m512 page_sum = _mm512_setzero_ps();
            for (int t = 0; t < STEPS; t++) {
                float *wt = w + (g * STEPS + t) * 16;
                const __m512 e = _mm512_maskz_mov_ps(visible[g * STEPS + t], exp16(_mm512_sub_ps(_mm512_load_ps(wt), new_max)));
                _mm512_store_ps(wt, e);
                page_sum = _mm512_add_ps(page_sum, e);
            }
            sum[g] = _mm512_add_ps(_mm512_mul_ps(sum[g], rescale[g]), page_sum);
            max[g] = new_max;
        }

        /* o[d] = o[d] * rescale + the visible w(p) * v_p[d], p in order, dt dimensions a pass */
        for (int d0 = 0; d0 < dv; d0 += dt) {
            __m512 acc[GROUPS][8];
            for (int g = 0; g < ng; g++)
                for (int d = 0; d < dt; d++)
                    acc[g][d] = _mm512_mul_ps(_mm512_load_ps(o + ((size_t)g * dv + d0 + d) * 16), rescale[g]);
            for (int t = 0; t < STEPS; t++) {
                __m512 v[8];
                for (int d = 0; d < dt; d++) v[d] = chunk_broadcast(vt + (size_t)(d0 + d) * JL_KV_PAGE + 4 * t);
                for (int g = 0; g < ng; g++) {
                    const __m512 wv = _mm512_load_ps(w + (g * STEPS + t) * 16);
                    const __mmask16 seen = visible[g * STEPS + t];
                    for (int d = 0; d < dt; d++) acc[g][d] = _mm512_mask3_fmadd_ps(wv, v[d], acc[g][d], seen);
                }
            }
            for (int g = 0; g < ng; g++)
                for (int d = 0; d < dt; d++) _mm512_store_ps(o + ((size_t)g * dv + d0 + d) * 16, acc[g][d]);
        }
    }

    for (int g = 0; g < ng; g++) {
        float lanes[16], inv[16];
        _mm512_storeu_ps(lanes, sum[g]);
        for (int q = 0; q < 4; q++) {
            const float total = (lanes[4 * q] + lanes[4 * q + 2]) + (lanes[4 * q + 1] + lanes[4 * q + 3]);
            for (int j = 0; j < 4; j++) inv[4 * q + j] = 1.0f / total;
        }
        const __m512 inv_sum = _mm512_loadu_ps(inv);
        const int live = nq - 4 * g < 4 ? nq - 4 * g : 4;
        for (int d = 0; d < dv; d += 4) {
            const float *od = o + ((size_t)g * dv + d) * 16;
            float out[16];
            _mm512_storeu_ps(out, _mm512_mul_ps(combine_phases(_mm512_load_ps(od), _mm512_load_ps(od + 16),
                                                               _mm512_load_ps(od + 32), _mm512_load_ps(od + 48)),
                                                inv_sum));
            for (int q = 0; q < live; q++) memcpy(a->out[4 * g + q] + d, out + 4 * q, 4 * sizeof(float));
        }
    }
}

static inline __attribute__((always_inline)) void attend_type(const jl_attend_args *a, const int is_f16) {
    const int wide = a->dv % 8 == 0;
    switch ((a->nq + 3) / 4) {
    case 1: wide ? attend(a, is_f16, 1, 8) : attend(a, is_f16, 1, 4); break;
    case 2: wide ? attend(a, is_f16, 2, 8) : attend(a, is_f16, 2, 4); break;
    case 3: attend(a, is_f16, 3, 4); break;
    default: attend(a, is_f16, 4, 4); break;
    }
}

static void f16_attend(const jl_attend_args *a) { attend_type(a, 1); }
static void f32_attend(const jl_attend_args *a) { attend_type(a, 0); }

void jl_avx512_attention_register(jl_type_traits *t) {
    t[JL_TYPE_F16].attend = f16_attend;
    t[JL_TYPE_F32].attend = f32_attend;
}
