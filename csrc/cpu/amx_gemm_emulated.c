/* amx_gemm_emulated.c — amx_gemm.c built again with its tile instructions run by the software
 * model of cpu/amx_emulator.c (AVX-512 flags, no AMX): the tests check the AMX GEMM's arithmetic,
 * bit for bit against vec_dot, on machines without AMX (jl_amx_gemm_check). */
#define JANLIB_AMX_EMULATE 1
#include "cpu/amx_gemm.c"
