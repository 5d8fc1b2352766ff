"""The avx2 level's int8 GEMM (its AVX-VNNI build where the CPU has AVX-VNNI, else its AVX2 build)
beside the AVX-512 one where the CPU has both, in the same run: janlib.matmul at SmolLM2-135M's
legacy-type shapes and the K-quant FFN down projections of Gemma-3-270M and Qwen2.5-0.5B, for
prompt-sized row counts, in GMAC/s by the process's CPU time (all threads), with the packed-weight
cache a model uses. Every figure names the CPU it came from. A model's prompt and decode rates at
this level: JANLIB_ISA=avx2 with bench/test_model_bench.py."""

from __future__ import annotations

import numpy as np
import pytest

import janlib
from janlib import _core

from gemm_rates import cpu_name, gmacs, random_case

FEATURES = janlib.cpu_features()
pytestmark = pytest.mark.skipif("avx2" not in FEATURES["available"], reason="no AVX2 on this CPU")
BUILD = "AVX-VNNI" if "avxvnni" in FEATURES["flags"] else "AVX2"

# (type, rows, k): SmolLM2-135M's attention, FFN up and down (Q4_1) and output head (Q8_0), Gemma-3's
# Q5_0 attention at its hidden size 640; the FFN down projections of Gemma-3-270M (640 x 2048) and
# Qwen2.5-0.5B (896 x 4864) as Q4_K and Q6_K
SHAPES = [("Q4_1", 576, 576), ("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q8_0", 49152, 576), ("Q5_0", 640, 640),
          ("Q4_K", 640, 2048), ("Q6_K", 640, 2048), ("Q4_K", 896, 4864), ("Q6_K", 896, 4864)]
ROWS = [16, 512]
THREADS = [1, 2]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("qtype,rows,k", SHAPES, ids=[f"{t}-{r}x{k}" for t, r, k in SHAPES])
def test_avx2_gemm(benchmark, qtype, rows, k, n, n_threads, report):
    type_id, w, x = random_case(qtype, rows, k, n, seed=5)
    rates = {}
    for level in [level for level in ("avx2", "avx512") if level in FEATURES["available"]]:
        with janlib.use_isa(level):
            rates[level] = gmacs(type_id, w, rows, x, n_threads, _core.PackedCache())
    benchmark.extra_info.update({f"{level}_gmac_per_s": rate for level, rate in rates.items()})
    beside = f", avx512 {rates['avx512']:7.1f}" if "avx512" in rates else ""
    report(f"gemm {qtype} {rows}x{k} n={n:<4d} {n_threads}T on {cpu_name()}: avx2 ({BUILD} build) "
           f"{rates['avx2']:7.1f}{beside} GMAC/s of CPU time")
    with janlib.use_isa("avx2"):
        benchmark.pedantic(_core.matmul, args=(type_id, w, rows, x, np.empty((n, rows), np.float32), n_threads),
                           rounds=1, iterations=1)
