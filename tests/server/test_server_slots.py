"""Slots and the queue: --parallel 2 serves four streams correctly; the queue answers 503 when
full; a client that disconnects frees its slot; id_slot pins; GET /slots shows each sequence."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from server_util import MODEL_ID, start

pytestmark = pytest.mark.slow

PROMPTS = ["Name a fruit.", "What is 2 + 2?", "Say hello in French.", "Name a colour."]


def _body(prompt, **extra):
    # greedy, so that answers under load can be compared with answers alone
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
            "temperature": 0, **extra}


def _stream_text(base, prompt, **extra) -> tuple[str, str]:
    r = requests.post(base + "/v1/chat/completions", json=_body(prompt, stream=True, **extra), stream=True, timeout=120)
    assert r.status_code == 200, r.text
    text, finish, done = [], None, False
    for line in r.iter_lines():
        if not line:
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        event = json.loads(data)
        choice = event["choices"][0]
        text.append(choice["delta"].get("content") or "")
        finish = choice["finish_reason"] or finish
    assert done
    return "".join(text), finish


@pytest.fixture(scope="module")
def two_slots():
    s = start("--alias", MODEL_ID, "--parallel", "2", "--ctx-size", "1024", "--threads", "1")
    yield s
    s.stop()


def test_four_streams_on_two_slots_all_complete_correctly(two_slots):
    expected = {}
    for p in PROMPTS:
        r = requests.post(two_slots.base + "/v1/chat/completions", json=_body(p), timeout=120).json()
        expected[p] = r["choices"][0]["message"]["content"]
    results, errors = {}, []

    def run(p):
        try:
            results[p] = _stream_text(two_slots.base, p)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors
    for p in PROMPTS:
        assert results[p][0] == expected[p], p
        assert results[p][1] in ("stop", "length")


@pytest.fixture(scope="module")
def one_slot():
    s = start("--alias", MODEL_ID, "--parallel", "1", "--queue-size", "1", "--ctx-size", "512", "--threads", "1",
              "--metrics")
    yield s
    s.stop()


def _metric(base, name) -> float:
    for line in requests.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_queue_full_is_503_and_disconnect_frees_the_slot(one_slot):
    base = one_slot.base
    long = _body("Count from one to a thousand.", max_tokens=400, ignore_eos=True, stream=True)
    first = requests.post(base + "/v1/chat/completions", json=long, stream=True, timeout=120)
    lines = first.iter_lines()
    assert next(lines).startswith(b"data: ")  # the slot is busy generating
    queued = {}

    def wait_in_queue():
        queued["r"] = requests.post(base + "/v1/chat/completions", json=_body("Hi", max_tokens=4), timeout=120)

    waiter = threading.Thread(target=wait_in_queue)
    waiter.start()
    deadline = time.monotonic() + 30
    while _metric(base, "janlib_requests_deferred") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = requests.post(base + "/v1/chat/completions", json=_body("Hi", max_tokens=4), timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
    assert int(r.headers["Retry-After"]) >= 1
    predicted_before = _metric(base, "janlib_tokens_predicted_total")
    first.close()  # the client goes away mid-stream: its generation stops and the queued request gets the slot
    waiter.join(60)
    assert queued["r"].status_code == 200
    assert _metric(base, "janlib_requests_cancelled_total") == 1
    assert _metric(base, "janlib_tokens_predicted_total") - predicted_before < 400 - 20
    assert _metric(base, "janlib_requests_processing") == 0


def test_id_slot_pins_and_caches(two_slots):
    msgs = _body("Tell me about cats.", max_tokens=2, id_slot=1)
    first = requests.post(two_slots.base + "/v1/chat/completions", json=msgs, timeout=60).json()
    assert first["id_slot"] == 1
    again = requests.post(two_slots.base + "/v1/chat/completions", json=msgs, timeout=60).json()
    assert again["id_slot"] == 1 and again["tokens_cached"] > 5
    slots = requests.get(two_slots.base + "/slots", timeout=10).json()
    assert [s["id"] for s in slots] == [0, 1]
    assert slots[1]["n_past"] >= again["tokens_evaluated"] and not any(s["is_processing"] for s in slots)
    # the other sequence copies the computed prefix instead of evaluating it again
    other = requests.post(two_slots.base + "/v1/chat/completions", json=dict(msgs, id_slot=0), timeout=60).json()
    assert other["id_slot"] == 0
    assert other["tokens_cached"] == again["tokens_cached"]
    assert other["choices"][0]["message"] == again["choices"][0]["message"]


def test_slots_show_a_running_sequence(two_slots):
    body = _body("Count from one to a thousand.", max_tokens=200, ignore_eos=True, stream=True, id_slot=0)
    with requests.post(two_slots.base + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith(b"data: ") and b'"content":"' in line and b'"content":""' not in line)
        slots = requests.get(two_slots.base + "/slots", timeout=10).json()
    assert slots[0]["is_processing"] and slots[0]["state"] == "generating"
    assert slots[0]["id_task"] > 0 and slots[0]["next_token"]["n_decoded"] >= 1
    assert slots[0]["next_token"]["n_remain"] == 200 - slots[0]["next_token"]["n_decoded"]
    assert slots[0]["n_ctx"] == 512
