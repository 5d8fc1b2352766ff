/* amx_emulator.c — a software model of the AMX tile registers and the instructions amx_tiles.h
 * maps, for checking the AMX kernels on machines without AMX. Written from the pseudo-code of the
 * Intel SDM (LDTILECFG, TILERELEASE, TILEZERO, TILELOADD, TILESTORED, TDPBSSD/TDPBSUD/TDPBUSD/
 * TDPBUUD), not from the kernels: palette 1 (8 tiles of at most 16 rows of 64 bytes), bytes past
 * a row's colsb and rows past a tile's rows written as zero, int32 sums wrapping around. Where the
 * CPU raises #UD or #GP the model records a fault (jl_amx_emu_fault) and leaves the state as it was.
 * Each thread has its own tile state, as each CPU thread does. Portable C: no AMX, no SIMD, built
 * on every machine (elsewhere than x86 with the tests' AMX entry point refusing). */
#define JANLIB_AMX_EMULATE 1
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cpu/amx_tiles.h"
#include "internal.h"

enum { MAX_NAMES = 8, MAX_ROWS = 16, BYTES_PER_ROW = 64, TMUL_MAX_K = 16, TMUL_MAX_N = 16 };

typedef struct {
    int configured;            /* TILES_CONFIGURED */
    jl_tile_config cfg;
    uint8_t data[MAX_NAMES][MAX_ROWS][BYTES_PER_ROW];
    char fault[160];
} tile_state;

static _Thread_local tile_state state;

static void fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fault(const char *fmt, ...) {
    if (state.fault[0]) return;  /* the first one explains the rest */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(state.fault, sizeof state.fault, fmt, ap);
    va_end(ap);
}

const char *jl_amx_emu_fault(void) {
    static _Thread_local char last[sizeof state.fault];
    if (!state.fault[0]) return NULL;
    memcpy(last, state.fault, sizeof last);
    state.fault[0] = 0;
    return last;
}

static void zero_all_tiles(void) { memset(state.data, 0, sizeof state.data); }

void jl_amx_emu_loadconfig(const void *config) {
    jl_tile_config cfg;
    memcpy(&cfg, config, sizeof cfg);
    if (cfg.palette == 0) {  /* palette 0: the init state, as TILERELEASE */
        jl_amx_emu_release();
        return;
    }
    if (cfg.palette != 1) {
        fault("LDTILECFG: palette %d is not supported (#GP)", cfg.palette);
        return;
    }
    for (int i = 0; i < 14; i++)
        if (cfg.reserved[i]) {
            fault("LDTILECFG: reserved byte %d is not zero (#GP)", i + 2);
            return;
        }
    if (cfg.start_row >= MAX_ROWS) {
        fault("LDTILECFG: start_row %d (#GP)", cfg.start_row);
        return;
    }
    for (int t = 0; t < 16; t++) {
        if (t >= MAX_NAMES) {
            if (cfg.rows[t] || cfg.colsb[t]) {
                fault("LDTILECFG: tile %d does not exist in palette 1 (#GP)", t);
                return;
            }
            continue;
        }
        if (cfg.rows[t] > MAX_ROWS || cfg.colsb[t] > BYTES_PER_ROW) {
            fault("LDTILECFG: tile %d of %d rows x %d bytes exceeds palette 1 (#GP)", t, cfg.rows[t], cfg.colsb[t]);
            return;
        }
        if ((cfg.rows[t] == 0) != (cfg.colsb[t] == 0)) {
            fault("LDTILECFG: tile %d has %d rows of %d bytes (#GP)", t, cfg.rows[t], cfg.colsb[t]);
            return;
        }
    }
    state.cfg = cfg;
    state.configured = 1;
    zero_all_tiles();
}

void jl_amx_emu_release(void) {
    memset(&state.cfg, 0, sizeof state.cfg);
    state.configured = 0;
    zero_all_tiles();
}

/* a tile an instruction may name: configured, in the palette, with rows */
static int usable(const char *insn, int t) {
    if (!state.configured) {
        fault("%s: tiles are not configured (#UD)", insn);
        return 0;
    }
    if (t < 0 || t >= MAX_NAMES || state.cfg.rows[t] == 0) {
        fault("%s: tmm%d is not configured (#UD)", insn, t);
        return 0;
    }
    return 1;
}

/* write_row_and_zero and zero_upper_rows of the SDM */
static void write_row_and_zero(int t, int row, const uint8_t *bytes, int nbytes) {
    memcpy(state.data[t][row], bytes, (size_t)nbytes);
    memset(state.data[t][row] + nbytes, 0, (size_t)(BYTES_PER_ROW - nbytes));
}

static void zero_upper_rows(int t, int from) {
    for (int r = from; r < MAX_ROWS; r++) memset(state.data[t][r], 0, BYTES_PER_ROW);
}

void jl_amx_emu_zero(int tile) {
    if (!usable("TILEZERO", tile)) return;
    memset(state.data[tile], 0, sizeof state.data[tile]);
}

void jl_amx_emu_loadd(int tile, const void *base, long stride) {
    if (!usable("TILELOADD", tile)) return;
    const int rows = state.cfg.rows[tile], nbytes = state.cfg.colsb[tile];
    for (int r = state.cfg.start_row; r < rows; r++)
        write_row_and_zero(tile, r, (const uint8_t *)base + (long)r * stride, nbytes);
    zero_upper_rows(tile, rows);
    state.cfg.start_row = 0;
}

void jl_amx_emu_stored(int tile, void *base, long stride) {
    if (!usable("TILESTORED", tile)) return;
    const int rows = state.cfg.rows[tile], nbytes = state.cfg.colsb[tile];
    for (int r = state.cfg.start_row; r < rows; r++) memcpy((uint8_t *)base + (long)r * stride, state.data[tile][r], (size_t)nbytes);
    state.cfg.start_row = 0;
}

static int32_t extend(uint8_t byte, int is_signed) { return is_signed ? (int32_t)(int8_t)byte : (int32_t)byte; }

void jl_amx_emu_dpb(int dst, int src1, int src2, int src1_signed, int src2_signed) {
    const char *insn = src1_signed ? (src2_signed ? "TDPBSSD" : "TDPBSUD") : (src2_signed ? "TDPBUSD" : "TDPBUUD");
    if (!usable(insn, dst) || !usable(insn, src1) || !usable(insn, src2)) return;
    if (dst == src1 || dst == src2 || src1 == src2) {
        fault("%s: tmm%d, tmm%d, tmm%d are not distinct (#UD)", insn, dst, src1, src2);
        return;
    }
    const jl_tile_config *c = &state.cfg;
    if (c->colsb[dst] % 4 || c->colsb[src1] % 4 || c->colsb[src2] % 4) {
        fault("%s: a row of %d, %d or %d bytes is not whole dwords (#UD)", insn, c->colsb[dst], c->colsb[src1], c->colsb[src2]);
        return;
    }
    if (c->rows[dst] != c->rows[src1]) {
        fault("%s: C has %d rows, A %d (#UD)", insn, c->rows[dst], c->rows[src1]);
        return;
    }
    if (c->colsb[src1] / 4 != c->rows[src2]) {
        fault("%s: A's rows hold %d dwords, B has %d rows (#UD)", insn, c->colsb[src1] / 4, c->rows[src2]);
        return;
    }
    if (c->colsb[dst] != c->colsb[src2]) {
        fault("%s: C's rows have %d bytes, B's %d (#UD)", insn, c->colsb[dst], c->colsb[src2]);
        return;
    }
    if (c->colsb[src1] / 4 > TMUL_MAX_K || c->colsb[dst] / 4 > TMUL_MAX_N) {
        fault("%s: K %d or N %d exceeds the TMUL unit (#UD)", insn, c->colsb[src1] / 4, c->colsb[dst] / 4);
        return;
    }
    const int m_rows = c->rows[dst], k_dwords = c->colsb[src1] / 4, n_dwords = c->colsb[dst] / 4;
    for (int m = 0; m < m_rows; m++) {
        uint32_t tmp[BYTES_PER_ROW / 4];  /* unsigned: the sums wrap around as the CPU's int32 */
        memcpy(tmp, state.data[dst][m], sizeof tmp);
        for (int k = 0; k < k_dwords; k++)
            for (int n = 0; n < n_dwords; n++) {
                const uint8_t *a = state.data[src1][m] + 4 * k, *b = state.data[src2][k] + 4 * n;
                uint32_t sum = 0;
                for (int i = 0; i < 4; i++)
                    sum += (uint32_t)(extend(a[i], src1_signed) * extend(b[i], src2_signed));
                tmp[n] += sum;
            }
        write_row_and_zero(dst, m, (const uint8_t *)tmp, 4 * n_dwords);
    }
    zero_upper_rows(dst, m_rows);
    state.cfg.start_row = 0;
}

jl_status jl_amx_emu_dpb_check(int src1_signed, int src2_signed, const int shapes[6], uint8_t *c, const uint8_t *a,
                               const uint8_t *b) {
    jl_tile_config cfg = {.palette = 1};
    uint8_t *const buffers[3] = {c, (uint8_t *)a, (uint8_t *)b};
    for (int t = 0; t < 3; t++) {
        if (shapes[2 * t] < 0 || shapes[2 * t] > 255 || shapes[2 * t + 1] < 0 || shapes[2 * t + 1] > 65535)
            return jl_fail(JL_ERR_INVALID_ARG, "amx_emu_dpb_check: tile %d of %d rows x %d bytes", t, shapes[2 * t],
                           shapes[2 * t + 1]);
        cfg.rows[t] = (uint8_t)shapes[2 * t];
        cfg.colsb[t] = (uint16_t)shapes[2 * t + 1];
    }
    jl_amx_emu_fault();  /* a fresh start */
    jl_amx_emu_loadconfig(&cfg);
    for (int t = 0; t < 3; t++) jl_amx_emu_loadd(t, buffers[t], cfg.colsb[t]);
    jl_amx_emu_dpb(0, 1, 2, src1_signed, src2_signed);
    jl_amx_emu_stored(0, c, cfg.colsb[0]);
    jl_amx_emu_release();
    const char *fault = jl_amx_emu_fault();
    return fault ? jl_fail(JL_ERR_INTERNAL, "%s", fault) : JL_OK;
}

#if !defined(JANLIB_X86)
jl_status jl_amx_gemm_check(int emulated, int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                            const float *x, int64_t n, float *y) {
    return jl_fail(JL_ERR_UNSUPPORTED, "amx_gemm_check: the AMX GEMM is built for x86 only");
}
#endif
