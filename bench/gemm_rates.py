"""What the GEMM benches share: the CPU's name for every figure, a random case of a type and shape, and a
GEMM's rate in GMAC/s of the process's CPU time (all threads), with the packed-weight cache a model uses
or none."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import gguf
import numpy as np

from janlib import _core

from quant_data import random_raw

ROUNDS = 5
ROUND_MACS = 4e8


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def random_case(qtype: str, rows: int, k: int, n: int, seed: int):
    """(type id, W's bytes (rows, k) of qtype, x (n, k) float32)"""
    rng = np.random.default_rng(seed)
    w = np.ascontiguousarray(random_raw(rng, qtype, rows, k)).reshape(-1)
    return int(gguf.GGMLQuantizationType[qtype]), w, rng.standard_normal((n, k)).astype(np.float32)


def gmacs(type_id, w, rows, x, n_threads, cache=None) -> float:
    y = np.empty((len(x), rows), np.float32)
    _core.matmul(type_id, w, rows, x, y, n_threads, cache)  # packs (and keeps) what the level keeps
    calls = max(1, int(ROUND_MACS / (len(x) * rows * x.shape[1])))
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(calls):
            _core.matmul(type_id, w, rows, x, y, n_threads, cache)
        best = min(best, (time.process_time() - start) / calls)
    return len(x) * rows * x.shape[1] / best / 1e9
