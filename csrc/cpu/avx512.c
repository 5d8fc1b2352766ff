/* avx512.c — AVX-512 F/BW/VL/DQ + VNNI kernels; compiled with those flags only.
 *
 * Integer dot products run on vpdpbusd (u8 x s8 -> s32, four products per int32 lane) and, for
 * the K-quants, whose group scales are integers, on vpmaddubsw + vpdpwssd: the 16-bit pair sums
 * times the 16-bit group scale, accumulated in int32 over the whole super-block, then one FMA
 * by d * dx per super-block.
 *
 * Legacy blocks go two to a zmm, [block i | block i + 1], so int32 lanes 0-7 sum block i and
 * 8-15 block i + 1. Groups of 16 blocks share one gather of the fp16 scales per row. A tree of
 * combines reduces a group's eight pair vectors to one exact int32 lane per block and one FMA
 * by the 16 scale products: vpackssdw + vpmaddwd for the 4-bit and 5-bit types, whose lane
 * sums fit in int16, two shuffles and an add for Q8_0 and IQ4_NL (the GEMM's order too). Weights with a sign (Q4_0,
 * Q5_0, Q8_0, paired with Q8_0) need one unsigned operand: x + 128, with the lanes starting at
 * -128 * sum(q), computed once per weight pair for all rows; or, for one or two rows, the
 * stored unsigned values times x, less offset * sum(x).
 *
 * K-quant super-blocks unpack into four zmm of unsigned values (Q3_K and Q6_K store q + offset,
 * taken back out through bsums; IQ4_XS keeps its signed levels) plus one int16 scale and minimum
 * per group of 16, whatever the type's own group size, so one dot product and one to_float serve
 * all six. IQ4_NL is a legacy block of signed levels, paired with Q8_0 as Q8_0 is.
 *
 * Each weight row is unpacked once per vec_dot call and used for all nc activation rows, nc a
 * compile-time constant in every kernel body (VEC_DOT_NC). Loads are unaligned and never pass
 * the row's last block (an odd last block pairs with itself and its copy is scaled by 0), and
 * to_float computes the reference's products in its order, so it is bit-identical to ref.c
 * (CMake builds without FMA contraction). */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "cpu/avx512_blocks.h"
#include "quant/blocks.h"
#include "quant/traits.h"

#define VEC_DOT_NC(name, body)                                                                   \
    static void name(int64_t k, const void *restrict w, const void *restrict x, size_t x_stride, \
                     int nc, float *restrict s) {                                                \
        switch (nc) {                                                                            \
        case 1: body(k, w, x, x_stride, 1, s); break;                                            \
        case 2: body(k, w, x, x_stride, 2, s); break;                                            \
        case 3: body(k, w, x, x_stride, 3, s); break;                                            \
        default: body(k, w, x, x_stride, 4, s); break;                                           \
        }                                                                                        \
    }

/* ---- legacy blocks (32 values), two per zmm ------------------------------------------- */

/* to_float: w = d * q + m per block, m = 0 for the types without a minimum (added all the
 * same: the reference's + 0.0f turns -0.0 into +0.0) */
INLINE void legacy_to_float(legacy_pair_fn pair, size_t type_size, int offset, int has_min, const uint8_t *src,
                            float *dst, int64_t n) {
    const int64_t nb = n / QK;
    for (int64_t i = 0; i < nb; i += 2) {
        const uint8_t *a = src + i * type_size, *b = i + 1 < nb ? a + type_size : a;
        int8_t q[2 * QK];
        _mm512_storeu_si512(q, _mm512_sub_epi8(pair(a, b), _mm512_set1_epi8((char)offset)));
        for (int blk = 0; blk < 2 && i + blk < nb; blk++) {
            const uint8_t *p = blk ? b : a;
            const __m512 d = _mm512_set1_ps(load_half(p));
            const __m512 m = has_min ? _mm512_set1_ps(load_half(p + 2)) : _mm512_setzero_ps();
            UNROLL for (int h = 0; h < 2; h++)
                _mm512_storeu_ps(dst + (i + blk) * QK + 16 * h,
                                 _mm512_add_ps(_mm512_mul_ps(d, i8x16_to_ps(q + QK * blk + 16 * h)), m));
        }
    }
}

/* Two int32 vectors of partial block sums -> one, adding neighbouring lanes through int16
 * (exact while every input lane fits in int16): each 128-bit lane keeps a's blocks in dwords
 * 0-1 and b's in dwords 2-3. */
INLINE __m512i combine_i16(__m512i a, __m512i b) {
    return _mm512_madd_epi16(_mm512_packs_epi32(a, b), _mm512_set1_epi16(1));
}

/* the same lanes in int32, for sums past int16 */
INLINE __m512i combine_i32(__m512i a, __m512i b) {
    const __m512 fa = _mm512_castsi512_ps(a), fb = _mm512_castsi512_ps(b);
    return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(2, 0, 2, 0))),
                            _mm512_castps_si512(_mm512_shuffle_ps(fa, fb, _MM_SHUFFLE(3, 1, 3, 1))));
}

/* sum(q * qx) over blocks a and b (stored weights u, q = u - offset) against nc rows, each
 * into int32 lanes [a x 8 | b x 8]. vpdpbusd wants one unsigned operand:
 *  - unsigned q (the types with a minimum): q times x directly;
 *  - Q4_0 / Q5_0 against one or two rows: u * x - offset * x;
 *  - signed q against more rows: x + 128 times q, starting from -128 * sum(q), which depends on
 *    the weights only and is paid once for all rows. */
INLINE void legacy_pair_sums(__m512i u, int offset, int has_min, const uint8_t *xa, const uint8_t *xb,
                             size_t x_stride, const int nc, __m512i *sums) {
    const __m512i zero = _mm512_setzero_si512(), x_bias = _mm512_set1_epi8((char)0x80);
    const int split = !has_min && offset && nc <= 2;
    __m512i q = u, start = zero;
    if (!has_min && !split) {
        q = _mm512_sub_epi8(u, _mm512_set1_epi8((char)offset));
        start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, x_bias, q));
    }
    UNROLL for (int c = 0; c < nc; c++) {
        const __m512i xv = load_2x32(xa + c * x_stride, xb + c * x_stride);
        if (has_min) sums[c] = _mm512_dpbusd_epi32(zero, u, xv);
        else if (split)
            sums[c] = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, u, xv),
                                       _mm512_dpbusd_epi32(zero, _mm512_set1_epi8((char)offset), xv));
        else sums[c] = _mm512_dpbusd_epi32(start, _mm512_xor_si512(xv, x_bias), q);
    }
}

/* n <= 16 blocks from wg against the same blocks of nc rows at xg (their qs): the eight pair
 * vectors of a row go through a tree of combines (through int16 where `narrow`: every sum of 8
 * products fits) to one int32 lane per block, lanes in tree_order, stored to out[c]; combines
 * of vectors wholly past block n are skipped. */
INLINE void legacy_group(legacy_pair_fn pair, size_t type_size, int offset, int has_min, int narrow,
                         const uint8_t *wg, const uint8_t *xg, size_t x_size, size_t x_stride, const int n,
                         const int nc, __m512i *out) {
    __m512i half[2][JL_NC_MAX];
    UNROLL for (int h = 0; h < 2; h++) {
        __m512i quad[2][JL_NC_MAX];
        UNROLL for (int qd = 0; qd < 2; qd++) {
            __m512i pairs[2][JL_NC_MAX];
            UNROLL for (int e = 0; e < 2; e++) {
                const int j = 8 * h + 4 * qd + 2 * e;
                if (j >= n) {
                    UNROLL for (int c = 0; c < nc; c++) pairs[e][c] = _mm512_setzero_si512();
                    continue;
                }
                const int b = j + 1 < n;  /* an odd last block pairs with itself; its copy scales by 0 */
                const uint8_t *wa = wg + j * type_size, *xa = xg + j * x_size;
                prefetch_ahead(wa, 2 * type_size);
                if (pair == pair_q5_0 && nc > 2) /* Q5_0: q itself, one masked subtract from the nibbles */
                    legacy_pair_sums(signed_q5_0(wa, wa + b * type_size), 0, 0, xa, xa + b * x_size, x_stride, nc, pairs[e]);
                else legacy_pair_sums(pair(wa, wa + b * type_size), offset, has_min, xa, xa + b * x_size, x_stride, nc, pairs[e]);
            }
            /* all-zero vectors (past the last block) skip their combines */
            UNROLL for (int c = 0; c < nc; c++)
                quad[qd][c] = 8 * h + 4 * qd >= n ? _mm512_setzero_si512()
                            : narrow ? combine_i16(pairs[0][c], pairs[1][c]) : combine_i32(pairs[0][c], pairs[1][c]);
        }
        UNROLL for (int c = 0; c < nc; c++)
            half[h][c] = 8 * h >= n ? _mm512_setzero_si512()
                       : narrow ? combine_i16(quad[0][c], quad[1][c]) : combine_i32(quad[0][c], quad[1][c]);
    }
    UNROLL for (int c = 0; c < nc; c++) {
            const __m512i sums = _mm512_add_epi32(_mm512_shuffle_i64x2(half[0][c], half[1][c], _MM_SHUFFLE(2, 0, 2, 0)),
                                                  _mm512_shuffle_i64x2(half[0][c], half[1][c], _MM_SHUFFLE(3, 1, 3, 1)));
            out[c] = sums;
        }
}

/* one group's scales applied to its block sums: acc += d * dx * sums, plus
 * m * s; d (and m) of the weight blocks and d (and s) of each row's, one gather each, the
 * minimum terms needing no order */
INLINE void legacy_scale_group(size_t type_size, int has_min, const uint8_t *wg, const uint8_t *xg, size_t x_stride,
                               const int n, const int nc, __m512i order, __m512i w_index, __m512i x_index,
                               const __m512i *sums, __m512 *acc) {
    const __mmask16 live = _mm512_cmplt_epi32_mask(order, _mm512_set1_epi32(n));
    const __m512i wh = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, w_index, wg, 1);
    const __m512 dw = halves_to_ps(wh, 0);
    UNROLL for (int c = 0; c < nc; c++) {
        const __m512i xh = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, x_index, xg + c * x_stride, 1);
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[c]), _mm512_mul_ps(dw, halves_to_ps(xh, 0)), acc[c]);
        if (has_min) acc[c] = _mm512_fmadd_ps(halves_to_ps(wh, 1), halves_to_ps(xh, 1), acc[c]);
    }
}

/* a tail's chain (LEGACY_TAIL_BLOCKS), per row: t[c] from its n block sums (lanes in tree_order) */
INLINE void legacy_tail_chain(size_t type_size, size_t x_size, int has_min, const uint8_t *wg, const uint8_t *xg,
                              size_t x_stride, const int n, const int nc, const __m512i *sums, float *t) {
    static const int lane_of_block[LEGACY_TAIL_BLOCKS] = {0, 4, 1, 5};  /* tree_order's inverse */
    UNROLL for (int c = 0; c < nc; c++) {
        int32_t lanes[16];
        _mm512_storeu_si512(lanes, sums[c]);
        const uint8_t *xc = xg + c * x_stride;
        float chain = 0.0f;
        for (int b = 0; b < n; b++) {
            const uint8_t *wb = wg + b * type_size, *xb = xc + b * x_size;
            chain = fmaf((float)lanes[lane_of_block[b]], load_half(wb) * load_half(xb), chain);
            if (has_min) chain = fmaf(load_half(wb + 2), load_half(xb + 2), chain);
        }
        t[c] = chain;
    }
}

/* sum over blocks of d * dx * sum(q * qx), plus m * s against Q8_1 (has_min) */
INLINE void legacy_dot(legacy_pair_fn pair, size_t type_size, int offset, int has_min, int narrow, int64_t k,
                       const uint8_t *w, const uint8_t *x, size_t x_stride, const int nc, float *s) {
    const size_t x_size = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const size_t x_qs = has_min ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    const int64_t nb = k / QK;
    const __m512i order = _mm512_loadu_si512(tree_order);
    const __m512i w_index = _mm512_mullo_epi32(order, _mm512_set1_epi32((int)type_size));
    const __m512i x_index = _mm512_mullo_epi32(order, _mm512_set1_epi32((int)x_size));
    __m512 acc[JL_NC_MAX];
    UNROLL for (int c = 0; c < nc; c++) acc[c] = _mm512_setzero_ps();

    const int tail = legacy_tail_blocks(nb);
    for (int64_t g = 0; g < nb - tail; g += 16) {
        const int n = nb - g < 16 ? (int)(nb - g) : 16;
        const uint8_t *wg = w + g * type_size, *xg = x + g * x_size;
        /* the integer sums first, then the scales, so that these need no registers during the group */
        __m512i sums[JL_NC_MAX];
        if (n == 16) {
            legacy_group(pair, type_size, offset, has_min, narrow, wg, xg + x_qs, x_size, x_stride, 16, nc, sums);
            legacy_scale_group(type_size, has_min, wg, xg, x_stride, 16, nc, order, w_index, x_index, sums, acc);
        } else {
            legacy_group(pair, type_size, offset, has_min, narrow, wg, xg + x_qs, x_size, x_stride, n, nc, sums);
            legacy_scale_group(type_size, has_min, wg, xg, x_stride, n, nc, order, w_index, x_index, sums, acc);
        }
    }
    float t[JL_NC_MAX] = {0};
    if (tail) {
        const uint8_t *wg = w + (nb - tail) * type_size, *xg = x + (nb - tail) * x_size;
        __m512i sums[JL_NC_MAX];
        legacy_group(pair, type_size, offset, has_min, narrow, wg, xg + x_qs, x_size, x_stride, tail, nc, sums);
        legacy_tail_chain(type_size, x_size, has_min, wg, xg, x_stride, tail, nc, sums, t);
    }
    UNROLL for (int c = 0; c < nc; c++) s[c] = hsum512_ps(acc[c]) + t[c];
}

#define LEGACY(NAME, OFFSET, HAS_MIN, NARROW)                                                           \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {             \
        legacy_to_float(pair_##NAME, sizeof(block_##NAME), OFFSET, HAS_MIN, src, dst, n);               \
    }                                                                                                   \
    INLINE void NAME##_dot(int64_t k, const void *w, const void *x, size_t x_stride, const int nc, float *s) { \
        legacy_dot(pair_##NAME, sizeof(block_##NAME), OFFSET, HAS_MIN, NARROW, k, w, x, x_stride, nc, s); \
    }                                                                                                   \
    VEC_DOT_NC(NAME##_vec_dot, NAME##_dot)

/* narrow: a sum of 8 products fits in int16 for |q| <= 16 (Q4_0, Q5_0) and q <= 31 (Q4_1, Q5_1)
 * against |qx| <= 128, not for Q8_0 and IQ4_NL */
LEGACY(q4_0, 8, 0, 1)
LEGACY(q4_1, 0, 1, 1)
LEGACY(q5_0, 16, 0, 1)
LEGACY(q5_1, 0, 1, 1)
LEGACY(q8_0, 0, 0, 0)
LEGACY(iq4_nl, 0, 0, 0)  /* signed levels, like Q8_0's bytes */

/* ---- K-quant super-blocks (256 values) ------------------------------------------------ */

/* the unpacking (kquant_unpacked, unpack_q*_K, chunk_scales) lives in cpu/avx512_blocks.h */

/* to_float: w = (d * sc) * q - dmin * mn, each group of 16 one zmm */
INLINE void kquant_to_float(kquant_unpack_fn unpack, size_t type_size, int offset, int has_min, const uint8_t *src,
                            float *dst, int64_t n) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        kquant_unpacked u;
        unpack(src + i * type_size, &u);
        float scale[16], min[16];
        _mm512_storeu_ps(scale, _mm512_mul_ps(_mm512_set1_ps(u.d), _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(u.sc))));
        _mm512_storeu_ps(min, _mm512_mul_ps(_mm512_set1_ps(u.dmin), _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(u.mn))));
        int8_t q[QK_K];
        UNROLL for (int j = 0; j < 4; j++) _mm512_storeu_si512(q + 64 * j, _mm512_sub_epi8(u.q[j], _mm512_set1_epi8((char)offset)));
        UNROLL for (int g = 0; g < 16; g++) {
            __m512 v = _mm512_mul_ps(_mm512_set1_ps(scale[g]), i8x16_to_ps(q + 16 * g));
            if (has_min) v = _mm512_sub_ps(v, _mm512_set1_ps(min[g]));
            _mm512_storeu_ps(dst + i * QK_K + 16 * g, v);
        }
    }
}

/* dx * (d * sum_g sc[g] * sum(q * qx) - dmin * sum_g mn[g] * bsums[g]), with q stored as
 * q + offset: the offset comes back out as -offset * sum_g sc[g] * bsums[g]. Signed q (IQ4_XS)
 * multiply as |q| by qx with q's sign, whose pair sums (|q|, |qx| <= 127) fit int16. */
INLINE void kquant_dot(kquant_unpack_fn unpack, size_t type_size, int offset, int has_min, int signed_q, int64_t k,
                       const uint8_t *w, const uint8_t *x, size_t x_stride, const int nc, float *s) {
    __m512 acc[JL_NC_MAX];
    __m256 acc_min[JL_NC_MAX];
    UNROLL for (int c = 0; c < nc; c++) {
        acc[c] = _mm512_setzero_ps();
        acc_min[c] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < k / QK_K; i++) {
        kquant_unpacked u;
        prefetch_ahead(w + i * type_size, type_size);
        unpack(w + i * type_size, &u);
        __m512i sc[4];
        UNROLL for (int j = 0; j < 4; j++) sc[j] = chunk_scales(u.sc, j);
        const __m256i corr = _mm256_mullo_epi16(u.sc, _mm256_set1_epi16((short)-offset));
        UNROLL for (int c = 0; c < nc; c++) {
            const block_q8_K *bx = (const block_q8_K *)(x + c * x_stride) + i;
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)bx->bsums);
            __m512i sum = offset ? _mm512_zextsi256_si512(_mm256_madd_epi16(bsums, corr)) : _mm512_setzero_si512();
            UNROLL for (int j = 0; j < 4; j++) {
                const __m512i qx = _mm512_loadu_si512(bx->qs + 64 * j);
                const __m512i pairs = signed_q
                    ? _mm512_maddubs_epi16(_mm512_abs_epi8(u.q[j]),
                                           _mm512_mask_sub_epi8(qx, _mm512_movepi8_mask(u.q[j]), _mm512_setzero_si512(), qx))
                    : _mm512_maddubs_epi16(u.q[j], qx);
                sum = _mm512_dpwssd_epi32(sum, pairs, sc[j]);
            }
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(u.d * bx->d), acc[c]);
            if (has_min)
                acc_min[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, u.mn)),
                                             _mm256_set1_ps(u.dmin * bx->d), acc_min[c]);
        }
    }
    UNROLL for (int c = 0; c < nc; c++) s[c] = hsum512_ps(acc[c]) - (has_min ? hsum256_ps(acc_min[c]) : 0.0f);
}

#define KQUANT(NAME, OFFSET, HAS_MIN, SIGNED)                                                           \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {             \
        kquant_to_float(unpack_##NAME, sizeof(block_##NAME), OFFSET, HAS_MIN, src, dst, n);             \
    }                                                                                                   \
    INLINE void NAME##_dot(int64_t k, const void *w, const void *x, size_t x_stride, const int nc, float *s) { \
        kquant_dot(unpack_##NAME, sizeof(block_##NAME), OFFSET, HAS_MIN, SIGNED, k, w, x, x_stride, nc, s); \
    }                                                                                                   \
    VEC_DOT_NC(NAME##_vec_dot, NAME##_dot)

KQUANT(q2_K, 0, 1, 0)
KQUANT(q3_K, 4, 0, 0)
KQUANT(q4_K, 0, 1, 0)
KQUANT(q5_K, 0, 1, 0)
KQUANT(q6_K, 32, 0, 0)
KQUANT(iq4_xs, 0, 0, 1)

/* ---- float types (against float32 activations) ----------------------------------------- */

INLINE void float_to_float(load16_fn load16, const void *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 live = n - i < 16 ? (__mmask16)((1u << (n - i)) - 1) : 0xffff;
        _mm512_mask_storeu_ps(dst + i, live, load16(src, i, live));
    }
}

/* four FMA chains per row whatever nc: a row's sum must not depend on how many rows share the
 * call (batch invariance) */
INLINE void float_dot(load16_fn load16, size_t elem_size, int64_t k, const uint8_t *w, const uint8_t *x,
                      size_t x_stride, const int nc, float *s) {
    enum { unroll = 4 };
    __m512 acc[JL_NC_MAX][unroll];
    UNROLL for (int c = 0; c < nc; c++)
        UNROLL for (int u = 0; u < unroll; u++) acc[c][u] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 * unroll <= k; i += 16 * unroll) {
        prefetch_ahead(w + i * elem_size, 16 * unroll * elem_size);
        UNROLL for (int u = 0; u < unroll; u++) {
            const __m512 wv = load16(w, i + 16 * u, 0xffff);
            UNROLL for (int c = 0; c < nc; c++)
                acc[c][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps((const float *)(x + c * x_stride) + i + 16 * u), acc[c][u]);
        }
    }
    for (; i < k; i += 16) {
        const __mmask16 live = k - i < 16 ? (__mmask16)((1u << (k - i)) - 1) : 0xffff;
        const __m512 wv = load16(w, i, live);
        UNROLL for (int c = 0; c < nc; c++)
            acc[c][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(live, (const float *)(x + c * x_stride) + i), acc[c][0]);
    }
    UNROLL for (int c = 0; c < nc; c++) {
        UNROLL for (int u = 1; u < unroll; u++) acc[c][0] = _mm512_add_ps(acc[c][0], acc[c][u]);
        s[c] = hsum512_ps(acc[c][0]);
    }
}

#define FLOAT_DOT(NAME, ELEM)                                                                           \
    INLINE void NAME##_dot(int64_t k, const void *w, const void *x, size_t x_stride, const int nc, float *s) { \
        float_dot(load16_##NAME, sizeof(ELEM), k, w, x, x_stride, nc, s);                               \
    }                                                                                                   \
    VEC_DOT_NC(NAME##_vec_dot, NAME##_dot)
#define FLOAT(NAME, ELEM)                                                                               \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {             \
        float_to_float(load16_##NAME, src, dst, n);                                                     \
    }                                                                                                   \
    FLOAT_DOT(NAME, ELEM)

/* Vector u of every page feeds chain u % 4: a value's chain and its place in the chain's sum
 * follow from its place in the page and the page's place in the list. */
INLINE void float_dot_pages(load16_fn load16, int64_t page_len, int64_t n_pages, const uint8_t *const *pages,
                            size_t w_offset, const float *x, size_t x_stride, const int nc, float *s) {
    enum { chains = 4 };
    __m512 acc[JL_NC_MAX][chains];
    UNROLL for (int c = 0; c < nc; c++)
        UNROLL for (int u = 0; u < chains; u++) acc[c][u] = _mm512_setzero_ps();
    for (int64_t p = 0; p < n_pages; p++) {
        const uint8_t *w = pages[p] + w_offset;
        const float *xp = x + p * page_len;
        /* u a constant in the unrolled body keeps the accumulators in registers */
        for (int64_t i0 = 0; i0 < page_len; i0 += 16 * chains)
            UNROLL for (int u = 0; u < chains; u++) {
                const int64_t i = i0 + 16 * u;
                if (i >= page_len) break;
                const __m512 wv = load16(w, i, 0xffff);
                UNROLL for (int c = 0; c < nc; c++)
                    acc[c][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps((const float *)((const uint8_t *)xp + c * x_stride) + i), acc[c][u]);
            }
    }
    UNROLL for (int c = 0; c < nc; c++)
        s[c] = hsum512_ps(_mm512_add_ps(_mm512_add_ps(acc[c][0], acc[c][1]), _mm512_add_ps(acc[c][2], acc[c][3])));
}

#define FLOAT_DOT_PAGES(NAME)                                                                           \
    static void NAME##_vec_dot_pages(int64_t page_len, int64_t n_pages, const uint8_t *const *restrict pages, \
                                     size_t w_offset, const float *restrict x, size_t x_stride, int nc,  \
                                     float *restrict s) {                                                \
        switch (nc) {                                                                                   \
        case 1: float_dot_pages(load16_##NAME, page_len, n_pages, pages, w_offset, x, x_stride, 1, s); break; \
        case 2: float_dot_pages(load16_##NAME, page_len, n_pages, pages, w_offset, x, x_stride, 2, s); break; \
        case 3: float_dot_pages(load16_##NAME, page_len, n_pages, pages, w_offset, x, x_stride, 3, s); break; \
        default: float_dot_pages(load16_##NAME, page_len, n_pages, pages, w_offset, x, x_stride, 4, s); break; \
        }                                                                                               \
    }

FLOAT_DOT(f32, float)  /* F32 to_float stays the reference's memcpy */
FLOAT_DOT_PAGES(f32)
FLOAT_DOT_PAGES(f16)
FLOAT(f16, jl_half)
FLOAT(bf16, jl_bf16)

/* ---- activation quantization ---------------------------------------------------------- */

/* int8 with d = max|x| / 127 over n values (a multiple of 16), rounded half to even by the
 * conversion under the default rounding mode; returns d */
INLINE float quantize_int8(const float *x, int n, int8_t *q) {
    __m512 amax = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16)  /* max_ps returns its second operand for NaN, as fmaxf skips it */
        amax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + j)), amax);
    const float d = _mm512_reduce_max_ps(amax) / 127.0f;
    const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    for (int j = 0; j < n; j += 16)
        _mm_storeu_si128((__m128i *)(q + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + j), id))));
    return d;
}

INLINE int sum16_i8(const int8_t *q) {
    return _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

/* a KV cache row to F16: round to nearest even, as jl_f32_to_half */
static void f16_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    jl_half *h = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(h + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = f32_to_half(src[i]);
}

static void q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) b[i].d = f32_to_half(quantize_int8(src + i * QK, QK, b[i].qs));
}

static void q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = quantize_int8(src + i * QK, QK, b[i].qs);
        b[i].d = f32_to_half(d);
        b[i].s = f32_to_half(d * (float)(sum16_i8(b[i].qs) + sum16_i8(b[i].qs + 16)));
    }
}

static void q8_K_from_float(const float *restrict src, void *restrict dst, int64_t n) {
    block_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++) {
        b[i].d = quantize_int8(src + i * QK_K, QK_K, b[i].qs);
        for (int g = 0; g < QK_K / 16; g++) b[i].bsums[g] = (int16_t)sum16_i8(b[i].qs + 16 * g);
    }
}

/* ---- the table -------------------------------------------------------------------------- */

void jl_avx512_register(jl_type_traits *t) {
#define SET(TYPE, NAME)                           \
    t[TYPE].to_float = NAME##_to_float;           \
    t[TYPE].vec_dot = NAME##_vec_dot;
    SET(JL_TYPE_Q4_0, q4_0)
    SET(JL_TYPE_Q4_1, q4_1)
    SET(JL_TYPE_Q5_0, q5_0)
    SET(JL_TYPE_Q5_1, q5_1)
    SET(JL_TYPE_Q8_0, q8_0)
    SET(JL_TYPE_Q2_K, q2_K)
    SET(JL_TYPE_Q3_K, q3_K)
    SET(JL_TYPE_Q4_K, q4_K)
    SET(JL_TYPE_Q5_K, q5_K)
    SET(JL_TYPE_Q6_K, q6_K)
    SET(JL_TYPE_IQ4_NL, iq4_nl)
    SET(JL_TYPE_IQ4_XS, iq4_xs)
    SET(JL_TYPE_F16, f16)
    SET(JL_TYPE_BF16, bf16)
#undef SET
    t[JL_TYPE_F32].vec_dot = f32_vec_dot;
    t[JL_TYPE_F32].vec_dot_pages = f32_vec_dot_pages;
    t[JL_TYPE_F16].vec_dot_pages = f16_vec_dot_pages;
    t[JL_TYPE_Q8_0].from_float = q8_0_from_float;
    t[JL_TYPE_Q8_1].from_float = q8_1_from_float;
    t[JL_TYPE_Q8_K].from_float = q8_K_from_float;
    t[JL_TYPE_F16].from_float = f16_from_float;
}
