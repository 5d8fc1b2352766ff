"""The float GEMM (F32, F16 and BF16 weights against float32 activations, from 2 activation rows)
at awkward shapes: rows off the 4-row panel, k off the 64-element step of the four FMA chains (a
lone element, masked tails of 1-15, a full 16-vector tail), every n from 1 to 70 (3-row column
tiles and their remainders, the 64-row column block and past it). Checked against numpy in float64 and bit for
bit against each row computed alone (n = 1 takes vec_dot): batch invariance at 1-3 threads."""

from __future__ import annotations

import numpy as np
import pytest

import janlib
from janlib import _core

from quant_data import FLOAT_TYPES, assert_matmul_within_bound, loaded_tensors, random_raw

ISAS = janlib.cpu_features()["available"]
# (rows, k)
SHAPES = [(1, 1), (2, 17), (3, 64), (4, 15), (5, 65), (6, 16), (7, 129), (37, 100), (11, 1000)]
N_MAX = 70


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    rng = np.random.default_rng(15)
    specs = {f"{t}_{r}x{k}": (t, random_raw(rng, t, r, k)) for t in FLOAT_TYPES for r, k in SHAPES}
    with loaded_tensors(tmp_path_factory.mktemp("gemm_float") / "gemm_float.gguf", specs) as tensors:
        yield tensors


def cases(tensors, ftype):
    return [tensors[f"{ftype}_{r}x{k}"] for r, k in SHAPES]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("ftype", FLOAT_TYPES)
def test_float_gemm_matches_numpy(tensors, ftype, isa):
    rng = np.random.default_rng(1)
    for tensor, raw in cases(tensors, ftype):
        assert_matmul_within_bound(tensor, raw, ftype, (2, 3, 8, 67), isa, rng)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("ftype", FLOAT_TYPES)
def test_float_gemm_rows_equal_each_row_alone(tensors, ftype, isa):
    rng = np.random.default_rng(3)
    for tensor, _ in cases(tensors, ftype):
        x = rng.standard_normal((N_MAX, tensor.shape[1])).astype(np.float32)
        with janlib.use_isa(isa):
            alone = np.concatenate([janlib.matmul(tensor, x[i:i + 1], n_threads=1) for i in range(N_MAX)])
            for n in range(2, N_MAX + 1):
                n_threads = 1 + n % 3
                np.testing.assert_array_equal(janlib.matmul(tensor, x[:n], n_threads=n_threads), alone[:n],
                                              err_msg=f"{tensor.name} n={n} threads={n_threads}")


@pytest.mark.parametrize("ftype", FLOAT_TYPES)
def test_float_gemm_keeps_no_copy_of_the_weights(tensors, ftype):
    """The float kernels read W's rows in place: a model's packed-weight cache stays empty."""
    cache = _core.PackedCache()
    rng = np.random.default_rng(4)
    for tensor, _ in cases(tensors, ftype):
        rows, k = tensor.shape
        x = rng.standard_normal((9, k)).astype(np.float32)
        y = np.empty((9, rows), np.float32)
        _core.matmul(tensor.type_id, tensor.raw, rows, x, y, 2, cache)
        np.testing.assert_array_equal(y, janlib.matmul(tensor, x, n_threads=1), err_msg=tensor.name)
    assert cache.nbytes == 0
