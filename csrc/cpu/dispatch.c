/* dispatch.c — cpuid → the best ISA level → one kernel table per level.
 *
 * Tables are built once: the scalar reference first, then each SIMD file overrides what it
 * speeds up. JANLIB_ISA=scalar|avx2|avx512|amx picks a level at start-up (jl_init). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quant/traits.h"

#if defined(JANLIB_X86)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static const char *const isa_names[JL_ISA_COUNT] = {"scalar", "avx2", "avx512", "amx"};

static jl_type_traits tables[JL_ISA_COUNT][JL_TYPE_COUNT];
static int best_isa = JL_ISA_SCALAR;
static int detected_isa = JL_ISA_SCALAR;  /* best_isa before jl_amx_emulate */
static char cpu_flags[256];
static atomic_int active_isa = JL_ISA_SCALAR;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;
static int avxvnni;  /* the avx2 level's GEMM runs its AVX-VNNI build */

#if defined(JANLIB_X86)
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Linux hands out the AMX tile data state (XTILEDATA, 8 KiB per thread) only to a process
 * that asks: without it a tile instruction faults. */
#if defined(JANLIB_AMX)
static int request_tile_state(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}
#endif

static void detect(void) {
    unsigned a, b, c, d;
    int has_amx_bf16 = 0, has_amx_tile = 0, has_amx_int8 = 0;
    int has_avx2 = 0, has_fma = 0, has_f16c = 0, has_osxsave = 0, has_bmi2 = 0;
    int has_f = 0, has_bw = 0, has_vl = 0, has_dq = 0, has_vnni = 0, has_avxvnni = 0;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        has_fma = (c >> 12) & 1;
        has_osxsave = (c >> 27) & 1;
        has_f16c = (c >> 29) & 1;
    }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        has_avx2 = (b >> 5) & 1;
        has_bmi2 = (b >> 8) & 1;
        has_f = (b >> 16) & 1;
        has_dq = (b >> 17) & 1;
        has_bw = (b >> 30) & 1;
        has_vl = (b >> 31) & 1;
        has_vnni = (c >> 11) & 1;
        has_amx_bf16 = (d >> 22) & 1;
        has_amx_tile = (d >> 24) & 1;
        has_amx_int8 = (d >> 25) & 1;
        /* sub-leaf 1 exists where sub-leaf 0's EAX, the last sub-leaf, says so */
        if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) has_avxvnni = (a >> 4) & 1;
    }
    /* the OS must save the wider registers: YMM (bits 1-2), and opmask/ZMM (bits 5-7) */
    uint64_t xcr0 = has_osxsave ? xgetbv0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;
    int os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0;
    if (!os_ymm) has_avx2 = has_fma = has_f16c = has_avxvnni = 0;
    if (!os_zmm) has_f = has_bw = has_vl = has_dq = has_vnni = 0;
    /* and the tile state: XTILECFG and XTILEDATA (bits 17-18), granted to this process. A refusal
     * keeps the CPU's flags and adds amx-denied, so that the amx level's absence is explained. */
    const int os_tiles = has_amx_tile && (xcr0 & 0x60000) == 0x60000;
    if (!os_tiles) has_amx_bf16 = has_amx_tile = has_amx_int8 = 0;
#if defined(JANLIB_AMX)
    /* the request is process-wide and made here at start-up, even where JANLIB_ISA keeps a lower level */
    const int tiles_denied = os_tiles && !request_tile_state();
#else
    const int tiles_denied = 0;  /* never asked: this build runs the amx level on the tile model alone */
#endif

    const struct { const char *name; int on; } flags[] = {
        {"avx2", has_avx2}, {"fma", has_fma}, {"f16c", has_f16c}, {"bmi2", has_bmi2},
        {"avx512f", has_f}, {"avx512bw", has_bw}, {"avx512vl", has_vl}, {"avx512dq", has_dq},
        {"avx512vnni", has_vnni}, {"avxvnni", has_avxvnni}, {"amx-tile", has_amx_tile}, {"amx-int8", has_amx_int8},
        {"amx-bf16", has_amx_bf16}, {"amx-denied", tiles_denied},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!flags[i].on) continue;
        if (cpu_flags[0]) strcat(cpu_flags, " ");
        strcat(cpu_flags, flags[i].name);
    }
    if (has_avx2 && has_fma && has_f16c && has_bmi2) best_isa = JL_ISA_AVX2;
    avxvnni = has_avxvnni;
    if (best_isa == JL_ISA_AVX2 && has_f && has_bw && has_vl && has_dq && has_vnni)
        best_isa = JL_ISA_AVX512;
#if defined(JANLIB_AMX)
    if (best_isa == JL_ISA_AVX512 && has_amx_tile && has_amx_int8 && !tiles_denied) best_isa = JL_ISA_AMX;
#endif
}
#else
static void detect(void) {}
#endif

static void build_tables(void) {
    detect();
    for (int isa = 0; isa < JL_ISA_COUNT; isa++) jl_ref_register(tables[isa]);
    /* the reference attend kernel is the scalar level's only: AVX2 keeps its dot products */
    jl_ref_attention_register(tables[JL_ISA_SCALAR]);
#if defined(JANLIB_X86)
    for (int isa = JL_ISA_AVX2; isa < JL_ISA_COUNT; isa++) jl_avx2_register(tables[isa]);
    /* AVX-VNNI is no level of its own (Zen 4 has AVX-512 VNNI but not AVX-VNNI): it picks the avx2
     * level's GEMM build. JANLIB_AVXVNNI=0 keeps the AVX2 build (the tests compare the two). */
#if defined(JANLIB_AVXVNNI)
    const char *vnni_env = getenv("JANLIB_AVXVNNI");
    if (avxvnni && !(vnni_env && strcmp(vnni_env, "0") == 0)) jl_avxvnni_gemm_register(tables[JL_ISA_AVX2]);
    else
#endif
        jl_avx2_gemm_register(tables[JL_ISA_AVX2]);
    for (int isa = JL_ISA_AVX512; isa < JL_ISA_COUNT; isa++) {
        jl_avx512_register(tables[isa]);
        jl_avx512_gemm_register(tables[isa]);
        jl_avx512_gemm_float_register(tables[isa]);
        jl_avx512_attention_register(tables[isa]);
    }
    /* without the CPU's tiles the amx level is offered to the tests alone, on the tile model (jl_amx_emulate) */
#if defined(JANLIB_AMX)
    if (best_isa == JL_ISA_AMX) jl_amx_gemm_register(tables[JL_ISA_AMX], tables[JL_ISA_AVX512]);
    else
#endif
        jl_amx_gemm_register_emulated(tables[JL_ISA_AMX], tables[JL_ISA_AVX512]);
#endif
    detected_isa = best_isa;
    atomic_store(&active_isa, best_isa);
}

static void ensure_tables(void) { pthread_once(&tables_once, build_tables); }

const char *jl_isa_name(int isa) {
    return isa >= 0 && isa < JL_ISA_COUNT ? isa_names[isa] : "unknown";
}

int jl_isa_best(void) { ensure_tables(); return best_isa; }
int jl_isa_detected(void) { ensure_tables(); return detected_isa; }

jl_status jl_amx_emulate(int on) {
    ensure_tables();
    if (detected_isa == JL_ISA_AMX) return JL_OK;  /* the CPU's own tiles */
    if (detected_isa < JL_ISA_AVX512)
        return jl_fail(JL_ERR_UNSUPPORTED, "amx_emulate: the tile model's kernels need avx512, this CPU's best is %s",
                       isa_names[detected_isa]);
    best_isa = on ? JL_ISA_AMX : detected_isa;
    int amx = JL_ISA_AMX;
    if (!on) atomic_compare_exchange_strong(&active_isa, &amx, detected_isa);
    return JL_OK;
}

int jl_isa_active(void) { ensure_tables(); return atomic_load(&active_isa); }
const char *jl_cpu_flags(void) { ensure_tables(); return cpu_flags; }

jl_status jl_isa_set(int isa) {
    ensure_tables();
    if (isa < 0 || isa >= JL_ISA_COUNT)
        return jl_fail(JL_ERR_INVALID_ARG, "unknown ISA level %d", isa);
    if (isa > best_isa)
        return jl_fail(JL_ERR_UNSUPPORTED, "ISA %s is not available on this CPU (best: %s)",
                       isa_names[isa], isa_names[best_isa]);
    atomic_store(&active_isa, isa);
    return JL_OK;
}

const jl_type_traits *jl_traits_for(int isa, int type) {
    ensure_tables();
    if (isa < 0 || isa >= JL_ISA_COUNT || type < 0 || type >= JL_TYPE_COUNT) return NULL;
    const jl_type_traits *t = &tables[isa][type];
    return t->name ? t : NULL;
}

const jl_type_traits *jl_traits(int type) { return jl_traits_for(jl_isa_active(), type); }

jl_status jl_type_info(int type, const char **name, int64_t *block_size, int64_t *type_size) {
    const jl_type_traits *t = jl_traits(type);
    if (!t) return jl_fail(JL_ERR_UNSUPPORTED, "tensor type id %d is not supported", type);
    *name = t->name;
    *block_size = t->block_size;
    *type_size = t->type_size;
    return JL_OK;
}

int jl_type_activation(int type) {
    const jl_type_traits *t = jl_traits(type);
    return t ? t->activation : -1;
}
