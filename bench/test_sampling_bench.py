"""Sampler chain cost per token: the spec's default chain (penalties over a 64-token history, top_k,
top_p, min_p, temperature, draw) on 49,152- and 262,144-token vocabularies, beside greedy and
the default chain reporting 10 probabilities. Logits are random normal x 3."""

from __future__ import annotations

import numpy as np
import pytest

from janlib.sampling import Sampler, SamplingParams

VOCABS = [49_152, 262_144]
TARGET_US = {49_152: 100.0}  # the budget for the default chain
CHAINS = {
    "default": SamplingParams(seed=1),
    "greedy": SamplingParams(seed=1, temperature=0.0),
    "default+n_probs=10": SamplingParams(seed=1, n_probs=10),
}


@pytest.fixture(scope="module", params=VOCABS, ids=lambda n: f"vocab{n}")
def logits(request):
    return (np.random.default_rng(0).standard_normal(request.param) * 3).astype(np.float32)


@pytest.mark.parametrize("chain", CHAINS)
def test_chain_per_token(benchmark, logits, chain, report):
    n_vocab = len(logits)
    sampler = Sampler(CHAINS[chain], n_vocab)
    sampler.accept_prompt(np.random.default_rng(1).integers(0, n_vocab, 64))
    benchmark.pedantic(sampler.sample, args=(logits,), rounds=100, iterations=10, warmup_rounds=2)
    micros = benchmark.stats.stats.median * 1e6
    benchmark.extra_info["us_per_token"] = micros
    target = TARGET_US.get(n_vocab) if chain == "default" else None
    verdict = "" if target is None else f"  (target <= {target:.0f} us: {'met' if micros <= target else 'MISSED'})"
    report(f"sampling {chain:18s} n_vocab={n_vocab:7d}: {micros:7.1f} us/token{verdict}")
