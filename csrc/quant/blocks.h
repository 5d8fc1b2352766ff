/* blocks.h — GGUF quantization blocks, bit-exact with ggml's layouts.
 *
 * Legacy types hold QK = 32 weights per block; K-quants hold a super-block of QK_K = 256.
 * "d" is a scale and "m"/"dmin" a minimum, stored as IEEE half (jl_half) unless noted. */
#ifndef JANLIB_BLOCKS_H
#define JANLIB_BLOCKS_H

#include <assert.h>
#include <stdint.h>

#define QK 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t jl_half;   /* IEEE 754 binary16 bits */
typedef uint16_t jl_bf16;   /* bfloat16 bits */

/* w = d * (q - 8), q 4-bit */
typedef struct { jl_half d; uint8_t qs[QK / 2]; } block_q4_0;
/* w = d * q + m, q 4-bit */
typedef struct { jl_half d, m; uint8_t qs[QK / 2]; } block_q4_1;
/* w = d * (q - 16), q 5-bit: low nibble in qs, fifth bit in qh */
typedef struct { jl_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
/* w = d * q + m, q 5-bit */
typedef struct { jl_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
/* w = d * q, q int8 */
typedef struct { jl_half d; int8_t qs[QK]; } block_q8_0;
/* activation format of Q4_1/Q5_1: s = d * sum(qs) lets the minimum term skip the int loop */
typedef struct { jl_half d, s; int8_t qs[QK]; } block_q8_1;

/* 16 groups of 16: w = d * sc * q - dmin * m, scales[i] = sc | m << 4, q 2-bit */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    jl_half d, dmin;
} block_q2_K;
/* 16 groups of 16: w = d * (sc - 32) * (q - 4 * !hbit), 6-bit scales packed in 12 bytes */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    jl_half d;
} block_q3_K;
/* 8 groups of 32: w = d * sc * q - dmin * m, 6-bit sc and m packed in 12 bytes, q 4-bit */
typedef struct {
    jl_half d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
/* as Q4_K with a fifth bit per weight in qh */
typedef struct {
    jl_half d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
/* 16 groups of 16: w = d * sc * (q - 32), q 6-bit (4 low bits in ql, 2 high in qh), sc int8 */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    jl_half d;
} block_q6_K;
/* The 16 non-uniform levels of the IQ4 types (ggml's kvalues_iq4nl): w = d * iq4_levels[nibble]. */
extern const int8_t iq4_levels[16];  /* defined in ref.c */

/* value j < 16 from the low nibble of qs[j], value j + 16 from its high nibble (as Q4_0) */
typedef struct { jl_half d; uint8_t qs[QK / 2]; } block_iq4_nl;
/* 8 groups of 32, each laid out as a block_iq4_nl's qs: w = d * (ls - 32) * iq4_levels[nibble],
 * the 6-bit ls of group g: low nibble g % 2 of scales_l[g / 2], high bits 2g..2g+1 of scales_h */
typedef struct {
    jl_half d;
    uint16_t scales_h;
    uint8_t scales_l[QK_K / 64];
    uint8_t qs[QK_K / 2];
} block_iq4_xs;

/* ls - 32 of group g of an IQ4_XS block */
static inline int iq4_xs_scale(const block_iq4_xs *b, int g) {
    return (((b->scales_l[g / 2] >> 4 * (g % 2)) & 0x0f) | (((b->scales_h >> 2 * g) & 3) << 4)) - 32;
}

/* activation format of the K-quants: float scale, bsums[i] = sum of qs[16 i .. 16 i + 15] */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;

static_assert(sizeof(block_q4_0) == 2 + QK / 2, "block_q4_0 size");
static_assert(sizeof(block_q4_1) == 4 + QK / 2, "block_q4_1 size");
static_assert(sizeof(block_q5_0) == 2 + 4 + QK / 2, "block_q5_0 size");
static_assert(sizeof(block_q5_1) == 4 + 4 + QK / 2, "block_q5_1 size");
static_assert(sizeof(block_q8_0) == 2 + QK, "block_q8_0 size");
static_assert(sizeof(block_q8_1) == 4 + QK, "block_q8_1 size");
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");
static_assert(sizeof(block_iq4_nl) == 2 + QK / 2, "block_iq4_nl size");
static_assert(sizeof(block_iq4_xs) == 2 + 2 + QK_K / 64 + QK_K / 2, "block_iq4_xs size");

#endif
