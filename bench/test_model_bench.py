"""Prompt processing (pp512) and generation (tg128) tokens/s per model and thread count, beside
llama.cpp measured in the same run: through llama-cpp-python when it is importable, and through
llama.cpp's own llama-bench when the LLAMA_BENCH environment variable names its binary; the share
of decode time spent outside C; batched decode of several sequences in one context.

JANLIB_BENCH_GGUF names further GGUF files (comma-separated) to measure beside the registry models,
each reported under its file name without .gguf: models outside the registry, such as the qwen2
Q4_K_M that make_qwen2_acceptance_model.py builds."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import janlib
from janlib.model import Model

MODELS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}
EXTRA_FILES = {Path(path).stem: path for path in os.environ.get("JANLIB_BENCH_GGUF", "").split(",") if path}
MEASURED = MODELS | EXTRA_FILES  # name -> registry name or file
THREADS = [1, 2]
PP, TG = 512, 128
ROUNDS = 3


def prompt_ids(n_vocab: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(0).integers(100, min(n_vocab, 30000), PP)]


class JanlibRunner:
    def __init__(self, path, n_threads):
        self.model = Model(str(path), n_ctx=PP + TG + 8, n_threads=n_threads)
        self.runtime = self.model._runtime

    def pp(self, ids):
        self.runtime.seq_rm(0)
        self.runtime.eval(ids, 0, "last")

    def tg(self, ids):
        self.runtime.seq_rm(0)
        self.runtime.eval(ids[:1], 0, "last")
        for pos in range(1, TG + 1):
            self.runtime.eval(ids[pos:pos + 1], pos, "last")


class LlamaCppRunner:
    label, key = "llama.cpp", "llama_cpp"

    def __init__(self, path, n_threads):
        llama_cpp = pytest.importorskip("llama_cpp")
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=PP + TG + 8, n_batch=PP, n_ubatch=PP,
                                   n_threads=n_threads, n_threads_batch=n_threads, verbose=False)

    def pp(self, ids):
        self.llm.reset()
        self.llm.eval(ids)

    def tg(self, ids):
        self.llm.reset()
        for pos in range(TG + 1):
            self.llm.eval(ids[pos:pos + 1])

    def rate(self, what, ids):
        return best_rate(getattr(self, what[:2]), ids, PP if what == "pp512" else TG)


class LlamaBenchRunner:
    """llama.cpp's llama-bench (its binary named by LLAMA_BENCH) on the same file and thread
    count; it times its own rounds over its own random tokens and reports the mean rate."""
    label, key = "llama-bench", "llama_bench"

    def __init__(self, path, n_threads):
        binary = os.environ.get("LLAMA_BENCH")
        if not binary:
            pytest.skip("LLAMA_BENCH is not set")
        self.command = [binary, "-m", str(path), "-t", str(n_threads), "-r", str(ROUNDS), "-o", "json"]

    def rate(self, what, ids):
        sizes = ["-p", str(PP), "-n", "0"] if what == "pp512" else ["-p", "0", "-n", str(TG)]
        done = subprocess.run(self.command + sizes, capture_output=True, text=True, check=True, timeout=600)
        return float(json.loads(done.stdout)[0]["avg_ts"])


def peers(path, n_threads):
    """The peers available here, each set up on the model."""
    found = []
    for runner in (LlamaCppRunner, LlamaBenchRunner):
        try:
            found.append(runner(path, n_threads))
        except pytest.skip.Exception:
            pass
    return found


def best_rate(fn, ids, n_tokens):
    fn(ids)  # warm-up
    best = min(_timed(fn, ids) for _ in range(ROUNDS))
    return n_tokens / best


def _timed(fn, ids):
    start = time.perf_counter()
    fn(ids)
    return time.perf_counter() - start


@pytest.fixture(scope="module", params=list(MEASURED))
def model_path(request):
    return request.param, janlib.fetch_model(MEASURED[request.param], progress=False)


@pytest.mark.parametrize("n_threads", THREADS)
def test_pp512_tg128(benchmark, model_path, n_threads, report):
    name, path = model_path
    ours = JanlibRunner(path, n_threads)
    ids = prompt_ids(ours.model.n_vocab)
    rates = {"pp512": best_rate(ours.pp, ids, PP), "tg128": best_rate(ours.tg, ids, TG)}
    benchmark.pedantic(ours.tg, args=(ids,), rounds=1, iterations=1)
    benchmark.extra_info.update(rates)
    others = peers(path, n_threads)
    for what, rate in rates.items():
        line = f"{name:8s} {what} {n_threads}T: janlib {rate:7.1f} t/s"
        for peer in others:
            peer_rate = peer.rate(what, ids)
            benchmark.extra_info[f"{peer.key}_{what}"] = peer_rate
            line += f"   {peer.label} {peer_rate:7.1f} t/s   ratio {rate / peer_rate:5.2f}"
        report(line)


@pytest.mark.parametrize("n_threads", [2])
def test_decode_time_outside_c(model_path, n_threads, report):
    """Share of Model.generate's wall time not spent inside the C forward pass."""
    name, path = model_path
    model = Model(str(path), n_ctx=PP + TG + 8, n_threads=n_threads)
    runtime, inside = model._runtime, [0.0]
    timed_eval = runtime.eval

    def eval_timed(*args):
        start = time.perf_counter()
        try:
            return timed_eval(*args)
        finally:
            inside[0] += time.perf_counter() - start

    runtime.eval = eval_timed
    ids = model.tokenize("Once upon a time")
    list(model.generate(ids, max_tokens=8, ignore_eos=True))
    inside[0] = 0.0
    start = time.perf_counter()
    n = sum(1 for _ in model.generate(ids, max_tokens=TG, ignore_eos=True))
    total = time.perf_counter() - start
    report(f"{name:8s} decode outside C: {1 - inside[0] / total:6.1%} of {total / n * 1e3:.2f} ms/token")


BATCH_SEQUENCES = [1, 4, 8, 16]
BATCH_PROMPT = 32


def batched_decode_rate(model, ids, n_seq):
    """Aggregate tokens/s of TG steps that decode one token for each of n_seq sequences in one
    batch, after a BATCH_PROMPT-token prompt per sequence (not timed)."""
    ctx = model.create_context(n_ctx=BATCH_PROMPT + TG + 8, n_seq_max=n_seq)
    seqs = np.arange(n_seq)

    def steps():
        for s in seqs:
            ctx.seq_rm(int(s))
        ctx.decode(np.tile(ids[:BATCH_PROMPT], n_seq), np.tile(np.arange(BATCH_PROMPT), n_seq),
                   np.repeat(seqs, BATCH_PROMPT), np.zeros(BATCH_PROMPT * n_seq, bool))
        start = time.perf_counter()
        for pos in range(BATCH_PROMPT, BATCH_PROMPT + TG):
            ctx.decode(np.full(n_seq, ids[pos]), np.full(n_seq, pos), seqs, np.ones(n_seq, bool))
        return time.perf_counter() - start

    steps()  # warm-up
    return TG * n_seq / min(steps() for _ in range(ROUNDS))


@pytest.mark.parametrize("n_threads", [2])
def test_batched_decode(report, n_threads):
    model = Model(str(janlib.fetch_model(MODELS["smollm2"], progress=False)), n_threads=n_threads)
    ids = prompt_ids(model.n_vocab)
    rates = {n: batched_decode_rate(model, ids, n) for n in BATCH_SEQUENCES}
    for n, rate in rates.items():
        report(f"smollm2  batched decode {n:2d} seq {n_threads}T: {rate:7.1f} t/s   {rate / rates[1]:5.2f}x one sequence")
