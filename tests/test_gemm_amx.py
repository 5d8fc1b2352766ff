"""The AMX int8 GEMM (tiles, TDPBSSD) of the legacy block types.

Its outputs must equal vec_dot's bit for bit (decode rows keep vec_dot at the amx level), at
awkward shapes: k of 18, 20, 28, 64, 3 and 33 blocks (vec_dot's scalar tail of 2 and 4 blocks, a
last group of 12, two chunks of 32 blocks, a row that is all tail, a tail of 1 in a second chunk),
weight rows off the 16-row panel and activation rows off the 16-row tile. Where the CPU has no
AMX the same kernel source runs with its tile instructions on a software model of the tile
registers, written from the instruction set reference and checked here against numpy, and the amx
level itself (janlib.matmul from 16 rows, the AVX-512 kernels below, threads, the packed-weight
cache, a forward pass) runs on that model's kernels; the tests of the CPU's own tiles run wherever
AMX is present and skip elsewhere, saying why."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import janlib
from janlib import _core
from janlib.kernels import ISA_LEVELS

from quant_data import loaded_tensors, matmul_error_bound, random_raw, reference_dequantize
from test_batch import alone, check_mixed_batches, runtime, tokens  # noqa: F401 (runtime: a fixture)

FEATURES = janlib.cpu_features()
AMX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]
# (weight rows, k): k = 576 and 640 (SmolLM2, Gemma-3-270M), 896 (Qwen2.5-0.5B), 2048 (two chunks of 32 blocks)
SHAPES = [(67, 576), (17, 640), (37, 896), (21, 2048), (7, 96), (19, 1056)]
N_VALUES = [1, 5, 16, 17, 33, 67]

needs_avx512 = pytest.mark.skipif("avx512" not in FEATURES["available"],
                                  reason="the emulated AMX kernel runs on AVX-512, which this CPU lacks")
needs_amx = pytest.mark.skipif(
    "amx" not in FEATURES["available"],
    reason="the CPU has AMX but the OS refused this process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    if "amx-denied" in FEATURES["flags"] else
    f"no AMX on this CPU or in this build (best level {FEATURES['best']}; flags: {' '.join(FEATURES['flags'])})")


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    rng = np.random.default_rng(21)
    specs = {f"{t}_{r}x{k}": (t, random_raw(rng, t, r, k)) for t in AMX_TYPES for r, k in SHAPES}
    with loaded_tensors(tmp_path_factory.mktemp("amx") / "amx.gguf", specs) as tensors:
        yield tensors


@pytest.fixture
def amx_level():
    """The amx level offered: on the CPU's tiles where it has AMX, else on the tile model's kernels."""
    if "amx" not in FEATURES["available"]:
        if "avx512" not in FEATURES["available"]:
            pytest.skip("neither AMX nor the AVX-512 that the tile model's kernels run on")
        _core.amx_emulate(True)
    try:
        yield
    finally:
        _core.amx_emulate(False)  # nothing to undo on a CPU with AMX


def each_row_alone(tensor, x):
    """vec_dot's outputs at the avx512 level: one activation row per call takes no GEMM"""
    with janlib.use_isa("avx512"):
        return np.concatenate([janlib.matmul(tensor, x[i:i + 1], n_threads=1) for i in range(len(x))])


def amx_gemm(tensor, x, emulated):
    y = np.full((len(x), tensor.shape[0]), np.nan, np.float32)
    _core.amx_gemm_check(emulated, tensor.type_id, tensor.raw, tensor.shape[0], x, y)
    return y


# ---- the tile model against numpy ----------------------------------------------------------

def wrap_int32(v: np.ndarray) -> np.ndarray:
    return ((v + 2**31) % 2**32 - 2**31).astype(np.int32)


@pytest.mark.parametrize("src1_signed, src2_signed", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_tile_model_dot_product_matches_numpy(src1_signed, src2_signed):
    """C[m][n] += sum over k, i of A[m][4k + i] * B[k][4n + i], bytes sign- or zero-extended, int32 wrapping."""
    rng = np.random.default_rng(src1_signed * 2 + src2_signed)
    for m, k_dwords, n in [(16, 16, 16), (1, 1, 1), (7, 8, 16), (16, 3, 5), (13, 16, 11)]:
        a = rng.integers(0, 256, (m, 4 * k_dwords), dtype=np.uint8)
        b = rng.integers(0, 256, (k_dwords, 4 * n), dtype=np.uint8)
        c = rng.integers(-2**31, 2**31, (m, n), dtype=np.int64).astype(np.int32)  # sums that wrap around
        av = (a.view(np.int8) if src1_signed else a).astype(np.int64).reshape(m, k_dwords, 4)
        bv = (b.view(np.int8) if src2_signed else b).astype(np.int64).reshape(k_dwords, n, 4)
        want = wrap_int32(c.astype(np.int64) + np.einsum("mki,kni->mn", av, bv))
        got = c.copy()
        _core.amx_emu_dpb_check(src1_signed, src2_signed, got.view(np.uint8), a, b)
        np.testing.assert_array_equal(got, want, err_msg=f"m={m} k={4 * k_dwords} n={n}")


def test_tile_model_refuses_what_the_cpu_refuses():
    a, b, c = np.zeros((16, 64), np.uint8), np.zeros((16, 64), np.uint8), np.zeros((16, 64), np.uint8)
    with pytest.raises(RuntimeError, match="C has 15 rows, A 16"):
        _core.amx_emu_dpb_check(1, 1, c[:15].copy(), a, b)
    with pytest.raises(RuntimeError, match="B has 8 rows"):
        _core.amx_emu_dpb_check(1, 1, c, a, b[:8].copy())
    with pytest.raises(RuntimeError, match="C's rows have 32 bytes, B's 64"):
        _core.amx_emu_dpb_check(1, 1, c[:, :32].copy(), a, b)
    with pytest.raises(RuntimeError, match="LDTILECFG"):
        _core.amx_emu_dpb_check(1, 1, np.zeros((17, 64), np.uint8), a, b)


# ---- the kernel under the model --------------------------------------------------------------

@needs_avx512
@pytest.mark.parametrize("qtype", AMX_TYPES)
def test_emulated_amx_gemm_equals_vec_dot(tensors, qtype):
    rng = np.random.default_rng(7)
    for rows, k in SHAPES:
        tensor, raw = tensors[f"{qtype}_{rows}x{k}"]
        x = rng.standard_normal((max(N_VALUES), k)).astype(np.float32)
        alone = each_row_alone(tensor, x)
        for n in N_VALUES:
            np.testing.assert_array_equal(amx_gemm(tensor, x[:n], emulated=True), alone[:n],
                                          err_msg=f"{tensor.name} n={n}")
        w = reference_dequantize(raw, qtype)  # and an independent float64 reference
        err = np.abs(alone.astype(np.float64) - x.astype(np.float64) @ w.T)
        assert np.all(err <= matmul_error_bound(w, x.astype(np.float64), qtype, raw)), tensor.name


def test_amx_level_is_named_and_refused_cleanly_where_absent():
    assert ISA_LEVELS[-1] == "amx"
    assert janlib.cpu_features() == FEATURES  # no test left the emulated level offered
    has_tiles = {"amx-tile", "amx-int8"} <= set(FEATURES["flags"])
    if "amx" in FEATURES["available"]:
        assert has_tiles and "avx512" in FEATURES["available"] and "amx-denied" not in FEATURES["flags"]
    if "amx-denied" in FEATURES["flags"]:  # the CPU's flags stay listed where the OS refused the tile state
        assert has_tiles and "amx" not in FEATURES["available"]
    if "amx" not in FEATURES["available"]:
        with pytest.raises(janlib.UnsupportedError, match="amx is not available"):
            janlib.set_isa("amx")
        with pytest.raises(janlib.UnsupportedError, match="needs the amx level"):
            _core.amx_gemm_check(False, 8, np.zeros(34, np.uint8), 1, np.zeros((1, 32), np.float32),
                                 np.zeros((1, 1), np.float32))


def test_janlib_isa_forces_amx_off():
    """JANLIB_ISA=avx512 (or lower) keeps a process off the AMX kernels."""
    level = "avx512" if "avx512" in FEATURES["available"] else FEATURES["best"]
    out = subprocess.run([sys.executable, "-c", "import janlib; print(janlib.cpu_features()['active'])"],
                         env={**__import__("os").environ, "JANLIB_ISA": level}, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == level


# ---- the CPU's tiles ---------------------------------------------------------------------------

@needs_amx
@pytest.mark.parametrize("qtype", AMX_TYPES)
def test_amx_gemm_equals_vec_dot_and_the_model(tensors, qtype):
    rng = np.random.default_rng(8)
    for rows, k in SHAPES:
        tensor, _ = tensors[f"{qtype}_{rows}x{k}"]
        x = rng.standard_normal((max(N_VALUES), k)).astype(np.float32)
        alone = each_row_alone(tensor, x)
        for n in N_VALUES:
            got = amx_gemm(tensor, x[:n], emulated=False)
            np.testing.assert_array_equal(got, alone[:n], err_msg=f"{tensor.name} n={n}")
            np.testing.assert_array_equal(got, amx_gemm(tensor, x[:n], emulated=True), err_msg=f"{tensor.name} n={n}")


# ---- the amx level: the CPU's tiles, or the model's where it has none -----------------------------

@pytest.mark.parametrize("qtype", AMX_TYPES)
def test_amx_level_matmul_rows_equal_each_row_alone(tensors, qtype, amx_level):
    """Through janlib.matmul at the amx level (AMX from 16 rows, the AVX-512 kernels below), threads
    sharing the panels (each configures its own tiles), with and without a packed-weight cache."""
    rng = np.random.default_rng(9)
    for rows, k in SHAPES:
        tensor, _ = tensors[f"{qtype}_{rows}x{k}"]
        x = rng.standard_normal((max(N_VALUES), k)).astype(np.float32)
        alone = each_row_alone(tensor, x)
        cache = _core.PackedCache()
        with janlib.use_isa("amx"):
            for n, n_threads in [(1, 1), (5, 2), (16, 1), (17, 2), (67, 3), (16, 2)]:
                np.testing.assert_array_equal(janlib.matmul(tensor, x[:n], n_threads=n_threads), alone[:n],
                                              err_msg=f"{tensor.name} n={n} threads={n_threads}")
                y = np.empty((n, rows), np.float32)
                _core.matmul(tensor.type_id, tensor.raw, rows, x[:n], y, n_threads, cache)
                np.testing.assert_array_equal(y, alone[:n], err_msg=f"{tensor.name} n={n} cached")


def test_amx_level_forward_batches_equal_each_sequence_alone(runtime, amx_level):  # noqa: F811
    """A tiny model of each architecture (legacy-type projections) at the amx level: prefill chunks of
    more than 16 rows beside decode rows, bit-identical to each sequence alone, and a sequence's
    logits bit-identical to the avx512 level's (both GEMMs are vec_dot's arithmetic)."""
    ids = tokens(6, 70)
    with janlib.use_isa("avx512"):
        want = alone(runtime, ids, n_threads=2)
    with janlib.use_isa("amx"):
        check_mixed_batches(runtime)
        np.testing.assert_array_equal(alone(runtime, ids, n_threads=2), want)
