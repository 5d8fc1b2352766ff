/* amx_gemm.c — the int8 GEMM of the legacy block types on AMX tiles (TDPBSSD), bit-identical to
 * vec_dot (avx512.c).
 *
 * Built twice: with the AMX flags for the amx level (where the compiler has them: JANLIB_AMX),
 * and, through amx_gemm_emulated.c, with JANLIB_AMX_EMULATE, where the tile instructions run on
 * the software model of cpu/amx_emulator.c, so the tests check this file's arithmetic on machines
 * without AMX.
 *
 * Batch invariance fixes the float arithmetic: decode rows keep vec_dot (and the AVX-512 GEMM,
 * below AMX_MIN_ROWS rows), so every output here must equal vec_dot's bit for bit. vec_dot keeps
 * 16 float lanes per output, lane L taking block tree_order[L] of each group of 16 blocks:
 *   acc_L = fma(float(sum), d * dx, acc_L), then acc_L = fma(m, s, acc_L) for the types with a minimum,
 * and reduces them with hsum512_ps's pairwise tree (lane i + 8, + 4, + 2, + 1); a last group of at
 * most LEGACY_TAIL_BLOCKS blocks (avx512_blocks.h) adds to a chain t of the same steps block by
 * block instead, and the output is the tree's sum + t.
 *
 * Here one tile dot product gives a block's integer sums for up to 16 activation rows (A's rows:
 * the activations' signed bytes, read in place from the packed rows) by 16 weight rows (B: the
 * signed weights q = u - offset, 4 values of each row per tile row), K = the block's 32 values: the
 * sums are exact, so they are vec_dot's int32. Both operands are signed (q fits int8 for every type
 * here), so no offset correction is needed. The float steps then run across 16 weight rows per
 * vector: per activation row, 16 accumulators (one per lane of vec_dot) of 16 weight rows, the
 * block's scales d (per weight row) times the row's dx, hsum512_ps's tree on whole vectors, and the
 * tail's chain as one more vector. A tile of outputs holds the integer sums of CHUNK_BLOCKS blocks
 * at a time, and its accumulators between chunks.
 *
 * The K-quants stay on the AVX-512 GEMM: each of vec_dot's int32 lanes there sums 4 values of each
 * of 4 groups, each group times its own integer scale before the sum, so exact lane sums would take
 * tile dot products 4 values deep (a sixteenth of a tile's 64). BF16 weights too (TDPBF16PS): their
 * vec_dot multiplies float32 activations in FMA chains, which bf16 tiles cannot reproduce.
 *
 * Each panel_dot call configures the tiles (LDTILECFG) on the thread that runs it and releases
 * them at its end (TILERELEASE), so the pool's threads need no set-up and a thread holds no tile
 * state between calls. */
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/amx_tiles.h"
#include "cpu/avx512_blocks.h"
#include "internal.h"
#include "quant/blocks.h"
#include "quant/traits.h"

#if defined(JANLIB_AMX_EMULATE)
#define VARIANT(name) name##_emulated
#else
#define VARIANT(name) name
#endif

#define TILE 16           /* weight rows per panel (B's and C's columns); activation rows per tile (A's and C's rows) */
#define LANES 16          /* vec_dot's lanes per output */
#define CHUNK_BLOCKS 32   /* blocks whose integer sums a tile of outputs holds at once: (32, 16, 16) int32, 32 KiB */
#define AMX_MIN_ROWS 16   /* fewer activation rows (decode) take the AVX-512 level's kernels: a tile wants 16 */
#define CHECK_COLS 64     /* the tests' driver hands out activation rows as matmul does, 64 at a time */

/* two sets of tiles (C, A, B), so that consecutive blocks' dot products overlap */
#define TC0 0
#define TA0 1
#define TB0 2
#define TC1 3
#define TA1 4
#define TB1 5

/* A panel: per block, B (QK / 4 rows: dword n of row t holds values 4t .. 4t + 3 of weight row n),
 * then d of each weight row as float, then m (the types with a minimum). */
#define B_TILE_BYTES (QK / 4 * TILE * 4)
INLINE size_t block_bytes(int has_min) { return B_TILE_BYTES + (size_t)(1 + has_min) * TILE * sizeof(float); }

/* An activation row: its blocks' bytes back to back (nb, QK), then dx (nb,) as float, then s (nb,)
 * (the types with a minimum). */
INLINE size_t x_bytes_legacy(int has_min, int64_t k) { return (size_t)(k / QK) * (QK + (1 + has_min) * sizeof(float)); }

/* ---- packing ----------------------------------------------------------------------------- */

INLINE void pack_w_legacy(legacy_pair_fn pair, size_t type_size, int offset, int has_min, const uint8_t *w,
                          size_t w_row_bytes, int64_t rows, int64_t k, uint8_t *panel) {
    const int64_t nb = k / QK;
    const size_t bb = block_bytes(has_min);
    /* dword t of row n of q below: n * 16 + t */
    const __m512i row_dwords = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                  _mm512_set1_epi32(2 * QK / 4));
    for (int64_t b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;  /* an odd last block pairs with itself; the copy is not stored */
        int8_t q[TILE][2 * QK] __attribute__((aligned(64)));  /* (weight row, blocks b and b + 1): q = u - offset */
        for (int r = 0; r < TILE; r++) {
            if (r >= rows) {
                _mm512_store_si512(q[r], _mm512_setzero_si512());
                continue;
            }
            const uint8_t *a = w + r * w_row_bytes + b * type_size;
            _mm512_store_si512(q[r], _mm512_sub_epi8(pair(a, two ? a + type_size : a), _mm512_set1_epi8((char)offset)));
        }
        for (int h = 0; h <= two; h++) {
            uint8_t *blk = panel + (b + h) * bb;
            for (int t = 0; t < QK / 4; t++)
                _mm512_storeu_si512(blk + t * TILE * 4,
                                    _mm512_i32gather_epi32(_mm512_add_epi32(row_dwords, _mm512_set1_epi32(h * QK / 4 + t)), q, 4));
            float *scales = (float *)(blk + B_TILE_BYTES);
            for (int r = 0; r < TILE; r++) {
                const uint8_t *src = w + r * w_row_bytes + (b + h) * type_size;
                scales[r] = r < rows ? load_half(src) : 0.0f;
                if (has_min) scales[TILE + r] = r < rows ? load_half(src + 2) : 0.0f;
            }
        }
    }
}

/* xq: one row of Q8_1 (has_min) or Q8_0 blocks */
INLINE void pack_x_legacy(int has_min, const uint8_t *xq, int64_t k, uint8_t *xp) {
    const size_t x_size = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const size_t x_qs = has_min ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    const int64_t nb = k / QK;
    float *dx = (float *)(xp + nb * QK), *sx = dx + nb;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = xq + b * x_size;
        memcpy(xp + b * QK, blk + x_qs, QK);
        dx[b] = load_half(blk);
        if (has_min) sx[b] = load_half(blk + 2);
    }
}

/* ---- the tiles --------------------------------------------------------------------------- */

/* C (act_rows, 16 int32), A (act_rows, one block), B (QK / 4, 16 dwords) in both sets */
static void configure(jl_tile_config *cfg, int act_rows) {
    memset(cfg, 0, sizeof *cfg);
    cfg->palette = 1;
    const int c[2] = {TC0, TC1}, a[2] = {TA0, TA1}, b[2] = {TB0, TB1};
    for (int s = 0; s < 2; s++) {
        cfg->rows[c[s]] = (uint8_t)act_rows;
        cfg->colsb[c[s]] = TILE * 4;
        cfg->rows[a[s]] = (uint8_t)act_rows;
        cfg->colsb[a[s]] = QK;
        cfg->rows[b[s]] = QK / 4;
        cfg->colsb[b[s]] = TILE * 4;
    }
    _tile_loadconfig(cfg);
}

/* sums (cnt, act_rows, TILE) <- the int32 dot products of blocks b0 .. b0 + cnt - 1 of the
 * activation rows at xc and the panel's weight rows */
static void block_sums(size_t bb, const uint8_t *panel, const uint8_t *xc, size_t x_stride, int64_t b0, int cnt,
                       int32_t *sums) {
    int i = 0;
    for (; i + 2 <= cnt; i += 2) {
        const int64_t b = b0 + i;
        _tile_zero(TC0);
        _tile_loadd(TA0, xc + b * QK, x_stride);
        _tile_loadd(TB0, panel + b * bb, TILE * 4);
        _tile_zero(TC1);
        _tile_loadd(TA1, xc + (b + 1) * QK, x_stride);
        _tile_loadd(TB1, panel + (b + 1) * bb, TILE * 4);
        _tile_dpbssd(TC0, TA0, TB0);
        _tile_dpbssd(TC1, TA1, TB1);
        _tile_stored(TC0, sums + (size_t)i * TILE * TILE, TILE * 4);
        _tile_stored(TC1, sums + (size_t)(i + 1) * TILE * TILE, TILE * 4);
    }
    if (i < cnt) {
        const int64_t b = b0 + i;
        _tile_zero(TC0);
        _tile_loadd(TA0, xc + b * QK, x_stride);
        _tile_loadd(TB0, panel + b * bb, TILE * 4);
        _tile_dpbssd(TC0, TA0, TB0);
        _tile_stored(TC0, sums + (size_t)i * TILE * TILE, TILE * 4);
    }
}

/* ---- vec_dot's float steps, across 16 weight rows ---------------------------------------- */

/* blocks g0 .. g0 + n - 1 (one group, n <= 16) of one activation row: lane L takes block tree_order[L] */
INLINE void group_steps(int has_min, size_t bb, const uint8_t *panel, const float *dx, const float *sx,
                        const int32_t *sums, int64_t b0, int64_t g0, const int n, __m512 acc[LANES]) {
    UNROLL for (int L = 0; L < LANES; L++) {
        const int j = tree_order[L];
        if (j >= n) continue;  /* vec_dot's lanes past the last block add d = 0 times their copies: nothing */
        const int64_t b = g0 + j;
        const float *scales = (const float *)(panel + b * bb + B_TILE_BYTES);
        const __m512 sum = _mm512_cvtepi32_ps(_mm512_load_si512(sums + (size_t)(b - b0) * TILE * TILE));
        acc[L] = _mm512_fmadd_ps(sum, _mm512_mul_ps(_mm512_loadu_ps(scales), _mm512_set1_ps(dx[b])), acc[L]);
        if (has_min) acc[L] = _mm512_fmadd_ps(_mm512_loadu_ps(scales + TILE), _mm512_set1_ps(sx[b]), acc[L]);
    }
}

/* blocks [b0, b0 + cnt) of the activation row xrow (sums_c: its row of each block's sums), its
 * accumulators kept in keep (LANES, TILE) between chunks; after the last block, its outputs
 * against the panel's rows (<= 16) to y */
INLINE void row_steps(int has_min, int64_t nb, const uint8_t *panel, const uint8_t *xrow, const int32_t *sums_c,
                      int64_t b0, int cnt, float *keep, int64_t rows, float *y) {
    const size_t bb = block_bytes(has_min);
    const float *dx = (const float *)(xrow + nb * QK), *sx = dx + nb;
    const int64_t lane_end = nb - legacy_tail_blocks(nb);  /* the tail, if any, is the last chunk's last group */
    __m512 acc[LANES];
    UNROLL for (int L = 0; L < LANES; L++) acc[L] = b0 ? _mm512_load_ps(keep + L * TILE) : _mm512_setzero_ps();
    for (int64_t g0 = b0; g0 < b0 + cnt && g0 < lane_end; g0 += LANES) {  /* chunks start at whole groups */
        if (lane_end - g0 >= LANES) group_steps(has_min, bb, panel, dx, sx, sums_c, b0, g0, LANES, acc);
        else group_steps(has_min, bb, panel, dx, sx, sums_c, b0, g0, (int)(lane_end - g0), acc);
    }
    if (b0 + cnt < nb) {
        UNROLL for (int L = 0; L < LANES; L++) _mm512_store_ps(keep + L * TILE, acc[L]);
        return;
    }
    /* hsum512_ps per weight row: lanes i + 8, then + 4, + 2, + 1 */
    __m512 t8[8], t4[4];
    UNROLL for (int i = 0; i < 8; i++) t8[i] = _mm512_add_ps(acc[i], acc[i + 8]);
    UNROLL for (int i = 0; i < 4; i++) t4[i] = _mm512_add_ps(t8[i], t8[i + 4]);
    const __m512 tree = _mm512_add_ps(_mm512_add_ps(t4[0], t4[2]), _mm512_add_ps(t4[1], t4[3]));
    __m512 chain = _mm512_setzero_ps();
    for (int64_t b = lane_end; b < nb; b++) {
        const float *scales = (const float *)(panel + b * bb + B_TILE_BYTES);
        const __m512 sum = _mm512_cvtepi32_ps(_mm512_load_si512(sums_c + (size_t)(b - b0) * TILE * TILE));
        chain = _mm512_fmadd_ps(sum, _mm512_mul_ps(_mm512_loadu_ps(scales), _mm512_set1_ps(dx[b])), chain);
        if (has_min) chain = _mm512_fmadd_ps(_mm512_loadu_ps(scales + TILE), _mm512_set1_ps(sx[b]), chain);
    }
    const __m512 out = _mm512_add_ps(tree, chain);
    _mm512_mask_storeu_ps(y, rows >= TILE ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1), out);
}

INLINE void panel_dot_legacy(int has_min, int64_t k, const uint8_t *panel, int64_t rows, const uint8_t *xp,
                             size_t x_stride, int64_t n, float *y, size_t y_stride) {
    const int64_t nb = k / QK;
    const size_t bb = block_bytes(has_min);
    jl_tile_config cfg __attribute__((aligned(64)));
    int32_t sums[CHUNK_BLOCKS * TILE * TILE] __attribute__((aligned(64)));  /* (block, activation row, weight row) */
    float keep[TILE * LANES * TILE] __attribute__((aligned(64)));         /* (activation row, lane, weight row) */
    int configured = 0;
    for (int64_t c0 = 0; c0 < n; c0 += TILE) {
        const int nc = n - c0 < TILE ? (int)(n - c0) : TILE;
        if (nc != configured) configure(&cfg, configured = nc);
        const uint8_t *xc = xp + c0 * x_stride;
        for (int64_t b0 = 0; b0 < nb; b0 += CHUNK_BLOCKS) {
            const int cnt = nb - b0 < CHUNK_BLOCKS ? (int)(nb - b0) : CHUNK_BLOCKS;
            block_sums(bb, panel, xc, x_stride, b0, cnt, sums);
            for (int c = 0; c < nc; c++)
                row_steps(has_min, nb, panel, xc + c * x_stride, sums + c * TILE, b0, cnt, keep + c * LANES * TILE, rows,
                          y + (c0 + c) * y_stride);
        }
    }
    _tile_release();
}

/* ---- the kernels per type ---------------------------------------------------------------- */

/* below: set by jl_amx_gemm_register (the AVX-512 level's traits of the type) */
#define LEGACY_AMX(NAME, PAIR, OFFSET, HAS_MIN)                                                              \
    static size_t NAME##_panel_bytes(int64_t k) { return (size_t)(k / QK) * block_bytes(HAS_MIN); }           \
    static size_t NAME##_x_bytes(int64_t k) { return x_bytes_legacy(HAS_MIN, k); }                            \
    static void NAME##_pack_w(const void *restrict w, size_t w_row_bytes, int64_t rows, int64_t k,           \
                              void *restrict panel) {                                                        \
        pack_w_legacy(PAIR, sizeof(block_##NAME), OFFSET, HAS_MIN, w, w_row_bytes, rows, k, panel);          \
    }                                                                                                        \
    static void NAME##_pack_x(const void *restrict xq, int64_t k, void *restrict xp) {                       \
        pack_x_legacy(HAS_MIN, xq, k, xp);                                                                   \
    }                                                                                                        \
    static void NAME##_panel_dot(int64_t k, const void *restrict panel, int64_t rows, const void *restrict xp, \
                                 size_t x_stride, int64_t n, float *restrict y, size_t y_stride) {          \
        panel_dot_legacy(HAS_MIN, k, panel, rows, xp, x_stride, n, y, y_stride);                             \
    }                                                                                                        \
    static jl_gemm_kernels NAME##_gemm = {                                                                   \
        .panel_rows = TILE, .panel_bytes = NAME##_panel_bytes, .x_bytes = NAME##_x_bytes,                    \
        .pack_w = NAME##_pack_w, .pack_x = NAME##_pack_x, .panel_dot = NAME##_panel_dot,                     \
        .min_rows = AMX_MIN_ROWS,                                                                            \
    };

/* q = u - offset, in int8 for all: |q| <= 16 (Q4_0, Q5_0), u <= 31 (Q4_1, Q5_1), Q8_0 and IQ4_NL signed bytes */
LEGACY_AMX(q4_0, pair_q4_0, 8, 0)
LEGACY_AMX(q4_1, pair_q4_1, 0, 1)
LEGACY_AMX(q5_0, pair_q5_0, 16, 0)
LEGACY_AMX(q5_1, pair_q5_1, 0, 1)
LEGACY_AMX(q8_0, pair_q8_0, 0, 0)
LEGACY_AMX(iq4_nl, pair_iq4_nl, 0, 0)

static jl_gemm_kernels *kernels_of(int type) {
    switch (type) {
    case JL_TYPE_Q4_0: return &q4_0_gemm;
    case JL_TYPE_Q4_1: return &q4_1_gemm;
    case JL_TYPE_Q5_0: return &q5_0_gemm;
    case JL_TYPE_Q5_1: return &q5_1_gemm;
    case JL_TYPE_Q8_0: return &q8_0_gemm;
    case JL_TYPE_IQ4_NL: return &iq4_nl_gemm;
    default: return NULL;
    }
}

const jl_gemm_kernels *VARIANT(jl_amx_gemm_kernels)(int type) { return kernels_of(type); }

void VARIANT(jl_amx_gemm_register)(jl_type_traits *table, const jl_type_traits *below) {
    for (int type = 0; type < JL_TYPE_COUNT; type++) {
        jl_gemm_kernels *gemm = kernels_of(type);
        if (!gemm || !table[type].name) continue;
        gemm->below = &below[type];
        table[type].gemm = gemm;
    }
}

/* the tests' driver: in the CPU's build, or in the emulated one where the compiler has no AMX */
#if defined(JANLIB_AMX) != defined(JANLIB_AMX_EMULATE)

jl_status jl_amx_gemm_check(int emulated, int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                            const float *x, int64_t n, float *y) {
    if (emulated) jl_amx_emu_fault();  /* a fresh start: an earlier call's fault on this thread is not this one's */
    const int needs = emulated ? JL_ISA_AVX512 : JL_ISA_AMX;
    if (jl_isa_detected() < needs)
        return jl_fail(JL_ERR_UNSUPPORTED, "amx_gemm_check: the %s GEMM needs the %s level, this CPU's best is %s",
                       emulated ? "emulated AMX" : "AMX", jl_isa_name(needs), jl_isa_name(jl_isa_detected()));
#if defined(JANLIB_AMX)
    const jl_gemm_kernels *gemm = emulated ? jl_amx_gemm_kernels_emulated(type) : jl_amx_gemm_kernels(type);
#else
    const jl_gemm_kernels *gemm = jl_amx_gemm_kernels_emulated(type);  /* emulated: the amx level is never detected */
#endif
    const jl_type_traits *wt = jl_traits_for(JL_ISA_AVX512, type);
    if (!gemm || !wt) return jl_fail(JL_ERR_UNSUPPORTED, "amx_gemm_check: no AMX GEMM for type id %d", type);
    const jl_type_traits *at = jl_traits_for(JL_ISA_AVX512, wt->activation);
    if (k <= 0 || k % wt->block_size || rows <= 0 || n <= 0)
        return jl_fail(JL_ERR_INVALID_ARG, "amx_gemm_check: rows %lld, k %lld, n %lld", (long long)rows, (long long)k, (long long)n);
    const size_t w_row_bytes = jl_row_bytes(wt, k), xq_row_bytes = jl_row_bytes(at, k), xp_row_bytes = gemm->x_bytes(k);
    if ((size_t)rows > w_bytes / w_row_bytes)
        return jl_fail(JL_ERR_INVALID_ARG, "amx_gemm_check: %lld rows of %zu bytes exceed the %zu bytes of W",
                       (long long)rows, w_row_bytes, w_bytes);
    uint8_t *xq = malloc(xq_row_bytes * (size_t)n);  /* (n, xq_row_bytes) */
    uint8_t *xp = aligned_alloc(64, (xp_row_bytes * (size_t)n + 63) / 64 * 64);  /* (n, xp_row_bytes) */
    /* one panel of TILE weight rows at a time: (k / QK, block_bytes), a block's B tile then its scales */
    uint8_t *panel = aligned_alloc(64, (gemm->panel_bytes(k) + 63) / 64 * 64);
    jl_status st = JL_OK;
    if (!xq || !xp || !panel) {
        st = jl_fail(JL_ERR_NOMEM, "amx_gemm_check: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        at->from_float(x + i * k, xq + i * xq_row_bytes, k);
        gemm->pack_x(xq + i * xq_row_bytes, k, xp + i * xp_row_bytes);
    }
    const int64_t pr = gemm->panel_rows;
    for (int64_t r = 0; r < rows; r += pr) {
        const int64_t panel_rows = rows - r < pr ? rows - r : pr;
        gemm->pack_w((const uint8_t *)w + r * w_row_bytes, w_row_bytes, panel_rows, k, panel);
        for (int64_t c = 0; c < n; c += CHECK_COLS)
            gemm->panel_dot(k, panel, panel_rows, xp + c * xp_row_bytes, xp_row_bytes, n - c < CHECK_COLS ? n - c : CHECK_COLS,
                            y + c * rows + r, (size_t)rows);
    }
    const char *fault = emulated ? jl_amx_emu_fault() : NULL;
    if (fault) st = jl_fail(JL_ERR_INTERNAL, "amx_gemm_check: the tile model refused an instruction: %s", fault);
done:
    free(xq);
    free(xp);
    free(panel);
    return st;
}

#endif
