"""Float-weight matmul at 1 thread: F16 (and BF16, F32) weights against n float32 activation rows,
in GFLOP/s. From 2 rows these take the register-blocked float GEMM; n = 1 is vec_dot's matvec,
for scale. Shapes of a SigLIP-base vision tower: 1024 x 1024, its FFN down projection (768 x 3072)
and up projection (3072 x 768).

Timed by the calling thread's CPU time (one thread runs on the caller), best of ROUNDS, so other
processes on a shared machine slow a round without counting in it."""

from __future__ import annotations

import time

import numpy as np
import pytest

import janlib

from quant_data import random_raw, write_tensors

SHAPES = [(1024, 1024), (768, 3072), (3072, 768)]  # (rows, k)
CASES = [("F16", shape) for shape in SHAPES] + [("BF16", (1024, 1024)), ("F32", (1024, 1024))]
N_VALUES = [1, 16, 64, 1024]
ROUNDS = 15
ROUND_FLOP = 3e7  # calls per round: about this much work


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    rng = np.random.default_rng(0)
    specs = {f"{t}_{r}x{k}": (t, random_raw(rng, t, r, k)) for t, (r, k) in CASES}
    f = janlib.load_gguf(write_tensors(tmp_path_factory.mktemp("float_bench") / "w.gguf", specs))
    yield f.tensors
    f.close()


@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("ftype,shape", CASES, ids=[f"{t}-{r}x{k}" for t, (r, k) in CASES])
def test_float_matmul_1_thread(benchmark, tensors, ftype, shape, n, report):
    rows, k = shape
    tensor = tensors[f"{ftype}_{rows}x{k}"]
    x = np.random.default_rng(1).standard_normal((n, k)).astype(np.float32)
    flop = 2 * n * rows * k
    calls = max(1, int(ROUND_FLOP / flop))
    janlib.matmul(tensor, x, n_threads=1)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.thread_time()
        for _ in range(calls):
            janlib.matmul(tensor, x, n_threads=1)
        best = min(best, (time.thread_time() - start) / calls)
    gflops = flop / best / 1e9
    benchmark.extra_info["gflop_per_s"] = gflops
    report(f"matmul {ftype:4s} {rows}x{k} n={n:<4d} 1T: {gflops:6.1f} GFLOP/s")
    benchmark.pedantic(janlib.matmul, args=(tensor, x), kwargs={"n_threads": 1}, rounds=1, iterations=1)
