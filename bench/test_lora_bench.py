"""LoRA's cost: decode (tg128) and prompt (pp512) tokens/s of SmolLM2 at 2 threads with a rank-8 adapter on
attn_q, attn_k, attn_v and attn_output, against the base model in the same run (target: decode >= 90% of
the base). Rounds alternate between the two so drift in the machine's speed hits both alike."""

from __future__ import annotations

import time

import numpy as np
import pytest

import janlib
from janlib.model import Model
from test_lora import write_adapter

PP, TG, ROUNDS, THREADS = 512, 128, 5, 2


def tg(runtime, ids, adapters, scales):
    runtime.seq_rm(0)
    for pos in range(TG):
        runtime.eval(ids[pos:pos + 1], pos, "last", adapters, scales)


def pp(runtime, ids, adapters, scales):
    runtime.seq_rm(0)
    runtime.eval(ids, 0, "last", adapters, scales)


@pytest.fixture(scope="module")
def smollm2_with_adapter(tmp_path_factory):
    path = janlib.fetch_model("smollm2-135m-instruct", progress=False)
    adapter = write_adapter(tmp_path_factory.mktemp("lora_bench") / "rank8.gguf", path, rank=8)
    model = Model(str(path), n_ctx=PP + TG + 8, n_threads=THREADS, lora=[adapter])
    return model, tuple(model.adapters)


@pytest.mark.parametrize("phase, fn, n_tokens", [("tg128", tg, TG), ("pp512", pp, PP)])
def test_lora_rank8_attention_cost(benchmark, smollm2_with_adapter, report, phase, fn, n_tokens):
    model, adapters = smollm2_with_adapter
    runtime = model._runtime
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 30000, PP)]
    runs = {"base": ((), ()), "lora": (adapters, (1.0,))}
    best = {name: float("inf") for name in runs}
    for name, args in runs.items():
        fn(runtime, ids, *args)  # warm-up
    for _ in range(ROUNDS):
        for name, args in runs.items():
            start = time.perf_counter()
            fn(runtime, ids, *args)
            best[name] = min(best[name], time.perf_counter() - start)
    rate = {name: n_tokens / t for name, t in best.items()}
    report(f"lora rank 8 on q,k,v,o, SmolLM2, {THREADS} threads, {phase}: {rate['lora']:.1f} t/s vs base "
           f"{rate['base']:.1f} t/s ({rate['lora'] / rate['base']:.3f}x)")
    benchmark.pedantic(fn, args=(runtime, ids, *runs["lora"]), rounds=1, iterations=1)
    if phase == "tg128":
        assert rate["lora"] >= 0.9 * rate["base"]
