"""Soak: 8 concurrent clients x 25 requests against a real server process, mixing streamed,
non-streamed and mid-stream disconnects, while /health is polled. Reports the errors (target 0),
resident memory after warm-up and at the end (target: growth < 5%) and /health latency under load."""

from __future__ import annotations

import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))

pytestmark = pytest.mark.slow

requests = pytest.importorskip("requests")

CLIENTS, REQUESTS = 8, 25
MAX_TOKENS = 24
PROMPTS = ["Name a color.", "Count to five.", "What is 2 + 2?", "Say hello in French.", "Describe the sea."]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _one_request(base: str, rng: random.Random) -> str | None:
    """One request of a random kind; None when it went as expected, else what went wrong."""
    kind = rng.choice(["stream", "plain", "disconnect"])
    body = {"model": "soak", "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS, "stream": kind != "plain", "seed": rng.randrange(1 << 30)}
    try:
        with requests.post(base + "/v1/chat/completions", json=body, stream=True, timeout=300) as r:
            if r.status_code != 200:
                return f"{kind}: HTTP {r.status_code} {r.text[:200]}"
            if kind == "plain":
                return None if r.json()["choices"][0]["message"]["content"] is not None else "plain: no content"
            lines = r.iter_lines()
            for i, line in enumerate(lines):
                if kind == "disconnect" and i >= 3:
                    return None  # leaving the with-block closes the connection mid-stream
                if line == b"data: [DONE]":
                    return None
                if line.startswith(b"data: {") and "error" in json.loads(line[6:]):
                    return f"{kind}: {line[:200]!r}"
            return f"{kind}: stream ended without [DONE]"
    except requests.RequestException as error:
        return f"{kind}: {error}"


def _run_clients(base: str, errors: list[str], seed0: int, n_requests: int) -> None:
    """CLIENTS concurrent clients, n_requests each; what went wrong is appended to errors."""

    def client(i: int) -> None:
        rng = random.Random(seed0 + i)
        for _ in range(n_requests):
            problem = _one_request(base, rng)
            if problem:
                errors.append(problem)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()


def test_soak(report):
    from server_util import start

    server = start("--alias", "soak", "--parallel", "4", "--ctx-size", "1024", "--queue-size", "64")
    try:
        base, pid = server.base, server.proc.pid
        errors: list[str] = []
        # warm-up as loaded as the soak itself: every sequence's KV pages and every thread's arena in use once
        _run_clients(base, errors, seed0=1000, n_requests=3)
        assert not errors, errors[:5]
        rss_warm = _rss_mib(pid)
        health_ms: list[float] = []
        done = threading.Event()

        def poll_health() -> None:
            while not done.is_set():
                start = time.perf_counter()
                r = requests.get(base + "/health", timeout=30)
                health_ms.append((time.perf_counter() - start) * 1e3)
                if r.status_code != 200:
                    errors.append(f"/health: HTTP {r.status_code}")
                time.sleep(0.2)

        poller = threading.Thread(target=poll_health)
        poller.start()
        start = time.perf_counter()
        _run_clients(base, errors, seed0=1, n_requests=REQUESTS)
        elapsed = time.perf_counter() - start
        done.set()
        poller.join()
        time.sleep(1.0)  # disconnected streams finish freeing their sequences
        rss_end = _rss_mib(pid)
        assert requests.get(base + "/health", timeout=10).status_code == 200
        health_ms.sort()
        report(f"soak {CLIENTS}x{REQUESTS} in {elapsed:.0f} s: {len(errors)} errors; RSS {rss_warm:.0f} MiB after "
               f"warm-up, {rss_end:.0f} MiB after ({rss_end / rss_warm - 1:+.1%}); /health median "
               f"{statistics.median(health_ms):.1f} ms, p99 {health_ms[int(len(health_ms) * 0.99)]:.1f} ms, "
               f"max {health_ms[-1]:.1f} ms")
        assert not errors, errors[:5]
    finally:
        server.stop()
