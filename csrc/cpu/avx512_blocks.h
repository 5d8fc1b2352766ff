/* avx512_blocks.h — AVX-512 helpers and legacy-block unpacking shared by the matvec kernels
 * (avx512.c) and the GEMM (avx512_gemm.c), so a layout is decoded in one place per ISA. */
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

/* The 16 fp16 values in the low (hi = 0) or high halves of the int32 lanes, as floats: one
 * vpermw gathers them (vpmovdw costs two shuffles). */
INLINE __m512 halves_to_ps(__m512i v, int hi) {
    const __m512i even = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                          30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i words = hi ? _mm512_xor_si512(even, _mm512_set1_epi16(1)) : even;
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(words, v)));
}

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
 * Q8_0, whose q are signed bytes. */
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

/* The block order of the lanes that the combine tree of legacy_group leaves: after two
 * combines each 128-bit lane pair holds four blocks twice, and the last step adds the copies. */
static const int tree_order[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};

#endif
