"""Time to first token and per-token streaming latency through the server (SSE over HTTP on
loopback) beside the engine alone (Model.generate in-process), same model, same settings, same run.
Targets: at most 10 ms added to time to first token, at most 5% added per streamed token."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))

pytestmark = pytest.mark.slow

requests = pytest.importorskip("requests")

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]
TG = 64
ROUNDS = 3
THREADS = 1
CTX = 512


def _latencies(runs):
    """Median time to the first item and between items, over runs of (start time, item times)."""
    ttft, gaps = [], []
    for start, times in runs:
        ttft.append(times[0] - start)
        gaps.extend(b - a for a, b in zip(times, times[1:]))
    return statistics.median(ttft), statistics.median(gaps)


def _engine_alone(model):
    ids = model.chat_prompt(PROMPT)[1]
    runs = []
    for _ in range(ROUNDS):
        model.reset()
        start = time.perf_counter()
        runs.append((start, [time.perf_counter() for _ in model.generate(ids, max_tokens=TG, ignore_eos=True)]))
    return _latencies(runs)


def _content_events(response):
    """Each SSE chunk that carries generated text (not the role chunk)."""
    for line in response.iter_lines(chunk_size=1):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content") is not None and not choices[0]["delta"].get("role"):
                yield


def _through_server(base):
    body = {"model": "bench", "messages": PROMPT, "max_tokens": TG, "ignore_eos": True, "stream": True,
            "cache_prompt": False}
    session = requests.Session()
    runs = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        with session.post(base + "/v1/chat/completions", json=body, stream=True, timeout=300) as r:
            runs.append((start, [time.perf_counter() for _ in _content_events(r)]))
    return _latencies(runs)


def test_server_streaming_overhead(report):
    from janlib.model import Model
    from server_util import Server

    model = Model("smollm2-135m-instruct", n_ctx=CTX, n_threads=THREADS)
    server = Server("--alias", "bench", "--ctx-size", str(CTX), "--threads", str(THREADS),
                    "--log-level", "warning").wait_ready()
    try:
        _engine_alone(model)  # warm both
        _through_server(server.base)
        e_ttft, e_tok = _engine_alone(model)
        s_ttft, s_tok = _through_server(server.base)
    finally:
        server.stop()
    report(f"server ttft: engine {e_ttft * 1000:.1f} ms, server {s_ttft * 1000:.1f} ms, "
           f"added {(s_ttft - e_ttft) * 1000:+.1f} ms (target <= 10 ms)")
    report(f"server per token: engine {e_tok * 1000:.2f} ms, server {s_tok * 1000:.2f} ms, "
           f"added {(s_tok / e_tok - 1) * 100:+.1f}% (target <= 5%)")
