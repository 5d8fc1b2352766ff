# cython: language_level=3, boundscheck=False, wraparound=False
"""The binding: typed memoryviews in, the GIL released, one C call per whole-tensor op."""
from libc.stdint cimport int64_t, uint8_t

from janlib.errors import UnsupportedError

ISA_COUNT = JL_ISA_COUNT
TYPE_COUNT = JL_TYPE_COUNT


cdef int check(jl_status status) except -1:
    if status == JL_OK:
        return 0
    message = jl_last_error().decode("utf-8", "replace")
    if status == JL_ERR_INVALID_ARG:
        raise ValueError(message)
    if status == JL_ERR_UNSUPPORTED:
        raise UnsupportedError(message)
    if status == JL_ERR_NOMEM:
        raise MemoryError(message)
    raise RuntimeError(message)


def cpu_flags():
    return jl_cpu_flags().decode()


def isa_name(int isa):
    return jl_isa_name(isa).decode()


def isa_best():
    return jl_isa_best()


def isa_active():
    return jl_isa_active()


def isa_set(int isa):
    check(jl_isa_set(isa))


def type_info(int type_id):
    """(name, block_size, type_size) for a type this build computes with."""
    cdef const char *name
    cdef int64_t block_size, type_size
    check(jl_type_info(type_id, &name, &block_size, &type_size))
    return name.decode(), block_size, type_size


def type_activation(int type_id):
    return jl_type_activation(type_id)


def physical_cores():
    return jl_physical_cores()


def default_threads():
    return jl_default_threads()


def set_default_threads(int n_threads):
    check(jl_set_default_threads(n_threads))


def dequantize(int type_id, const uint8_t[::1] src, float[::1] dst, int n_threads=0):
    """dst (n,) <- src: n = len(dst) values of type_id."""
    cdef jl_status status
    if dst.shape[0] == 0:
        return
    if src.shape[0] == 0:
        raise ValueError("dequantize: empty source buffer")
    with nogil:
        status = jl_dequantize(type_id, &src[0], src.shape[0], &dst[0], dst.shape[0], n_threads)
    check(status)


def matmul(int type_id, const uint8_t[::1] w, int64_t rows, const float[:, ::1] x,
           float[:, ::1] y, int n_threads=0):
    """y (n, rows) = x (n, k) @ W.T for W (rows, k) of type_id."""
    cdef jl_status status
    if x.shape[0] != y.shape[0] or y.shape[1] != rows:
        raise ValueError(f"matmul: output shape {(y.shape[0], y.shape[1])} != {(x.shape[0], rows)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError("matmul: empty operand")
    with nogil:
        status = jl_matmul(type_id, &w[0], w.shape[0], rows, x.shape[1], &x[0, 0], x.shape[0],
                           &y[0, 0], n_threads)
    check(status)


def quantize_rows(int act_type, const float[:, ::1] x, uint8_t[::1] dst):
    """dst <- each row of x in the activation format act_type (for tests)."""
    cdef jl_status status
    if x.shape[0] == 0 or x.shape[1] == 0 or dst.shape[0] == 0:
        raise ValueError("quantize_rows: empty operand")
    with nogil:
        status = jl_quantize_rows(act_type, &x[0, 0], x.shape[0], x.shape[1], &dst[0], dst.shape[0])
    check(status)


include "_sampling.pxi"
