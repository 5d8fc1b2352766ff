"""What the GEMM benches share: the CPU's name for every figure, and a GEMM's rate in GMAC/s of the
process's CPU time (all threads) with the packed-weight cache a model uses."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from janlib import _core

ROUNDS = 5
ROUND_MACS = 4e8


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def gmacs(type_id, w, rows, x, n_threads, cache) -> float:
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
