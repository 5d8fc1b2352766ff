/* avx512_attention.c — one page of flash attention (AVX-512) for a float KV cache.
 *
 * The page's K (JL_KV_PAGE, dk) and Vᵀ (dv, JL_KV_PAGE) are converted to float and transposed
 * once per call into K (dk, JL_KV_PAGE) columns and V (JL_KV_PAGE, dv) rows, so every product
 * after that is vertical: a query's 32 scores are two vectors built by one multiply-add per
 * dimension (lane j holds key j), and its output row gains p_j * V_j key by key. No horizontal
 * sum depends on which lanes are live, and each query's operations run in a fixed order over its
 * own data (batch invariance); the transposes are shared by all the queries of the call. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "fast_exp.h"
#include "kv_cache.h"
#include "quant/blocks.h"
#include "quant/traits.h"

_Static_assert(JL_KV_PAGE == 32, "a page's scores are two 16-lane vectors");

/* e^x lane by lane, the polynomial of jl_exp_normal_range, x clamped to [-87, 88] */
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

/* 16 values from i on (the live lanes), as float */
static inline __m512 load16_f16(const uint8_t *base, size_t i, __mmask16 live) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, (const jl_half *)base + i));
}
static inline __m512 load16_f32(const uint8_t *base, size_t i, __mmask16 live) {
    return _mm512_maskz_loadu_ps(live, (const float *)base + i);
}

static inline __mmask16 lanes_below(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

static inline void attend_page(const jl_attend_page_args *a, __m512 (*load16)(const uint8_t *, size_t, __mmask16)) {
    const int dk = a->dk, dv = a->dv;
    float *kt = a->scratch;                      /* (dk, JL_KV_PAGE) */
    float *v = kt + (size_t)dk * JL_KV_PAGE;     /* (JL_KV_PAGE, dv) */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i down_kt = _mm512_mullo_epi32(lane, _mm512_set1_epi32(JL_KV_PAGE)), down_v = _mm512_mullo_epi32(lane, _mm512_set1_epi32(dv));
    for (int j = 0; j < JL_KV_PAGE; j++)  /* key j's row -> column j */
        for (int d0 = 0; d0 < dk; d0 += 16) {
            const __mmask16 live = lanes_below(dk - d0);
            _mm512_mask_i32scatter_ps(kt + (size_t)d0 * JL_KV_PAGE + j, live, down_kt, load16(a->k, (size_t)j * dk + d0, live), 4);
        }
    for (int d = 0; d < dv; d++)  /* dimension d's 32 positions -> column d of the rows */
        for (int j0 = 0; j0 < JL_KV_PAGE; j0 += 16)
            _mm512_i32scatter_ps(v + (size_t)j0 * dv + d, down_v, load16(a->vt, (size_t)d * JL_KV_PAGE + j0, 0xffff), 4);

    for (int c = 0; c < a->nq; c++) {
        const int first = a->first[c], end = a->end[c];
        if (first >= end) continue;
        const float *q = a->q + (size_t)c * dk;
        /* four chains per half page (dimension d goes to chain d % 4), so the multiply-adds overlap */
        __m512 lo[4], hi[4];
        for (int t = 0; t < 4; t++) lo[t] = hi[t] = _mm512_setzero_ps();
        int d = 0;
        for (; d + 4 <= dk; d += 4)
            for (int t = 0; t < 4; t++) {
                const __m512 qd = _mm512_set1_ps(q[d + t]);
                lo[t] = _mm512_fmadd_ps(qd, _mm512_loadu_ps(kt + (size_t)(d + t) * JL_KV_PAGE), lo[t]);
                hi[t] = _mm512_fmadd_ps(qd, _mm512_loadu_ps(kt + (size_t)(d + t) * JL_KV_PAGE + 16), hi[t]);
            }
        for (int t = 0; d < dk; d++, t++) {
            const __m512 qd = _mm512_set1_ps(q[d]);
            lo[t] = _mm512_fmadd_ps(qd, _mm512_loadu_ps(kt + (size_t)d * JL_KV_PAGE), lo[t]);
            hi[t] = _mm512_fmadd_ps(qd, _mm512_loadu_ps(kt + (size_t)d * JL_KV_PAGE + 16), hi[t]);
        }
        __m512 s0 = _mm512_add_ps(_mm512_add_ps(lo[0], lo[1]), _mm512_add_ps(lo[2], lo[3]));
        __m512 s1 = _mm512_add_ps(_mm512_add_ps(hi[0], hi[1]), _mm512_add_ps(hi[2], hi[3]));
        const uint32_t live = (uint32_t)(((uint64_t)1 << end) - 1) & ~(uint32_t)(((uint64_t)1 << first) - 1);
        const __mmask16 live0 = (__mmask16)live, live1 = (__mmask16)(live >> 16);
        const __m512 scale = _mm512_set1_ps(a->scale), none = _mm512_set1_ps(-INFINITY);
        s0 = _mm512_mask_mul_ps(none, live0, s0, scale);
        s1 = _mm512_mask_mul_ps(none, live1, s1, scale);
        const float block_max = _mm512_reduce_max_ps(_mm512_max_ps(s0, s1));
        const float prev = a->max[c], new_max = block_max > prev ? block_max : prev;
        const float rescale = prev == -INFINITY ? 0.0f : jl_exp_normal_range(prev - new_max < -87.0f ? -87.0f : prev - new_max);
        const __m512 m = _mm512_set1_ps(new_max);
        const __m512 p0 = _mm512_maskz_mov_ps(live0, exp16(_mm512_sub_ps(s0, m)));
        const __m512 p1 = _mm512_maskz_mov_ps(live1, exp16(_mm512_sub_ps(s1, m)));
        a->max[c] = new_max;
        a->sum[c] = a->sum[c] * rescale + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
        float p[JL_KV_PAGE];
        _mm512_storeu_ps(p, p0);
        _mm512_storeu_ps(p + 16, p1);
        float *out = a->out[c];
        const __m512 r = _mm512_set1_ps(rescale);
        /* 64 output values a pass, each in two chains (even and odd keys) */
        for (int d0 = 0; d0 < dv; d0 += 64) {
            __mmask16 cols[4];
            __m512 even[4], odd[4];
            for (int t = 0; t < 4; t++) {
                cols[t] = lanes_below(dv - d0 - 16 * t);
                even[t] = _mm512_mul_ps(_mm512_maskz_loadu_ps(cols[t], out + d0 + 16 * t), r);
                odd[t] = _mm512_setzero_ps();
            }
            int j = first;
            for (; j + 2 <= end; j += 2) {
                const __m512 pe = _mm512_set1_ps(p[j]), po = _mm512_set1_ps(p[j + 1]);
                const float *ve = v + (size_t)j * dv + d0, *vo = ve + dv;
                for (int t = 0; t < 4; t++) {
                    even[t] = _mm512_fmadd_ps(pe, _mm512_maskz_loadu_ps(cols[t], ve + 16 * t), even[t]);
                    odd[t] = _mm512_fmadd_ps(po, _mm512_maskz_loadu_ps(cols[t], vo + 16 * t), odd[t]);
                }
            }
            if (j < end) {
                const __m512 pe = _mm512_set1_ps(p[j]);
                for (int t = 0; t < 4; t++)
                    even[t] = _mm512_fmadd_ps(pe, _mm512_maskz_loadu_ps(cols[t], v + (size_t)j * dv + d0 + 16 * t), even[t]);
            }
            for (int t = 0; t < 4; t++) _mm512_mask_storeu_ps(out + d0 + 16 * t, cols[t], _mm512_add_ps(even[t], odd[t]));
        }
    }
}

static void f16_attend_page(const jl_attend_page_args *a) { attend_page(a, load16_f16); }
static void f32_attend_page(const jl_attend_page_args *a) { attend_page(a, load16_f32); }

void jl_avx512_attention_register(jl_type_traits *t) {
    t[JL_TYPE_F16].attend_page = f16_attend_page;
    t[JL_TYPE_F32].attend_page = f32_attend_page;
}
