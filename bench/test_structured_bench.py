"""Constrained decoding cost: per-token mask time and tokens/s under a JSON schema beside
unconstrained generation of the same length, in the same run (SmolLM2, 2 threads)."""

from __future__ import annotations

import time

import pytest

import janlib
from janlib import Model
from janlib.structured import Constraint

N_TOKENS = 64
# long enough never to complete before N_TOKENS: an array of at least 64 integers
SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 64}


@pytest.fixture(scope="module")
def model():
    return Model(str(janlib.fetch_model("smollm2-135m-instruct", progress=False)), n_ctx=512, n_threads=2)


def run(model, constraint=None):
    ids = model.chat_prompt([{"role": "user", "content": "List some numbers."}])[1]
    model.reset()
    start = time.perf_counter()
    n = sum(1 for t in model.generate(ids, max_tokens=N_TOKENS, ignore_eos=constraint is None,
                                      constraint=constraint) if t.id is not None)
    return n, time.perf_counter() - start


def test_json_schema_vs_unconstrained(benchmark, model, report):
    masked = [0.0]

    def timed(constraint):
        """The constraint with its mask and accept calls timed."""
        allowed, accept = constraint.allowed_mask, constraint.accept

        def allowed_mask():
            t = time.perf_counter()
            try:
                return allowed()
            finally:
                masked[0] += time.perf_counter() - t

        def accept_token(token):
            t = time.perf_counter()
            try:
                return accept(token)
            finally:
                masked[0] += time.perf_counter() - t

        constraint.allowed_mask, constraint.accept = allowed_mask, accept_token
        return constraint

    run(model)  # warm-up
    free = min((run(model) for _ in range(3)), key=lambda r: r[1])
    best = None
    for _ in range(3):
        masked[0] = 0.0
        n, seconds = run(model, timed(Constraint.from_json_schema(SCHEMA, model)))
        if best is None or seconds < best[1]:
            best = (n, seconds, masked[0])
    benchmark.pedantic(run, args=(model,), rounds=1, iterations=1)
    free_rate, json_rate = free[0] / free[1], best[0] / best[1]
    benchmark.extra_info.update(unconstrained_tps=free_rate, json_schema_tps=json_rate)
    report(f"structured: JSON schema {json_rate:6.1f} t/s vs unconstrained {free_rate:6.1f} t/s = "
           f"{json_rate / free_rate:5.1%}; mask + accept {best[2] / best[0] * 1e6:.0f} µs/token")
