"""Matmul throughput per type: matvec in GB/s of weight bytes beside the machine's read
bandwidth measured in the same run, and n = 512 matmul in GOP/s. The quantized GEMM as a model
runs it (packed weights kept, 1 thread) at SmolLM2-135M's shapes, in GMAC/s by the calling
thread's CPU time, so other processes on a shared machine slow a round without counting in it.

Matvec cycles through 4096 x 4096 matrices totalling >= 256 MB, so each call streams its
weights from memory rather than from cache."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

import janlib
from janlib import _core

from gemm_rates import gmacs, random_case
from quant_data import ALL_TYPES, random_raw, write_tensors

K = ROWS = 4096
ROTATION_BYTES = 256 * 2**20
THREADS = [1, 2]


def read_bandwidth(n_threads: int, nbytes: int = 512 * 2**20) -> float:
    """Best-of-5 GB/s of n_threads numpy reductions each reading its share of one buffer."""
    parts = np.array_split(np.ones(nbytes // 8, dtype=np.uint64), n_threads)
    best = float("inf")
    for _ in range(5):
        threads = [threading.Thread(target=np.bitwise_or.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


@pytest.fixture(scope="module")
def bandwidth():
    return {n: read_bandwidth(n) for n in THREADS}


@pytest.fixture(scope="module", params=ALL_TYPES)
def matrices(request, tmp_path_factory):
    """(qtype, [tensors]): enough distinct 4096 x 4096 matrices of one type for the rotation."""
    qtype = request.param
    rng = np.random.default_rng(0)
    first = random_raw(rng, qtype, ROWS, K)
    count = max(2, -(-ROTATION_BYTES // first.nbytes))
    # distinct bytes per matrix (rolled rows keep scales finite) so no two share cache lines
    specs = {f"w{i}": (qtype, np.roll(first, i, axis=0)) for i in range(count)}
    path = write_tensors(tmp_path_factory.mktemp(qtype) / "m.gguf", specs)
    f = janlib.load_gguf(path)
    yield qtype, list(f.tensors.values())
    f.close()
    path.unlink()


@pytest.mark.parametrize("n_threads", THREADS)
def test_matvec(benchmark, matrices, bandwidth, n_threads, report):
    qtype, tensors = matrices
    x = np.random.default_rng(1).standard_normal(K).astype(np.float32)
    cycle = itertools.cycle(tensors)
    janlib.matmul(tensors[0], x, n_threads=n_threads)
    benchmark.pedantic(lambda: janlib.matmul(next(cycle), x, n_threads=n_threads),
                       rounds=3 * len(tensors), iterations=1, warmup_rounds=len(tensors))
    gbps = tensors[0].nbytes / benchmark.stats.stats.median / 1e9
    ratio = gbps / bandwidth[n_threads]
    benchmark.extra_info.update(gb_per_s=gbps, read_bandwidth=bandwidth[n_threads], ratio=ratio)
    report(f"matvec {qtype:5s} {n_threads}T: {gbps:6.1f} GB/s = {ratio:5.1%} of read bandwidth {bandwidth[n_threads]:.1f} GB/s")


@pytest.mark.parametrize("n_threads", THREADS)
def test_matmul_512(benchmark, matrices, n_threads, report):
    qtype, tensors = matrices
    x = np.random.default_rng(2).standard_normal((512, K)).astype(np.float32)
    benchmark.pedantic(lambda: janlib.matmul(tensors[0], x, n_threads=n_threads), rounds=3, iterations=1, warmup_rounds=1)
    gops = 2 * 512 * ROWS * K / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["gop_per_s"] = gops
    report(f"matmul n=512 {qtype:5s} {n_threads}T: {gops:6.1f} GOP/s")


# SmolLM2-135M Q4_1: attention (576 x 576), FFN gate/up (1536 x 576) and down (576 x 1536); its
# Q8_0 output matrix (49152 x 576). (type, rows, k)
SMOLLM2_SHAPES = [("Q4_1", 576, 576), ("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q8_0", 49152, 576)]
GEMM_ROWS = [1, 4, 8, 16, 32, 64, 512]
GEMM_ROUNDS = 5
ROUND_MACS = 2e8  # calls per round: about this much work


@pytest.mark.parametrize("n", GEMM_ROWS)
@pytest.mark.parametrize("qtype,rows,k", SMOLLM2_SHAPES, ids=[f"{t}-{r}x{k}" for t, r, k in SMOLLM2_SHAPES])
def test_gemm_kept_panels_1_thread(benchmark, qtype, rows, k, n, report):
    type_id, w, x = random_case(qtype, rows, k, n, seed=3)
    y = np.empty((n, rows), np.float32)
    cache = _core.PackedCache()
    _core.matmul(type_id, w, rows, x, y, n_threads=1, cache=cache)  # packs and keeps the panels
    calls = max(1, int(ROUND_MACS / (n * rows * k)))
    best = float("inf")
    for _ in range(GEMM_ROUNDS):
        start = time.thread_time()
        for _ in range(calls):
            _core.matmul(type_id, w, rows, x, y, n_threads=1, cache=cache)
        best = min(best, (time.thread_time() - start) / calls)
    gmacs = n * rows * k / best / 1e9
    benchmark.extra_info["gmac_per_s"] = gmacs
    report(f"gemm {qtype} {rows}x{k} n={n:<4d} kept panels 1T: {gmacs:6.1f} GMAC/s")
    benchmark.pedantic(_core.matmul, args=(type_id, w, rows, x, y), kwargs={"n_threads": 1, "cache": cache},
                       rounds=1, iterations=1)


# Gemma-3-270M Q4_K_M's K-quant weights: ffn_down (Q4_K and Q6_K, 640 x 2048) and attn_output
# (Q4_K, 640 x 1024). K-quant panels are repacked per call, so the rate includes the packing; by
# the process's CPU time (all threads), so at 2 threads it shows what the split costs.
GEMMA3_KQUANT_SHAPES = [("Q4_K", 640, 2048), ("Q4_K", 640, 1024), ("Q6_K", 640, 2048)]
KQUANT_ROWS = [64, 256, 512]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n", KQUANT_ROWS)
@pytest.mark.parametrize("qtype,rows,k", GEMMA3_KQUANT_SHAPES, ids=[f"{t}-{r}x{k}" for t, r, k in GEMMA3_KQUANT_SHAPES])
def test_gemm_kquant(benchmark, qtype, rows, k, n, n_threads, report):
    type_id, w, x = random_case(qtype, rows, k, n, seed=4)
    y = np.empty((n, rows), np.float32)
    rate = gmacs(type_id, w, rows, x, n_threads)  # no cache: the panels are repacked per call
    best = n * rows * k / rate / 1e9
    benchmark.extra_info["gmac_per_s"] = rate
    report(f"gemm {qtype} {rows}x{k} n={n:<4d} {n_threads}T: {best * 1e3:7.3f} ms CPU per call, {rate:6.1f} GMAC/s of CPU time")
    benchmark.pedantic(_core.matmul, args=(type_id, w, rows, x, y), kwargs={"n_threads": n_threads}, rounds=1, iterations=1)
