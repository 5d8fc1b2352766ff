"""The thread pool under conditions a 2-core machine hides: decode with 4x more threads than cores,
and with a CPU-bound process holding one core, each beside quiet decode at one thread per core in
the same run (issue targets: >= 50% and >= 40% of it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import janlib
from janlib.model import Model

TG = 64
ROUNDS = 3


@pytest.fixture(scope="module")
def model_path():
    return janlib.fetch_model("smollm2-135m-instruct", progress=False)


def decode_rate(path, n_threads: int) -> float:
    """Best of ROUNDS greedy runs of TG tokens, tokens/s."""
    model = Model(str(path), n_ctx=256, n_threads=n_threads)
    ids = model.tokenize("Once upon a time")
    list(model.generate(ids, max_tokens=8, ignore_eos=True))  # warm-up: workers started, pages touched
    best = float("inf")
    for _ in range(ROUNDS):
        model.reset()
        start = time.perf_counter()
        n = sum(1 for _ in model.generate(ids, max_tokens=TG, ignore_eos=True))
        best = min(best, (time.perf_counter() - start) / n)
    return 1 / best


def test_oversubscribed_decode(model_path, report):
    cores = janlib.cpu_features()["physical_cores"]
    quiet = decode_rate(model_path, cores)
    over = decode_rate(model_path, 4 * cores)
    report(f"decode {cores}T {quiet:6.1f} t/s, {4 * cores}T {over:6.1f} t/s: {over / quiet:5.1%} (target >= 50%)")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_decode_beside_busy_core(model_path, report):
    quiet = decode_rate(model_path, 2)
    core = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)
        busy = decode_rate(model_path, 2)
    finally:
        hog.kill()
        hog.wait()
    report(f"decode 2T quiet {quiet:6.1f} t/s, one core busy {busy:6.1f} t/s: {busy / quiet:5.1%} (target >= 40%)")
