"""Attention at long context on SmolLM2-135M (f16 KV cache): prompt processing of 512, 2,048 and
4,096 tokens (in chunks of n_batch = 512, as Model runs a prompt) and decode at a 2,048-token
context, per thread count, in tokens per wall-second and per CPU-second (the machine may be shared:
CPU time is the steadier figure)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from janlib.model import Model

THREADS = [1, 2]
PP_SIZES = [512, 2048, 4096]
DECODE_CTX, DECODE_TOKENS, ROUNDS = 2048, 16, 3


@pytest.fixture(scope="module")
def smollm2():
    return Model("smollm2-135m-instruct", n_ctx=256)


def prompt(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(100, 30000, n)


def best_times(run, rounds: int) -> tuple[float, float]:
    """The best wall and CPU seconds of rounds runs."""
    wall = cpu = float("inf")
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n_tokens", PP_SIZES)
def test_prompt_processing(benchmark, smollm2, report, n_tokens, n_threads):
    ctx = smollm2.create_context(n_ctx=n_tokens, n_seq_max=1, n_batch=512)
    ids = prompt(n_tokens)
    want = np.zeros(n_tokens, bool)
    want[-1] = True

    def pp():
        ctx.seq_rm(0)
        ctx.decode(ids, np.arange(n_tokens), np.zeros(n_tokens, int), want, n_threads=n_threads)

    wall, cpu = best_times(pp, ROUNDS if n_tokens <= 2048 else 1)
    benchmark.pedantic(pp, rounds=1, iterations=1)
    report(f"smollm2 pp{n_tokens:<5d} {n_threads}T: {n_tokens / wall:7.1f} t/s, {n_tokens / cpu:7.1f} t per CPU-s")


@pytest.mark.parametrize("n_threads", THREADS)
def test_decode_at_2k(benchmark, smollm2, report, n_threads):
    ctx = smollm2.create_context(n_ctx=DECODE_CTX + DECODE_TOKENS, n_seq_max=1, n_batch=512)
    ids = prompt(DECODE_CTX + DECODE_TOKENS)
    ctx.decode(ids[:DECODE_CTX], np.arange(DECODE_CTX), np.zeros(DECODE_CTX, int), np.zeros(DECODE_CTX, bool),
               n_threads=n_threads)

    def tg():
        ctx.seq_rm(0, DECODE_CTX, -1)
        for pos in range(DECODE_CTX, DECODE_CTX + DECODE_TOKENS):
            ctx.decode(ids[pos:pos + 1], [pos], [0], [True], n_threads=n_threads)

    wall, cpu = best_times(tg, ROUNDS)
    benchmark.pedantic(tg, rounds=1, iterations=1)
    report(f"smollm2 decode at {DECODE_CTX} {n_threads}T: {DECODE_TOKENS / wall:7.1f} t/s, "
           f"{DECODE_TOKENS / cpu:7.1f} t per CPU-s")
