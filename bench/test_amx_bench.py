"""The AMX GEMM beside the AVX-512 one in the same run, where the CPU has AMX (skipped elsewhere):
janlib.matmul at SmolLM2-135M's legacy-type shapes and Qwen2.5-0.5B's hidden size, for prompt-sized
row counts, in GMAC/s by the process's CPU time (all threads), with the packed-weight cache a model
uses. Every figure names the CPU it came from."""

from __future__ import annotations

import numpy as np
import pytest

import janlib
from janlib import _core

from gemm_rates import cpu_name, gmacs, random_case

FEATURES = janlib.cpu_features()
pytestmark = pytest.mark.skipif("amx" not in FEATURES["available"],
                                reason=f"no AMX on this CPU (best level {FEATURES['best']})")

# (type, rows, k): SmolLM2-135M's attention, FFN up and down (Q4_1) and output head (Q8_0); Qwen2.5-0.5B's
# attention output at its hidden size 896, as Q4_0 and Q8_0
SHAPES = [("Q4_1", 576, 576), ("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q8_0", 49152, 576),
          ("Q4_0", 896, 896), ("Q8_0", 896, 896)]
ROWS = [16, 64, 512]
THREADS = [1, 2]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("qtype,rows,k", SHAPES, ids=[f"{t}-{r}x{k}" for t, r, k in SHAPES])
def test_amx_gemm_beside_avx512(benchmark, qtype, rows, k, n, n_threads, report):
    type_id, w, x = random_case(qtype, rows, k, n, seed=5)
    rates = {}
    for level in ("avx512", "amx"):
        with janlib.use_isa(level):
            rates[level] = gmacs(type_id, w, rows, x, n_threads, _core.PackedCache())
    ratio = rates["amx"] / rates["avx512"]
    benchmark.extra_info.update(amx_gmac_per_s=rates["amx"], avx512_gmac_per_s=rates["avx512"], ratio=ratio)
    report(f"gemm {qtype} {rows}x{k} n={n:<4d} {n_threads}T on {cpu_name()}: amx {rates['amx']:7.1f}, "
           f"avx512 {rates['avx512']:7.1f} GMAC/s of CPU time ({ratio:4.2f}x)")
    with janlib.use_isa("amx"):
        benchmark.pedantic(_core.matmul, args=(type_id, w, rows, x, np.empty((n, rows), np.float32), n_threads),
                           rounds=1, iterations=1)
