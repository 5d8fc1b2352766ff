/* ops.c — the elementwise steps of the forward pass: RMSNorm, RoPE, gated activations, softmax.
 *
 * This file gets no ISA flags, so the loops are written for the compiler to vectorize: no libm
 * call inside them (exp is a polynomial here), and sums kept in eight independent lanes, which
 * vectorize without reassociating float additions. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "janlib.h"
#include "fast_exp.h"
#include "ops.h"

#define LANES 8

/* x (n,) <- e^x. x is first clamped to where e^x is a normal float, which every caller
 * tolerates (a sigmoid of -88 is 0 to float precision either way). The clamp is its own loop: GCC will not if-convert a compare feeding arithmetic while
 * float compares may trap, but it does vectorize a clamp whose result is stored. */
static void exp_inplace(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] < -87.0f ? -87.0f : x[i];
        x[i] = v > 88.0f ? 88.0f : v;
    }
    for (int64_t i = 0; i < n; i++) x[i] = jl_exp_normal_range(x[i]);
}

/* Elementwise functions of e^(something) go through a stack block of this many values. */
#define BLOCK 256

static inline float sum_lanes(const float lanes[LANES]) {
    double sum = 0.0;
    for (int j = 0; j < LANES; j++) sum += lanes[j];
    return (float)sum;
}

/* max and sum of x (n,), n >= 1 for the max, in LANES interleaved partials */
static inline float max_of(const float *x, int64_t n) {
    float lanes[LANES];
    for (int j = 0; j < LANES; j++) lanes[j] = x[0];
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
    for (; i < n; i++) lanes[0] = x[i] > lanes[0] ? x[i] : lanes[0];
    float max = lanes[0];
    for (int j = 1; j < LANES; j++) max = lanes[j] > max ? lanes[j] : max;
    return max;
}

static inline float sum_of(const float *x, int64_t n) {
    float lanes[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) lanes[j] += x[i + j];
    for (; i < n; i++) lanes[0] += x[i];
    return sum_lanes(lanes);
}

void jl_rmsnorm(float *y, const float *x, const float *w, int64_t n_rows, int64_t n, float eps) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float lanes[LANES] = {0};
        int64_t i = 0;
        for (; i + LANES <= n; i += LANES)
            for (int j = 0; j < LANES; j++) lanes[j] += xr[i + j] * xr[i + j];
        for (; i < n; i++) lanes[0] += xr[i] * xr[i];
        float scale = 1.0f / sqrtf(sum_lanes(lanes) / (float)n + eps);
        for (i = 0; i < n; i++) yr[i] = xr[i] * scale * w[i];
    }
}

void jl_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n_rows, int64_t n, float eps) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        const float mean = sum_of(xr, n) / (float)n;
        /* the variance from the centred values: no cancellation between E[x^2] and mean^2 */
        float lanes[LANES] = {0};
        int64_t i = 0;
        for (; i + LANES <= n; i += LANES)
            for (int j = 0; j < LANES; j++) lanes[j] += (xr[i + j] - mean) * (xr[i + j] - mean);
        for (; i < n; i++) lanes[0] += (xr[i] - mean) * (xr[i] - mean);
        const float scale = 1.0f / sqrtf(sum_lanes(lanes) / (float)n + eps);
        for (i = 0; i < n; i++) yr[i] = (xr[i] - mean) * scale * w[i];
        if (b)
            for (i = 0; i < n; i++) yr[i] += b[i];
    }
}

void jl_rope_angles(int64_t pos, const double *inv_freq, int n_pairs, float mscale, float *cos_out, float *sin_out) {
    /* double: angles reach n_ctx radians, where a float angle would lose the low bits */
    for (int i = 0; i < n_pairs; i++) {
        double angle = (double)pos * inv_freq[i];
        cos_out[i] = (float)cos(angle) * mscale;
        sin_out[i] = (float)sin(angle) * mscale;
    }
}

void jl_rope(float *x, int n_heads, int head_dim, int n_rot, int layout, const float *cos_a, const float *sin_a) {
    int half = n_rot / 2;
    /* pair i is (x[a], x[a + stride]): adjacent a = 2i, stride 1; neox a = i, stride half */
    int a_step = layout == JL_ROPE_NEOX ? 1 : 2;
    int stride = layout == JL_ROPE_NEOX ? half : 1;
    for (int h = 0; h < n_heads; h++) {
        float *head = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float *a = head + i * a_step, *b = a + stride;
            float x0 = *a, x1 = *b;
            *a = x0 * cos_a[i] - x1 * sin_a[i];
            *b = x0 * sin_a[i] + x1 * cos_a[i];
        }
    }
}

void jl_glu(float *gate, const float *up, int64_t n, int activation) {
    if (activation == JL_FFN_GELU_ERF) {  /* erf has no shortcut through exp: element by element */
        for (int64_t i = 0; i < n; i++) {
            const float g = 0.5f * gate[i] * (1.0f + erff(gate[i] * 0.70710678118654752f));
            gate[i] = up ? g * up[i] : g;
        }
        return;
    }
    float t[BLOCK];
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        float *g = gate + i0;
        /* silu(x) = x / (1 + e^-x); gelu_tanh(x) = 0.5 x (1 + tanh(y)) = x / (1 + e^(-2y)),
         * y = sqrt(2/pi) (x + 0.044715 x^3) */
        if (activation == JL_FFN_GELU_TANH)
            for (int64_t j = 0; j < m; j++) t[j] = -2.0f * 0.7978845608028654f * (g[j] + 0.044715f * g[j] * g[j] * g[j]);
        else
            for (int64_t j = 0; j < m; j++) t[j] = -g[j];
        exp_inplace(t, m);
        if (up)
            for (int64_t j = 0; j < m; j++) g[j] = g[j] / (1.0f + t[j]) * up[i0 + j];
        else
            for (int64_t j = 0; j < m; j++) g[j] = g[j] / (1.0f + t[j]);
    }
}

void jl_softmax(float *x, int64_t n) {
    const float max = max_of(x, n);
    for (int64_t i = 0; i < n; i++) x[i] -= max;
    exp_inplace(x, n);
    const float inv_sum = 1.0f / sum_of(x, n);
    for (int64_t i = 0; i < n; i++) x[i] *= inv_sum;
}

float jl_softmax_block(float *x, int64_t n, int64_t a, int64_t b, float *max, float *sum) {
    const float block_max = max_of(x + a, b - a);
    const float old_max = *max, new_max = block_max > old_max ? block_max : old_max;
    /* old_max - new_max <= 0; -inf before the first block, where there is nothing to rescale */
    const float rescale = old_max == -INFINITY ? 0.0f
                          : jl_exp_normal_range(old_max - new_max < -87.0f ? -87.0f : old_max - new_max);
    for (int64_t i = a; i < b; i++) x[i] -= new_max;
    exp_inplace(x + a, b - a);
    for (int64_t i = 0; i < a; i++) x[i] = 0.0f;
    for (int64_t i = b; i < n; i++) x[i] = 0.0f;
    *max = new_max;
    *sum = *sum * rescale + sum_of(x + a, b - a);
    return rescale;
}

void jl_softcap(float *x, int64_t n, float cap) {
    /* cap * tanh(y) = cap * (2 / (1 + e^(-2y)) - 1), y = x / cap */
    float t[BLOCK];
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        for (int64_t j = 0; j < m; j++) t[j] = -2.0f * x[i0 + j] / cap;
        exp_inplace(t, m);
        for (int64_t j = 0; j < m; j++) x[i0 + j] = cap * (2.0f / (1.0f + t[j]) - 1.0f);
    }
}
