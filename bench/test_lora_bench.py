"""LoRA's cost: decode and prompt tokens/s of SmolLM2 at 2 threads with a rank-8 adapter on attn_q, attn_k,
attn_v and attn_output, against the base model in the same run (target: decode >= 90% of the base).

Short blocks of each alternate many times and the fastest block of each counts, so a busy machine's
drift and preemptions hit both alike and the comparison is of their undisturbed speeds."""

from __future__ import annotations

import time

import numpy as np
import pytest

import janlib
from janlib.model import Model
from test_lora import write_adapter

THREADS, ROUNDS = 2, 30
CONTEXT, DECODE_BLOCK, PROMPT_BLOCK = 128, 16, 128  # decode steps after a CONTEXT-token prompt; prompt tokens


@pytest.fixture(scope="module")
def smollm2_with_adapter(tmp_path_factory):
    path = janlib.fetch_model("smollm2-135m-instruct", progress=False)
    adapter = write_adapter(tmp_path_factory.mktemp("lora_bench") / "rank8.gguf", path, rank=8)
    model = Model(str(path), n_ctx=CONTEXT + PROMPT_BLOCK + 8, n_threads=THREADS, lora=[adapter])
    return model, tuple(model.adapters)


def decode_block(runtime, ids, adapters, scales):
    runtime.seq_rm(CONTEXT)
    for pos in range(CONTEXT, CONTEXT + DECODE_BLOCK):
        runtime.eval(ids[pos:pos + 1], pos, "last", adapters, scales)


def prompt_block(runtime, ids, adapters, scales):
    runtime.seq_rm(0)
    runtime.eval(ids[:PROMPT_BLOCK], 0, "last", adapters, scales)


@pytest.mark.parametrize("phase, block, n_tokens", [("decode", decode_block, DECODE_BLOCK),
                                                    ("prompt", prompt_block, PROMPT_BLOCK)])
def test_lora_rank8_attention_cost(benchmark, smollm2_with_adapter, report, phase, block, n_tokens):
    model, adapters = smollm2_with_adapter
    runtime = model._runtime
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 30000, CONTEXT + PROMPT_BLOCK)]
    runtime.seq_rm(0)
    runtime.eval(ids[:CONTEXT], 0, "last")  # the context decode steps attend to (no adapter: both read it)
    runs = {"base": ((), ()), "lora": (adapters, (1.0,))}
    best = {name: float("inf") for name in runs}
    for _ in range(ROUNDS):
        for name, args in runs.items():
            start = time.perf_counter()
            block(runtime, ids, *args)
            best[name] = min(best[name], time.perf_counter() - start)
        if phase == "prompt":
            runtime.eval(ids[:CONTEXT], 0, "last")
    rate = {name: n_tokens / t for name, t in best.items()}
    report(f"lora rank 8 on q,k,v,o, SmolLM2, {THREADS} threads, {phase}: {rate['lora']:.1f} t/s vs base "
           f"{rate['base']:.1f} t/s ({rate['lora'] / rate['base']:.3f}x)")
    benchmark.pedantic(block, args=(runtime, ids, *runs["lora"]), rounds=1, iterations=1)
    if phase == "decode":
        assert rate["lora"] >= 0.9 * rate["base"]
