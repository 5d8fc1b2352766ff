/* avx2.c — AVX2 + FMA + F16C kernels; compiled with those flags only. */
#include "quant/traits.h"

void jl_avx2_register(jl_type_traits *t) { (void)t; }
