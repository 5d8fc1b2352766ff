"""Kernels: dequantize and matmul for every type at every ISA level the CPU has, against the
gguf package's numpy dequantization and a float64 matmul, and every SIMD level against scalar."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import janlib
from janlib import _core
from janlib.gguf import GGML_TYPE_BY_NAME

from quant_data import (ALL_TYPES, ACTIVATION, block_size, loaded_tensors, matmul_error_bound, random_raw,
                        reference_dequantize, write_tensors)

ISAS = janlib.cpu_features()["available"]
SIMD_ISAS = [isa for isa in ISAS if isa != "scalar"]
N_VALUES = [1, 3, 7, 512]
ROWS = 37  # not a multiple of any thread count used here


def shapes_for(qtype: str) -> list[tuple[int, int]]:
    bs = block_size(qtype)
    return [(ROWS, bs), (ROWS, 7 * bs), (5, 4096)]  # the smallest k, an odd block count, a long row


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    """Every type at every shape, in one GGUF file read back through janlib.load_gguf."""
    rng = np.random.default_rng(20261201)
    specs = {f"{t}_{r}x{k}": (t, random_raw(rng, t, r, k)) for t in ALL_TYPES for r, k in shapes_for(t)}
    with loaded_tensors(tmp_path_factory.mktemp("kernels") / "random.gguf", specs) as tensors:
        yield tensors


def tensor_names(qtype: str) -> list[str]:
    return [f"{qtype}_{r}x{k}" for r, k in shapes_for(qtype)]


def test_type_table_matches_the_file_format():
    # the activation formats Q8_1 and Q8_K are internal: files never store them
    for name in ALL_TYPES:
        info = GGML_TYPE_BY_NAME[name]
        assert _core.type_info(info.type_id) == (info.name, info.block_size, info.type_size)


@pytest.mark.parametrize("name", ["IQ3_S", "IQ2_XXS", "TQ1_0", "MXFP4"])
def test_unsupported_type_is_a_clear_error(tmp_path, name):
    info = GGML_TYPE_BY_NAME[name]
    raw = np.random.default_rng(0).integers(0, 256, (2, info.type_size), dtype=np.uint8)
    path = write_tensors(tmp_path / "t.gguf", {"w": (name, raw)})
    with janlib.load_gguf(path) as f:
        for call in (lambda t: janlib.dequantize(t), lambda t: janlib.matmul(t, np.ones((1, t.shape[1]), np.float32))):
            with pytest.raises(janlib.UnsupportedError, match=name):
                call(f.tensors["w"])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_matches_gguf_numpy(tensors, qtype, isa):
    for name in tensor_names(qtype):
        tensor, raw = tensors[name]
        expected = reference_dequantize(raw, qtype)
        with janlib.use_isa(isa):
            got = janlib.dequantize(tensor)
        assert got.dtype == np.float32 and got.shape == tensor.shape
        # float rounding of the K-quant products d*sc*q - dmin*m; legacy and float types are exact
        np.testing.assert_allclose(got, expected, rtol=2**-22, atol=2**-22 * np.abs(expected).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_matmul_within_activation_quantization_bound(tensors, qtype, n, isa):
    rng = np.random.default_rng(n)
    for name in tensor_names(qtype):
        tensor, raw = tensors[name]
        w = reference_dequantize(raw, qtype)
        x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
        with janlib.use_isa(isa):
            y = janlib.matmul(tensor, x)
        assert y.dtype == np.float32 and y.shape == (n, w.shape[0])
        err = np.abs(y - x.astype(np.float64) @ w.T)
        bound = matmul_error_bound(w, x.astype(np.float64), qtype, raw)
        assert np.all(err <= bound), f"{name}: worst err/bound {np.max(err / bound):.3f}"


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_simd_matmul_agrees_with_scalar(tensors, qtype, n, isa):
    rng = np.random.default_rng(100 + n)
    for name in tensor_names(qtype):
        tensor, raw = tensors[name]
        x = rng.standard_normal((n, tensor.shape[1])).astype(np.float32)
        with janlib.use_isa("scalar"):
            expected = janlib.matmul(tensor, x)
        with janlib.use_isa(isa):
            got = janlib.matmul(tensor, x)
        # the same integer block sums; only the float accumulation order differs
        terms = tensor.shape[1] // block_size(qtype) + 8
        scale = np.abs(x).astype(np.float64) @ np.abs(reference_dequantize(raw, qtype)).T
        assert np.all(np.abs(got - expected) <= 2 * terms * 2.0**-23 * scale)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_a_row_does_not_depend_on_the_other_rows(tensors, qtype, isa):
    """Batch invariance: row i of matmul(W, X) is bit-identical to matmul(W, X[i:i+1]) for any
    number of rows (the kernels group rows in fours and in column blocks, and from 16 rows some
    types take the GEMM)."""
    rng = np.random.default_rng(11)
    for name in tensor_names(qtype):
        tensor, _ = tensors[name]
        x = rng.standard_normal((70, tensor.shape[1])).astype(np.float32)
        with janlib.use_isa(isa):
            alone = np.concatenate([janlib.matmul(tensor, x[i:i + 1]) for i in range(len(x))])
            for n in (2, 3, 4, 5, 7, 15, 16, 17, 32, 64, 70):
                np.testing.assert_array_equal(janlib.matmul(tensor, x[:n]), alone[:n], err_msg=f"{name} n={n}")


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("act", ["Q8_0", "Q8_1", "Q8_K"])
def test_simd_activation_quantization_is_bit_exact(act, isa):
    type_id = GGML_TYPE_BY_NAME[act].type_id
    _, bs, type_size = _core.type_info(type_id)  # internal formats: the C table is their definition
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((9, 4096)) * rng.exponential(1.0, (9, 1))).astype(np.float32)
    x[3, :256] = 0.0  # an all-zero block: d = 0
    x[4, 5] = 1e30
    out = {}
    for level in ("scalar", isa):
        buf = np.empty(9 * 4096 // bs * type_size, dtype=np.uint8)
        with janlib.use_isa(level):
            _core.quantize_rows(type_id, x, buf)
        out[level] = buf
    np.testing.assert_array_equal(out[isa], out["scalar"])


@pytest.mark.parametrize("isa", ISAS)
def test_f16_cache_rows_round_as_numpy(isa):
    """A float row stored to an F16 KV cache rounds to nearest even as numpy's float16: normals,
    subnormals, ties, overflow to inf, a length off the 16-lane vector."""
    info = GGML_TYPE_BY_NAME["F16"]
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 203)) * np.float32(2.0) ** rng.integers(-26, 17, (3, 203))).astype(np.float32)
    x[0, :6] = [65504.0, 65520.0, 1e6, -0.0, 2.0**-25, 3 * 2.0**-25]
    x[1, :4] = [1 + 2.0**-11, 1 + 3 * 2.0**-11, -(2 + 2.0**-10), 2.0**-14 - 2.0**-25]
    buf = np.empty(x.size * 2, dtype=np.uint8)
    with janlib.use_isa(isa):
        _core.quantize_rows(info.type_id, x, buf)
    with np.errstate(over="ignore"):  # 1e6 and 65520 overflow to inf on purpose
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(buf.view(np.uint16), expected.view(np.uint16).ravel())


def test_activation_quantization_matches_its_definition():
    """Q8_0 from the definition: d = max|x| / 127, q = round-half-even(x / d), d stored as fp16."""
    info = GGML_TYPE_BY_NAME["Q8_0"]
    x = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
    buf = np.empty(256 // 32 * info.type_size, dtype=np.uint8)
    with janlib.use_isa("scalar"):
        _core.quantize_rows(info.type_id, x, buf)
    blocks = buf.reshape(-1, info.type_size)
    d = np.abs(x.reshape(-1, 32)).max(axis=1) / np.float32(127)
    np.testing.assert_array_equal(blocks[:, :2].copy().view(np.float16)[:, 0], d.astype(np.float16))
    q = np.rint(x.reshape(-1, 32) * (np.float32(1) / d)[:, None]).astype(np.int8)
    np.testing.assert_array_equal(blocks[:, 2:].view(np.int8), q)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
def test_thread_counts_agree(tensors, n_threads):
    tensor, _ = tensors["Q4_K_37x1792"]
    x = np.random.default_rng(1).standard_normal((7, tensor.shape[1])).astype(np.float32)
    np.testing.assert_array_equal(janlib.matmul(tensor, x, n_threads=n_threads), janlib.matmul(tensor, x, n_threads=1))


def test_matmul_accepts_a_vector_and_rejects_bad_shapes(tensors):
    tensor, _ = tensors["Q8_0_37x224"]
    x = np.random.default_rng(2).standard_normal(224).astype(np.float32)
    np.testing.assert_array_equal(janlib.matmul(tensor, x), janlib.matmul(tensor, x[None, :])[0])
    with pytest.raises(ValueError, match="expected"):
        janlib.matmul(tensor, np.ones((2, 223), np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        janlib.matmul(tensor, x, n_threads=0)


def test_unavailable_isa_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ISA"):
        janlib.set_isa("neon")
    features = janlib.cpu_features()
    assert features["active"] in features["available"]
    assert features["available"][0] == "scalar"
