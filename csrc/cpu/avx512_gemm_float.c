/* avx512_gemm_float.c — register-blocked GEMM (AVX-512 F) for F32, F16 and BF16 weights against
 * float32 activations.
 *
 * Batch invariance fixes the arithmetic: every output equals vec_dot's (float_dot in avx512.c)
 * bit for bit. vec_dot runs four FMA chains per output: chain u takes elements i + 16u .. i + 16u
 * + 15 of every full 64-element step, chain 0 also the 16-element vectors after the last full
 * step (the last one masked, zeros in both operands), then ((c0 + c1) + c2) + c3 and one
 * hsum512. The tile here does the same per (weight row, activation row) pair; it only shares
 * each converted weight vector across TILE_COLS activation rows and each activation vector across
 * PANEL_ROWS weight rows. 4 chains x 4 x 3 accumulators would not fit the 32 registers, so a tile
 * walks k twice: chains 0 and 1 (and the tail), whose sum it keeps, then chains 2 and 3 — 24
 * accumulators a pass, 4 weight and 3 activation loads per 12 FMAs. (Measured on Zen 4 against a
 * 3 x 2 tile with all four chains in one pass: +10-15% at k <= 1024, even at k = 3072; cutting k
 * into L1-sized blocks for the two passes cost more in spills than it saved.)
 *
 * The weight rows are read in place (the panel is PANEL_ROWS consecutive rows of W): no repacking,
 * so the GEMM pays from a couple of activation rows and keeps no copy. F16 converts with vcvtph2ps,
 * BF16 by a 16-bit shift, both exact, so the FMAs see vec_dot's operands. */
#include <immintrin.h>
#include <stddef.h>

#include "cpu/avx512_blocks.h"
#include "quant/blocks.h"
#include "quant/traits.h"

#define PANEL_ROWS 4
#define TILE_COLS 3
#define CHAINS 4
#define PASS_CHAINS 2   /* chains per pass over k: 2 x 12 accumulators fit the registers, 4 x 12 would not */

/* acc[r][c][v] += w[r] . x[c] over chain first + v of every full 64-element step */
INLINE void chain_pass(load16_fn load16, int64_t k, const uint8_t *const w[PANEL_ROWS], const uint8_t *x,
                       size_t x_stride, const int nc, const int first, __m512 acc[PANEL_ROWS][TILE_COLS][PASS_CHAINS]) {
    __m512 wv[PANEL_ROWS];
    for (int64_t i = 0; i + 16 * CHAINS <= k; i += 16 * CHAINS) {
        UNROLL for (int v = 0; v < PASS_CHAINS; v++) {
            const int64_t e = i + 16 * (first + v);
            UNROLL for (int r = 0; r < PANEL_ROWS; r++) wv[r] = load16(w[r], e, 0xffff);
            UNROLL for (int c = 0; c < nc; c++) {
                __m512 xv = _mm512_loadu_ps((const float *)(x + c * x_stride) + e);
                __asm__("" : "+v"(xv));  /* one load per activation vector: folded into each FMA it would be PANEL_ROWS */
                UNROLL for (int r = 0; r < PANEL_ROWS; r++) acc[r][c][v] = _mm512_fmadd_ps(wv[r], xv, acc[r][c][v]);
            }
        }
    }
}

/* y[c * y_stride + r] for r < rows, c < nc: weight rows w[r] (k values each) against activation
 * rows x + c * x_stride; nc a compile-time constant in every instance. Chains 0 and 1 run in a
 * first pass over k (chain 0 then takes the tail), chains 2 and 3 in a second. */
INLINE void float_tile(load16_fn load16, int64_t k, const uint8_t *const w[PANEL_ROWS], int rows,
                       const uint8_t *x, size_t x_stride, const int nc, float *y, size_t y_stride) {
    __m512 acc[PANEL_ROWS][TILE_COLS][PASS_CHAINS], head[PANEL_ROWS][TILE_COLS];
    UNROLL for (int r = 0; r < PANEL_ROWS; r++)
        UNROLL for (int c = 0; c < nc; c++)
            UNROLL for (int v = 0; v < PASS_CHAINS; v++) acc[r][c][v] = _mm512_setzero_ps();
    chain_pass(load16, k, w, x, x_stride, nc, 0, acc);
    __m512 wv[PANEL_ROWS];
    for (int64_t i = k / (16 * CHAINS) * (16 * CHAINS); i < k; i += 16) {
        const __mmask16 live = k - i < 16 ? (__mmask16)((1u << (k - i)) - 1) : 0xffff;
        UNROLL for (int r = 0; r < PANEL_ROWS; r++) wv[r] = load16(w[r], i, live);
        UNROLL for (int c = 0; c < nc; c++) {
            const __m512 xv = _mm512_maskz_loadu_ps(live, (const float *)(x + c * x_stride) + i);
            UNROLL for (int r = 0; r < PANEL_ROWS; r++) acc[r][c][0] = _mm512_fmadd_ps(wv[r], xv, acc[r][c][0]);
        }
    }
    UNROLL for (int r = 0; r < PANEL_ROWS; r++)
        UNROLL for (int c = 0; c < nc; c++) {
            head[r][c] = _mm512_add_ps(acc[r][c][0], acc[r][c][1]);
            UNROLL for (int v = 0; v < PASS_CHAINS; v++) acc[r][c][v] = _mm512_setzero_ps();
        }
    chain_pass(load16, k, w, x, x_stride, nc, PASS_CHAINS, acc);
    UNROLL for (int r = 0; r < PANEL_ROWS; r++) {
        if (r >= rows) break;
        UNROLL for (int c = 0; c < nc; c++)  /* vec_dot's ((c0 + c1) + c2) + c3 */
            y[c * y_stride + r] = hsum512_ps(_mm512_add_ps(_mm512_add_ps(head[r][c], acc[r][c][0]), acc[r][c][1]));
    }
}

/* the panel is `rows` (<= PANEL_ROWS) consecutive weight rows of k values; a short last panel
 * points its missing rows at its first, whose results are not stored */
INLINE void float_panel_dot(load16_fn load16, size_t elem_size, int64_t k, const void *panel, int64_t rows,
                            const void *xp, size_t x_stride, int64_t n, float *y, size_t y_stride) {
    const uint8_t *w[PANEL_ROWS];
    for (int r = 0; r < PANEL_ROWS; r++) w[r] = (const uint8_t *)panel + (r < rows ? (size_t)r * k * elem_size : 0);
    const uint8_t *x = xp;
    int64_t c = 0;
    for (; c + TILE_COLS <= n; c += TILE_COLS)
        float_tile(load16, k, w, (int)rows, x + c * x_stride, x_stride, TILE_COLS, y + c * y_stride, y_stride);
    switch (n - c) {  /* TILE_COLS == 3 leaves at most two */
    case 1: float_tile(load16, k, w, (int)rows, x + c * x_stride, x_stride, 1, y + c * y_stride, y_stride); break;
    case 2: float_tile(load16, k, w, (int)rows, x + c * x_stride, x_stride, 2, y + c * y_stride, y_stride); break;
    default: break;
    }
}

#define FLOAT_GEMM(NAME, ELEM)                                                                              \
    static void NAME##_panel_dot(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, \
                                 size_t x_stride, int64_t n, float *restrict y, size_t y_stride) {          \
        float_panel_dot(load16_##NAME, sizeof(ELEM), k, panel, rows, xp, x_stride, n, y, y_stride);          \
    }                                                                                                       \
    static const jl_gemm_kernels NAME##_gemm = {.panel_rows = PANEL_ROWS, .panel_dot = NAME##_panel_dot};

FLOAT_GEMM(f32, float)
FLOAT_GEMM(f16, jl_half)
FLOAT_GEMM(bf16, jl_bf16)

void jl_avx512_gemm_float_register(jl_type_traits *t) {
    t[JL_TYPE_F32].gemm = &f32_gemm;
    t[JL_TYPE_F16].gemm = &f16_gemm;
    t[JL_TYPE_BF16].gemm = &bf16_gemm;
}
