"""Graceful shutdown and supervision on a real server process: SIGTERM/SIGINT with a stream in flight,
and faults injected into the engine (JANLIB_ENGINE_FAULT) — one failing request, a dead engine thread."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests

from server_util import MODEL_ID, Server, _env

pytestmark = pytest.mark.slow

ARGS = ("--alias", MODEL_ID, "--parallel", "2", "--ctx-size", "2048", "--threads", "1", "--log-level", "warning")


def _server(*extra: str, fault: str | None = None) -> Server:
    from janlib.fetch import fetch_model

    fetch_model("smollm2-135m-instruct", progress=False)
    env = _env()
    if fault:
        env["JANLIB_ENGINE_FAULT"] = fault
    return Server(*ARGS, *extra, env=env).wait_ready()


def _chat(prompt: str, **extra) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}


def _read_stream(response) -> tuple[str, list[str | None], bool]:
    text, finishes, done = [], [], False
    for line in response.iter_lines():
        if not line.startswith(b"data: "):
            continue
        if line[6:] == b"[DONE]":
            done = True
            break
        event = json.loads(line[6:])
        assert "error" not in event, event
        for choice in event["choices"]:
            text.append(choice["delta"].get("content") or "")
            finishes.append(choice["finish_reason"])
    return "".join(text), finishes, done


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_streams_then_exits_0(signum):
    server = _server("--shutdown-timeout", "3")
    try:
        base = server.base + "/v1/chat/completions"
        long = requests.post(base, json=_chat("Count to a million.", max_tokens=5000, ignore_eos=True, stream=True),
                             stream=True, timeout=60)
        short = requests.post(base, json=_chat("Say hi.", max_tokens=40, ignore_eos=True, stream=True),
                              stream=True, timeout=60)
        results = {}

        def read(name, response):
            results[name] = _read_stream(response)

        readers = [threading.Thread(target=read, args=item) for item in (("long", long), ("short", short))]
        for t in readers:
            t.start()
        time.sleep(0.3)  # both are generating
        t_signal = time.monotonic()
        server.proc.send_signal(signum)
        deadline = time.monotonic() + 2
        refused = None
        while time.monotonic() < deadline:
            refused = requests.post(base, json=_chat("Hi", max_tokens=2), timeout=10)
            if refused.status_code == 503:
                break
            time.sleep(0.05)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["Retry-After"]) >= 1
        assert requests.get(server.base + "/health", timeout=5).status_code == 503
        for t in readers:
            t.join(30)
        assert server.proc.wait(30) == 0
        elapsed = time.monotonic() - t_signal
        short_text, short_finish, short_done = results["short"]
        assert short_done and short_finish[-1] == "length" and short_finish.count("length") == 1
        long_text, long_finish, long_done = results["long"]
        assert long_done and long_finish[-1] == "length"  # cut at the deadline, with a final chunk
        assert 2.5 < elapsed < 15
    finally:
        server.stop()


def test_an_idle_server_exits_0_at_once_on_sigterm():
    server = _server()
    try:
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - t0 < 3
    finally:
        server.stop()


def test_a_failure_while_finishing_fails_that_request_alone():
    server = _server(fault="finish:xylophone")
    try:
        base = server.base + "/v1/chat/completions"
        other = {}
        stream = threading.Thread(target=lambda: other.update(r=_read_stream(requests.post(
            base, json=_chat("Count to fifty.", max_tokens=60, ignore_eos=True, stream=True), stream=True,
            timeout=60))))
        stream.start()
        bad = requests.post(base, json=_chat("Play the xylophone.", max_tokens=4), timeout=60)
        assert bad.status_code == 500
        assert "injected fault while finishing" in bad.json()["error"]["message"]
        stream.join(60)
        text, finishes, done = other["r"]
        assert done and finishes[-1] == "length" and text
        assert requests.get(server.base + "/health", timeout=5).status_code == 200
        good = requests.post(base, json=_chat("Say hi.", max_tokens=4), timeout=60)
        assert good.status_code == 200
        assert "injected fault" in server.output()  # the traceback is logged
    finally:
        server.stop()


def test_a_dead_engine_answers_503_and_never_hangs():
    server = _server(fault="thread:xylophone")
    try:
        base = server.base + "/v1/chat/completions"
        streaming = requests.post(base, json=_chat("Count to a million.", max_tokens=2000, ignore_eos=True,
                                                   stream=True), stream=True, timeout=60)
        lines = streaming.iter_lines()
        next(lines)
        killer = requests.post(base, json=_chat("Play the xylophone.", max_tokens=4), timeout=30)
        assert killer.status_code == 503 and killer.json()["error"]["code"] == "engine_unavailable"
        rest = b"\n".join(lines)  # the stream in flight ends with an error event instead of hanging
        assert b"engine_unavailable" in rest
        health = requests.get(server.base + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "error"
        t0 = time.monotonic()
        later = requests.post(base, json=_chat("Hi", max_tokens=2), timeout=30)
        assert later.status_code == 503 and time.monotonic() - t0 < 2
    finally:
        server.stop()
