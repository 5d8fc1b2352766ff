/* avx2.c — AVX2 + FMA + F16C kernels; compiled with those flags only.
 *
 * Integer dot products follow ggml: _mm256_maddubs_epi16 multiplies unsigned weight bytes by
 * signed activation bytes and adds adjacent pairs to int16, _mm256_madd_epi16 widens to int32
 * (with ones, or with the per-group scales of the K-quants), and each block's int32 lanes are
 * converted to float and accumulated with one FMA by the block's scale product. Signed
 * weights use the sign trick: |w| as the unsigned operand, x with w's sign as the signed one.
 *
 * Every weight block is unpacked once and used for all nc activation rows; each dot kernel is
 * an inline function that the vec_dot wrappers instantiate with nc = 1 and nc = JL_NC_MAX as
 * constants. Dequantization computes the reference's products in the reference's order, so it
 * is bit-identical to ref.c. */
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "quant/blocks.h"
#include "quant/traits.h"

#define INLINE static inline __attribute__((always_inline))

/* ---- helpers ---------------------------------------------------------------------------- */

INLINE float hsum_f32x8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

INLINE int32_t hsum_i32x8(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 1));
    return _mm_cvtsi128_si32(r);
}

INLINE float half_to_f32(jl_half h) { return _cvtsh_ss(h); }
INLINE jl_half f32_to_half(float f) { return (jl_half)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

/* sum of u[i] * s[i] over each four adjacent bytes (unsigned u, signed s), as 8 floats;
 * the caller keeps every adjacent pair sum within int16 */
INLINE __m256 dot_u8s8_f32(__m256i u, __m256i s) {
    const __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* `width` bits starting at bit `from` of every byte, moved to bit `to`, other bits cleared.
 * 16-bit shifts are fine: the field stays inside its byte (from, to + width <= 8). */
INLINE __m256i byte_bits(__m256i v, int from, int to, int width) {
    if (from > to) v = _mm256_srli_epi16(v, from - to);
    if (to > from) v = _mm256_slli_epi16(v, to - from);
    return _mm256_and_si256(v, _mm256_set1_epi8((char)(((1 << width) - 1) << to)));
}

/* 16 bytes of nibbles -> 32 bytes: the low nibbles (values 0..15), then the high (16..31) */
INLINE __m256i nibbles_32(const uint8_t qs[16]) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* IQ4 levels of 32 nibble values (bytes 0..15) */
INLINE __m256i iq4_lookup(__m256i nibbles) {
    const __m256i levels = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4_levels));
    return _mm256_shuffle_epi8(levels, nibbles);
}

/* bit j of 32 packed bits -> byte j = 0xff when set, 0 when clear */
INLINE __m256i bits_to_bytes_32(const uint8_t bits[4]) {
    uint32_t u;
    memcpy(&u, bits, 4);
    /* byte j gets source byte j / 8, ORed with everything but bit j % 8 */
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)u),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    return _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
}

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

/* ---- legacy blocks (32 values) ------------------------------------------------------------
 * Unpacked as in ref.c: w[i] = d * q[i] + m, q as 32 int8 (signed for the types paired with
 * Q8_0, unsigned 0..31 for Q4_1 / Q5_1, which have a minimum and pair with Q8_1). */

typedef struct {
    __m256i q;
    float d, m;
} legacy_block;

typedef legacy_block (*legacy_unpack_fn)(const void *blk);

INLINE legacy_block unpack_q4_0(const void *blk) {
    const block_q4_0 *b = blk;
    return (legacy_block){_mm256_sub_epi8(nibbles_32(b->qs), _mm256_set1_epi8(8)), half_to_f32(b->d), 0.0f};
}

INLINE legacy_block unpack_q4_1(const void *blk) {
    const block_q4_1 *b = blk;
    return (legacy_block){nibbles_32(b->qs), half_to_f32(b->d), half_to_f32(b->m)};
}

/* q - 16 = the nibble with 0xf0 ORed in where the fifth bit is clear */
INLINE legacy_block unpack_q5_0(const void *blk) {
    const block_q5_0 *b = blk;
    const __m256i clear = _mm256_andnot_si256(bits_to_bytes_32(b->qh), _mm256_set1_epi8((char)0xf0));
    return (legacy_block){_mm256_or_si256(nibbles_32(b->qs), clear), half_to_f32(b->d), 0.0f};
}

INLINE legacy_block unpack_q5_1(const void *blk) {
    const block_q5_1 *b = blk;
    const __m256i fifth = _mm256_and_si256(bits_to_bytes_32(b->qh), _mm256_set1_epi8(0x10));
    return (legacy_block){_mm256_or_si256(nibbles_32(b->qs), fifth), half_to_f32(b->d), half_to_f32(b->m)};
}

INLINE legacy_block unpack_iq4_nl(const void *blk) {
    const block_iq4_nl *b = blk;
    return (legacy_block){iq4_lookup(nibbles_32(b->qs)), half_to_f32(b->d), 0.0f};
}

INLINE legacy_block unpack_q8_0(const void *blk) {
    const block_q8_0 *b = blk;
    return (legacy_block){_mm256_loadu_si256((const __m256i *)b->qs), half_to_f32(b->d), 0.0f};
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

/* `count` <= 8 weight blocks from block i against the same blocks of nc Q8_0 rows:
 * signed weights, acc[c] += d * dx * sum(q * qx) per block, with the sign trick. The scale
 * products come from halves_to_f32, so the unpacked d goes unused (and is not computed). */
INLINE void legacy_group_q8_0(legacy_unpack_fn unpack, size_t type_size, const uint8_t *w, const uint8_t *x,
                              size_t x_stride, int nc, int64_t i, int count, __m256 acc[]) {
    const __m256 dw = halves_to_f32(w + i * type_size, type_size, count);
    float dd[JL_NC_MAX][8];
    for (int c = 0; c < nc; c++) {
        const block_q8_0 *bx = (const block_q8_0 *)(x + c * x_stride) + i;
        _mm256_storeu_ps(dd[c], _mm256_mul_ps(dw, halves_to_f32(&bx->d, sizeof(block_q8_0), count)));
    }
    for (int b = 0; b < count; b++) {
        const legacy_block u = unpack(w + (i + b) * type_size);
        /* |q| <= 128 and |qx| <= 127: a pair of products stays within int16 */
        const __m256i abs_q = _mm256_abs_epi8(u.q);
        for (int c = 0; c < nc; c++) {
            const block_q8_0 *bx = (const block_q8_0 *)(x + c * x_stride) + i + b;
            const __m256i qx = _mm256_loadu_si256((const __m256i *)bx->qs);
            const __m256 dot = dot_u8s8_f32(abs_q, _mm256_sign_epi8(qx, u.q));
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dd[c][b]), dot, acc[c]);
        }
    }
}

/* the same against Q8_1 rows, for unsigned weights with a minimum: the minimum's term
 * m * s of each block goes to macc[c] */
INLINE void legacy_group_q8_1(legacy_unpack_fn unpack, size_t type_size, const uint8_t *w, const uint8_t *x,
                              size_t x_stride, int nc, int64_t i, int count, __m256 acc[], __m256 macc[]) {
    const __m256 dw = halves_to_f32(w + i * type_size, type_size, count);
    const __m256 mw = halves_to_f32(w + i * type_size + sizeof(jl_half), type_size, count);
    float dd[JL_NC_MAX][8];
    for (int c = 0; c < nc; c++) {
        const block_q8_1 *bx = (const block_q8_1 *)(x + c * x_stride) + i;
        _mm256_storeu_ps(dd[c], _mm256_mul_ps(dw, halves_to_f32(&bx->d, sizeof(block_q8_1), count)));
        macc[c] = _mm256_fmadd_ps(mw, halves_to_f32(&bx->s, sizeof(block_q8_1), count), macc[c]);
    }
    for (int b = 0; b < count; b++) {
        const legacy_block u = unpack(w + (i + b) * type_size);
        for (int c = 0; c < nc; c++) {
            const block_q8_1 *bx = (const block_q8_1 *)(x + c * x_stride) + i + b;
            const __m256i qx = _mm256_loadu_si256((const __m256i *)bx->qs);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dd[c][b]), dot_u8s8_f32(u.q, qx), acc[c]);
        }
    }
}

/* signed weights . Q8_0 rows: sum over blocks of d * dx * sum(q * qx) */
INLINE void legacy_dot_q8_0(legacy_unpack_fn unpack, size_t type_size, int64_t k, const void *w,
                            const void *x, size_t x_stride, int nc, float *s) {
    const int64_t nb = k / QK;
    __m256 acc[JL_NC_MAX];
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) legacy_group_q8_0(unpack, type_size, w, x, x_stride, nc, i, 8, acc);
    if (i < nb) legacy_group_q8_0(unpack, type_size, w, x, x_stride, nc, i, (int)(nb - i), acc);
    for (int c = 0; c < nc; c++) s[c] = hsum_f32x8(acc[c]);
}

/* unsigned weights with a minimum . Q8_1 rows: d * dx * sum(q * qx) + m * s per block */
INLINE void legacy_dot_q8_1(legacy_unpack_fn unpack, size_t type_size, int64_t k, const void *w,
                            const void *x, size_t x_stride, int nc, float *s) {
    const int64_t nb = k / QK;
    __m256 acc[JL_NC_MAX], macc[JL_NC_MAX];
    for (int c = 0; c < nc; c++) acc[c] = macc[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) legacy_group_q8_1(unpack, type_size, w, x, x_stride, nc, i, 8, acc, macc);
    if (i < nb) legacy_group_q8_1(unpack, type_size, w, x, x_stride, nc, i, (int)(nb - i), acc, macc);
    for (int c = 0; c < nc; c++) s[c] = hsum_f32x8(_mm256_add_ps(acc[c], macc[c]));
}

/* ---- K-quant super-blocks (256 values, scales per group of 16) ----------------------------
 * Unpacked as in ref.c: w[i] = d * sc[i / 16] * (q[i] - offset) - dmin * mn[i / 16], with q as
 * eight vectors of unsigned bytes (q[j] holds values 32 j .. 32 j + 31). The offset is 32 for
 * Q6_K and 4 for Q3_K (whose q is low bits | high bit << 2), 0 for the types with minimums;
 * in the dot product it becomes offset * sum_g sc[g] * bsums[g], so maddubs always sees
 * unsigned weights. IQ4_XS alone keeps signed bytes (its levels span -127..113, too wide for an
 * offset). Q4_K / Q5_K / IQ4_XS scales apply to groups of 32 and are stored twice. */

typedef struct {
    __m256i q[8];
    __m256i sc, mn;   /* 16 int16 each, one per 16-value group */
    float d, dmin;
} kquant_block;

typedef void (*kquant_unpack_fn)(const void *blk, kquant_block *u);

INLINE void unpack_q2_K(const void *blk, kquant_block *u) {
    const block_q2_K *b = blk;
    /* each 128-value half reads 32 bytes of qs four times, two bits deeper each time */
    for (int j = 0; j < 8; j++)
        u->q[j] = byte_bits(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * (j / 4))), 2 * (j % 4), 0, 2);
    const __m128i s = _mm_loadu_si128((const __m128i *)b->scales);
    u->sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0x0f)));
    u->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0x0f)));
    u->d = half_to_f32(b->d);
    u->dmin = half_to_f32(b->dmin);
}

INLINE void unpack_q3_K(const void *blk, kquant_block *u) {
    const block_q3_K *b = blk;
    const __m256i hmask = _mm256_loadu_si256((const __m256i *)b->hmask);
    for (int j = 0; j < 8; j++) {
        const __m256i low = byte_bits(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * (j / 4))), 2 * (j % 4), 0, 2);
        u->q[j] = _mm256_or_si256(low, byte_bits(hmask, j, 2, 1));
    }
    /* sixteen 6-bit scales: low nibbles in bytes 0..7, high two bits in bytes 8..11. A 16-byte
     * load at scales would read past the block, so load its last 16 bytes: scales start at `at`. */
    enum { at = offsetof(block_q3_K, scales) - (sizeof(block_q3_K) - 16) };
    const __m128i tail = _mm_loadu_si128((const __m128i *)((const uint8_t *)(b + 1) - 16));
    const __m128i low8 = _mm_shuffle_epi8(tail, _mm_set1_epi64x(0x0706050403020100 + 0x0101010101010101 * at));
    const __m128i low = _mm_and_si128(_mm_unpacklo_epi64(low8, _mm_srli_epi16(low8, 4)), _mm_set1_epi8(0x0f));
    /* group g's high bits are bits 2 (g / 4) .. 2 (g / 4) + 1 of byte 8 + g % 4: the same
     * shift for the four groups of each dword */
    const __m128i high4 = _mm_shuffle_epi8(tail, _mm_set1_epi32(0x0b0a0908 + 0x01010101 * at));
    const __m128i high = _mm_and_si128(_mm_srlv_epi32(high4, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    const __m256i sc = _mm256_cvtepu8_epi16(_mm_or_si128(low, _mm_slli_epi16(high, 4)));
    u->sc = _mm256_sub_epi16(sc, _mm256_set1_epi16(32));
    u->mn = _mm256_setzero_si256();
    u->d = half_to_f32(b->d);
    u->dmin = 0.0f;
}

/* Q4_K / Q5_K: eight 6-bit scales and eight 6-bit minimums in 12 bytes s[0..11], each
 * stored twice. Scale j < 4 is s[j] & 63 and minimum j < 4 is s[j + 4] & 63; for j >= 4 the
 * low four bits are the nibbles of s[j + 4] and the top two bits of s[j - 4] (scale) or s[j]
 * (minimum) supply the high two. The 16-byte load stays in the block: qs follows. */
INLINE void unpack_k4_scales(const uint8_t scales[K_SCALE_SIZE], kquant_block *u) {
    const __m128i s = _mm_loadu_si128((const __m128i *)scales);
    /* bytes 0..7 become the scales, 8..15 the minimums */
    const __m128i low = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i top = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i m6 = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
    const __m128i m4 = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
    const __m128i sm = _mm_or_si128(_mm_or_si128(_mm_and_si128(low, m6), _mm_and_si128(_mm_srli_epi16(low, 4), m4)),
                                    _mm_and_si128(_mm_srli_epi16(top, 2), _mm_set1_epi8(0x30)));
    u->sc = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sm, sm));
    u->mn = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
}

INLINE void unpack_q4_K(const void *blk, kquant_block *u) {
    const block_q4_K *b = blk;
    /* each 64-value chunk: 32 low nibbles then 32 high nibbles of the same 32 bytes */
    for (int j = 0; j < 8; j++)
        u->q[j] = byte_bits(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * (j / 2))), 4 * (j % 2), 0, 4);
    unpack_k4_scales(b->scales, u);
    u->d = half_to_f32(b->d);
    u->dmin = half_to_f32(b->dmin);
}

INLINE void unpack_q5_K(const void *blk, kquant_block *u) {
    const block_q5_K *b = blk;
    const __m256i qh = _mm256_loadu_si256((const __m256i *)b->qh);
    /* as Q4_K; the fifth bit of q[j] is bit j of qh */
    for (int j = 0; j < 8; j++) {
        const __m256i low = byte_bits(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * (j / 2))), 4 * (j % 2), 0, 4);
        u->q[j] = _mm256_or_si256(low, byte_bits(qh, j, 4, 1));
    }
    unpack_k4_scales(b->scales, u);
    u->d = half_to_f32(b->d);
    u->dmin = half_to_f32(b->dmin);
}

INLINE void unpack_q6_K(const void *blk, kquant_block *u) {
    const block_q6_K *b = blk;
    /* each 128-value half: ql[0..63] and qh[0..31]; quarter p takes nibble p / 2 of
     * ql[l + 32 * (p % 2)] and bits 2p..2p+1 of qh[l] */
    for (int j = 0; j < 8; j++) {
        const int h = j / 4, p = j % 4;
        const __m256i ql = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32 * (p % 2)));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        u->q[j] = _mm256_or_si256(byte_bits(ql, 4 * (p / 2), 0, 4), byte_bits(qh, 2 * p, 4, 2));
    }
    u->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    u->mn = _mm256_setzero_si256();
    u->d = half_to_f32(b->d);
    u->dmin = 0.0f;
}

/* signed levels: eight groups of 32 with a block_iq4_nl's nibble order; ls - 32 per group of 32 */
INLINE void unpack_iq4_xs(const void *blk, kquant_block *u) {
    const block_iq4_xs *b = blk;
    for (int j = 0; j < 8; j++) u->q[j] = iq4_lookup(nibbles_32(b->qs + 16 * j));
    int8_t ls[16];
    for (int g = 0; g < 8; g++) ls[2 * g] = ls[2 * g + 1] = (int8_t)iq4_xs_scale(b, g);
    u->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)ls));
    u->mn = _mm256_setzero_si256();
    u->d = half_to_f32(b->d);
    u->dmin = 0.0f;
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

/* The madd operand for q[j]: maddubs leaves group 2j's pair sums in the low 128-bit lane and
 * group 2j+1's in the high one, so the lanes take sc[2j] and sc[2j+1]. */
INLINE void spread_scales(__m256i sc, __m256i out[8]) {
    const __m256i first = _mm256_permute2x128_si256(sc, sc, 0x00);   /* sc[0..7] in both lanes */
    const __m256i second = _mm256_permute2x128_si256(sc, sc, 0x11);  /* sc[8..15] in both lanes */
    for (int j = 0; j < 4; j++) {
        /* byte shuffle repeating int16 element e: bytes 2e, 2e+1 */
        const __m256i pick = _mm256_set_m128i(_mm_set1_epi16((short)(0x0202 * (2 * j + 1) + 0x0100)),
                                              _mm_set1_epi16((short)(0x0202 * (2 * j) + 0x0100)));
        out[j] = _mm256_shuffle_epi8(first, pick);
        out[j + 4] = _mm256_shuffle_epi8(second, pick);
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
    enum { UNROLL = 4 };
    __m256 acc[2][UNROLL];
    for (int c = 0; c < nc; c++)
        for (int u = 0; u < UNROLL; u++) acc[c][u] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 * UNROLL <= k; i += 8 * UNROLL) {
        for (int u = 0; u < UNROLL; u++) {
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
        for (int u = 1; u < UNROLL; u++) acc[c][0] = _mm256_add_ps(acc[c][0], acc[c][u]);
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
#define LEGACY(NAME, DOT)                                                                               \
    static void NAME##_to_float(const void *restrict src, float *restrict dst, int64_t n) {              \
        legacy_to_float(unpack_##NAME, sizeof(block_##NAME), src, dst, n);                               \
    }                                                                                                   \
    VEC_DOT(NAME, DOT, unpack_##NAME, sizeof(block_##NAME))
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

LEGACY(q4_0, legacy_dot_q8_0)
LEGACY(q4_1, legacy_dot_q8_1)
LEGACY(q5_0, legacy_dot_q8_0)
LEGACY(q5_1, legacy_dot_q8_1)
LEGACY(q8_0, legacy_dot_q8_0)
LEGACY(iq4_nl, legacy_dot_q8_0)
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
