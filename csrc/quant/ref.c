/* ref.c — the scalar reference for every supported type: the definition the SIMD kernels
 * are tested against, written for clarity over speed.
 *
 * Each weight block is first unpacked into integers: legacy blocks (32 values) into q[32] with
 * a float scale and minimum, K-quant super-blocks (256 values) into q[256] with one integer
 * scale and minimum per group of 16. Every type then shares one dequantize and one dot
 * product, so a layout is decoded in exactly one place:
 *     legacy:   w[i] = d * q[i] + m
 *     K-quant:  w[i] = d * sc[i / 16] * q[i] - dmin * mn[i / 16]
 * IQ4_NL is a legacy block and IQ4_XS a K-quant super-block whose q are the looked-up levels. */
#include <math.h>
#include <string.h>

#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/traits.h"

const int8_t iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* ---- legacy blocks (32 values) ---------------------------------------------------------- */

typedef struct {
    int8_t q[QK];
    float d, m;
} legacy_unpacked;

typedef void (*legacy_unpack_fn)(const void *blk, legacy_unpacked *u);

static void unpack_4bit(const uint8_t qs[QK / 2], int offset, int8_t q[QK]) {
    for (int j = 0; j < QK / 2; j++) {
        q[j] = (int8_t)((qs[j] & 0x0f) - offset);
        q[j + QK / 2] = (int8_t)((qs[j] >> 4) - offset);
    }
}

/* the fifth bit of value j is bit j of qh, for both halves of the block (j < 32) */
static void unpack_5bit(const uint8_t qs[QK / 2], const uint8_t qh_bytes[4], int offset, int8_t q[QK]) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + QK / 2)) & 1) << 4);
        q[j] = (int8_t)(lo - offset);
        q[j + QK / 2] = (int8_t)(hi - offset);
    }
}

static void unpack_q4_0(const void *blk, legacy_unpacked *u) {
    const block_q4_0 *b = blk;
    unpack_4bit(b->qs, 8, u->q);
    u->d = jl_half_to_f32(b->d);
    u->m = 0.0f;
}

static void unpack_q4_1(const void *blk, legacy_unpacked *u) {
    const block_q4_1 *b = blk;
    unpack_4bit(b->qs, 0, u->q);
    u->d = jl_half_to_f32(b->d);
    u->m = jl_half_to_f32(b->m);
}

static void unpack_q5_0(const void *blk, legacy_unpacked *u) {
    const block_q5_0 *b = blk;
    unpack_5bit(b->qs, b->qh, 16, u->q);
    u->d = jl_half_to_f32(b->d);
    u->m = 0.0f;
}

static void unpack_q5_1(const void *blk, legacy_unpacked *u) {
    const block_q5_1 *b = blk;
    unpack_5bit(b->qs, b->qh, 0, u->q);
    u->d = jl_half_to_f32(b->d);
    u->m = jl_half_to_f32(b->m);
}

static void unpack_iq4_nl(const void *blk, legacy_unpacked *u) {
    const block_iq4_nl *b = blk;
    unpack_4bit(b->qs, 0, u->q);
    for (int j = 0; j < QK; j++) u->q[j] = iq4_levels[u->q[j]];
    u->d = jl_half_to_f32(b->d);
    u->m = 0.0f;
}

static void unpack_q8_0(const void *blk, legacy_unpacked *u) {
    const block_q8_0 *b = blk;
    memcpy(u->q, b->qs, QK);
    u->d = jl_half_to_f32(b->d);
    u->m = 0.0f;
}

static void unpack_q8_1(const void *blk, legacy_unpacked *u) {
    const block_q8_1 *b = blk;
    memcpy(u->q, b->qs, QK);
    u->d = jl_half_to_f32(b->d);
    u->m = 0.0f;
}

static void legacy_to_float(legacy_unpack_fn unpack, size_t type_size, const void *src, float *dst, int64_t n) {
    legacy_unpacked u;
    for (int64_t i = 0; i < n / QK; i++) {
        unpack((const uint8_t *)src + i * type_size, &u);
        for (int j = 0; j < QK; j++) dst[i * QK + j] = u.d * (float)u.q[j] + u.m;
    }
}

/* Against Q8_0 (m == 0) or Q8_1 activations: sum over blocks of d*dx*sum(q*qx) + m*s,
 * where s = dx*sum(qx) is stored in the Q8_1 block. */
static float legacy_dot(legacy_unpack_fn unpack, size_t type_size, int act_type, int64_t k,
                        const void *w, const void *x) {
    legacy_unpacked u;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++) {
        unpack((const uint8_t *)w + i * type_size, &u);
        const int8_t *qx;
        float dx, sx = 0.0f;
        if (act_type == JL_TYPE_Q8_1) {
            const block_q8_1 *bx = (const block_q8_1 *)x + i;
            qx = bx->qs;
            dx = jl_half_to_f32(bx->d);
            sx = jl_half_to_f32(bx->s);
        } else {
            const block_q8_0 *bx = (const block_q8_0 *)x + i;
            qx = bx->qs;
            dx = jl_half_to_f32(bx->d);
        }
        int32_t sumi = 0;
        for (int j = 0; j < QK; j++) sumi += (int32_t)u.q[j] * qx[j];
        sum += u.d * dx * (float)sumi + u.m * sx;
    }
    return sum;
}

/* ---- K-quant super-blocks (256 values, groups of 16) ------------------------------------ */

typedef struct {
    int8_t q[QK_K];
    int16_t sc[QK_K / 16];
    int16_t mn[QK_K / 16];
    float d, dmin;
} kquant_unpacked;

typedef void (*kquant_unpack_fn)(const void *blk, kquant_unpacked *u);

/* Q4_K and Q5_K pack eight 6-bit scales and eight 6-bit minimums into 12 bytes. */
static void scale_min_k4(int j, const uint8_t *s, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void unpack_q2_K(const void *blk, kquant_unpacked *u) {
    const block_q2_K *b = blk;
    /* each 128-value half reads 32 bytes of qs four times, two bits deeper each time */
    for (int i = 0; i < QK_K; i++) {
        int half = i / 128, pass = (i % 128) / 32, l = i % 32;
        u->q[i] = (int8_t)((b->qs[half * 32 + l] >> (2 * pass)) & 3);
    }
    for (int g = 0; g < QK_K / 16; g++) {
        u->sc[g] = b->scales[g] & 0x0f;
        u->mn[g] = b->scales[g] >> 4;
    }
    u->d = jl_half_to_f32(b->d);
    u->dmin = jl_half_to_f32(b->dmin);
}

static void unpack_q3_K(const void *blk, kquant_unpacked *u) {
    const block_q3_K *b = blk;
    for (int i = 0; i < QK_K; i++) {
        int half = i / 128, pass = (i % 128) / 32, l = i % 32;
        int low = (b->qs[half * 32 + l] >> (2 * pass)) & 3;
        int high_set = (b->hmask[l] >> (half * 4 + pass)) & 1;
        u->q[i] = (int8_t)(low - (high_set ? 0 : 4));
    }
    /* sixteen 6-bit scales: low nibbles in bytes 0..7, high two bits in bytes 8..11 */
    for (int g = 0; g < 16; g++) {
        int low = g < 8 ? b->scales[g] & 0x0f : b->scales[g - 8] >> 4;
        int high = (b->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        u->sc[g] = (int16_t)((low | (high << 4)) - 32);
        u->mn[g] = 0;
    }
    u->d = jl_half_to_f32(b->d);
    u->dmin = 0.0f;
}

static void unpack_k4_scales(const uint8_t scales[K_SCALE_SIZE], kquant_unpacked *u) {
    for (int g = 0; g < 8; g++) {
        int sc, mn;
        scale_min_k4(g, scales, &sc, &mn);
        u->sc[2 * g] = u->sc[2 * g + 1] = (int16_t)sc;
        u->mn[2 * g] = u->mn[2 * g + 1] = (int16_t)mn;
    }
}

static void unpack_q4_K(const void *blk, kquant_unpacked *u) {
    const block_q4_K *b = blk;
    /* each 64-value chunk: 32 low nibbles then 32 high nibbles of the same 32 bytes */
    for (int i = 0; i < QK_K; i++) {
        int chunk = i / 64, l = i % 32;
        uint8_t byte = b->qs[chunk * 32 + l];
        u->q[i] = (int8_t)((i % 64) < 32 ? byte & 0x0f : byte >> 4);
    }
    unpack_k4_scales(b->scales, u);
    u->d = jl_half_to_f32(b->d);
    u->dmin = jl_half_to_f32(b->dmin);
}

static void unpack_q5_K(const void *blk, kquant_unpacked *u) {
    const block_q5_K *b = blk;
    for (int i = 0; i < QK_K; i++) {
        int chunk = i / 64, l = i % 32, high_nibble = (i % 64) >= 32;
        uint8_t byte = b->qs[chunk * 32 + l];
        int low = high_nibble ? byte >> 4 : byte & 0x0f;
        int fifth = (b->qh[l] >> (2 * chunk + high_nibble)) & 1;
        u->q[i] = (int8_t)(low | (fifth << 4));
    }
    unpack_k4_scales(b->scales, u);
    u->d = jl_half_to_f32(b->d);
    u->dmin = jl_half_to_f32(b->dmin);
}

static void unpack_q6_K(const void *blk, kquant_unpacked *u) {
    const block_q6_K *b = blk;
    /* each 128-value half: ql[0..63] and qh[0..31]; value quarter p takes nibble p / 2 of
     * ql[l + 32 * (p % 2)] and bits 2p..2p+1 of qh[l] */
    for (int i = 0; i < QK_K; i++) {
        int half = i / 128, p = (i % 128) / 32, l = i % 32;
        uint8_t lbyte = b->ql[half * 64 + l + 32 * (p % 2)];
        int low = p < 2 ? lbyte & 0x0f : lbyte >> 4;
        int high = (b->qh[half * 32 + l] >> (2 * p)) & 3;
        u->q[i] = (int8_t)((low | (high << 4)) - 32);
    }
    for (int g = 0; g < 16; g++) {
        u->sc[g] = b->scales[g];
        u->mn[g] = 0;
    }
    u->d = jl_half_to_f32(b->d);
    u->dmin = 0.0f;
}

static void unpack_iq4_xs(const void *blk, kquant_unpacked *u) {
    const block_iq4_xs *b = blk;
    for (int g = 0; g < QK_K / QK; g++) {
        unpack_4bit(b->qs + g * QK / 2, 0, u->q + g * QK);
        u->sc[2 * g] = u->sc[2 * g + 1] = (int16_t)iq4_xs_scale(b, g);
        u->mn[2 * g] = u->mn[2 * g + 1] = 0;
    }
    for (int i = 0; i < QK_K; i++) u->q[i] = iq4_levels[u->q[i]];
    u->d = jl_half_to_f32(b->d);
    u->dmin = 0.0f;
}

static void unpack_q8_K(const void *blk, kquant_unpacked *u) {
    const block_q8_K *b = blk;
    memcpy(u->q, b->qs, QK_K);
    for (int g = 0; g < 16; g++) {
        u->sc[g] = 1;
        u->mn[g] = 0;
    }
    u->d = b->d;
    u->dmin = 0.0f;
}

static void kquant_to_float(kquant_unpack_fn unpack, size_t type_size, const void *src, float *dst, int64_t n) {
    kquant_unpacked u;
    for (int64_t i = 0; i < n / QK_K; i++) {
        unpack((const uint8_t *)src + i * type_size, &u);
        for (int j = 0; j < QK_K; j++) {
            float scale = u.d * (float)u.sc[j / 16], min = u.dmin * (float)u.mn[j / 16];
            dst[i * QK_K + j] = scale * (float)u.q[j] - min;
        }
    }
}

/* Against Q8_K activations: dx * (d * sum_g sc[g] * sum(q*qx) - dmin * sum_g mn[g] * bsums[g]) */
static float kquant_dot(kquant_unpack_fn unpack, size_t type_size, int64_t k, const void *w, const void *x) {
    kquant_unpacked u;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++) {
        unpack((const uint8_t *)w + i * type_size, &u);
        const block_q8_K *bx = (const block_q8_K *)x + i;
        int32_t scaled = 0, mins = 0;
        for (int g = 0; g < QK_K / 16; g++) {
            int32_t sumi = 0;
            for (int j = 0; j < 16; j++) sumi += (int32_t)u.q[16 * g + j] * bx->qs[16 * g + j];
            scaled += u.sc[g] * sumi;
            mins += u.mn[g] * bx->bsums[g];
        }
        sum += bx->d * (u.d * (float)scaled - u.dmin * (float)mins);
    }
    return sum;
}

/* ---- float types ------------------------------------------------------------------------ */

static void f32_to_float(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

static void f16_to_float(const void *src, float *dst, int64_t n) {
    const jl_half *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = jl_half_to_f32(h[i]);
}

static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const jl_bf16 *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = jl_bf16_to_f32(h[i]);
}

static void f32_from_float(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

static void f16_from_float(const float *src, void *dst, int64_t n) {
    jl_half *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = jl_f32_to_half(src[i]);
}

/* float weights pair with float32 activations: exact inputs, double accumulation */
#define FLOAT_DOT(name, elem_t, convert)                                                    \
    static void name(int64_t k, const void *w, const void *x, size_t x_stride, int nc, float *s) { \
        const elem_t *wv = w;                                                                \
        for (int c = 0; c < nc; c++) {                                                       \
            const float *xv = (const float *)((const uint8_t *)x + c * x_stride);            \
            double acc = 0.0;                                                                \
            for (int64_t i = 0; i < k; i++) acc += (double)convert(wv[i]) * xv[i];           \
            s[c] = (float)acc;                                                               \
        }                                                                                    \
    }
#define AS_FLOAT(v) (v)
FLOAT_DOT(f32_vec_dot, float, AS_FLOAT)
FLOAT_DOT(f16_vec_dot, jl_half, jl_half_to_f32)
FLOAT_DOT(bf16_vec_dot, jl_bf16, jl_bf16_to_f32)

#define FLOAT_DOT_PAGES(name, elem_t, convert)                                                           \
    static void name(int64_t page_len, int64_t n_pages, const uint8_t *const *pages, size_t w_offset,    \
                     const float *x, size_t x_stride, int nc, float *s) {                               \
        for (int c = 0; c < nc; c++) {                                                                  \
            const float *xc = (const float *)((const uint8_t *)x + c * x_stride);                       \
            double acc = 0.0;                                                                           \
            for (int64_t p = 0; p < n_pages; p++) {                                                     \
                const elem_t *wv = (const elem_t *)(pages[p] + w_offset);                              \
                for (int64_t i = 0; i < page_len; i++) acc += (double)convert(wv[i]) * xc[p * page_len + i]; \
            }                                                                                           \
            s[c] = (float)acc;                                                                          \
        }                                                                                               \
    }
FLOAT_DOT_PAGES(f32_vec_dot_pages, float, AS_FLOAT)
FLOAT_DOT_PAGES(f16_vec_dot_pages, jl_half, jl_half_to_f32)

/* ---- activation quantization ---------------------------------------------------------- */

/* symmetric int8 with d = max|x| / 127; rounding half to even, as the SIMD conversions do */
static float quantize_block_int8(const float *x, int n, int8_t *q) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < n; j++) q[j] = (int8_t)nearbyintf(x[j] * id);
    return d;
}

static void q8_0_from_float(const float *src, void *dst, int64_t n) {
    block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) b[i].d = jl_f32_to_half(quantize_block_int8(src + i * QK, QK, b[i].qs));
}

static void q8_1_from_float(const float *src, void *dst, int64_t n) {
    block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        float d = quantize_block_int8(src + i * QK, QK, b[i].qs);
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) sum += b[i].qs[j];
        b[i].d = jl_f32_to_half(d);
        b[i].s = jl_f32_to_half(d * (float)sum);
    }
}

/* ggml's reference Q4_0 quantization (for a Q4_0 KV cache): d = -(the value of largest
 * magnitude) / 8, q = min(15, trunc(x / d + 8.5)) */
static void q4_0_from_float(const float *src, void *dst, int64_t n) {
    block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        const float *x = src + i * QK;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = jl_f32_to_half(d);
        for (int j = 0; j < QK / 2; j++) {
            const int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + QK / 2] * id + 8.5f);
            b[i].qs[j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
        }
    }
}

static void q8_K_from_float(const float *src, void *dst, int64_t n) {
    block_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++) {
        b[i].d = quantize_block_int8(src + i * QK_K, QK_K, b[i].qs);
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += b[i].qs[16 * g + j];
            b[i].bsums[g] = (int16_t)sum;
        }
    }
}

/* ---- the table -------------------------------------------------------------------------- */

#define LEGACY(NAME, ACT)                                                                    \
    static void NAME##_to_float(const void *src, float *dst, int64_t n) {                          \
        legacy_to_float(unpack_##NAME, sizeof(block_##NAME), src, dst, n);                         \
    }                                                                                               \
    static void NAME##_vec_dot(int64_t k, const void *w, const void *x, size_t x_stride, int nc, float *s) { \
        for (int c = 0; c < nc; c++)                                                                \
            s[c] = legacy_dot(unpack_##NAME, sizeof(block_##NAME), ACT, k, w, (const uint8_t *)x + c * x_stride); \
    }
#define KQUANT(NAME)                                                                               \
    static void NAME##_to_float(const void *src, float *dst, int64_t n) {                          \
        kquant_to_float(unpack_##NAME, sizeof(block_##NAME), src, dst, n);                         \
    }                                                                                               \
    static void NAME##_vec_dot(int64_t k, const void *w, const void *x, size_t x_stride, int nc, float *s) { \
        for (int c = 0; c < nc; c++)                                                                \
            s[c] = kquant_dot(unpack_##NAME, sizeof(block_##NAME), k, w, (const uint8_t *)x + c * x_stride); \
    }

LEGACY(q4_0, JL_TYPE_Q8_0)
LEGACY(q4_1, JL_TYPE_Q8_1)
LEGACY(q5_0, JL_TYPE_Q8_0)
LEGACY(q5_1, JL_TYPE_Q8_1)
LEGACY(q8_0, JL_TYPE_Q8_0)
LEGACY(iq4_nl, JL_TYPE_Q8_0)
KQUANT(q2_K)
KQUANT(q3_K)
KQUANT(q4_K)
KQUANT(q5_K)
KQUANT(q6_K)
KQUANT(iq4_xs)

static void q8_1_to_float(const void *src, float *dst, int64_t n) {
    legacy_to_float(unpack_q8_1, sizeof(block_q8_1), src, dst, n);
}
static void q8_K_to_float(const void *src, float *dst, int64_t n) {
    kquant_to_float(unpack_q8_K, sizeof(block_q8_K), src, dst, n);
}

void jl_ref_register(jl_type_traits *t) {
    /*                name    block  bytes               activation     to_float        from_float       vec_dot */
    t[JL_TYPE_F32]  = (jl_type_traits){"F32",  1,   4,                  JL_TYPE_F32,  f32_to_float,  f32_from_float,  f32_vec_dot};
    t[JL_TYPE_F16]  = (jl_type_traits){"F16",  1,   2,                  JL_TYPE_F32,  f16_to_float,  f16_from_float,  f16_vec_dot};
    t[JL_TYPE_BF16] = (jl_type_traits){"BF16", 1,   2,                  JL_TYPE_F32,  bf16_to_float, NULL,            bf16_vec_dot};
    t[JL_TYPE_F32].vec_dot_pages = f32_vec_dot_pages;
    t[JL_TYPE_F16].vec_dot_pages = f16_vec_dot_pages;
    t[JL_TYPE_Q4_0] = (jl_type_traits){"Q4_0", QK,  sizeof(block_q4_0), JL_TYPE_Q8_0, q4_0_to_float, q4_0_from_float, q4_0_vec_dot};
    t[JL_TYPE_Q4_1] = (jl_type_traits){"Q4_1", QK,  sizeof(block_q4_1), JL_TYPE_Q8_1, q4_1_to_float, NULL,            q4_1_vec_dot};
    t[JL_TYPE_Q5_0] = (jl_type_traits){"Q5_0", QK,  sizeof(block_q5_0), JL_TYPE_Q8_0, q5_0_to_float, NULL,            q5_0_vec_dot};
    t[JL_TYPE_Q5_1] = (jl_type_traits){"Q5_1", QK,  sizeof(block_q5_1), JL_TYPE_Q8_1, q5_1_to_float, NULL,            q5_1_vec_dot};
    t[JL_TYPE_Q8_0] = (jl_type_traits){"Q8_0", QK,  sizeof(block_q8_0), JL_TYPE_Q8_0, q8_0_to_float, q8_0_from_float, q8_0_vec_dot};
    t[JL_TYPE_Q8_1] = (jl_type_traits){"Q8_1", QK,  sizeof(block_q8_1), JL_TYPE_Q8_1, q8_1_to_float, q8_1_from_float, NULL};
    t[JL_TYPE_Q2_K] = (jl_type_traits){"Q2_K", QK_K, sizeof(block_q2_K), JL_TYPE_Q8_K, q2_K_to_float, NULL,           q2_K_vec_dot};
    t[JL_TYPE_Q3_K] = (jl_type_traits){"Q3_K", QK_K, sizeof(block_q3_K), JL_TYPE_Q8_K, q3_K_to_float, NULL,           q3_K_vec_dot};
    t[JL_TYPE_Q4_K] = (jl_type_traits){"Q4_K", QK_K, sizeof(block_q4_K), JL_TYPE_Q8_K, q4_K_to_float, NULL,           q4_K_vec_dot};
    t[JL_TYPE_Q5_K] = (jl_type_traits){"Q5_K", QK_K, sizeof(block_q5_K), JL_TYPE_Q8_K, q5_K_to_float, NULL,           q5_K_vec_dot};
    t[JL_TYPE_Q6_K] = (jl_type_traits){"Q6_K", QK_K, sizeof(block_q6_K), JL_TYPE_Q8_K, q6_K_to_float, NULL,           q6_K_vec_dot};
    t[JL_TYPE_Q8_K] = (jl_type_traits){"Q8_K", QK_K, sizeof(block_q8_K), JL_TYPE_Q8_K, q8_K_to_float, q8_K_from_float, NULL};
    t[JL_TYPE_IQ4_NL] = (jl_type_traits){"IQ4_NL", QK, sizeof(block_iq4_nl), JL_TYPE_Q8_0, iq4_nl_to_float, NULL, iq4_nl_vec_dot};
    t[JL_TYPE_IQ4_XS] = (jl_type_traits){"IQ4_XS", QK_K, sizeof(block_iq4_xs), JL_TYPE_Q8_K, iq4_xs_to_float, NULL, iq4_xs_vec_dot};
}
