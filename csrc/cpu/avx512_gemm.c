/* avx512_gemm.c — register-blocked int8 GEMM (AVX-512 VNNI) for the legacy 4-, 5- and 8-bit
 * types and the K-quants.
 *
 * Batch invariance fixes the arithmetic: every output must equal vec_dot's (avx512.c) bit for
 * bit, so the GEMM computes the same integer block sums and the same float steps in the same
 * lanes. vec_dot leaves a group of 16 blocks as one int32 lane per block, lanes in tree_order,
 * then per group  acc = fma(sums, d * dx, acc)  (and  acc = fma(m, s, acc)  for the types with
 * a minimum), and per output hsum512 of acc plus a short last group's chain (the tail,
 * avx512_blocks.h). Here the data are laid out so that the
 * lane-per-block sums come straight out of vpdpbusd: step t of a group holds bytes 4t .. 4t + 3
 * of each of its 16 blocks (lane L = block tree_order[L]), so eight vpdpbusd give the block
 * sums with no unpacking, shuffling or gathering in the inner loop.
 *
 * Weights are repacked PANEL_ROWS rows at a time (unsigned q + offset; the 4-bit types keep two
 * steps per byte, step v in the low nibble and step v + steps / 2 in the high one, and their block
 * scales as fp16, so a packed Q4 panel is about the size of the file's blocks and can be kept per
 * tensor, then widened to bytes a strip at a time for many rows); an activation row once per call,
 * with its block scales per lane and, for the types with an offset, -offset * sum(qx) per block as
 * the accumulator's start. The microkernel holds
 * PANEL_ROWS x TILE_COLS int32 block sums in registers: per step 4 weight and up to 4 activation
 * loads feed 16 vpdpbusd. A row's tail (LEGACY_TAIL_BLOCKS, avx512_blocks.h) has its own layout
 * whose lanes are the tile's outputs, so its chain is computed for all of them at once. */
#include <immintrin.h>
#include <assert.h>
#include <stddef.h>
#include <string.h>

#include "cpu/avx512_blocks.h"
#include "quant/blocks.h"
#include "quant/traits.h"

#define PANEL_ROWS 4
#define TILE_COLS 4
#define GROUP 16                           /* blocks per lane group */
#define STEPS (QK / 4)                     /* vpdpbusd steps per block */
#define STEP_BYTES 64                      /* one step of a group: 4 bytes of each of 16 blocks */

/* 16 block scales of a row: fp16 in the compact nibble layout, floats in the byte layout (no
 * conversion in the tiles of many rows) */
INLINE size_t scale_bytes(int nibbles) { return nibbles ? 32 : 64; }

/* weight vectors per row and group: nibble-packed types hold two steps in one */
INLINE int w_vecs(int nibbles) { return nibbles ? STEPS / 2 : STEPS; }
/* per group of a panel: w_vecs x PANEL_ROWS quant vectors, then d (and m) per row */
INLINE size_t w_group_bytes(int nibbles, int has_min) {
    return (size_t)w_vecs(nibbles) * PANEL_ROWS * STEP_BYTES + PANEL_ROWS * (1 + has_min) * scale_bytes(nibbles);
}
/* per group of an activation row: STEPS quant vectors, dx, then s (types with a minimum) or the
 * offset correction (the others) */
#define X_GROUP_BYTES ((STEPS + 2) * STEP_BYTES)

static int64_t n_groups(int64_t k) { return (k / QK + GROUP - 1) / GROUP; }

/* The tail's layouts. A panel's: per block b and step t the panel rows' dword t (16 bytes), then
 * per block the rows' d (and m) as floats. An activation row's: per block slot (4) its 8 dwords,
 * then its 4 dx, then its 4 s (types with a minimum) or -offset * sum(qx) (the others). In a tile, lane
 * 4c + r is output (r, c): a broadcast of 16 weight bytes and a permute of the columns' dwords
 * feed one vpdpbusd for all 16 outputs. */
#define TAIL_BLOCKS LEGACY_TAIL_BLOCKS
INLINE size_t w_tail_quants(int tail) { return (size_t)tail * STEPS * 16; }
INLINE size_t w_tail_bytes(int tail, int has_min) { return w_tail_quants(tail) + (size_t)tail * 16 * (1 + has_min); }
#define X_TAIL_QUANTS (TAIL_BLOCKS * QK)
#define X_TAIL_BYTES ((X_TAIL_QUANTS + 2 * 16 + 63) / 64 * 64)

/* blocks in group g */
static int group_blocks(int64_t k, int64_t g) { return k / QK - g * GROUP < GROUP ? (int)(k / QK - g * GROUP) : GROUP; }

/* the groups before the tail (all of them when there is none) */
static int64_t full_groups(int64_t k) { return n_groups(k) - (legacy_tail_blocks(k / QK) > 0); }

/* A panel is its full groups in order, then the tail's layout. */
INLINE size_t panel_bytes_legacy(int nibbles, int has_min, int64_t k) {
    return (size_t)full_groups(k) * w_group_bytes(nibbles, has_min) + w_tail_bytes(legacy_tail_blocks(k / QK), has_min);
}

/* ---- packing ----------------------------------------------------------------------------- */

INLINE void pack_w_legacy(legacy_pair_fn pair, size_t type_size, int nibbles, int has_min, const uint8_t *w,
                          size_t w_row_bytes, int64_t rows, int64_t k, uint8_t *panel) {
    const int64_t groups = full_groups(k);
    const int tail = legacy_tail_blocks(k / QK), vecs = w_vecs(nibbles);
    const __m512i order = _mm512_loadu_si512(tree_order);
    const __m512i block_dwords = _mm512_mullo_epi32(order, _mm512_set1_epi32(QK / 4));
    const size_t sb = scale_bytes(nibbles);
    for (int64_t g = 0; g < groups; g++) {
        uint8_t *pg = panel + g * w_group_bytes(nibbles, has_min);
        const int n = group_blocks(k, g);
        const __mmask16 live = _mm512_cmplt_epi32_mask(order, _mm512_set1_epi32(n));
        uint8_t *scales = pg + (size_t)vecs * PANEL_ROWS * STEP_BYTES;  /* d of each row, then m */
        for (int r = 0; r < PANEL_ROWS; r++) {
            if (r >= rows) {
                for (int v = 0; v < vecs; v++) _mm512_store_si512(pg + (v * PANEL_ROWS + r) * STEP_BYTES, _mm512_setzero_si512());
                memset(scales + r * sb, 0, sb);
                if (has_min) memset(scales + (PANEL_ROWS + r) * sb, 0, sb);
                continue;
            }
            const uint8_t *wg = w + r * w_row_bytes + g * GROUP * type_size;
            /* the group's unsigned quants block by block, then transposed to steps by gathers */
            uint8_t u[(GROUP + 1) * QK] __attribute__((aligned(64)));
            for (int j = 0; j < n; j += 2) {
                const uint8_t *a = wg + j * type_size, *b = j + 1 < n ? a + type_size : a;
                _mm512_storeu_si512(u + j * QK, pair(a, b));
            }
            __m512i step[STEPS];
            for (int t = 0; t < STEPS; t++)
                step[t] = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live,
                                                      _mm512_add_epi32(block_dwords, _mm512_set1_epi32(t)), u, 4);
            for (int v = 0; v < vecs; v++)  /* values < 16 shift into the high nibble without crossing bytes */
                _mm512_store_si512(pg + (v * PANEL_ROWS + r) * STEP_BYTES,
                                   nibbles ? _mm512_or_si512(step[v], _mm512_slli_epi16(step[v + vecs], 4)) : step[v]);
            const __m512i dm = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live,
                                                           _mm512_mullo_epi32(order, _mm512_set1_epi32((int)type_size)), wg, 1);
            for (int hi = 0; hi <= has_min; hi++) {
                uint8_t *at = scales + (hi * PANEL_ROWS + r) * sb;
                if (nibbles) _mm256_store_si256((__m256i *)at, halves_of(dm, hi));
                else _mm512_store_ps(at, halves_to_ps(dm, hi));
            }
        }
    }
    if (!tail) return;
    uint8_t *pt = panel + groups * w_group_bytes(nibbles, has_min);
    float *dm = (float *)(pt + w_tail_quants(tail));  /* (1 + has_min, tail, PANEL_ROWS) */
    memset(pt, 0, w_tail_bytes(tail, has_min));
    for (int r = 0; r < rows && r < PANEL_ROWS; r++) {
        const uint8_t *wt = w + r * w_row_bytes + groups * GROUP * type_size;
        uint8_t u[TAIL_BLOCKS * QK] __attribute__((aligned(64)));
        for (int j = 0; j < tail; j += 2)
            _mm512_store_si512(u + j * QK, pair(wt + j * type_size, wt + (j + 1 < tail ? j + 1 : j) * type_size));
        for (int b = 0; b < tail; b++) {
            for (int t = 0; t < STEPS; t++) memcpy(pt + (b * STEPS + t) * 16 + r * 4, u + b * QK + t * 4, 4);
            dm[b * PANEL_ROWS + r] = load_half(wt + b * type_size);
            if (has_min) dm[(tail + b) * PANEL_ROWS + r] = load_half(wt + b * type_size + 2);
        }
    }
}

/* xq: one row of Q8_1 (has_min) or Q8_0 blocks */
INLINE void pack_x_legacy(int offset, int has_min, const uint8_t *xq, int64_t k, uint8_t *xp) {
    const size_t x_size = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const size_t x_qs = has_min ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    const int64_t groups = full_groups(k);
    const int tail = legacy_tail_blocks(k / QK);
    const __m512i order = _mm512_loadu_si512(tree_order);
    const __m512i block_bytes = _mm512_mullo_epi32(order, _mm512_set1_epi32((int)x_size));
    for (int64_t g = 0; g < groups; g++) {
        uint8_t *pg = xp + g * X_GROUP_BYTES;
        const uint8_t *xg = xq + g * GROUP * x_size;
        const __mmask16 live = _mm512_cmplt_epi32_mask(order, _mm512_set1_epi32(group_blocks(k, g)));
        __m512i sum = _mm512_setzero_si512();
        for (int t = 0; t < STEPS; t++) {
            const __m512i at = _mm512_set1_epi32((int)x_qs + 4 * t);
            const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, _mm512_add_epi32(block_bytes, at), xg, 1);
            _mm512_store_si512(pg + t * STEP_BYTES, v);
            sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
        }
        const __m512i ds = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, block_bytes, xg, 1);
        _mm512_store_ps(pg + STEPS * STEP_BYTES, halves_to_ps(ds, 0));
        if (has_min) _mm512_store_ps(pg + (STEPS + 1) * STEP_BYTES, halves_to_ps(ds, 1));
        else _mm512_store_si512(pg + (STEPS + 1) * STEP_BYTES, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-offset)));
    }
    if (!tail) return;
    uint8_t *pt = xp + groups * X_GROUP_BYTES;
    const uint8_t *xt = xq + groups * GROUP * x_size;
    float *dx = (float *)(pt + X_TAIL_QUANTS), *s = dx + 4;
    int32_t *start = (int32_t *)s;
    memset(pt, 0, X_TAIL_BYTES);
    for (int b = 0; b < tail; b++) {
        const uint8_t *xb = xt + b * x_size;
        memcpy(pt + b * QK, xb + x_qs, QK);
        dx[b] = load_half(xb);
        if (has_min) s[b] = load_half(xb + 2);
        else {
            int sum = 0;
            for (int i = 0; i < QK; i++) sum += (int8_t)xb[x_qs + i];
            start[b] = -offset * sum;
        }
    }
}

/* ---- the microkernel ------------------------------------------------------------------- */

/* sums[r][c] += the int32 dot products of a group's steps (the integer sums do not depend on the
 * order of the steps) */
INLINE void step_sums(int nibbles, const uint8_t *pg, const uint8_t *xg, size_t x_stride, const int nc,
                      __m512i sums[PANEL_ROWS][TILE_COLS]) {
    const int vecs = w_vecs(nibbles);
    const __m512i low = _mm512_set1_epi8(0x0F);
    UNROLL for (int v = 0; v < vecs; v++)
        UNROLL for (int h = 0; h <= nibbles; h++) {  /* step v + h * vecs: one nibble at a time keeps 4 weight registers live, not 8 */
            __m512i wv[PANEL_ROWS];
            UNROLL for (int r = 0; r < PANEL_ROWS; r++) {
                const __m512i p = _mm512_load_si512(pg + (v * PANEL_ROWS + r) * STEP_BYTES);
                wv[r] = !nibbles ? p : _mm512_and_si512(h ? _mm512_srli_epi16(p, 4) : p, low);
            }
            UNROLL for (int c = 0; c < nc; c++) {
                const __m512i xv = _mm512_load_si512(xg + c * x_stride + (v + h * vecs) * STEP_BYTES);
                UNROLL for (int r = 0; r < PANEL_ROWS; r++) sums[r][c] = _mm512_dpbusd_epi32(sums[r][c], wv[r], xv);
            }
        }
}

/* The levels of hsum512_ps's pairwise tree (lane i + 8, + 4, + 2, + 1) on whole vectors, each
 * folding two vectors' partial sums into one: */
/* 256-bit halves: a's lanes i + 8 into lanes 0-7, b's into 8-15 */
INLINE __m512 fold8_ps(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
/* two 256-bit halves each of a and b: + 4 into 128-bit chunks a.lo, a.hi, b.lo, b.hi */
INLINE __m512 fold4_ps(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}
/* per 128-bit chunk: + 2, a's pairs in lanes 0-1, b's in 2-3 */
INLINE __m512 fold2_ps(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
/* per 128-bit chunk: + 1, a's in lanes 0-1, b's in 2-3 */
INLINE __m512 fold1_ps(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* hsum512_ps of 16 vectors at once, its adds four levels of whole vectors instead of 16 scalar
 * chains: v[4i + j] lands in lane 4j + i */
INLINE __m512 hsum16_ps(const __m512 v[16]) {
    __m512 halves[8], quarters[4];
    UNROLL for (int p = 0; p < 8; p++) halves[p] = fold8_ps(v[2 * p], v[2 * p + 1]);
    UNROLL for (int q = 0; q < 4; q++) quarters[q] = fold4_ps(halves[2 * q], halves[2 * q + 1]);
    return fold1_ps(fold2_ps(quarters[0], quarters[1]), fold2_ps(quarters[2], quarters[3]));
}

/* hsum256_ps of the eight 256-bit halves of h[0..3] at once (the levels after hsum512_ps's first):
 * half j (h[j / 2], low half first) lands in lane 4 (j % 4) + j / 4 */
INLINE __m512 hsum8_halves_ps(const __m512 h[4]) {
    const __m512 pairs = fold2_ps(fold4_ps(h[0], h[1]), fold4_ps(h[2], h[3]));
    return fold1_ps(pairs, pairs);
}

INLINE __m512 load_scales(int nibbles, const uint8_t *at) {
    return nibbles ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)at)) : _mm512_load_ps(at);
}

/* The tail's chain for the tile's outputs, lane 4c + r for output (r, c) (columns past nc repeat
 * column 0); a panel's n tail blocks at pt, the columns' at xt */
INLINE __m512 tail_legacy(int has_min, int n, const uint8_t *pt, const uint8_t *xt, size_t x_stride, const int nc) {
    const uint8_t *col[TILE_COLS];
    UNROLL for (int c = 0; c < TILE_COLS; c++) col[c] = xt + (c < nc ? c : 0) * x_stride;
    /* each column's 4 dx in 128-bit chunk c, and its 4 s or starts */
    __m512i dx = _mm512_castsi128_si512(_mm_load_si128((const __m128i *)(col[0] + X_TAIL_QUANTS)));
    __m512i sx = _mm512_castsi128_si512(_mm_load_si128((const __m128i *)(col[0] + X_TAIL_QUANTS + 16)));
    UNROLL for (int c = 1; c < TILE_COLS; c++) {
        dx = _mm512_inserti32x4(dx, _mm_load_si128((const __m128i *)(col[c] + X_TAIL_QUANTS)), c);
        sx = _mm512_inserti32x4(sx, _mm_load_si128((const __m128i *)(col[c] + X_TAIL_QUANTS + 16)), c);
    }
    const __m512i chunk = _mm512_set_epi32(12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0);
    const __m512i pair_chunk = _mm512_set_epi32(24, 24, 24, 24, 16, 16, 16, 16, 8, 8, 8, 8, 0, 0, 0, 0);
    const float *dm = (const float *)(pt + w_tail_quants(n));
    __m512 chain = _mm512_setzero_ps();
    for (int b = 0; b < n; b++) {
        const __m512i of_block = _mm512_add_epi32(chunk, _mm512_set1_epi32(b));  /* chunk c's lane b */
        /* columns 0, 1 and 2, 3 of block b as dwords 0-7 | 8-15 */
        const __m512i x01 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256((const __m256i *)(col[0] + b * QK))),
                                               _mm256_load_si256((const __m256i *)(col[1] + b * QK)), 1);
        const __m512i x23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256((const __m256i *)(col[2] + b * QK))),
                                               _mm256_load_si256((const __m256i *)(col[3] + b * QK)), 1);
        __m512i sum = has_min ? _mm512_setzero_si512() : _mm512_permutexvar_epi32(of_block, sx);
        UNROLL for (int t = 0; t < STEPS; t++) {
            const __m512i w = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(pt + (b * STEPS + t) * 16)));
            const __m512i x = _mm512_permutex2var_epi32(x01, _mm512_add_epi32(pair_chunk, _mm512_set1_epi32(t)), x23);
            sum = _mm512_dpbusd_epi32(sum, w, x);
        }
        const __m512 d = _mm512_broadcast_f32x4(_mm_load_ps(dm + b * PANEL_ROWS));
        chain = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, _mm512_permutexvar_ps(of_block, _mm512_castsi512_ps(dx))), chain);
        if (has_min)
            chain = _mm512_fmadd_ps(_mm512_broadcast_f32x4(_mm_load_ps(dm + (n + b) * PANEL_ROWS)),
                                    _mm512_permutexvar_ps(of_block, _mm512_castsi512_ps(sx)), chain);
    }
    return chain;
}

/* PANEL_ROWS x nc outputs; vec_dot's float steps per group, in its order, then its tail */
INLINE void tile_legacy(int nibbles, int has_min, int64_t groups, int tail, const uint8_t *panel, const uint8_t *xp,
                        size_t x_stride, const int nc, int64_t rows, float *y, size_t y_stride) {
    __m512 acc[PANEL_ROWS][TILE_COLS];
    UNROLL for (int r = 0; r < PANEL_ROWS; r++)
        UNROLL for (int c = 0; c < nc; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *pg = panel + g * w_group_bytes(nibbles, has_min), *xg = xp + g * X_GROUP_BYTES;
        __m512i sums[PANEL_ROWS][TILE_COLS];
        UNROLL for (int c = 0; c < nc; c++) {
            const __m512i start = has_min ? _mm512_setzero_si512()
                                          : _mm512_load_si512(xg + c * x_stride + (STEPS + 1) * STEP_BYTES);
            UNROLL for (int r = 0; r < PANEL_ROWS; r++) sums[r][c] = start;
        }
        step_sums(nibbles, pg, xg, x_stride, nc, sums);
        const uint8_t *scales = pg + (size_t)w_vecs(nibbles) * PANEL_ROWS * STEP_BYTES;
        __m512 d[PANEL_ROWS], m[PANEL_ROWS];
        UNROLL for (int r = 0; r < PANEL_ROWS; r++) {
            d[r] = load_scales(nibbles, scales + r * scale_bytes(nibbles));
            if (has_min) m[r] = load_scales(nibbles, scales + (PANEL_ROWS + r) * scale_bytes(nibbles));
        }
        UNROLL for (int c = 0; c < nc; c++) {
            const __m512 dx = _mm512_load_ps(xg + c * x_stride + STEPS * STEP_BYTES);
            UNROLL for (int r = 0; r < PANEL_ROWS; r++) {
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][c]), _mm512_mul_ps(d[r], dx), acc[r][c]);
                if (has_min)
                    acc[r][c] = _mm512_fmadd_ps(m[r], _mm512_load_ps(xg + c * x_stride + (STEPS + 1) * STEP_BYTES), acc[r][c]);
            }
        }
    }
    const __m512 chain = tail ? tail_legacy(has_min, tail, panel + groups * w_group_bytes(nibbles, has_min),
                                            xp + groups * X_GROUP_BYTES, x_stride, nc)
                              : _mm512_setzero_ps();
    if (nc == 1) {  /* one column: 4 scalar trees cost less than the 16-wide one */
        float t[16];
        _mm512_storeu_ps(t, chain);
        UNROLL for (int r = 0; r < PANEL_ROWS; r++)
            if (r < rows) y[r] = hsum512_ps(acc[r][0]) + t[r];
        return;
    }
    __m512 v[PANEL_ROWS * TILE_COLS];
    UNROLL for (int r = 0; r < PANEL_ROWS; r++)
        UNROLL for (int c = 0; c < TILE_COLS; c++) v[r * TILE_COLS + c] = c < nc ? acc[r][c] : _mm512_setzero_ps();
    const __m512 sums = _mm512_add_ps(hsum16_ps(v), chain);  /* lane c * 4 + r: output (r, c) */
    const __mmask8 live_rows = (__mmask8)((1u << (rows < PANEL_ROWS ? rows : PANEL_ROWS)) - 1);
    UNROLL for (int c = 0; c < nc; c++) _mm_mask_storeu_ps(y + c * y_stride, live_rows, _mm512_extractf32x4_ps(sums, c));
}

INLINE void panel_dot_legacy(int nibbles, int has_min, int64_t k, const uint8_t *panel, int64_t rows, const uint8_t *xp,
                             size_t x_stride, int64_t n, float *y, size_t y_stride) {
    const int64_t groups = full_groups(k);
    const int tail = legacy_tail_blocks(k / QK);
    int64_t c = 0;
    for (; c + TILE_COLS <= n; c += TILE_COLS)
        tile_legacy(nibbles, has_min, groups, tail, panel, xp + c * x_stride, x_stride, TILE_COLS, rows, y + c * y_stride,
                    y_stride);
    switch (n - c) {
    case 1: tile_legacy(nibbles, has_min, groups, tail, panel, xp + c * x_stride, x_stride, 1, rows, y + c * y_stride, y_stride); break;
    case 2: tile_legacy(nibbles, has_min, groups, tail, panel, xp + c * x_stride, x_stride, 2, rows, y + c * y_stride, y_stride); break;
    case 3: tile_legacy(nibbles, has_min, groups, tail, panel, xp + c * x_stride, x_stride, 3, rows, y + c * y_stride, y_stride); break;
    default: break;
    }
}

/* A nibble panel widened to one byte per value (the 5-bit types' layout) for many activation
 * rows, whose tiles then reuse it with no unpacking; the tail is bytes already. */
INLINE void widen_legacy(int has_min, int64_t k, const uint8_t *panel, uint8_t *wide) {
    const int64_t groups = full_groups(k);
    const int vecs = w_vecs(1);
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *src = panel + g * w_group_bytes(1, has_min);
        uint8_t *dst = wide + g * w_group_bytes(0, has_min);
        for (int v = 0; v < vecs; v++)
            for (int r = 0; r < PANEL_ROWS; r++) {
                const __m512i p = _mm512_load_si512(src + (v * PANEL_ROWS + r) * STEP_BYTES);
                _mm512_store_si512(dst + (v * PANEL_ROWS + r) * STEP_BYTES, _mm512_and_si512(p, low));
                _mm512_store_si512(dst + ((v + vecs) * PANEL_ROWS + r) * STEP_BYTES,
                                   _mm512_and_si512(_mm512_srli_epi16(p, 4), low));
            }
        const uint8_t *halves = src + (size_t)vecs * PANEL_ROWS * STEP_BYTES;
        float *floats = (float *)(dst + (size_t)STEPS * PANEL_ROWS * STEP_BYTES);
        for (int i = 0; i < PANEL_ROWS * (1 + has_min); i++)
            _mm512_store_ps(floats + 16 * i, load_scales(1, halves + i * scale_bytes(1)));
    }
    if (legacy_tail_blocks(k / QK))
        memcpy(wide + groups * w_group_bytes(0, has_min), panel + groups * w_group_bytes(1, has_min),
               w_tail_bytes(legacy_tail_blocks(k / QK), has_min));
}

/* ---- K-quants -------------------------------------------------------------------------- *
 * vec_dot's K-quant sums are 16 int32 lanes per super-block: lane l of chunk j (values 64j ..
 * 64j + 63) takes the four products of values 64j + 4l .. 64j + 4l + 3 (a quarter of group
 * 4j + l / 4) times that group's int16 scale, through vpmaddubsw + vpdpwssd. The GEMM keeps those
 * integer lane sums but gets them with a third fewer multiplies: the bytes of chunks 2h and
 * 2h + 1 are interleaved by 16-bit words into two vectors A and B (A's dword l = word 2l of both
 * chunks, B's = word 2l + 1 of both), so vpmaddubsw(A) + vpmaddubsw(B) leaves the whole quarter
 * of chunk 2h in word 2l and of chunk 2h + 1 in word 2l + 1 (|quarter| <= 4 * 63 * 127 fits
 * int16), and one vpdpwssd against the interleaved scales adds both to lane l. Integer sums do
 * not depend on the order of their terms, so the lanes, and vec_dot's float steps per super-block
 * after them, are vec_dot's. Weights and activation rows are both packed so (the weights with
 * their scales interleaved once per panel, not per tile); the minimum terms of two columns share
 * a zmm, lanes 0-7 and 8-15 each the ymm that vec_dot keeps. */

#define KQ_PANEL_ROWS 2

typedef struct {
    __m512i q[4];                 /* per h: A, B of chunks 2h, 2h + 1, values unsigned (q + offset) */
    __m512i sc[2];                /* per h: the int16 scales of A / B's words */
    __m256i mn, corr;             /* per group of 16: minimum, -offset * scale */
    float d, dmin;
    uint8_t pad[56];
} kquant_packed;
static_assert(sizeof(kquant_packed) % 64 == 0, "kquant_packed keeps 64-byte alignment");

typedef struct {
    __m512i q[4];                 /* the Q8_K quants interleaved as the weights' */
    __m256i bsums;
    float d;
    uint8_t pad[28];
} kquant_x_packed;
static_assert(sizeof(kquant_x_packed) % 64 == 0, "kquant_x_packed keeps 64-byte alignment");

/* words 2l of a and b into dword l of *lo, words 2l + 1 into dword l of *hi */
INLINE void interleave_words(__m512i a, __m512i b, __m512i *lo, __m512i *hi) {
    *lo = _mm512_mask_blend_epi16(0xAAAAAAAA, a, _mm512_slli_epi32(b, 16));
    *hi = _mm512_mask_blend_epi16(0xAAAAAAAA, _mm512_srli_epi32(a, 16), b);
}

INLINE void pack_w_kquant(kquant_unpack_fn unpack, size_t type_size, int offset, const uint8_t *w, size_t w_row_bytes,
                          int64_t rows, int64_t k, kquant_packed *panel) {
    const int64_t nsb = k / QK_K;
    for (int64_t i = 0; i < nsb; i++)
        for (int r = 0; r < KQ_PANEL_ROWS; r++) {
            kquant_packed *p = panel + i * KQ_PANEL_ROWS + r;
            if (r >= rows) {
                memset(p, 0, sizeof *p);
                continue;
            }
            kquant_unpacked u;
            unpack(w + r * w_row_bytes + i * type_size, &u);
            UNROLL for (int h = 0; h < 2; h++) {
                interleave_words(u.q[2 * h], u.q[2 * h + 1], &p->q[2 * h], &p->q[2 * h + 1]);
                /* word 2l of chunk_scales(j) is the scale of lane l's quarter in chunk j */
                p->sc[h] = _mm512_mask_blend_epi16(0xAAAAAAAA, chunk_scales(u.sc, 2 * h), chunk_scales(u.sc, 2 * h + 1));
            }
            p->mn = u.mn;
            p->corr = _mm256_mullo_epi16(u.sc, _mm256_set1_epi16((short)-offset));
            p->d = u.d;
            p->dmin = u.dmin;
        }
}

/* xq: one row of Q8_K blocks */
static void pack_x_kquant(const void *restrict xq, int64_t k, void *restrict xp) {
    const block_q8_K *bx = xq;
    kquant_x_packed *p = xp;
    for (int64_t i = 0; i < k / QK_K; i++) {
        UNROLL for (int h = 0; h < 2; h++)
            interleave_words(_mm512_loadu_si512(bx[i].qs + 128 * h), _mm512_loadu_si512(bx[i].qs + 128 * h + 64),
                             &p[i].q[2 * h], &p[i].q[2 * h + 1]);
        p[i].bsums = _mm256_loadu_si256((const __m256i *)bx[i].bsums);
        p[i].d = bx[i].d;
        memset(p[i].pad, 0, sizeof p[i].pad);
    }
}

static size_t x_bytes_kquant(int64_t k) { return (size_t)(k / QK_K) * sizeof(kquant_x_packed); }

/* KQ_PANEL_ROWS x nc outputs against packed Q8_K rows; vec_dot's steps per super-block, in its order */
INLINE void tile_kquant(int offset, int has_min, int64_t nsb, const kquant_packed *panel, const uint8_t *x,
                        size_t x_stride, const int nc, int64_t rows, float *y, size_t y_stride) {
    enum { PAIRS = (TILE_COLS + 1) / 2 };
    const int np = (nc + 1) / 2;
    __m512 acc[KQ_PANEL_ROWS][TILE_COLS];
    __m512 acc_min[KQ_PANEL_ROWS][PAIRS];  /* columns 2p (lanes 0-7) and 2p + 1 (lanes 8-15) */
    UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++) {
        UNROLL for (int c = 0; c < nc; c++) acc[r][c] = _mm512_setzero_ps();
        UNROLL for (int q = 0; q < np; q++) acc_min[r][q] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < nsb; i++) {
        const kquant_packed *p = panel + i * KQ_PANEL_ROWS;
        const kquant_x_packed *bx[TILE_COLS];
        __m512i sum[KQ_PANEL_ROWS][TILE_COLS];
        UNROLL for (int c = 0; c < nc; c++) {
            bx[c] = (const kquant_x_packed *)(x + c * x_stride) + i;
            UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++)
                sum[r][c] = offset ? _mm512_zextsi256_si512(_mm256_madd_epi16(bx[c]->bsums, p[r].corr)) : _mm512_setzero_si512();
        }
        UNROLL for (int h = 0; h < 2; h++) {
            __m512i wa[KQ_PANEL_ROWS], wb[KQ_PANEL_ROWS];
            UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++) {
                wa[r] = _mm512_load_si512(&p[r].q[2 * h]);
                wb[r] = _mm512_load_si512(&p[r].q[2 * h + 1]);
            }
            UNROLL for (int c = 0; c < nc; c++) {
                const __m512i xa = _mm512_load_si512(&bx[c]->q[2 * h]), xb = _mm512_load_si512(&bx[c]->q[2 * h + 1]);
                UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++) {
                    const __m512i quarters = _mm512_add_epi16(_mm512_maddubs_epi16(wa[r], xa), _mm512_maddubs_epi16(wb[r], xb));
                    sum[r][c] = _mm512_dpwssd_epi32(sum[r][c], quarters, _mm512_load_si512(&p[r].sc[h]));
                }
            }
        }
        __m512 dx[TILE_COLS];
        UNROLL for (int c = 0; c < nc; c++) dx[c] = _mm512_set1_ps(bx[c]->d);
        UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++) {
            const __m512 d = _mm512_set1_ps(p[r].d);  /* d * dx in every lane: vec_dot's scalar product */
            UNROLL for (int c = 0; c < nc; c++)
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r][c]), _mm512_mul_ps(d, dx[c]), acc[r][c]);
        }
        if (has_min)
            UNROLL for (int q = 0; q < np; q++) {
                const int two = 2 * q + 1 < nc;
                const __m512i bsums = two ? _mm512_inserti64x4(_mm512_castsi256_si512(bx[2 * q]->bsums), bx[2 * q + 1]->bsums, 1)
                                          : _mm512_zextsi256_si512(bx[2 * q]->bsums);
                const __m512 dxs = two ? _mm512_mask_blend_ps(0xFF00, dx[2 * q], dx[2 * q + 1]) : dx[2 * q];
                UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++) {
                    const __m512i mins = _mm512_madd_epi16(bsums, _mm512_broadcast_i64x4(p[r].mn));
                    acc_min[r][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(_mm512_set1_ps(p[r].dmin), dxs), acc_min[r][q]);
                }
            }
    }
    /* output (r, c) is half 4r + c of both reductions: lane 4c + r */
    static_assert(KQ_PANEL_ROWS * TILE_COLS == 8, "the reductions take eight outputs");
    __m512 halves[4];
    UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++)
        UNROLL for (int q = 0; q < PAIRS; q++)
            halves[2 * r + q] = fold8_ps(2 * q < nc ? acc[r][2 * q] : _mm512_setzero_ps(),
                                         2 * q + 1 < nc ? acc[r][2 * q + 1] : _mm512_setzero_ps());
    __m512 sums = hsum8_halves_ps(halves);
    if (has_min) {
        UNROLL for (int r = 0; r < KQ_PANEL_ROWS; r++)
            UNROLL for (int q = 0; q < PAIRS; q++) halves[2 * r + q] = q < np ? acc_min[r][q] : _mm512_setzero_ps();
        sums = _mm512_sub_ps(sums, hsum8_halves_ps(halves));
    }
    const __mmask8 live_rows = (__mmask8)((1u << (rows < KQ_PANEL_ROWS ? rows : KQ_PANEL_ROWS)) - 1);
    UNROLL for (int c = 0; c < nc; c++) _mm_mask_storeu_ps(y + c * y_stride, live_rows, _mm512_extractf32x4_ps(sums, c));
}

INLINE void panel_dot_kquant(int offset, int has_min, int64_t k, const kquant_packed *panel, int64_t rows,
                             const uint8_t *x, size_t x_stride, int64_t n, float *y, size_t y_stride) {
    const int64_t nsb = k / QK_K;
    int64_t c = 0;
    for (; c + TILE_COLS <= n; c += TILE_COLS)
        tile_kquant(offset, has_min, nsb, panel, x + c * x_stride, x_stride, TILE_COLS, rows, y + c * y_stride, y_stride);
    switch (n - c) {
    case 1: tile_kquant(offset, has_min, nsb, panel, x + c * x_stride, x_stride, 1, rows, y + c * y_stride, y_stride); break;
    case 2: tile_kquant(offset, has_min, nsb, panel, x + c * x_stride, x_stride, 2, rows, y + c * y_stride, y_stride); break;
    case 3: tile_kquant(offset, has_min, nsb, panel, x + c * x_stride, x_stride, 3, rows, y + c * y_stride, y_stride); break;
    default: break;
    }
}

static size_t panel_bytes_kquant(int64_t k) { return (size_t)(k / QK_K) * KQ_PANEL_ROWS * sizeof(kquant_packed); }

#define KQUANT_GEMM(NAME, OFFSET, HAS_MIN)                                                                   \
    static void NAME##_pack_w(const void *restrict w, size_t w_row_bytes, int64_t rows, int64_t k,           \
                              void *restrict panel) {                                                        \
        pack_w_kquant(unpack_##NAME, sizeof(block_##NAME), OFFSET, w, w_row_bytes, rows, k, panel);          \
    }                                                                                                        \
    static void NAME##_panel_dot(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, \
                                 size_t x_stride, int64_t n, float *restrict y, size_t y_stride) {          \
        panel_dot_kquant(OFFSET, HAS_MIN, k, panel, rows, xp, x_stride, n, y, y_stride);                     \
    }                                                                                                        \
    static const jl_gemm_kernels NAME##_gemm = {                                                             \
        KQ_PANEL_ROWS, panel_bytes_kquant, x_bytes_kquant, NAME##_pack_w, pack_x_kquant, NAME##_panel_dot, 0,                   \
    };

KQUANT_GEMM(q2_K, 0, 1)
KQUANT_GEMM(q3_K, 4, 0)
KQUANT_GEMM(q4_K, 0, 1)
KQUANT_GEMM(q5_K, 0, 1)
KQUANT_GEMM(q6_K, 32, 0)

/* ---- the table ------------------------------------------------------------------------- */

static size_t x_bytes_legacy(int64_t k) { return (size_t)full_groups(k) * X_GROUP_BYTES + (legacy_tail_blocks(k / QK) ? X_TAIL_BYTES : 0); }

/* Q8_0's signed bytes pack as q + 128; the offset comes back out through the activations' sums. */
INLINE __m512i pair_q8_0_biased(const uint8_t *a, const uint8_t *b) {
    return _mm512_xor_si512(pair_q8_0(a, b), _mm512_set1_epi8((char)0x80));
}

/* KEEP: the packed panels are about the size of the type's blocks (4-bit types as nibbles, Q8_0
 * as bytes), so a model keeps them; the 5-bit types' bytes would double theirs. */
#define LEGACY_GEMM(NAME, PAIR, OFFSET, NIBBLES, HAS_MIN, KEEP)                                              \
    static size_t NAME##_panel_bytes(int64_t k) { return panel_bytes_legacy(NIBBLES, HAS_MIN, k); }          \
    static void NAME##_pack_w(const void *restrict w, size_t w_row_bytes, int64_t rows, int64_t k,           \
                              void *restrict panel) {                                                        \
        pack_w_legacy(PAIR, sizeof(block_##NAME), NIBBLES, HAS_MIN, w, w_row_bytes, rows, k, panel);         \
    }                                                                                                        \
    static void NAME##_pack_x(const void *restrict xq, int64_t k, void *restrict xp) {                       \
        pack_x_legacy(OFFSET, HAS_MIN, xq, k, xp);                                                           \
    }                                                                                                        \
    static void NAME##_panel_dot(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, \
                                 size_t x_stride, int64_t n, float *restrict y, size_t y_stride) {          \
        panel_dot_legacy(NIBBLES, HAS_MIN, k, panel, rows, xp, x_stride, n, y, y_stride);                    \
    }                                                                                                        \
    static size_t NAME##_wide_bytes(int64_t k) { return panel_bytes_legacy(0, HAS_MIN, k); }                 \
    static void NAME##_widen(int64_t k, const void *restrict panel, void *restrict wide) {                   \
        widen_legacy(HAS_MIN, k, panel, wide);                                                               \
    }                                                                                                        \
    static void NAME##_panel_dot_wide(int64_t k, const void *restrict panel, int64_t rows,                   \
                                      const void *restrict xp, size_t x_stride, int64_t n, float *restrict y, \
                                      size_t y_stride) {                                                     \
        panel_dot_legacy(0, HAS_MIN, k, panel, rows, xp, x_stride, n, y, y_stride);                          \
    }                                                                                                        \
    static const jl_gemm_kernels NAME##_gemm = {                                                             \
        PANEL_ROWS, NAME##_panel_bytes, x_bytes_legacy, NAME##_pack_w, NAME##_pack_x, NAME##_panel_dot, KEEP, \
        NIBBLES ? NAME##_wide_bytes : NULL, NIBBLES ? NAME##_widen : NULL,                                   \
        NIBBLES ? NAME##_panel_dot_wide : NULL,                                                              \
    };

LEGACY_GEMM(q4_0, pair_q4_0, 8, 1, 0, 1)
LEGACY_GEMM(q4_1, pair_q4_1, 0, 1, 1, 1)
LEGACY_GEMM(q5_0, pair_q5_0, 16, 0, 0, 0)
LEGACY_GEMM(q5_1, pair_q5_1, 0, 0, 1, 0)
LEGACY_GEMM(q8_0, pair_q8_0_biased, 128, 0, 0, 1)

void jl_avx512_gemm_register(jl_type_traits *t) {
    t[JL_TYPE_Q4_0].gemm = &q4_0_gemm;
    t[JL_TYPE_Q4_1].gemm = &q4_1_gemm;
    t[JL_TYPE_Q5_0].gemm = &q5_0_gemm;
    t[JL_TYPE_Q5_1].gemm = &q5_1_gemm;
    t[JL_TYPE_Q8_0].gemm = &q8_0_gemm;
    t[JL_TYPE_Q2_K].gemm = &q2_K_gemm;
    t[JL_TYPE_Q3_K].gemm = &q3_K_gemm;
    t[JL_TYPE_Q4_K].gemm = &q4_K_gemm;
    t[JL_TYPE_Q5_K].gemm = &q5_K_gemm;
    t[JL_TYPE_Q6_K].gemm = &q6_K_gemm;
}
