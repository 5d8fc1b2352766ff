/* avx2.c — AVX2 + FMA + F16C kernels; compiled with those flags only.
 *
 * Integer dot products follow ggml: _mm256_maddubs_epi16 multiplies unsigned weight bytes by
 * signed activation bytes and adds adjacent pairs to int16, _mm256_madd_epi16 widens to int32
 * (with ones, or with the per-group scales of the K-quants). A legacy block's int32 lanes are
 * summed into one lane per block, eight blocks to a vector that one FMA scales by their scale
 * products (the layout the GEMM, avx2_gemm.c, gets from vpdpbusd); a K-quant super-block's
 * lanes are converted to float and accumulated with one FMA. Signed weights use the sign
 * trick: |w| as the unsigned operand, x with w's sign as the signed one.
 *
 * Every weight block is unpacked once and used for all nc activation rows; each dot kernel is
 * an inline function that the vec_dot wrappers instantiate with nc = 1 and nc = JL_NC_MAX as
 * constants. Dequantization computes the reference's products in the reference's order, so it
 * is bit-identical to ref.c. */
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "cpu/avx2_blocks.h"
#include "quant/traits.h"

/* bytes b[0..7], b[8..15] | b[16..23], b[24..31] of a vector, widened to int32 and float */
INLINE void i8x32_to_f32(__m256i q, __m256 f[4]) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    f[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    f[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    f[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    f[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

/* ---- activation quantization: bit-identical to ref.c's quantize_block_int8 --------------- */

/* max |x[i]| over n floats (n a multiple of 32); NaNs are skipped, as fmaxf does, by keeping
 * the running maximum as the operand max_ps returns when the other is NaN */
INLINE float amax_f32(const float *x, int n) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int i = 0; i < n; i += 32)
        for (int u = 0; u < 4; u++)
            m[u] = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i + 8 * u), abs_mask), m[u]);
    const __m256 m8 = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* d = amax / 127 and the multiplier that quantizes by it */
INLINE float int8_scale(float amax, __m256 *id) {
    const float d = amax / 127.0f;
    *id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    return d;
}

/* 32 values -> round-half-even(x * id) (the default MXCSR mode) as four vectors of int32,
 * and packed in order into 32 int8 at q */
INLINE void quantize_32(const float *x, __m256 id, int8_t *q, __m256i v[4]) {
    for (int u = 0; u < 4; u++) v[u] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * u), id));
    /* the packs interleave 128-bit lanes: dwords come out as v0 v1 v2 v3 (lo halves) | (hi halves) */
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(packed, order));
}

static void q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        __m256 id;
        __m256i v[4];
        const float d = int8_scale(amax_f32(src + i * QK, QK), &id);
        quantize_32(src + i * QK, id, b[i].qs, v);
        b[i].d = f32_to_half(d);
    }
}

static void q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        __m256 id;
        __m256i v[4];
        const float d = int8_scale(amax_f32(src + i * QK, QK), &id);
        quantize_32(src + i * QK, id, b[i].qs, v);
        const int32_t sum = hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
        b[i].d = f32_to_half(d);
        b[i].s = f32_to_half(d * (float)sum);
    }
}

/* the totals of four vectors of int32, in order */
INLINE __m128i hsum4_i32x8(__m256i a, __m256i b, __m256i c, __m256i d) {
    /* two rounds of hadd leave a b c d partial sums in each 128-bit lane */
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

static void q8_K_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    block_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float *x = src + i * QK_K;
        __m256 id;
        b[i].d = int8_scale(amax_f32(x, QK_K), &id);
        /* per 128 values: four quantized 32-value chunks, eight 16-value group sums */
        for (int h = 0; h < 2; h++) {
            __m256i group[8];
            for (int j = 0; j < 4; j++) {
                __m256i v[4];
                quantize_32(x + 128 * h + 32 * j, id, b[i].qs + 128 * h + 32 * j, v);
                group[2 * j] = _mm256_add_epi32(v[0], v[1]);
                group[2 * j + 1] = _mm256_add_epi32(v[2], v[3]);
            }
            const __m128i lo = hsum4_i32x8(group[0], group[1], group[2], group[3]);
            const __m128i hi = hsum4_i32x8(group[4], group[5], group[6], group[7]);
            _mm_storeu_si128((__m128i *)(b[i].bsums + 8 * h), _mm_packs_epi32(lo, hi));
        }
    }
}

/* d * q + m, with the reference's rounding (m is 0 for the types without a minimum) */
INLINE void legacy_to_float(legacy_unpack_fn unpack, size_t type_size, const void *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n / QK; i++) {
        const legacy_block u = unpack((const uint8_t *)src + i * type_size);
        const __m256 d = _mm256_set1_ps(u.d), m = _mm256_set1_ps(u.m);
        __m256 f[4];
        i8x32_to_f32(u.q, f);
        for (int p = 0; p < 4; p++) _mm256_storeu_ps(dst + i * QK + 8 * p, _mm256_add_ps(_mm256_mul_ps(d, f[p]), m));
    }
}

/* The fp16 at p, p + stride, ... for `count` <= 8 blocks, as floats (0 past count): legacy
 * blocks are small, so converting their scales one at a time would cost as much as the dot. */
INLINE __m256 halves_to_f32(const void *p, size_t stride, int count) {
    jl_half h[8] = {0};
    for (int b = 0; b < count; b++) memcpy(&h[b], (const uint8_t *)p + b * stride, 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* Block sums in lanes: eight vectors of a block's int32 dword sums -> block b's total in lane b.
 * The GEMM (avx2_gemm.c) gets the same lanes straight from its layout: integer sums do not
 * depend on the order of their terms. */
INLINE __m256i block_totals(const __m256i p[8]) {
    /* per 128-bit half: blocks 0-3 (lo) and 4-7 (hi), each block's sum over dwords 0-3 | 4-7 */
    const __m256i lo = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    const __m256i hi = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}

/* int32 sums of each four adjacent products u[i] * s[i] (unsigned u, signed s); the caller keeps
 * every adjacent pair sum within int16 */
INLINE __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* `count` <= 8 weight blocks from block i against the same blocks of nc activation rows (Q8_0,
 * or Q8_1 with has_min): lane b of acc[c] += d * dx * sum(q * qx) of block i + b, and for the
 * types with a minimum lane b of macc[c] += m * s. Signed weights (Q8_0 rows) take the sign
 * trick: |q| <= 128 and |qx| <= 127, so a pair of products stays within int16. The scale
 * products come from halves_to_f32, so the unpacked d goes unused (and is not computed). */
INLINE void legacy_group(legacy_unpack_fn unpack, size_t type_size, int has_min, const uint8_t *w, const uint8_t *x,
                         size_t x_stride, int nc, int64_t i, int count, __m256 acc[], __m256 macc[]) {
    const size_t x_size = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const size_t x_qs = has_min ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    const __m256 dw = halves_to_f32(w + i * type_size, type_size, count);
    const __m256 mw = has_min ? halves_to_f32(w + i * type_size + sizeof(jl_half), type_size, count) : dw;
    __m256i sums[JL_NC_MAX][8];
    for (int c = 0; c < nc; c++)
        for (int b = 0; b < 8; b++) sums[c][b] = _mm256_setzero_si256();
    for (int b = 0; b < count; b++) {
        const legacy_block u = unpack(w + (i + b) * type_size);
        const __m256i abs_q = has_min ? u.q : _mm256_abs_epi8(u.q);
        for (int c = 0; c < nc; c++) {
            const __m256i qx = _mm256_loadu_si256((const __m256i *)(x + c * x_stride + (i + b) * x_size + x_qs));
            sums[c][b] = dot_u8s8(abs_q, has_min ? qx : _mm256_sign_epi8(qx, u.q));
        }
    }
    for (int c = 0; c < nc; c++) {
        const uint8_t *bx = x + c * x_stride + i * x_size;
        const __m256 dd = _mm256_mul_ps(dw, halves_to_f32(bx, x_size, count));
        acc[c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(block_totals(sums[c])), acc[c]);
        if (has_min) macc[c] = _mm256_fmadd_ps(mw, halves_to_f32(bx + offsetof(block_q8_1, s), x_size, count), macc[c]);
    }
}

/* sum over groups of eight blocks of hsum(acc) (+ hsum-ordered macc for the types with a minimum):
 * signed weights . Q8_0 rows, or unsigned weights with a minimum . Q8_1 rows */
INLINE void legacy_dot(legacy_unpack_fn unpack, size_t type_size, int has_min, int64_t k, const void *w,
                       const void *x, size_t x_stride, int nc, float *s) {
    const int64_t nb = k / QK;
    __m256 acc[JL_NC_MAX], macc[JL_NC_MAX];
    for (int c = 0; c < nc; c++) acc[c] = macc[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) legacy_group(unpack, type_size, has_min, w, x, x_stride, nc, i, 8, acc, macc);
    if (i < nb) legacy_group(unpack, type_size, has_min, w, x, x_stride, nc, i, (int)(nb - i), acc, macc);
    for (int c = 0; c < nc; c++) s[c] = hsum_f32x8(has_min ? _mm256_add_ps(acc[c], macc[c]) : acc[c]);
}

/* (d * sc) * (q - offset) - dmin * mn, with the reference's rounding */
INLINE void kquant_to_float(kquant_unpack_fn unpack, size_t type_size, int offset, const void *src,
                            float *dst, int64_t n) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        kquant_block u;
        unpack((const uint8_t *)src + i * type_size, &u);
        float scale[16], min[16];
        const __m256 d = _mm256_set1_ps(u.d), dmin = _mm256_set1_ps(u.dmin);
        for (int h = 0; h < 2; h++) {
            const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(h ? _mm256_extracti128_si256(u.sc, 1) : _mm256_castsi256_si128(u.sc)));
            const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(h ? _mm256_extracti128_si256(u.mn, 1) : _mm256_castsi256_si128(u.mn)));
            _mm256_storeu_ps(scale + 8 * h, _mm256_mul_ps(d, sc));
            _mm256_storeu_ps(min + 8 * h, _mm256_mul_ps(dmin, mn));
        }
        for (int j = 0; j < 8; j++) {
            __m256 q[4];
            i8x32_to_f32(_mm256_sub_epi8(u.q[j], _mm256_set1_epi8((char)offset)), q);
            for (int p = 0; p < 4; p++) {
                const int g = 2 * j + p / 2;
                const __m256 v = _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(scale[g]), q[p]), _mm256_set1_ps(min[g]));
                _mm256_storeu_ps(dst + i * QK_K + 32 * j + 8 * p, v);
            }
        }
    }
}

/* Q8_K rows: dx * (d * sum_g sc[g] * sum(q * qx) - dmin * sum_g mn[g] * bsums[g]), with the
 * offset folded into the integer sum. Pair sums of q <= 63 by |qx| <= 128 fit int16, and the
 * scaled int32 lanes stay below 2^26. Signed q (IQ4_XS, |q| <= 127, no minimum) take the sign
 * trick: pair sums of |q| by |qx| <= 127 fit int16 too. */
INLINE void kquant_dot(kquant_unpack_fn unpack, size_t type_size, int offset, int signed_q, int64_t k,
                       const void *w, const void *x, size_t x_stride, int nc, float *s) {
    __m256 acc[JL_NC_MAX];
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / QK_K; i++) {
        kquant_block u;
        unpack((const uint8_t *)w + i * type_size, &u);
        __m256i scale[8];
        spread_scales(u.sc, scale);
        const __m256i bias = _mm256_mullo_epi16(u.sc, _mm256_set1_epi16((short)offset));
        for (int c = 0; c < nc; c++) {
            const block_q8_K *bx = (const block_q8_K *)((const uint8_t *)x + c * x_stride) + i;
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)bx->bsums);
            __m256i sumi = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i qx = _mm256_loadu_si256((const __m256i *)(bx->qs + 32 * j));
                const __m256i pairs = signed_q ? _mm256_maddubs_epi16(_mm256_abs_epi8(u.q[j]), _mm256_sign_epi8(qx, u.q[j]))
                                               : _mm256_maddubs_epi16(u.q[j], qx);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, scale[j]));
            }
            if (offset) sumi = _mm256_sub_epi32(sumi, _mm256_madd_epi16(bias, bsums));
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(bx->d * u.d), _mm256_cvtepi32_ps(sumi), acc[c]);
            if (!offset && !signed_q) {
                const __m256 mins = _mm256_cvtepi32_ps(_mm256_madd_epi16(u.mn, bsums));
                acc[c] = _mm256_fnmadd_ps(_mm256_set1_ps(bx->d * u.dmin), mins, acc[c]);
            }
        }
    }
    for (int c = 0; c < nc; c++) s[c] = hsum_f32x8(acc[c]);
}

/* ---- float types: float32 activations, float accumulation -------------------------------- */

typedef __m256 (*load8_fn)(const void *w, int64_t i);  /* w[i .. i+7] as float */
typedef float (*load1_fn)(const void *w, int64_t i);

INLINE __m256 load8_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
INLINE float load1_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }
INLINE __m256 load8_f16(const void *w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const jl_half *)w + i)));
}
INLINE float load1_f16(const void *w, int64_t i) { return half_to_f32(((const jl_half *)w)[i]); }
INLINE __m256 load8_bf16(const void *w, int64_t i) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const jl_bf16 *)w + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
INLINE float load1_bf16(const void *w, int64_t i) {
    const uint32_t u = (uint32_t)((const jl_bf16 *)w)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

INLINE void float_to_float(load8_fn load8, load1_fn load1, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, i));
    for (; i < n; i++) dst[i] = load1(src, i);
}

/* Four FMA chains per row for at most two rows (the registers hold no more); a row's sum never
 * depends on how many rows share the call, which batch invariance needs. */
INLINE void float_dot_pair(load8_fn load8, load1_fn load1, int64_t k, const void *w, const void *x,
                           size_t x_stride, int nc, float *s) {
    enum { CHAINS = 4 };
    __m256 acc[2][CHAINS];
    for (int c = 0; c < nc; c++)
        for (int u = 0; u < CHAINS; u++) acc[c][u] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 * CHAINS <= k; i += 8 * CHAINS) {
        for (int u = 0; u < CHAINS; u++) {
            const __m256 wv = load8(w, i + 8 * u);
            for (int c = 0; c < nc; c++) {
                const float *xc = (const float *)((const uint8_t *)x + c * x_stride);
                acc[c][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xc + i + 8 * u), acc[c][u]);
            }
        }
    }
    for (; i + 8 <= k; i += 8) {
        const __m256 wv = load8(w, i);
        for (int c = 0; c < nc; c++) {
            const float *xc = (const float *)((const uint8_t *)x + c * x_stride);
            acc[c][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xc + i), acc[c][0]);
        }
    }
    for (int c = 0; c < nc; c++) {
        const float *xc = (const float *)((const uint8_t *)x + c * x_stride);
        for (int u = 1; u < CHAINS; u++) acc[c][0] = _mm256_add_ps(acc[c][0], acc[c][u]);
        float sum = hsum_f32x8(acc[c][0]);
        for (int64_t t = i; t < k; t++) sum += load1(w, t) * xc[t];
        s[c] = sum;
    }
}

/* rows in pairs: the second pair reads the weight row again, from L1 */
INLINE void float_dot(load8_fn load8, load1_fn load1, int64_t k, const void *w, const void *x,
                      size_t x_stride, int nc, float *s) {
    for (int c = 0; c < nc; c += 2)
        float_dot_pair(load8, load1, k, w, (const uint8_t *)x + c * x_stride, x_stride, nc - c < 2 ? nc - c : 2, s + c);
}

/* ---- the table ---------------------------------------------------------------------------- */

/* vec_dot instances with nc a compile-time constant for the driver's two counts */
#define VEC_DOT(NAME, KERNEL, ...)                                                                      \
    static void NAME##_vec_dot(int64_t k, const void *restrict w, const void *restrict x, size_t x_stride, \
                               int nc, float *restrict s) {                                             \
        if (nc == JL_NC_MAX) KERNEL(__VA_ARGS__, k, w, x, x_stride, JL_NC_MAX, s);                     \
        else if (nc == 1) KERNEL(__VA_ARGS__, k, w, x, x_stride, 1, s);                                \
        else KERNEL(__VA_ARGS__, k, w, x, x_stride, nc, s);                                            \
    }
#define LEGACY(NAME, HAS_MIN)                                                                               \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {              \
        legacy_to_float(unpack_##NAME, sizeof(block_##NAME), src, dst, n);                               \
    }                                                                                                   \
    VEC_DOT(NAME, legacy_dot, unpack_##NAME, sizeof(block_##NAME), HAS_MIN)
#define KQUANT(NAME, OFFSET, SIGNED)                                                                    \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {              \
        kquant_to_float(unpack_##NAME, sizeof(block_##NAME), OFFSET, src, dst, n);                       \
    }                                                                                                   \
    VEC_DOT(NAME, kquant_dot, unpack_##NAME, sizeof(block_##NAME), OFFSET, SIGNED)
#define FLOAT(NAME)                                                                                     \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {              \
        float_to_float(load8_##NAME, load1_##NAME, src, dst, n);                                         \
    }                                                                                                   \
    VEC_DOT(NAME, float_dot, load8_##NAME, load1_##NAME)

LEGACY(q4_0, 0)
LEGACY(q4_1, 1)
LEGACY(q5_0, 0)
LEGACY(q5_1, 1)
LEGACY(q8_0, 0)
LEGACY(iq4_nl, 0)
KQUANT(q2_K, 0, 0)
KQUANT(q3_K, 4, 0)
KQUANT(q4_K, 0, 0)
KQUANT(q5_K, 0, 0)
KQUANT(q6_K, 32, 0)
KQUANT(iq4_xs, 0, 1)
FLOAT(f16)
FLOAT(bf16)
VEC_DOT(f32, float_dot, load8_f32, load1_f32)

/* Vector u of every page feeds chain u % 4 (as avx512.c's); rows in pairs, as float_dot */
INLINE void float_dot_pages_pair(load8_fn load8, int64_t page_len, int64_t n_pages, const uint8_t *const *pages,
                                 size_t w_offset, const float *x, size_t x_stride, int nc, float *s) {
    enum { chains = 4 };
    __m256 acc[2][chains];
    for (int c = 0; c < nc; c++)
        for (int u = 0; u < chains; u++) acc[c][u] = _mm256_setzero_ps();
    for (int64_t p = 0; p < n_pages; p++) {
        const uint8_t *w = pages[p] + w_offset;
        const float *xp = x + p * page_len;
        /* u a constant in the unrolled body keeps the accumulators in registers */
        for (int64_t i0 = 0; i0 < page_len; i0 += 8 * chains)
            _Pragma("GCC unroll 4") for (int u = 0; u < chains; u++) {
                const int64_t i = i0 + 8 * u;
                if (i >= page_len) break;
                const __m256 wv = load8(w, i);
                _Pragma("GCC unroll 2") for (int c = 0; c < nc; c++)
                    acc[c][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps((const float *)((const uint8_t *)xp + c * x_stride) + i), acc[c][u]);
            }
    }
    for (int c = 0; c < nc; c++)
        s[c] = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc[c][0], acc[c][1]), _mm256_add_ps(acc[c][2], acc[c][3])));
}

#define FLOAT_DOT_PAGES(NAME)                                                                           \
    static void NAME##_vec_dot_pages(int64_t page_len, int64_t n_pages, const uint8_t *const *restrict pages, \
                                     size_t w_offset, const float *restrict x, size_t x_stride, int nc,  \
                                     float *restrict s) {                                                \
        for (int c = 0; c < nc; c += 2)                                                                 \
            float_dot_pages_pair(load8_##NAME, page_len, n_pages, pages, w_offset,                      \
                                 (const float *)((const uint8_t *)x + c * x_stride), x_stride,          \
                                 nc - c < 2 ? nc - c : 2, s + c);                                       \
    }
FLOAT_DOT_PAGES(f32)
FLOAT_DOT_PAGES(f16)

void jl_avx2_register(jl_type_traits *t) {
    t[JL_TYPE_Q8_0].from_float = q8_0_from_float;
    t[JL_TYPE_Q8_1].from_float = q8_1_from_float;
    t[JL_TYPE_Q8_K].from_float = q8_K_from_float;
#define SET(TYPE, NAME) (t[TYPE].to_float = NAME##_to_float, t[TYPE].vec_dot = NAME##_vec_dot)
    SET(JL_TYPE_Q4_0, q4_0);
    SET(JL_TYPE_Q4_1, q4_1);
    SET(JL_TYPE_Q5_0, q5_0);
    SET(JL_TYPE_Q5_1, q5_1);
    SET(JL_TYPE_Q8_0, q8_0);
    SET(JL_TYPE_IQ4_NL, iq4_nl);
    SET(JL_TYPE_IQ4_XS, iq4_xs);
    SET(JL_TYPE_Q2_K, q2_K);
    SET(JL_TYPE_Q3_K, q3_K);
    SET(JL_TYPE_Q4_K, q4_K);
    SET(JL_TYPE_Q5_K, q5_K);
    SET(JL_TYPE_Q6_K, q6_K);
    SET(JL_TYPE_F16, f16);
    SET(JL_TYPE_BF16, bf16);
#undef SET
    t[JL_TYPE_F32].vec_dot = f32_vec_dot;
    t[JL_TYPE_F32].vec_dot_pages = f32_vec_dot_pages;
    t[JL_TYPE_F16].vec_dot_pages = f16_vec_dot_pages;
}
