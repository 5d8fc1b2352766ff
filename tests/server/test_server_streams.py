"""Resumable streams (X-Conversation-Id, GET/DELETE /v1/stream, POST /v1/streams/lookup) as llama-server has
them: the session store on its own, then the real server on the real model with plain HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from urllib.parse import quote

import pytest

from janlib.server.streams import Session, SessionStore
from server_util import API_KEY, MODEL_ID


# ---------------------------------------------------------------- the store on its own

def test_a_session_reads_from_any_offset_and_keeps_its_last_bytes_whole():
    session = Session("c", stop=lambda: None, cap=10)
    session.append(b"aaaa")
    session.append(b"bbbb")
    assert session.read(0, 0) == b"aaaabbbb" and session.read(6, 0) == b"bb"
    assert session.read(8, 0.01) == b""  # nothing yet, still running
    session.append(b"cccc")  # 12 bytes > 10: the oldest chunk goes, whole
    assert session.dropped == 4 and session.read(4, 0) == b"bbbbcccc"
    assert session.read(3, 0) is None  # gone
    session.finish()
    assert session.read(12, 1.0) is None and session.total_bytes == 12


def test_a_waiting_reader_wakes_for_new_bytes_and_for_the_end():
    session = Session("c", stop=lambda: None)
    got = []
    reader = threading.Thread(target=lambda: got.append((session.read(0, 5.0), session.read(1, 5.0))))
    reader.start()
    time.sleep(0.05)
    session.append(b"x")
    time.sleep(0.05)
    session.finish()
    reader.join(2)
    assert got == [(b"x", None)]


def test_the_store_replaces_a_live_session_and_sweeps_old_finished_ones():
    stopped = []
    store = SessionStore(ttl_s=60, max_finished=2)
    first = store.create("a", lambda: stopped.append("first"))
    second = store.create("a", lambda: stopped.append("second"))
    assert stopped == ["first"] and first.cancelled and first.done and store.get("a") is second
    for conv_id in ("b", "c", "d"):
        store.create(conv_id, lambda: None).finish()
        time.sleep(0.01)
    assert store.get("b") is None and store.get("c") is not None  # two finished kept: the oldest went
    assert store.get("a") is second  # running: never swept
    store.stop("a")
    assert stopped == ["first", "second"] and store.get("a") is None
    expired = SessionStore(ttl_s=0)
    expired.create("e", lambda: None).finish()
    time.sleep(0.01)
    assert expired.get("e") is None


def test_the_store_bounds_the_bytes_of_finished_sessions():
    store = SessionStore(max_finished_bytes=10)
    for conv_id in ("a", "b", "c"):
        session = store.create(conv_id, lambda: None)
        session.append(b"12345")
        session.finish()
    store.get("x")
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None


def test_lookup_matches_an_id_and_its_per_model_variants():
    store = SessionStore()
    for conv_id in ("conv", "conv::org/model:Q8_0", "conversation", "other"):
        store.create(conv_id, lambda: None)
    assert sorted(s.conv_id for s in store.matching(["conv"])) == ["conv", "conv::org/model:Q8_0"]


# ---------------------------------------------------------------- the real server

def _conv_id() -> str:
    return f"conv-{uuid.uuid4().hex[:8]}::org/model:Q8_0"  # slashes and colons, as llama.cpp's web UI sends


def _qs(conv_id: str) -> str:
    return "conv_id=" + quote(conv_id, safe="")


def _chat(api, conv_id: str | None, stream: bool = True, **body):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
            "temperature": 0, "max_tokens": 12, "stream": stream, **body}
    headers = {"X-Conversation-Id": conv_id} if conv_id else {}
    return api.post(api.url("/v1/chat/completions"), json=body, headers=headers, stream=stream, timeout=120)


def _events(raw: bytes) -> list:
    return [json.loads(line[6:]) if line != b"data: [DONE]" else "[DONE]"
            for line in raw.split(b"\n\n") if line.startswith(b"data: ")]


def _content(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e != "[DONE]" and e["choices"])


def _wait_idle(api, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while api.get(api.url("/health")).json()["slots_processing"] and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_a_finished_stream_replays_byte_for_byte_then_delete_forgets_it(api):
    conv_id = _conv_id()
    live = _chat(api, conv_id).content
    assert _events(live)[-1] == "[DONE]"
    replay = api.get(api.url(f"/v1/stream?{_qs(conv_id)}&from=0"), timeout=30)
    assert replay.status_code == 200 and replay.headers["Content-Type"].startswith("text/event-stream")
    assert replay.content == live
    assert api.get(api.url(f"/v1/stream?{_qs(conv_id)}&from=7")).content == live[7:]  # from: a byte offset
    assert api.get(api.url(f"/v1/stream?{_qs(conv_id)}&from={len(live)}")).content == b""
    [info] = api.post(api.url("/v1/streams/lookup"), json={"conversation_ids": [conv_id.split("::")[0]]}).json()
    assert info["conversation_id"] == conv_id and info["is_done"] and info["total_bytes"] == len(live)
    assert api.delete(api.url(f"/v1/stream?{_qs(conv_id)}")).status_code == 204
    gone = api.get(api.url(f"/v1/stream?{_qs(conv_id)}&from=0"))
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "conv_id"
    assert api.delete(api.url(f"/v1/stream?{_qs(conv_id)}")).status_code == 204  # idempotent, as llama-server


@pytest.mark.slow
def test_the_generation_goes_on_when_the_client_goes_and_the_replay_has_all_of_it(server, api):
    """Independent reference: the same greedy request without stream."""
    whole = _chat(api, None, stream=False, max_tokens=100, ignore_eos=True).json()["choices"][0]["message"]["content"]
    conv_id = _conv_id()
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
                       "temperature": 0, "max_tokens": 100, "ignore_eos": True, "stream": True})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # a page reload: gone after the first bytes
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {API_KEY}\r\nX-Conversation-Id: {conv_id}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        assert b"200 OK" in sock.recv(4096)
    replay = api.get(api.url(f"/v1/stream?{_qs(conv_id)}&from=0"), timeout=60).content  # follows it to the end
    events = _events(replay)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert _content(events) == whole


@pytest.mark.slow
def test_delete_stops_a_running_generation_and_its_readers(api):
    conv_id = _conv_id()
    live = _chat(api, conv_id, max_tokens=4000, ignore_eos=True)
    lines = live.iter_lines()
    next(line for line in lines if line.startswith(b"data: "))
    replayed = []
    reader = threading.Thread(target=lambda: replayed.append(
        api.get(api.url(f"/v1/stream?{_qs(conv_id)}&from=0"), timeout=60).content))
    reader.start()
    time.sleep(0.3)
    assert api.delete(api.url(f"/v1/stream?{_qs(conv_id)}")).status_code == 204
    rest = list(lines)  # the live stream ends without [DONE]
    reader.join(30)
    assert b"data: [DONE]" not in rest and replayed and b"data: [DONE]" not in replayed[0]
    _wait_idle(api)
    assert api.get(api.url("/health")).json()["slots_processing"] == 0


@pytest.mark.slow
def test_a_new_stream_under_a_live_id_replaces_it(api):
    conv_id = _conv_id()
    old = _chat(api, conv_id, max_tokens=4000, ignore_eos=True).iter_lines()
    next(line for line in old if line.startswith(b"data: "))
    new = _chat(api, conv_id).content
    assert b"data: [DONE]" not in list(old)  # the old one was stopped
    assert api.get(api.url(f"/v1/stream?{_qs(conv_id)}")).content == new
    _wait_idle(api)


@pytest.mark.slow
@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "Once upon a time"}),
    ("/completion", {"prompt": "Once upon a time", "n_predict": 8}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/responses", {"input": "Hi"}),
])
def test_every_streaming_endpoint_is_resumable(api, path, body):
    conv_id = _conv_id()
    body = {"model": MODEL_ID, "max_tokens": 8, "temperature": 0, "stream": True, **body}
    live = api.post(api.url(path), json=body, headers={"X-Conversation-Id": conv_id}, timeout=120).content
    assert live and api.get(api.url(f"/v1/stream?{_qs(conv_id)}")).content == live


@pytest.mark.slow
def test_only_streams_are_recorded(api):
    conv_id = _conv_id()
    assert _chat(api, conv_id, stream=False).status_code == 200
    assert api.get(api.url(f"/v1/stream?{_qs(conv_id)}")).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("method,path,body,param", [
    ("GET", "/v1/stream", None, "conv_id"),
    ("GET", "/v1/stream?conv_id=", None, "conv_id"),
    ("DELETE", "/v1/stream", None, "conv_id"),
    ("GET", "/v1/stream?conv_id=x&from=abc", None, "from"),
    ("GET", "/v1/stream?conv_id=x&from=-1", None, "from"),
    ("POST", "/v1/streams/lookup", {}, "conversation_ids"),
    ("POST", "/v1/streams/lookup", {"conversation_ids": "x"}, "conversation_ids"),
    ("POST", "/v1/streams/lookup", {"conversation_ids": ["x", 3]}, "conversation_ids[1]"),
])
def test_bad_input_is_a_400_naming_it(api, method, path, body, param):
    r = api.request(method, api.url(path), json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


@pytest.mark.slow
def test_a_conversation_id_too_long_is_refused_before_generating(api):
    r = _chat(api, "x" * 513)
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Conversation-Id"
