# C declarations of csrc/include/janlib.h for the binding.
from libc.stdint cimport int64_t

cdef extern from "janlib.h" nogil:
    ctypedef int jl_status
    int JL_OK
    int JL_ERR_INVALID_ARG
    int JL_ERR_UNSUPPORTED
    int JL_ERR_NOMEM
    int JL_ISA_COUNT
    int JL_TYPE_COUNT

    const char *jl_last_error()
    const char *jl_isa_name(int isa)
    int jl_isa_best()
    int jl_isa_active()
    jl_status jl_isa_set(int isa)
    const char *jl_cpu_flags()

    jl_status jl_type_info(int type, const char **name, int64_t *block_size, int64_t *type_size)
    int jl_type_activation(int type)

    int jl_default_threads()
    jl_status jl_set_default_threads(int n_threads)
    int jl_physical_cores()

    jl_status jl_dequantize(int type, const void *src, size_t src_bytes, float *dst, int64_t n,
                            int n_threads)
    jl_status jl_matmul(int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                        const float *x, int64_t n, float *y, int n_threads)
    jl_status jl_quantize_rows(int act_type, const float *x, int64_t n, int64_t k, void *dst,
                               size_t dst_bytes)
