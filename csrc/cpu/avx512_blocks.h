/* avx512_blocks.h — AVX-512 helpers, float loaders and legacy-block unpacking shared by the matvec
 * kernels (avx512.c) and the GEMMs (avx512_gemm.c, avx512_gemm_float.c), so a layout is decoded in
 * one place per ISA. */
#ifndef JANLIB_AVX512_BLOCKS_H
#define JANLIB_AVX512_BLOCKS_H

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "quant/blocks.h"

#define INLINE static inline __attribute__((always_inline))
/* complete unrolling of the short fixed loops lets the per-row arrays live in registers */
#define UNROLL _Pragma("GCC unroll 16")

/* ---- helpers ------------------------------------------------------------------------- */

INLINE float half_to_f32(jl_half h) { return _cvtsh_ss(h); }
INLINE jl_half f32_to_half(float f) { return (jl_half)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

/* Weight rows stream from memory once per matvec: prefetching a fixed distance ahead keeps more
 * lines in flight than the hardware prefetcher, which stops at each 4 KiB page. A prefetch never
 * faults, so running past the end of the last row is harmless. */
INLINE void prefetch_ahead(const uint8_t *p, size_t n) {
    for (size_t o = 0; o < n; o += 64) {
        _mm_prefetch((const char *)p + 1024 + o, _MM_HINT_T0);
        _mm_prefetch((const char *)p + 4096 + o, _MM_HINT_T2);
    }
}

INLINE uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE float load_half(const uint8_t *p) {
    jl_half h;
    memcpy(&h, p, sizeof h);
    return half_to_f32(h);
}

INLINE float hsum256_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

INLINE float hsum512_ps(__m512 v) {
    return hsum256_ps(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* 16 weights from element i as floats; `live` masks a row's last partial vector */
typedef __m512 (*load16_fn)(const void *w, int64_t i, __mmask16 live);

INLINE __m512 load16_f32(const void *w, int64_t i, __mmask16 live) {
    return _mm512_maskz_loadu_ps(live, (const float *)w + i);
}
INLINE __m512 load16_f16(const void *w, int64_t i, __mmask16 live) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, (const jl_half *)w + i));
}
/* bfloat16 is the top half of a float32 */
INLINE __m512 load16_bf16(const void *w, int64_t i, __mmask16 live) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, (const jl_bf16 *)w + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

/* The 16 fp16 values in the low (hi = 0) or high halves of the int32 lanes: one vpermw gathers
 * them (vpmovdw costs two shuffles). */
INLINE __m256i halves_of(__m512i v, int hi) {
    const __m512i even = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                          30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i words = hi ? _mm512_xor_si512(even, _mm512_set1_epi16(1)) : even;
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(words, v));
}

/* the same as floats */
INLINE __m512 halves_to_ps(__m512i v, int hi) { return _mm512_cvtph_ps(halves_of(v, hi)); }

/* 16 int8 at q as floats */
INLINE __m512 i8x16_to_ps(const int8_t *q) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

/* 64 bytes [a (32) | b (32)] */
INLINE __m512i load_2x32(const uint8_t *a, const uint8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* 16 bytes of nibbles each from a and b -> 64 values [a lo | a hi | b lo | b hi], the legacy
 * block order (value j < 16 is the low nibble of byte j, value j + 16 its high nibble) */
INLINE __m512i unpack_nibbles_2x16(const uint8_t *a, const uint8_t *b) {
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a));
    v = _mm512_mask_broadcast_i32x4(v, 0xff00, _mm_loadu_si128((const __m128i *)b));
    v = _mm512_mask_srli_epi16(v, 0xff00ff00, v, 4);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

/* IQ4 levels of 64 nibble values (bytes 0..15) */
INLINE __m512i iq4_lookup(__m512i nibbles) {
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)iq4_levels)), nibbles);
}

/* 32 bytes of nibbles -> 64 values [lo nibbles | hi nibbles], the Q4_K/Q5_K chunk order */
INLINE __m512i unpack_nibbles_32(const uint8_t *p) {
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
    v = _mm512_mask_srli_epi16(v, 0xffff0000, v, 4);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

/* the fifth bits of two legacy blocks as a byte mask over [block a | block b] */
INLINE __mmask64 high_bits_2x32(const uint8_t *qh_a, const uint8_t *qh_b) {
    return _cvtu64_mask64((uint64_t)load_u32(qh_a) | (uint64_t)load_u32(qh_b) << 32);
}

/* The stored weights of blocks a and b as 64 bytes [a | b]: unsigned (q + offset) except for
 * Q8_0 and IQ4_NL, whose q are signed bytes. */
typedef __m512i (*legacy_pair_fn)(const uint8_t *a, const uint8_t *b);

/* 5-bit values: the nibbles 4 bytes after a (b), the fifth bits in the 4 bytes at a (b) */
INLINE __m512i fives_2x32(const uint8_t *a, const uint8_t *b) {
    const __m512i lo = unpack_nibbles_2x16(a + 4, b + 4);
    return _mm512_mask_add_epi8(lo, high_bits_2x32(a, b), lo, _mm512_set1_epi8(16));
}

/* the signed Q5_0 values q = u - 16 of blocks a and b: the nibbles, less 16 where the fifth bit is clear */
INLINE __m512i signed_q5_0(const uint8_t *a, const uint8_t *b) {
    const __m512i lo = unpack_nibbles_2x16(a + 6, b + 6);
    return _mm512_mask_sub_epi8(lo, _knot_mask64(high_bits_2x32(a + 2, b + 2)), lo, _mm512_set1_epi8(16));
}

INLINE __m512i pair_q4_0(const uint8_t *a, const uint8_t *b) { return unpack_nibbles_2x16(a + 2, b + 2); }
INLINE __m512i pair_q4_1(const uint8_t *a, const uint8_t *b) { return unpack_nibbles_2x16(a + 4, b + 4); }
INLINE __m512i pair_q5_0(const uint8_t *a, const uint8_t *b) { return fives_2x32(a + 2, b + 2); }
INLINE __m512i pair_q5_1(const uint8_t *a, const uint8_t *b) { return fives_2x32(a + 4, b + 4); }
INLINE __m512i pair_q8_0(const uint8_t *a, const uint8_t *b) { return load_2x32(a + 2, b + 2); }
INLINE __m512i pair_iq4_nl(const uint8_t *a, const uint8_t *b) { return iq4_lookup(unpack_nibbles_2x16(a + 2, b + 2)); }

/* The block order of the lanes that the combine tree of legacy_group leaves: after two
 * combines each 128-bit lane pair holds four blocks twice, and the last step adds the copies. */
static const int tree_order[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};

/* A row's last group, when it holds at most LEGACY_TAIL_BLOCKS blocks (k = 576 and 640 leave 2 and
 * 4), is a tail: rather than one more lane-per-block float step over a mostly empty group, its
 * blocks add to a scalar started at zero, block by block,
 *     t = fma(sum_b, d_b * dx_b, t)   (then  t = fma(m_b, s_b, t)  for the types with a minimum),
 * and the output is hsum512_ps(acc) + t. A GEMM computes the same chain with its lanes across
 * outputs, with no per-output reduction. */
#define LEGACY_TAIL_BLOCKS 4
/* the tail's blocks for a row of nb blocks, 0 when its last group is not a tail */
INLINE int legacy_tail_blocks(int64_t nb) {
    const int last = (int)(nb - (nb - 1) / 16 * 16);
    return last <= LEGACY_TAIL_BLOCKS ? last : 0;
}

/* ---- K-quant super-blocks (256 values) ---- */

/* One super-block unpacked: q[j] holds values 64j .. 64j + 63 as unsigned bytes (the true value
 * minus `offset` for Q3_K and Q6_K; IQ4_XS alone holds signed levels); sc and mn hold one scale
 * and minimum per group of 16. */
typedef struct {
    __m512i q[4];
    __m256i sc, mn;
    float d, dmin;
} kquant_unpacked;

typedef void (*kquant_unpack_fn)(const uint8_t *blk, kquant_unpacked *u);

/* 16 scale bytes as int16 */
INLINE __m256i bytes_to_i16(__m128i b, int is_signed) {
    return is_signed ? _mm256_cvtepi8_epi16(b) : _mm256_cvtepu8_epi16(b);
}

/* 8 scales of groups of 32 as 16 int16 (each twice), so every type has one per group of 16 */
INLINE __m256i scales8_to_i16(uint64_t scales) {
    __m128i b = _mm_cvtsi64_si128((long long)scales);
    return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(b, b));
}

/* Q4_K/Q5_K: eight 6-bit scales and eight 6-bit minimums packed in 12 bytes (see scale_min_k4
 * in ref.c): bytes 0-3 hold scales 0-3 and bits 4-5 of scales 4-7, bytes 4-7 minimums 0-3 and
 * bits 4-5 of minimums 4-7, bytes 8-11 the low nibbles of scales 4-7 (low) and minimums 4-7 (high). */
INLINE void unpack_k4_scales(const uint8_t scales[K_SCALE_SIZE], kquant_unpacked *u) {
    const uint32_t s0 = load_u32(scales), s1 = load_u32(scales + 4), s2 = load_u32(scales + 8);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, top2 = 0x03030303;
    const uint32_t sc_hi = (s2 & low4) | (((s0 >> 6) & top2) << 4);
    const uint32_t mn_hi = ((s2 >> 4) & low4) | (((s1 >> 6) & top2) << 4);
    u->sc = scales8_to_i16((uint64_t)(s0 & low6) | (uint64_t)sc_hi << 32);
    u->mn = scales8_to_i16((uint64_t)(s1 & low6) | (uint64_t)mn_hi << 32);
}

/* Q3_K/Q5_K keep one high bit per value in 32 bytes: value l of chunk j (l < 32 in the low half,
 * 32 + l in the high half) takes bit 2j (low half) or 2j + 1 (high half) of byte l. */
INLINE __m512i add_high_bits(__m512i q, __m512i hbits, int j, char value) {
    const __m512i sel = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi8((char)(1 << (2 * j))),
                                                _mm512_set1_epi8((char)(2 << (2 * j))));
    return _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(hbits, sel), q, _mm512_set1_epi8(value));
}

/* Q2_K/Q3_K: each 128-value half reads 32 bytes four times, two bits deeper each time: chunk j
 * (half j / 2) holds passes 2 (j % 2) and 2 (j % 2) + 1 */
INLINE __m512i crumbs_32(const uint8_t *p, int j) {
    const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
    const int shift = 4 * (j % 2);
    const __m512i counts = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16((short)shift), _mm512_set1_epi16((short)(shift + 2)));
    return _mm512_and_si512(_mm512_srlv_epi16(v, counts), _mm512_set1_epi8(3));
}

INLINE void unpack_q2_K(const uint8_t *blk, kquant_unpacked *u) {
    const block_q2_K *b = (const block_q2_K *)blk;
    UNROLL for (int j = 0; j < 4; j++) u->q[j] = crumbs_32(b->qs + 32 * (j / 2), j);
    const __m128i s = _mm_loadu_si128((const __m128i *)b->scales);
    u->sc = bytes_to_i16(_mm_and_si128(s, _mm_set1_epi8(0x0f)), 0);
    u->mn = bytes_to_i16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0x0f)), 0);
    u->d = half_to_f32(b->d);
    u->dmin = half_to_f32(b->dmin);
}

/* q + 4 = low two bits + 4 * high bit */
INLINE void unpack_q3_K(const uint8_t *blk, kquant_unpacked *u) {
    const block_q3_K *b = (const block_q3_K *)blk;
    const __m512i hbits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->hmask));
    UNROLL for (int j = 0; j < 4; j++) u->q[j] = add_high_bits(crumbs_32(b->qs + 32 * (j / 2), j), hbits, j, 4);
    /* sixteen 6-bit scales: low nibbles in bytes 0-7 (groups 0-7 low, 8-15 high), the top two
     * bits of group g at bits 2 (g / 4) of byte 8 + g % 4 */
    const uint32_t s0 = load_u32(b->scales), s1 = load_u32(b->scales + 4), s2 = load_u32(b->scales + 8);
    const uint32_t low4 = 0x0f0f0f0f, top2 = 0x03030303;
    const __m128i sc = _mm_set_epi32((int)(((s1 >> 4) & low4) | (((s2 >> 6) & top2) << 4)),
                                     (int)(((s0 >> 4) & low4) | (((s2 >> 4) & top2) << 4)),
                                     (int)((s1 & low4) | (((s2 >> 2) & top2) << 4)),
                                     (int)((s0 & low4) | ((s2 & top2) << 4)));
    u->sc = _mm256_sub_epi16(bytes_to_i16(sc, 0), _mm256_set1_epi16(32));
    u->mn = _mm256_setzero_si256();
    u->d = half_to_f32(b->d);
    u->dmin = 0.0f;
}

INLINE void unpack_q4_K(const uint8_t *blk, kquant_unpacked *u) {
    const block_q4_K *b = (const block_q4_K *)blk;
    UNROLL for (int j = 0; j < 4; j++) u->q[j] = unpack_nibbles_32(b->qs + 32 * j);
    unpack_k4_scales(b->scales, u);
    u->d = half_to_f32(b->d);
    u->dmin = half_to_f32(b->dmin);
}

INLINE void unpack_q5_K(const uint8_t *blk, kquant_unpacked *u) {
    const block_q5_K *b = (const block_q5_K *)blk;
    const __m512i hbits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->qh));
    UNROLL for (int j = 0; j < 4; j++) u->q[j] = add_high_bits(unpack_nibbles_32(b->qs + 32 * j), hbits, j, 16);
    unpack_k4_scales(b->scales, u);
    u->d = half_to_f32(b->d);
    u->dmin = half_to_f32(b->dmin);
}

/* q + 32: half h takes the nibbles of ql[64h .. 64h + 63] (low nibbles for chunk 2h, high for
 * 2h + 1) and two bits each of qh[32h .. 32h + 31] (bits 0-1 / 2-3 for the low / high 32 values
 * of chunk 2h, bits 4-5 / 6-7 for chunk 2h + 1), moved to bits 4-5 */
INLINE void unpack_q6_K(const uint8_t *blk, kquant_unpacked *u) {
    const block_q6_K *b = (const block_q6_K *)blk;
    const __m512i nib = _mm512_set1_epi8(0x0f), top = _mm512_set1_epi8(0x30);
    UNROLL for (int h = 0; h < 2; h++) {
        const __m512i lo = _mm512_loadu_si512(b->ql + 64 * h);
        const __m512i hi = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
        const __m512i hi01 = _mm512_sllv_epi16(hi, _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16(4), _mm512_set1_epi16(2)));
        const __m512i hi23 = _mm512_srlv_epi16(hi, _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16(0), _mm512_set1_epi16(2)));
        u->q[2 * h] = _mm512_or_si512(_mm512_and_si512(lo, nib), _mm512_and_si512(hi01, top));
        u->q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo, 4), nib), _mm512_and_si512(hi23, top));
    }
    u->sc = bytes_to_i16(_mm_loadu_si128((const __m128i *)b->scales), 1);
    u->mn = _mm256_setzero_si256();
    u->d = half_to_f32(b->d);
    u->dmin = 0.0f;
}

/* signed levels (no offset: they span -127..113), chunk j = groups 2j and 2j + 1 in the legacy
 * nibble order; ls - 32 of each group of 32, twice */
INLINE void unpack_iq4_xs(const uint8_t *blk, kquant_unpacked *u) {
    const block_iq4_xs *b = (const block_iq4_xs *)blk;
    UNROLL for (int j = 0; j < 4; j++) u->q[j] = iq4_lookup(unpack_nibbles_2x16(b->qs + 32 * j, b->qs + 32 * j + 16));
    int8_t ls[16];
    UNROLL for (int g = 0; g < 8; g++) ls[2 * g] = ls[2 * g + 1] = (int8_t)iq4_xs_scale(b, g);
    u->sc = bytes_to_i16(_mm_loadu_si128((const __m128i *)ls), 1);
    u->mn = _mm256_setzero_si256();
    u->d = half_to_f32(b->d);
    u->dmin = 0.0f;
}

/* int16 lane l of chunk j belongs to group 4j + l / 8 */
INLINE __m512i chunk_scales(__m256i sc16, int j) {
    const __m512i idx = _mm512_add_epi16(_mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 3),
                                         _mm512_set1_epi16((short)(4 * j)));
    return _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(sc16));
}


#endif
