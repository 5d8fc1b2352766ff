"""Tool-call decoding cost: tokens/s of a constrained call (tool_choice required, Hermes format: the mask
and accept of every token) and of auto (the lazy constraint before any call opens) beside unconstrained
generation of the same length, in the same run (SmolLM2, 2 threads). The issue's bar: ≤ 10% slower."""

from __future__ import annotations

import time

import pytest

import janlib
from janlib import Model
from janlib.structured import Constraint
from janlib.tools import FORMATS, LazyConstraint, normalize_tools, tool_grammar

N_TOKENS = 64
# a call that cannot complete within N_TOKENS: its one argument is a long list of words
NOTE = {"type": "function", "function": {"name": "write_note", "parameters": {
    "type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}, "minItems": 64}},
    "required": ["words"]}}}


@pytest.fixture(scope="module")
def model():
    return Model(str(janlib.fetch_model("smollm2-135m-instruct", progress=False)), n_ctx=512, n_threads=2)


def run(model, constraint=None):
    ids = model.chat_prompt([{"role": "user", "content": "Write a note about the sea."}])[1]
    model.reset()
    start = time.perf_counter()
    n = sum(1 for t in model.generate(ids, max_tokens=N_TOKENS, ignore_eos=True, constraint=constraint)
            if t.id is not None)
    return n, time.perf_counter() - start


def best_rate(model, make_constraint) -> float:
    runs = [run(model, make_constraint()) for _ in range(3)]
    n, seconds = min(runs, key=lambda r: r[1])
    return n / seconds


class TimedConstraint(Constraint):
    """A Constraint that adds up the time of its mask and accept calls (what constraining costs a token)."""

    seconds = 0.0

    def allowed_mask(self):
        start = time.perf_counter()
        try:
            return super().allowed_mask()
        finally:
            TimedConstraint.seconds += time.perf_counter() - start

    def accept(self, token):
        start = time.perf_counter()
        try:
            return super().accept(token)
        finally:
            TimedConstraint.seconds += time.perf_counter() - start


def test_tool_call_decoding_vs_plain_tg(benchmark, model, report):
    hermes = FORMATS["hermes"]
    tools = normalize_tools([NOTE])
    grammar = tool_grammar(hermes, tools, False, model.tokenizer)
    lazy_grammar = tool_grammar(hermes, tools, False, model.tokenizer, with_response=True)
    run(model)  # warm-up
    free = best_rate(model, lambda: None)
    required = best_rate(model, lambda: Constraint(grammar, model, "tools"))
    auto = best_rate(model, lambda: LazyConstraint(lazy_grammar, model, hermes))
    TimedConstraint.seconds = 0.0
    n, _seconds = run(model, TimedConstraint(grammar, model, "tools"))
    per_token_us = TimedConstraint.seconds / n * 1e6
    benchmark.pedantic(run, args=(model, Constraint(grammar, model, "tools")), rounds=1, iterations=1)
    benchmark.extra_info.update(plain_tps=free, required_call_tps=required, auto_tps=auto,
                                constraint_us_per_token=per_token_us)
    report(f"tools: required call {required:6.1f} t/s = {required / free:5.1%} of plain tg {free:6.1f} t/s "
           f"(mask + accept {per_token_us:.0f} µs/token = {per_token_us * 1e-6 * free:.1%} of a plain token); "
           f"auto before a call {auto:6.1f} t/s = {auto / free:5.1%}")
