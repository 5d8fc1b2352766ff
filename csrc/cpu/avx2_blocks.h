/* avx2_blocks.h — AVX2 helpers and the block unpacking shared by the matvec kernels (avx2.c) and
 * the GEMM (avx2_gemm.c), so a layout is decoded in one place per ISA. */
#ifndef JANLIB_AVX2_BLOCKS_H
#define JANLIB_AVX2_BLOCKS_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant/blocks.h"

#define INLINE static inline __attribute__((always_inline))
/* complete unrolling of the short fixed loops lets the per-tile arrays live in registers */
#define UNROLL _Pragma("GCC unroll 16")

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

INLINE float load_half(const uint8_t *p) {
    jl_half h;
    memcpy(&h, p, sizeof h);
    return half_to_f32(h);
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

#endif
