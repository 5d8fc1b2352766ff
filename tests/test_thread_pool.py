"""The persistent thread pool: every share of every job runs exactly once and jl_parallel returns only
after all of them ended, for any sequence of thread counts and several submitting threads. On a
2-core machine 16 threads oversubscribe it, so workers are preempted at every point."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import janlib
from janlib import _core

JOBS_PER_THREAD = 50_000


def test_every_share_runs_once_from_two_submitters():
    bad: list[int] = [-1, -1]

    def submit(i: int) -> None:
        bad[i] = _core.pool_stress(JOBS_PER_THREAD, 1234 + i)  # releases the GIL

    submitters = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    assert bad == [0, 0]


@pytest.mark.slow
def test_matmul_with_alternating_thread_counts_is_exact():
    """The issue's reproduction: SmolLM2's blk.0.attn_k.weight, 3 rows, thread counts 2 and 16 in turn."""
    w = janlib.load_gguf(janlib.fetch_model("smollm2-135m-instruct", progress=False)).tensors["blk.0.attn_k.weight"]
    x = np.random.default_rng(0).standard_normal((3, w.shape[1])).astype(np.float32)
    want = janlib.matmul(w, x, n_threads=1)
    for i in range(3000):
        assert np.array_equal(janlib.matmul(w, x, n_threads=(2, 16)[i % 2]), want), f"call {i}"
