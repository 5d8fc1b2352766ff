"""The GEMM path (many activation rows, weights repacked panel by panel) at awkward shapes: rows,
k and n that are not multiples of the panel (4 rows), the column tile (4), the lane group (16
blocks) or the column block (64). Checked against the gguf package's numpy dequantization times
x, against the scalar reference, and bit for bit against each row computed alone (n = 1 takes
the matvec kernels): batch invariance across the GEMM threshold. With a packed-weight cache (a
model's), the types whose panels are kept take the GEMM from one row on (widened from 64 rows)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import janlib
from janlib import _core

from quant_data import (QUANT_TYPES, assert_matmul_within_bound, block_size, loaded_tensors, random_raw,
                        reference_dequantize, write_tensors)

ISAS = janlib.cpu_features()["available"]
# (rows, blocks per row): a row count off every tile, a lone block, a short last group after full
# groups of 16 (tails of 1-4 blocks take their own layout), and an exact group
SHAPES = [(37, 1), (13, 7), (6, 18), (41, 20), (3, 33), (5, 35), (16, 16)]
N_VALUES = [16, 21, 67]
SHARED_ROWS = [37, 13, 6]  # weights that read the same x, as a layer's q, k and v: rows off the panel
SHARED_K = 512


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    rng = np.random.default_rng(15)
    specs = {f"{t}_{r}x{b}": (t, random_raw(rng, t, r, b * block_size(t))) for t in QUANT_TYPES for r, b in SHAPES}
    specs |= {f"{t}_shared{r}": (t, random_raw(rng, t, r, SHARED_K)) for t in QUANT_TYPES for r in SHARED_ROWS}
    with loaded_tensors(tmp_path_factory.mktemp("gemm") / "gemm.gguf", specs) as tensors:
        yield tensors


def cases(tensors, qtype):
    return [tensors[f"{qtype}_{r}x{b}"] for r, b in SHAPES]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_gemm_matches_numpy_dequantize(tensors, qtype, isa):
    rng = np.random.default_rng(1)
    for tensor, raw in cases(tensors, qtype):
        assert_matmul_within_bound(tensor, raw, qtype, N_VALUES, isa, rng)


@pytest.mark.parametrize("isa", [isa for isa in ISAS if isa != "scalar"])
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_gemm_agrees_with_scalar_reference(tensors, qtype, isa):
    rng = np.random.default_rng(2)
    for tensor, raw in cases(tensors, qtype):
        x = rng.standard_normal((67, tensor.shape[1])).astype(np.float32)
        with janlib.use_isa("scalar"):
            expected = janlib.matmul(tensor, x)
        with janlib.use_isa(isa):
            got = janlib.matmul(tensor, x, n_threads=2)
        # the same integer block sums; only the float accumulation order differs
        terms = tensor.shape[1] // block_size(qtype) + 8
        scale = np.abs(x).astype(np.float64) @ np.abs(reference_dequantize(raw, qtype)).T
        assert np.all(np.abs(got - expected) <= 2 * terms * 2.0**-23 * scale), tensor.name


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_gemm_rows_equal_each_row_alone(tensors, qtype, isa):
    rng = np.random.default_rng(3)
    for tensor, _ in cases(tensors, qtype):
        x = rng.standard_normal((67, tensor.shape[1])).astype(np.float32)
        with janlib.use_isa(isa):
            alone = np.concatenate([janlib.matmul(tensor, x[i:i + 1], n_threads=1) for i in range(len(x))])
            for n, n_threads in [(16, 1), (21, 2), (22, 2), (67, 2), (67, 3)]:  # column tiles of 4 and tails of 1, 2, 3
                np.testing.assert_array_equal(janlib.matmul(tensor, x[:n], n_threads=n_threads), alone[:n],
                                              err_msg=f"{tensor.name} n={n} threads={n_threads}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_kept_panels_equal_each_row_alone(tensors, qtype, isa):
    rng = np.random.default_rng(4)
    cache = _core.PackedCache()
    for tensor, _ in cases(tensors, qtype):
        rows, k = tensor.shape
        x = rng.standard_normal((67, k)).astype(np.float32)
        with janlib.use_isa(isa):
            alone = np.concatenate([janlib.matmul(tensor, x[i:i + 1], n_threads=1) for i in range(len(x))])
            for n, n_threads in [(1, 1), (2, 1), (3, 2), (5, 2), (9, 3), (21, 2), (67, 2), (2, 1)]:  # 67: widened; the last reuses kept panels
                y = np.empty((n, rows), np.float32)
                _core.matmul(tensor.type_id, tensor.raw, rows, x[:n], y, n_threads, cache)
                np.testing.assert_array_equal(y, alone[:n], err_msg=f"{tensor.name} n={n} threads={n_threads}")
    kept = isa in ("avx2", "avx512", "amx") and qtype in ("Q4_0", "Q4_1", "Q8_0")
    assert (cache.nbytes > 0) == kept


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_shared_activations_equal_each_weight_alone(tensors, qtype):
    """Weights that share x (quantized once, their rows in one parallel step) give each weight's own
    matmul bit for bit, with and without kept panels, at any thread count; of mixed types too."""
    rng = np.random.default_rng(5)
    same = [tensors[f"{qtype}_shared{r}"][0] for r in SHARED_ROWS]
    mixed = [same[0], tensors[f"Q6_K_shared{SHARED_ROWS[1]}"][0], same[2]]
    x = rng.standard_normal((21, SHARED_K)).astype(np.float32)
    for weights in (same, mixed):
        alone = [janlib.matmul(t, x, n_threads=1) for t in weights]
        for cache in (None, _core.PackedCache()):
            for n, n_threads in [(1, 1), (2, 2), (5, 3), (9, 2), (21, 2), (1, 2)]:
                ys = [np.empty((n, t.shape[0]), np.float32) for t in weights]
                _core.matmul_shared([(t.type_id, t.raw, t.shape[0]) for t in weights], x[:n], ys, n_threads, cache)
                for t, y, want in zip(weights, ys, alone):
                    np.testing.assert_array_equal(y, want[:n], err_msg=f"{t.name} n={n} threads={n_threads}")


AVXVNNI_CHILD = """
import sys
import numpy as np
import janlib
with janlib.load_gguf(sys.argv[1]) as f, janlib.use_isa("avx2"):
    ys = [janlib.matmul(tensor, np.load(sys.argv[2])[:, :tensor.shape[1]], n_threads=2) for tensor in f.tensors.values()]
    np.savez(sys.argv[3], *ys)
"""


@pytest.mark.skipif("avxvnni" not in janlib.cpu_features()["flags"],
                    reason="this CPU has no AVX-VNNI (CPUID.(EAX=7,ECX=1):EAX bit 4), where the VEX vpdpbusd "
                           "faults: the avx2 level runs the GEMM's AVX2 build, which the tests above check")
def test_avxvnni_build_equals_avx2_build(tmp_path):
    """Where the CPU has AVX-VNNI the avx2 level's GEMM runs its AVX-VNNI build (the tests above check
    it against vec_dot); the AVX2 build, kept by JANLIB_AVXVNNI=0 in a child process, gives the same bits."""
    rng = np.random.default_rng(6)
    # k = 576 ends in a tail of 2 blocks, 640 in one of 4, 2304 in whole groups and K-quant super-blocks
    specs = {f"{t}_{k}": (t, random_raw(rng, t, 37, k)) for t in QUANT_TYPES for k in (576, 640, 2304)
             if k % block_size(t) == 0}
    path = write_tensors(tmp_path / "w.gguf", specs)
    x = rng.standard_normal((67, 2304)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", AVXVNNI_CHILD, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
                   env=os.environ | {"JANLIB_AVXVNNI": "0"}, check=True, timeout=300)
    avx2_build = np.load(tmp_path / "y.npz")
    with janlib.load_gguf(path) as f, janlib.use_isa("avx2"):
        for i, tensor in enumerate(f.tensors.values()):
            np.testing.assert_array_equal(janlib.matmul(tensor, x[:, :tensor.shape[1]], n_threads=2),
                                          avx2_build[f"arr_{i}"], err_msg=tensor.name)
