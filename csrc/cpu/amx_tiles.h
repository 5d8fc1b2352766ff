/* amx_tiles.h — the AMX tile instructions amx_gemm.c runs: the CPU's (the compiler's intrinsics),
 * or, where JANLIB_AMX_EMULATE is defined, a software model of the tile registers
 * (cpu/amx_emulator.c, written from the instruction set reference), so that the kernel's own code
 * is checked on machines without AMX. The model keeps one tile state per thread, as the CPU does. */
#ifndef JANLIB_AMX_TILES_H
#define JANLIB_AMX_TILES_H

#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "quant/traits.h"

/* The 64-byte operand of LDTILECFG (palette 1: 8 tiles of at most 16 rows of 64 bytes). */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];  /* bytes per row, tiles 0..7 (8..15 must be 0) */
    uint8_t rows[16];
} jl_tile_config;
_Static_assert(sizeof(jl_tile_config) == 64, "LDTILECFG reads 64 bytes");

#if defined(JANLIB_AMX_EMULATE)
void jl_amx_emu_loadconfig(const void *config);
void jl_amx_emu_release(void);
void jl_amx_emu_zero(int tile);
void jl_amx_emu_loadd(int tile, const void *base, long stride);
void jl_amx_emu_stored(int tile, void *base, long stride);
/* TDPB{S,U}{S,U}D: dst += src1 . src2, bytes of src1 (src2) signed where src1_signed (src2_signed) */
void jl_amx_emu_dpb(int dst, int src1, int src2, int src1_signed, int src2_signed);

/* the compiler's headers define these as macros whatever the target flags */
#undef _tile_loadconfig
#undef _tile_release
#undef _tile_zero
#undef _tile_loadd
#undef _tile_stored
#undef _tile_dpbssd
#define _tile_loadconfig(config) jl_amx_emu_loadconfig(config)
#define _tile_release() jl_amx_emu_release()
#define _tile_zero(tile) jl_amx_emu_zero(tile)
#define _tile_loadd(tile, base, stride) jl_amx_emu_loadd(tile, base, (long)(stride))
#define _tile_stored(tile, base, stride) jl_amx_emu_stored(tile, base, (long)(stride))
#define _tile_dpbssd(dst, src1, src2) jl_amx_emu_dpb(dst, src1, src2, 1, 1)
#elif defined(__GNUC__) && !defined(__clang__)
/* GCC's _tile_loadconfig gives only the configuration's first 8 bytes to its asm as input, so the
 * stores of the rest could be dropped as dead: this one reads all 64. */
#undef _tile_loadconfig
#define _tile_loadconfig(config) __asm__ volatile("ldtilecfg %0" ::"m"(*(const jl_tile_config *)(config)))
/* GCC's _tile_loadd tells its asm neither that it reads memory nor which, so the stores that fill
 * the panel or the activation rows could be moved past it or dropped: the "memory" clobber keeps
 * them before it. Two levels, so that a tile's macro name expands to its digit before "#". */
#undef _tile_loadd
#define jl_tile_loadd_asm(tile, base, stride)                                                            \
    __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #tile "|tileloadd\t%%tmm" #tile ", [%0+%1*1]}"       \
                     ::"r"((const void *)(base)), "r"((long)(stride))                                    \
                     : "memory")
#define _tile_loadd(tile, base, stride) jl_tile_loadd_asm(tile, base, stride)
#endif

/* The first fault the model met on this thread since the last call (an instruction the CPU would
 * refuse with #UD or #GP: an invalid configuration, an unconfigured tile, mismatched shapes), or
 * NULL; the call clears it. */
const char *jl_amx_emu_fault(void);

/* amx_gemm.c's two builds' GEMM of a type (NULL where it has none), for the tests' driver */
const jl_gemm_kernels *jl_amx_gemm_kernels(int type);
const jl_gemm_kernels *jl_amx_gemm_kernels_emulated(int type);

#endif
