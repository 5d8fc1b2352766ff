"""Sliding-window layers keep only their window: Gemma-3-270M's KV memory per sequence at 4,096
positions (15 of its 18 layers see 512 positions), the recycled windows against every position kept
(swa_full, the cache before) for each cache type; and decode at that context, in CPU time per token
at 1 thread, both caches alternating in the same run (the attention arithmetic is the same, so the
figure to watch is the page lookups' cost)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import janlib
from janlib.model import Model

N_CTX, DECODE_BLOCK, ROUNDS = 4096, 16, 8
MIB = 1 << 20


@pytest.fixture(scope="module")
def gemma3():
    return Model("gemma3-270m", n_ctx=256, n_threads=2)


def filled(model, kv_type: str, swa_full: bool, extra: int = 0):
    """A one-sequence context holding N_CTX positions of random tokens."""
    ctx = model.create_context(n_ctx=N_CTX + extra, n_seq_max=1, kv_type=kv_type, n_batch=512, swa_full=swa_full)
    ids = np.random.default_rng(0).integers(100, 30000, N_CTX + extra)
    want = np.zeros(N_CTX, bool)
    want[-1] = True
    ctx.decode(ids[:N_CTX], np.arange(N_CTX), np.zeros(N_CTX, int), want, n_threads=2)
    return ctx, ids


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_gemma3_kv_bytes_per_sequence_at_4k(benchmark, gemma3, report, kv_type):
    ring, _ = filled(gemma3, kv_type, swa_full=False)
    full, _ = benchmark.pedantic(filled, args=(gemma3, kv_type, True), rounds=1, iterations=1)
    report(f"gemma3-270m KV per sequence at {N_CTX} positions, {kv_type}: {ring.kv_bytes / MIB:.1f} MiB with "
           f"recycled windows vs {full.kv_bytes / MIB:.1f} MiB keeping every position "
           f"({ring.kv_bytes / full.kv_bytes:.3f}x)")
    assert ring.kv_bytes < 0.3 * full.kv_bytes


def test_gemma3_decode_at_4k_is_unchanged(benchmark, gemma3, report):
    extra = ROUNDS * 2 * DECODE_BLOCK
    contexts = {"windows": filled(gemma3, "f16", False, extra), "full": filled(gemma3, "f16", True, extra)}
    best = dict.fromkeys(contexts, float("inf"))

    def block(ctx, ids):
        for _ in range(DECODE_BLOCK):
            pos = ctx.seq_len(0)
            ctx.decode(ids[pos:pos + 1], [pos], [0], [True], n_threads=1)

    for _ in range(ROUNDS):
        for name, (ctx, ids) in contexts.items():
            start = time.process_time()
            block(ctx, ids)
            best[name] = min(best[name], time.process_time() - start)
    rate = {name: DECODE_BLOCK / t for name, t in best.items()}
    report(f"gemma3-270m decode at {N_CTX} positions, 1 thread, tokens per CPU-second: {rate['windows']:.1f} with "
           f"recycled windows vs {rate['full']:.1f} keeping every position ({rate['windows'] / rate['full']:.3f}x)")
    benchmark.pedantic(block, args=contexts["windows"], rounds=1, iterations=1)
    assert rate["windows"] >= 0.9 * rate["full"]
