/* janlib.h — the one header the Python binding sees.
 *
 * Every entry point returns a jl_status; on failure jl_last_error() holds a message
 * (thread-local). Nothing here exits, aborts or calls back into Python. */
#ifndef JANLIB_H
#define JANLIB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    JL_OK = 0,
    JL_ERR_INVALID_ARG = 1,   /* a caller mistake: shape, size, range */
    JL_ERR_UNSUPPORTED = 2,   /* a type or ISA this build or CPU cannot run */
    JL_ERR_NOMEM = 3,
    JL_ERR_INTERNAL = 4,
} jl_status;

const char *jl_last_error(void);

/* GGML tensor type ids, as stored in GGUF files. */
typedef enum {
    JL_TYPE_F32 = 0,
    JL_TYPE_F16 = 1,
    JL_TYPE_Q4_0 = 2,
    JL_TYPE_Q4_1 = 3,
    JL_TYPE_Q5_0 = 6,
    JL_TYPE_Q5_1 = 7,
    JL_TYPE_Q8_0 = 8,
    JL_TYPE_Q8_1 = 9,
    JL_TYPE_Q2_K = 10,
    JL_TYPE_Q3_K = 11,
    JL_TYPE_Q4_K = 12,
    JL_TYPE_Q5_K = 13,
    JL_TYPE_Q6_K = 14,
    JL_TYPE_Q8_K = 15,
    JL_TYPE_BF16 = 30,
    JL_TYPE_COUNT = 40,
} jl_type;

/* Instruction-set levels, each a superset of the one before. */
typedef enum {
    JL_ISA_SCALAR = 0,
    JL_ISA_AVX2 = 1,    /* AVX2 + FMA + F16C */
    JL_ISA_AVX512 = 2,  /* AVX-512 F/BW/VL/DQ + VNNI */
    JL_ISA_COUNT = 3,
} jl_isa;

const char *jl_isa_name(int isa);
int jl_isa_best(void);                 /* best level this CPU can run */
int jl_isa_active(void);
jl_status jl_isa_set(int isa);         /* JL_ERR_UNSUPPORTED if the CPU lacks it */
/* cpuid feature flags as a space-separated list, e.g. "avx2 fma f16c avx512f ..." */
const char *jl_cpu_flags(void);

/* Type facts for the types this build computes with; JL_ERR_UNSUPPORTED otherwise. */
jl_status jl_type_info(int type, const char **name, int64_t *block_size, int64_t *type_size);
/* The activation format the type's dot product pairs with under the active ISA. */
int jl_type_activation(int type);

/* Threads: one persistent pool. n_threads <= 0 means the global default. */
int jl_default_threads(void);          /* initially the physical core count */
jl_status jl_set_default_threads(int n_threads);
int jl_physical_cores(void);

/* dst (n,) float32 <- src, n elements of type `type` (n a multiple of its block size). */
jl_status jl_dequantize(int type, const void *src, size_t src_bytes, float *dst, int64_t n,
                        int n_threads);

/* y (n, rows) = x (n, k) @ W.T, W (rows, k) of type `type`, rows packed back to back.
 * x is quantized once to the activation format of `type`, then rows are split across threads. */
jl_status jl_matmul(int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                    const float *x, int64_t n, float *y, int n_threads);

/* Activation quantization on its own, for tests: n rows of k floats -> activation blocks. */
jl_status jl_quantize_rows(int act_type, const float *x, int64_t n, int64_t k, void *dst,
                           size_t dst_bytes);

#ifdef __cplusplus
}
#endif
#endif
