/* fast_exp.h — e^x without calls or branches, so the loops around it vectorize (expf does not). */
#ifndef JANLIB_FAST_EXP_H
#define JANLIB_FAST_EXP_H

#include <stdint.h>
#include <string.h>

/* e^x for x in [-87, 88] (where it is a normal float), within about 1.5 ulp: x = n ln2 + r with
 * |r| <= ln2 / 2, e^r from the Cephes expf polynomial, 2^n written into the exponent bits. */
static inline float jl_exp_normal_range(float x) {
    const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  /* + 1.5 * 2^23 rounds to an integer */
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;   /* ln2 in two parts: n * 0.693359375 is exact */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * r * r + r + 1.0f;
    const int32_t scale_bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return e * scale;
}

#endif
