/* avx2_gemm.c — register-blocked int8 GEMM at 256 bits for Q4_0, Q4_1, Q5_0, Q8_0 and the
 * K-quants Q2_K .. Q6_K, for CPUs without AVX-512. Compiled twice from this one source: for AVX2
 * (vpmaddubsw, then vpmaddwd) and, with JL_AVXVNNI defined, for AVX-VNNI (the VEX vpdpbusd and
 * vpdpwssd). Both builds compute the same int32 sums, so they give the same bits; dispatch.c
 * registers the AVX-VNNI build at the avx2 level where the CPU has it.
 *
 * Batch invariance fixes the arithmetic: every output must equal the avx2 level's vec_dot
 * (avx2.c) bit for bit. vec_dot leaves a group of eight blocks as one int32 lane per block, then
 * per group  acc = fma(d * dx, sums, acc)  (and  macc = fma(m, s, macc)  for the types with a
 * minimum), and one hsum_f32x8 per output at the end (of acc + macc). Here the data are laid out
 * so that the lane-per-block sums come straight out of the integer dot: step t of a group holds
 * bytes 4t .. 4t + 3 of each of its eight blocks (lane L = block L), so eight steps give the block
 * sums with no shuffling in the inner loop.
 *
 * Weights are repacked PANEL_ROWS rows at a time as unsigned q + offset (the AVX2 build's Q8_0
 * keeps q signed: see Q8_0_SIGNED), in sub-panels of
 * TILE_ROWS rows (the 4-bit types keep two steps per byte and their block scales as fp16, so a
 * packed Q4 panel is as small as the file's blocks and a model keeps it per tensor, decode
 * included, then widens it to bytes a strip at a time for many rows); an activation row once per
 * call, with its block scales per lane and, for the types with an offset, -offset * sum(qx) per
 * block as the integer sums' start. The microkernel holds TILE_ROWS x TILE_COLS block sums in
 * registers; panel_dot runs every sub-panel of the panel against a tile of columns while the
 * tile is in L1. */
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "cpu/avx2_blocks.h"
#include "quant/traits.h"

#define TILE_ROWS 2
#define TILE_COLS 4
#define PANEL_ROWS 8                       /* sub-panels of TILE_ROWS that share a column tile in L1 */
#define GROUP 8                            /* blocks per lane group */
#define STEPS (QK / 4)                     /* integer dot steps per group: 4 bytes of each block */
#define STEP_BYTES 32                      /* one step of a group: 4 bytes of each of 8 blocks */

/* A last group of at most 4 blocks (k = 576 leaves 2) packs into TAIL_STEPS steps: block b's
 * dwords 0-3 go to lane b and dwords 4-7 to lane b + 4, and one add of the swapped 128-bit halves
 * leaves its sum in lane b. Lanes 4-7 then carry copies that meet zero scales: their products are
 * +-0, which leave an accumulator as vec_dot's zero lanes do (a sum started at +0 is never -0). */
#define TAIL_BLOCKS 4
#define TAIL_STEPS 4

#if defined(JL_AVXVNNI)
#define GEMM_REGISTER jl_avxvnni_gemm_register
/* vpdpbusd adds each dword's four u8 x s8 products to its int32 lane: the whole group is one chunk */
INLINE __m256i dot_step(__m256i part, __m256i u, __m256i s) { return _mm256_dpbusd_avx_epi32(part, u, s); }
INLINE __m256i chunk_sums(__m256i part) { return part; }
INLINE int chunk_steps(int int16_steps) { return STEPS; }
#else
#define GEMM_REGISTER jl_avx2_gemm_register
/* vpmaddubsw's pair sums add up in int16 for as many steps as the type's values keep them exact,
 * then one vpmaddwd widens each dword's two to its int32 lane */
INLINE __m256i dot_step(__m256i part, __m256i u, __m256i s) { return _mm256_add_epi16(part, _mm256_maddubs_epi16(u, s)); }
INLINE __m256i chunk_sums(__m256i part) { return _mm256_madd_epi16(part, _mm256_set1_epi16(1)); }
INLINE int chunk_steps(int int16_steps) { return int16_steps; }
#endif

/* 8 block scales of a row: fp16 in the compact nibble layout, floats in the byte layout (no
 * conversion in the tiles of many rows) */
INLINE size_t scale_bytes(int nibbles) { return nibbles ? 16 : 32; }
/* weight vectors per row for `steps` steps: nibble-packed types hold two steps in one */
INLINE int w_vecs(int nibbles, int steps) { return nibbles ? steps / 2 : steps; }
/* per group of a sub-panel: w_vecs x TILE_ROWS quant vectors, then d (and m) per row */
INLINE size_t w_group_bytes(int nibbles, int has_min, int steps) {
    return (size_t)w_vecs(nibbles, steps) * TILE_ROWS * STEP_BYTES + TILE_ROWS * (1 + has_min) * scale_bytes(nibbles);
}
/* per group of an activation row: STEPS quant vectors, dx, then s (types with a minimum) or the
 * offset correction (the others) */
#define X_GROUP_BYTES ((STEPS + 2) * STEP_BYTES)

static int64_t n_groups(int64_t k) { return (k / QK + GROUP - 1) / GROUP; }

/* blocks in group g */
static int group_blocks(int64_t k, int64_t g) { return k / QK - g * GROUP < GROUP ? (int)(k / QK - g * GROUP) : GROUP; }

/* whether the last group is short enough to pack as a tail */
static int ends_in_tail(int64_t k) { return group_blocks(k, n_groups(k) - 1) <= TAIL_BLOCKS; }

/* a sub-panel is its groups in order, each of w_group_bytes(STEPS) but a tail (always the last) */
INLINE size_t sub_panel_bytes(int nibbles, int has_min, int64_t k) {
    const int tail = ends_in_tail(k);
    return (size_t)(n_groups(k) - tail) * w_group_bytes(nibbles, has_min, STEPS) +
           (tail ? w_group_bytes(nibbles, has_min, TAIL_STEPS) : 0);
}

/* the block and its dword that lane L of step t holds, in a full group or a tail */
INLINE int lane_block(int tail, int lane) { return tail ? lane % TAIL_BLOCKS : lane; }
INLINE int lane_dword(int tail, int lane, int t) { return tail ? t + TAIL_STEPS * (lane / TAIL_BLOCKS) : t; }

/* step vectors <- the group's blocks as 32 bytes each (blocks past n: zeros) */
static void transpose_group(const uint8_t blocks[GROUP][QK], int n, int tail, int steps, uint8_t *out, size_t step_stride) {
    for (int t = 0; t < steps; t++)
        for (int lane = 0; lane < GROUP; lane++) {
            const int b = lane_block(tail, lane);
            if (b < n) memcpy(out + t * step_stride + 4 * lane, blocks[b] + 4 * lane_dword(tail, lane, t), 4);
            else memset(out + t * step_stride + 4 * lane, 0, 4);
        }
}

INLINE __m256i tail_reduce(__m256i v) { return _mm256_add_epi32(v, _mm256_permute2x128_si256(v, v, 0x01)); }

/* ---- packing ----------------------------------------------------------------------------- */

/* 8 fp16 scales as the layout keeps them: as they are, or as floats */
INLINE void store_scales(int nibbles, const jl_half h[GROUP], uint8_t *at) {
    if (nibbles) {
        memcpy(at, h, GROUP * sizeof(jl_half));
        return;
    }
    float f[GROUP];
    for (int i = 0; i < GROUP; i++) f[i] = half_to_f32(h[i]);
    memcpy(at, f, sizeof f);
}

INLINE __m256 load_scales(int nibbles, const uint8_t *at) {
    return nibbles ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)at)) : _mm256_loadu_ps((const float *)at);
}

/* rows (<= PANEL_ROWS) weight rows -> TILE_ROWS-row sub-panels of q + offset (signed: q as is);
 * the 4-bit types keep two steps per byte, step v in the low nibble and v + steps / 2 in the high */
INLINE void pack_w_legacy(legacy_unpack_fn unpack, size_t type_size, int offset, int nibbles, int has_min,
                          const uint8_t *w, size_t w_row_bytes, int64_t rows, int64_t k, uint8_t *panel) {
    const int64_t groups = n_groups(k);
    const size_t sb = scale_bytes(nibbles);
    for (int sp = 0; sp < PANEL_ROWS / TILE_ROWS; sp++) {
        uint8_t *pg = panel + sp * sub_panel_bytes(nibbles, has_min, k);
        for (int64_t g = 0; g < groups; g++, pg += w_group_bytes(nibbles, has_min, STEPS)) {
            const int n = group_blocks(k, g), tail = n <= TAIL_BLOCKS, steps = tail ? TAIL_STEPS : STEPS;
            const int vecs = w_vecs(nibbles, steps);
            uint8_t *scales = pg + (size_t)vecs * TILE_ROWS * STEP_BYTES;  /* d of each row, then m */
            for (int r = 0; r < TILE_ROWS; r++) {
                const int64_t row = sp * TILE_ROWS + r;
                const uint8_t *wg = w + row * w_row_bytes + g * GROUP * type_size;
                uint8_t q[GROUP][QK];
                jl_half d[GROUP] = {0}, m[GROUP] = {0};
                const int live = row < rows ? n : 0;
                for (int b = 0; b < live; b++) {
                    const legacy_block u = unpack(wg + b * type_size);
                    _mm256_storeu_si256((__m256i *)q[b], _mm256_add_epi8(u.q, _mm256_set1_epi8((char)offset)));
                    memcpy(&d[b], wg + b * type_size, sizeof(jl_half));
                    if (has_min) memcpy(&m[b], wg + b * type_size + sizeof(jl_half), sizeof(jl_half));
                }
                uint8_t bytes[STEPS][STEP_BYTES];
                transpose_group(q, live, tail, steps, bytes[0], STEP_BYTES);
                for (int v = 0; v < vecs; v++) {
                    uint8_t *at = pg + (v * TILE_ROWS + r) * STEP_BYTES;
                    if (!nibbles) memcpy(at, bytes[v], STEP_BYTES);
                    else for (int i = 0; i < STEP_BYTES; i++) at[i] = (uint8_t)(bytes[v][i] | bytes[v + vecs][i] << 4);
                }
                /* lane b takes block b's scales; lanes past n (a tail's copies among them) take zeros */
                store_scales(nibbles, d, scales + r * sb);
                if (has_min) store_scales(nibbles, m, scales + (TILE_ROWS + r) * sb);
            }
        }
    }
}

/* xq: one row of Q8_1 (has_min) or Q8_0 blocks */
INLINE void pack_x_legacy(int offset, int has_min, const uint8_t *xq, int64_t k, uint8_t *xp) {
    const size_t x_size = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const size_t x_qs = has_min ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    for (int64_t g = 0; g < n_groups(k); g++) {
        uint8_t *pg = xp + g * X_GROUP_BYTES;
        const uint8_t *xg = xq + g * GROUP * x_size;
        const int n = group_blocks(k, g), tail = n <= TAIL_BLOCKS;
        uint8_t q[GROUP][QK];
        float dx[GROUP] = {0}, second[GROUP] = {0};  /* s, or the correction as int32 */
        for (int b = 0; b < n; b++) {
            memcpy(q[b], xg + b * x_size + x_qs, QK);
            dx[b] = load_half(xg + b * x_size);
            if (has_min) {
                second[b] = load_half(xg + b * x_size + offsetof(block_q8_1, s));
            } else {
                int32_t sum = 0;
                for (int i = 0; i < QK; i++) sum += (int8_t)q[b][i];
                const int32_t corr = -offset * sum;
                memcpy(&second[b], &corr, sizeof corr);
            }
        }
        memset(pg, 0, STEPS * STEP_BYTES);
        transpose_group(q, n, tail, tail ? TAIL_STEPS : STEPS, pg, STEP_BYTES);
        memcpy(pg + STEPS * STEP_BYTES, dx, sizeof dx);
        memcpy(pg + (STEPS + 1) * STEP_BYTES, second, sizeof second);
    }
}

/* ---- the microkernel ------------------------------------------------------------------- */

/* sums[r][c] += the int32 block sums of `steps` steps of a group, in chunks of `chunk` steps
 * (a divisor of steps; nibble panels take the group as one chunk). Signed weights (the AVX2
 * build's Q8_0) take the sign trick: |q| as the unsigned operand. The step loops stay rolled:
 * unrolled, the compiler hoists loads across steps and spills the partial sums. */
INLINE void group_sums(int signed_w, int nibbles, const int chunk, const int steps, const uint8_t *pg, const uint8_t *xg,
                       size_t x_stride, const int nc, __m256i sums[TILE_ROWS][TILE_COLS]) {
    if (nibbles) {
        const int vecs = steps / 2;
        const __m256i low = _mm256_set1_epi8(0x0F);
        __m256i part[TILE_ROWS][TILE_COLS];
        UNROLL for (int r = 0; r < TILE_ROWS; r++)
            UNROLL for (int c = 0; c < nc; c++) part[r][c] = _mm256_setzero_si256();
        _Pragma("GCC unroll 1") for (int v = 0; v < vecs; v++)
            UNROLL for (int h = 0; h < 2; h++) {  /* step v + h * vecs */
                __m256i wv[TILE_ROWS];
                UNROLL for (int r = 0; r < TILE_ROWS; r++) {
                    const __m256i p = _mm256_loadu_si256((const __m256i *)(pg + (v * TILE_ROWS + r) * STEP_BYTES));
                    wv[r] = _mm256_and_si256(h ? _mm256_srli_epi16(p, 4) : p, low);
                }
                UNROLL for (int c = 0; c < nc; c++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xg + c * x_stride + (v + h * vecs) * STEP_BYTES));
                    UNROLL for (int r = 0; r < TILE_ROWS; r++) part[r][c] = dot_step(part[r][c], wv[r], xv);
                }
            }
        UNROLL for (int r = 0; r < TILE_ROWS; r++)
            UNROLL for (int c = 0; c < nc; c++) sums[r][c] = _mm256_add_epi32(sums[r][c], chunk_sums(part[r][c]));
        return;
    }
    _Pragma("GCC unroll 1") for (int t0 = 0; t0 < steps; t0 += chunk) {
        __m256i part[TILE_ROWS][TILE_COLS];
        UNROLL for (int r = 0; r < TILE_ROWS; r++)
            UNROLL for (int c = 0; c < nc; c++) part[r][c] = _mm256_setzero_si256();
        _Pragma("GCC unroll 1") for (int t = t0; t < t0 + chunk; t++) {
            __m256i wv[TILE_ROWS], uv[TILE_ROWS];
            UNROLL for (int r = 0; r < TILE_ROWS; r++) {
                wv[r] = _mm256_loadu_si256((const __m256i *)(pg + (t * TILE_ROWS + r) * STEP_BYTES));
                uv[r] = signed_w ? _mm256_abs_epi8(wv[r]) : wv[r];
            }
            UNROLL for (int c = 0; c < nc; c++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xg + c * x_stride + t * STEP_BYTES));
                UNROLL for (int r = 0; r < TILE_ROWS; r++)
                    part[r][c] = dot_step(part[r][c], uv[r], signed_w ? _mm256_sign_epi8(xv, wv[r]) : xv);
            }
        }
        UNROLL for (int r = 0; r < TILE_ROWS; r++)
            UNROLL for (int c = 0; c < nc; c++) sums[r][c] = _mm256_add_epi32(sums[r][c], chunk_sums(part[r][c]));
    }
}

/* TILE_ROWS x nc outputs of one sub-panel; vec_dot's float steps per group, in its order */
INLINE void tile_legacy(int signed_w, int offset, int nibbles, int has_min, const int chunk, int64_t groups, int tail,
                        const uint8_t *sub_panel, const uint8_t *xp, size_t x_stride, const int nc, int64_t rows,
                        float *y, size_t y_stride) {
    __m256 acc[TILE_ROWS][TILE_COLS], macc[TILE_ROWS][TILE_COLS];
    UNROLL for (int r = 0; r < TILE_ROWS; r++)
        UNROLL for (int c = 0; c < nc; c++) acc[r][c] = macc[r][c] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const int last_tail = tail && g == groups - 1, steps = last_tail ? TAIL_STEPS : STEPS;
        const uint8_t *pg = sub_panel + g * w_group_bytes(nibbles, has_min, STEPS), *xg = xp + g * X_GROUP_BYTES;
        __m256i sums[TILE_ROWS][TILE_COLS];
        UNROLL for (int c = 0; c < nc; c++) {
            const __m256i start = offset ? _mm256_loadu_si256((const __m256i *)(xg + c * x_stride + (STEPS + 1) * STEP_BYTES))
                                         : _mm256_setzero_si256();
            UNROLL for (int r = 0; r < TILE_ROWS; r++) sums[r][c] = start;
        }
        if (last_tail) {
            group_sums(signed_w, nibbles, chunk < TAIL_STEPS ? chunk : TAIL_STEPS, TAIL_STEPS, pg, xg, x_stride, nc, sums);
            UNROLL for (int r = 0; r < TILE_ROWS; r++)
                UNROLL for (int c = 0; c < nc; c++) sums[r][c] = tail_reduce(sums[r][c]);
        } else {
            group_sums(signed_w, nibbles, chunk, STEPS, pg, xg, x_stride, nc, sums);
        }
        const uint8_t *scales = pg + (size_t)w_vecs(nibbles, steps) * TILE_ROWS * STEP_BYTES;
        const size_t sb = scale_bytes(nibbles);
        UNROLL for (int c = 0; c < nc; c++) {
            const __m256 dx = _mm256_loadu_ps((const float *)(xg + c * x_stride + STEPS * STEP_BYTES));
            UNROLL for (int r = 0; r < TILE_ROWS; r++) {
                const __m256 dd = _mm256_mul_ps(load_scales(nibbles, scales + r * sb), dx);
                acc[r][c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sums[r][c]), acc[r][c]);
                if (has_min) {
                    const __m256 s = _mm256_loadu_ps((const float *)(xg + c * x_stride + (STEPS + 1) * STEP_BYTES));
                    macc[r][c] = _mm256_fmadd_ps(load_scales(nibbles, scales + (TILE_ROWS + r) * sb), s, macc[r][c]);
                }
            }
        }
    }
    UNROLL for (int r = 0; r < TILE_ROWS; r++)
        if (r < rows)
            UNROLL for (int c = 0; c < nc; c++)
                y[c * y_stride + r] = hsum_f32x8(has_min ? _mm256_add_ps(acc[r][c], macc[r][c]) : acc[r][c]);
}

/* every sub-panel against a column tile before the next tile: the tile stays in L1 */
INLINE void panel_dot_legacy(int signed_w, int offset, int nibbles, int has_min, const int chunk, int64_t k, const uint8_t *panel,
                             int64_t rows, const uint8_t *xp, size_t x_stride, int64_t n, float *y, size_t y_stride) {
    const int64_t groups = n_groups(k);
    const int tail = ends_in_tail(k);
    const size_t sp_bytes = sub_panel_bytes(nibbles, has_min, k);
    for (int64_t c = 0; c < n; c += TILE_COLS) {
        const uint8_t *xc = xp + c * x_stride;
        float *yc = y + c * y_stride;
        for (int64_t r = 0; r < rows; r += TILE_ROWS) {
            const uint8_t *sp = panel + r / TILE_ROWS * sp_bytes;
            switch (n - c < TILE_COLS ? n - c : TILE_COLS) {
            case 1: tile_legacy(signed_w, offset, nibbles, has_min, chunk, groups, tail, sp, xc, x_stride, 1, rows - r, yc + r, y_stride); break;
            case 2: tile_legacy(signed_w, offset, nibbles, has_min, chunk, groups, tail, sp, xc, x_stride, 2, rows - r, yc + r, y_stride); break;
            case 3: tile_legacy(signed_w, offset, nibbles, has_min, chunk, groups, tail, sp, xc, x_stride, 3, rows - r, yc + r, y_stride); break;
            default: tile_legacy(signed_w, offset, nibbles, has_min, chunk, groups, tail, sp, xc, x_stride, TILE_COLS, rows - r, yc + r, y_stride); break;
            }
        }
    }
}

/* A nibble panel widened to one byte per value (the byte layout, float scales) for many activation
 * rows, whose tiles then skip the unpacking. */
INLINE void widen_legacy(int has_min, int64_t k, const uint8_t *panel, uint8_t *wide) {
    const int64_t groups = n_groups(k);
    const int tail = ends_in_tail(k);
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int sp = 0; sp < PANEL_ROWS / TILE_ROWS; sp++) {
        const uint8_t *src = panel + sp * sub_panel_bytes(1, has_min, k);
        uint8_t *dst = wide + sp * sub_panel_bytes(0, has_min, k);
        for (int64_t g = 0; g < groups; g++, src += w_group_bytes(1, has_min, STEPS), dst += w_group_bytes(0, has_min, STEPS)) {
            const int steps = tail && g == groups - 1 ? TAIL_STEPS : STEPS, vecs = w_vecs(1, steps);
            for (int v = 0; v < vecs; v++)
                for (int r = 0; r < TILE_ROWS; r++) {
                    const __m256i p = _mm256_loadu_si256((const __m256i *)(src + (v * TILE_ROWS + r) * STEP_BYTES));
                    _mm256_storeu_si256((__m256i *)(dst + (v * TILE_ROWS + r) * STEP_BYTES), _mm256_and_si256(p, low));
                    _mm256_storeu_si256((__m256i *)(dst + ((v + vecs) * TILE_ROWS + r) * STEP_BYTES),
                                        _mm256_and_si256(_mm256_srli_epi16(p, 4), low));
                }
            const uint8_t *halves = src + (size_t)vecs * TILE_ROWS * STEP_BYTES;
            uint8_t *floats = dst + (size_t)steps * TILE_ROWS * STEP_BYTES;
            for (int i = 0; i < TILE_ROWS * (1 + has_min); i++)
                _mm256_storeu_ps((float *)(floats + i * scale_bytes(0)), load_scales(1, halves + i * scale_bytes(1)));
        }
    }
}

/* ---- K-quants -------------------------------------------------------------------------- *
 * vec_dot's K-quant sums are 8 int32 lanes per super-block: lane l of chunk j (values 32j ..
 * 32j + 31) takes the four products of values 32j + 4l .. 32j + 4l + 3 (a quarter of group
 * 2j + l / 4) times that group's int16 scale, through vpmaddubsw + vpmaddwd. The GEMM keeps those
 * integer lane sums with fewer multiplies: the bytes of chunks 2h and 2h + 1 are interleaved by
 * 16-bit words into two vectors A and B (A's dword l = word 2l of both chunks, B's = word 2l + 1
 * of both), so vpmaddubsw(A) + vpmaddubsw(B) leaves the whole quarter of chunk 2h in word 2l and
 * of chunk 2h + 1 in word 2l + 1 (|quarter| <= 4 * 63 * 127 fits int16), and one vpmaddwd against
 * the interleaved scales (vpdpwssd in the AVX-VNNI build) adds both to lane l. Integer sums do
 * not depend on the order of their terms, so the lanes, and vec_dot's float steps per
 * super-block after them, are vec_dot's. */

#define KQ_PANEL_ROWS 4  /* two sub-panels: a super-block of a sub-panel is 960 bytes */

typedef struct {
    __m256i q[8];                 /* per h: A, B of chunks 2h, 2h + 1, values unsigned (q + offset) */
    __m256i sc[4];                /* per h: the int16 scales of A + B's quarter words */
    __m256i mn, corr;             /* per group of 16: minimum, -offset * scale */
    float d, dmin;
    uint8_t pad[24];
} kquant_packed;
_Static_assert(sizeof(kquant_packed) % 32 == 0, "kquant_packed keeps 32-byte alignment");

typedef struct {
    __m256i q[8];                 /* the Q8_K quants interleaved as the weights' */
    __m256i bsums;
    float d;
    uint8_t pad[28];
} kquant_x_packed;
_Static_assert(sizeof(kquant_x_packed) % 32 == 0, "kquant_x_packed keeps 32-byte alignment");

#if defined(JL_AVXVNNI)
INLINE __m256i add_madd_epi16(__m256i sum, __m256i a, __m256i b) { return _mm256_dpwssd_avx_epi32(sum, a, b); }
#else
INLINE __m256i add_madd_epi16(__m256i sum, __m256i a, __m256i b) { return _mm256_add_epi32(sum, _mm256_madd_epi16(a, b)); }
#endif

/* words 2l of a and b into dword l of *lo, words 2l + 1 into dword l of *hi */
INLINE void interleave_words(__m256i a, __m256i b, __m256i *lo, __m256i *hi) {
    *lo = _mm256_blend_epi16(a, _mm256_slli_epi32(b, 16), 0xAA);
    *hi = _mm256_blend_epi16(_mm256_srli_epi32(a, 16), b, 0xAA);
}

INLINE void pack_w_kquant(kquant_unpack_fn unpack, size_t type_size, int offset, const uint8_t *w, size_t w_row_bytes,
                          int64_t rows, int64_t k, kquant_packed *panel) {
    const int64_t nsb = k / QK_K;
    for (int64_t row = 0; row < KQ_PANEL_ROWS; row++)
        for (int64_t i = 0; i < nsb; i++) {
            /* sub-panel row / TILE_ROWS, super-block i, its row row % TILE_ROWS */
            kquant_packed *p = panel + (row / TILE_ROWS * nsb + i) * TILE_ROWS + row % TILE_ROWS;
            if (row >= rows) {
                memset(p, 0, sizeof *p);
                continue;
            }
            kquant_block u;
            unpack(w + row * w_row_bytes + i * type_size, &u);
            __m256i scale[8];
            spread_scales(u.sc, scale);  /* scale[j] word 2l (and 2l + 1): the scale of lane l's quarter in chunk j */
            for (int h = 0; h < 4; h++) {
                interleave_words(u.q[2 * h], u.q[2 * h + 1], &p->q[2 * h], &p->q[2 * h + 1]);
                p->sc[h] = _mm256_blend_epi16(scale[2 * h], scale[2 * h + 1], 0xAA);
            }
            p->mn = u.mn;
            p->corr = _mm256_mullo_epi16(u.sc, _mm256_set1_epi16((short)-offset));
            p->d = u.d;
            p->dmin = u.dmin;
            memset(p->pad, 0, sizeof p->pad);
        }
}

/* xq: one row of Q8_K blocks */
static void pack_x_kquant(const void *restrict xq, int64_t k, void *restrict xp) {
    const block_q8_K *bx = xq;
    kquant_x_packed *p = xp;
    for (int64_t i = 0; i < k / QK_K; i++) {
        for (int h = 0; h < 4; h++)
            interleave_words(_mm256_loadu_si256((const __m256i *)(bx[i].qs + 64 * h)),
                             _mm256_loadu_si256((const __m256i *)(bx[i].qs + 64 * h + 32)), &p[i].q[2 * h], &p[i].q[2 * h + 1]);
        p[i].bsums = _mm256_loadu_si256((const __m256i *)bx[i].bsums);
        p[i].d = bx[i].d;
        memset(p[i].pad, 0, sizeof p[i].pad);
    }
}

static size_t x_bytes_kquant(int64_t k) { return (size_t)(k / QK_K) * sizeof(kquant_x_packed); }

/* TILE_ROWS x nc outputs of one sub-panel against packed Q8_K rows; vec_dot's steps per
 * super-block, in its order */
INLINE void tile_kquant(int offset, int has_min, int64_t nsb, const kquant_packed *sub_panel, const uint8_t *x,
                        size_t x_stride, const int nc, int64_t rows, float *y, size_t y_stride) {
    __m256 acc[TILE_ROWS][TILE_COLS];
    UNROLL for (int r = 0; r < TILE_ROWS; r++)
        UNROLL for (int c = 0; c < nc; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nsb; i++) {
        const kquant_packed *p = sub_panel + i * TILE_ROWS;
        const kquant_x_packed *bx[TILE_COLS];
        __m256i sums[TILE_ROWS][TILE_COLS];
        UNROLL for (int c = 0; c < nc; c++) {
            bx[c] = (const kquant_x_packed *)(x + c * x_stride) + i;
            UNROLL for (int r = 0; r < TILE_ROWS; r++)
                sums[r][c] = offset ? _mm256_madd_epi16(bx[c]->bsums, p[r].corr) : _mm256_setzero_si256();
        }
        UNROLL for (int h = 0; h < 4; h++) {
            __m256i wa[TILE_ROWS], wb[TILE_ROWS];
            UNROLL for (int r = 0; r < TILE_ROWS; r++) {
                wa[r] = _mm256_load_si256(&p[r].q[2 * h]);
                wb[r] = _mm256_load_si256(&p[r].q[2 * h + 1]);
            }
            UNROLL for (int c = 0; c < nc; c++) {
                const __m256i xa = _mm256_load_si256(&bx[c]->q[2 * h]), xb = _mm256_load_si256(&bx[c]->q[2 * h + 1]);
                UNROLL for (int r = 0; r < TILE_ROWS; r++) {
                    const __m256i quarters = _mm256_add_epi16(_mm256_maddubs_epi16(wa[r], xa), _mm256_maddubs_epi16(wb[r], xb));
                    sums[r][c] = add_madd_epi16(sums[r][c], quarters, _mm256_load_si256(&p[r].sc[h]));
                }
            }
        }
        UNROLL for (int r = 0; r < TILE_ROWS; r++)
            UNROLL for (int c = 0; c < nc; c++) {
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(bx[c]->d * p[r].d), _mm256_cvtepi32_ps(sums[r][c]), acc[r][c]);
                if (has_min) {
                    const __m256 mins = _mm256_cvtepi32_ps(_mm256_madd_epi16(p[r].mn, bx[c]->bsums));
                    acc[r][c] = _mm256_fnmadd_ps(_mm256_set1_ps(bx[c]->d * p[r].dmin), mins, acc[r][c]);
                }
            }
    }
    UNROLL for (int r = 0; r < TILE_ROWS; r++)
        if (r < rows)
            UNROLL for (int c = 0; c < nc; c++) y[c * y_stride + r] = hsum_f32x8(acc[r][c]);
}

INLINE void panel_dot_kquant(int offset, int has_min, int64_t k, const kquant_packed *panel, int64_t rows,
                             const uint8_t *xp, size_t x_stride, int64_t n, float *y, size_t y_stride) {
    const int64_t nsb = k / QK_K;
    for (int64_t c = 0; c < n; c += TILE_COLS) {
        const uint8_t *xc = xp + c * x_stride;
        float *yc = y + c * y_stride;
        for (int64_t r = 0; r < rows; r += TILE_ROWS) {
            const kquant_packed *sp = panel + r * nsb;
            switch (n - c < TILE_COLS ? n - c : TILE_COLS) {
            case 1: tile_kquant(offset, has_min, nsb, sp, xc, x_stride, 1, rows - r, yc + r, y_stride); break;
            case 2: tile_kquant(offset, has_min, nsb, sp, xc, x_stride, 2, rows - r, yc + r, y_stride); break;
            case 3: tile_kquant(offset, has_min, nsb, sp, xc, x_stride, 3, rows - r, yc + r, y_stride); break;
            default: tile_kquant(offset, has_min, nsb, sp, xc, x_stride, TILE_COLS, rows - r, yc + r, y_stride); break;
            }
        }
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
        .panel_rows = KQ_PANEL_ROWS, .panel_bytes = panel_bytes_kquant, .x_bytes = x_bytes_kquant,           \
        .pack_w = NAME##_pack_w, .pack_x = pack_x_kquant, .panel_dot = NAME##_panel_dot,                     \
    };

/* q <= 3, 7, 15, 31 and 63: every quarter fits int16 */
KQUANT_GEMM(q2_K, 0, 1)
KQUANT_GEMM(q3_K, 4, 0)
KQUANT_GEMM(q4_K, 0, 1)
KQUANT_GEMM(q5_K, 0, 1)
KQUANT_GEMM(q6_K, 32, 0)

/* ---- the table ------------------------------------------------------------------------- */

static size_t x_bytes_legacy(int64_t k) { return (size_t)n_groups(k) * X_GROUP_BYTES; }

/* Q8_0 in the AVX-VNNI build packs q + 128 (the offset comes back out through the activations'
 * sums); in the AVX2 build vpmaddubsw would saturate on q + 128 (pairs up to 2 * 255 * 127), so
 * it keeps q signed and takes the sign trick, a chunk of one step (pairs up to 2 * 128 * 127). */
#if defined(JL_AVXVNNI)
#define Q8_0_SIGNED 0
#define Q8_0_OFFSET 128
#else
#define Q8_0_SIGNED 1
#define Q8_0_OFFSET 0
#endif

/* INT16_STEPS: steps whose vpmaddubsw pair sums add exactly in int16 (|qx| <= 127): 8 steps of
 * q <= 15 (8 * 2 * 15 * 127 < 2^15), 4 of q <= 31. KEEP: the packed panels are about the size of
 * the type's blocks (4-bit types as nibbles, Q8_0 as bytes), so a model keeps them; the 5-bit
 * types' bytes would double theirs. */
#define LEGACY_GEMM(NAME, SIGNED, OFFSET, NIBBLES, HAS_MIN, INT16_STEPS, KEEP)                               \
    static size_t NAME##_panel_bytes(int64_t k) { return PANEL_ROWS / TILE_ROWS * sub_panel_bytes(NIBBLES, HAS_MIN, k); } \
    static void NAME##_pack_w(const void *restrict w, size_t w_row_bytes, int64_t rows, int64_t k,           \
                              void *restrict panel) {                                                        \
        pack_w_legacy(unpack_##NAME, sizeof(block_##NAME), OFFSET, NIBBLES, HAS_MIN, w, w_row_bytes, rows, k, panel); \
    }                                                                                                        \
    static void NAME##_pack_x(const void *restrict xq, int64_t k, void *restrict xp) {                       \
        pack_x_legacy(OFFSET, HAS_MIN, xq, k, xp);                                                           \
    }                                                                                                        \
    static void NAME##_panel_dot(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, \
                                 size_t x_stride, int64_t n, float *restrict y, size_t y_stride) {          \
        panel_dot_legacy(SIGNED, OFFSET, NIBBLES, HAS_MIN, chunk_steps(INT16_STEPS), k, panel, rows, xp, x_stride, n, y, \
                         y_stride);                                                                          \
    }                                                                                                        \
    static size_t NAME##_wide_bytes(int64_t k) { return PANEL_ROWS / TILE_ROWS * sub_panel_bytes(0, HAS_MIN, k); } \
    static void NAME##_widen(int64_t k, const void *restrict panel, void *restrict wide) {                   \
        widen_legacy(HAS_MIN, k, panel, wide);                                                               \
    }                                                                                                        \
    static void NAME##_panel_dot_wide(int64_t k, const void *restrict panel, int64_t rows,                   \
                                      const void *restrict xp, size_t x_stride, int64_t n, float *restrict y, \
                                      size_t y_stride) {                                                     \
        panel_dot_legacy(SIGNED, OFFSET, 0, HAS_MIN, chunk_steps(INT16_STEPS), k, panel, rows, xp, x_stride, n, y, y_stride); \
    }                                                                                                        \
    static const jl_gemm_kernels NAME##_gemm = {                                                             \
        .panel_rows = PANEL_ROWS, .panel_bytes = NAME##_panel_bytes, .x_bytes = x_bytes_legacy,              \
        .pack_w = NAME##_pack_w, .pack_x = NAME##_pack_x, .panel_dot = NAME##_panel_dot, .keep_packed = KEEP, \
        .wide_bytes = NIBBLES ? NAME##_wide_bytes : NULL, .widen = NIBBLES ? NAME##_widen : NULL,            \
        .panel_dot_wide = NIBBLES ? NAME##_panel_dot_wide : NULL,                                            \
    };

LEGACY_GEMM(q4_0, 0, 8, 1, 0, 8, 1)
LEGACY_GEMM(q4_1, 0, 0, 1, 1, 8, 1)
LEGACY_GEMM(q5_0, 0, 16, 0, 0, 4, 0)
LEGACY_GEMM(q8_0, Q8_0_SIGNED, Q8_0_OFFSET, 0, 0, 1, 1)

void GEMM_REGISTER(jl_type_traits *t) {
    t[JL_TYPE_Q4_0].gemm = &q4_0_gemm;
    t[JL_TYPE_Q4_1].gemm = &q4_1_gemm;
    t[JL_TYPE_Q5_0].gemm = &q5_0_gemm;
    t[JL_TYPE_Q8_0].gemm = &q8_0_gemm;
    t[JL_TYPE_Q2_K].gemm = &q2_K_gemm;
    t[JL_TYPE_Q3_K].gemm = &q3_K_gemm;
    t[JL_TYPE_Q4_K].gemm = &q4_K_gemm;
    t[JL_TYPE_Q5_K].gemm = &q5_K_gemm;
    t[JL_TYPE_Q6_K].gemm = &q6_K_gemm;
}
