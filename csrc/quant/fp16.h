/* fp16.h — portable half and bfloat16 conversions (round-to-nearest-even), bit-exact with
 * the F16C instructions the SIMD files use, so scalar and SIMD kernels agree. */
#ifndef JANLIB_FP16_H
#define JANLIB_FP16_H

#include <stdint.h>
#include <string.h>

static inline float jl_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t jl_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float jl_half_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) return jl_bits_to_f32(sign | 0x7f800000u | (mant << 13));  /* inf, nan */
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in float32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return jl_bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t jl_f32_to_half(float f) {
    uint32_t u = jl_f32_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((abs >> 13) & 0x3ff));  /* nan */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  /* rounds to inf */
    if (abs < 0x38800000u) {
        /* result is subnormal (or zero): round abs * 2^24 to an integer, ties to even */
        float v = jl_bits_to_f32(abs) * 16777216.0f;  /* exact: scaling by a power of two */
        uint32_t q = (uint32_t)v;
        float rem = v - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even */
    uint32_t h = ((abs >> 13) - (112u << 10));
    uint32_t dropped = abs & 0x1fff;
    if (dropped > 0x1000 || (dropped == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static inline float jl_bf16_to_f32(uint16_t b) { return jl_bits_to_f32((uint32_t)b << 16); }

#endif
