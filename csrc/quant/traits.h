/* traits.h — the per-type kernel table. Hot loops look kernels up here once per call;
 * there is no switch on the type inside them. */
#ifndef JANLIB_TRAITS_H
#define JANLIB_TRAITS_H

#include <stddef.h>
#include <stdint.h>

#include "janlib.h"

/* The most activation rows one vec_dot call takes: the weight row is unpacked once for all. */
#define JL_NC_MAX 4

/* dst (n,) <- src: n values, n a multiple of the block size */
typedef void (*jl_to_float_fn)(const void *restrict src, float *restrict dst, int64_t n);
/* dst <- src (n,): quantize one row, n a multiple of the block size */
typedef void (*jl_from_float_fn)(const float *restrict src, void *restrict dst, int64_t n);
/* s[c] = dot(w, x + c * x_stride) over k values for c < nc, 1 <= nc <= JL_NC_MAX;
 * w is one row of this type, x rows are in this type's activation format. */
typedef void (*jl_vec_dot_fn)(int64_t k, const void *restrict w, const void *restrict x,
                              size_t x_stride, int nc, float *restrict s);

typedef struct {
    const char *name;
    int64_t block_size;         /* values per block */
    int64_t type_size;          /* bytes per block */
    int activation;             /* jl_type that x is quantized to for vec_dot */
    jl_to_float_fn to_float;
    jl_from_float_fn from_float;  /* set for the types used as activation formats */
    jl_vec_dot_fn vec_dot;        /* set for the weight types */
} jl_type_traits;

/* The scalar reference table (quant/ref.c): every supported type has every kernel it needs. */
void jl_ref_register(jl_type_traits *table);
/* SIMD tables override the entries they speed up and leave the rest to the reference. */
void jl_avx2_register(jl_type_traits *table);
void jl_avx512_register(jl_type_traits *table);

/* Active table entry for a type, or NULL when the type is not supported. */
const jl_type_traits *jl_traits(int type);
/* Table for a given ISA level, for the tests that compare levels. */
const jl_type_traits *jl_traits_for(int isa, int type);

static inline size_t jl_row_bytes(const jl_type_traits *t, int64_t n) {
    return (size_t)(n / t->block_size) * (size_t)t->type_size;
}

#endif
