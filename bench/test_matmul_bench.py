"""Matmul throughput per type: matvec in GB/s of weight bytes beside the machine's read
bandwidth measured in the same run, and n = 512 matmul in GOP/s.

Matvec cycles through 4096 x 4096 matrices totalling >= 256 MB, so each call streams its
weights from memory rather than from cache."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

import janlib

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
