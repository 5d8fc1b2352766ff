"""The server without a model: validation, config, the engine's queue and the error envelope, on a
fake Model through Flask's test client (fast; the real-model tests are in the other files)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest

from janlib.server import ServerConfig, create_app
from janlib.server.config import ConfigError, is_loopback
from janlib.server.errors import APIError
from janlib.server.schema import effective_max_tokens, parse_fields, parse_json_body, parse_messages


@dataclass(frozen=True)
class Tok:
    id: int | None
    text: str


class FakeGeneration:
    def __init__(self, ids, max_tokens, stop, gate):
        self.n_prompt_tokens, self.n_cached_tokens, self.finish_reason = len(ids), 0, None
        self._it = self._run(max_tokens, stop, gate)

    def _run(self, max_tokens, stop, gate):
        text = ""
        for i in range(max_tokens):
            gate.wait()
            piece = "ab"[i % 2]
            text += piece
            if any(s in text for s in stop):
                self.finish_reason = "stop"
                return
            yield Tok(i + 1, piece)
        self.finish_reason = "length"

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


class FakeTemplate:
    def render(self, messages, add_generation_prompt=True):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


class FakeTokenizer:
    bos_id = None

    def token_text(self, i):
        return chr(97 + i % 26)

    def token_bytes(self, i):
        return self.token_text(i).encode()


class FakeModel:
    n_ctx, n_vocab, path, metadata, chat_template = 64, 100, "fake.gguf", {"general.name": "Fake"}, "tmpl"
    template, tokenizer = FakeTemplate(), FakeTokenizer()

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()

    def tokenize(self, text, add_special=True, parse_special=False):
        return [ord(c) % 100 for c in text]

    def detokenize(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)

    def generate(self, ids, max_tokens=256, stop=None, ignore_eos=False):
        return FakeGeneration(ids, max_tokens, stop or [], self.gate)


@pytest.fixture
def app():
    return create_app(ServerConfig(alias="fake", api_keys=["k"]), models=[FakeModel()])


@pytest.fixture
def http(app):
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer k"
    return c


def test_chat_non_stream_and_stop(http):
    r = http.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 5})
    assert r.status_code == 200 and r.json["choices"][0]["message"]["content"] == "ababa"
    r = http.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 5, "stop": "bab"})
    assert r.json["choices"][0]["finish_reason"] == "stop"


def test_stream_frames(http):
    r = http.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 3, "stream": True,
                                                "stream_options": {"include_usage": True}})
    frames = [f for f in r.get_data().split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    events = [json.loads(f[6:]) for f in frames[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "aba"
    assert events[-1]["usage"]["completion_tokens"] == 3 and events[-2]["choices"][0]["finish_reason"] == "length"


def test_auth_and_envelope(app):
    c = app.test_client()
    r = c.get("/v1/models")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(r.json["error"]) == {"message", "type", "param", "code"}
    assert c.get("/health").status_code == 200


def test_queue_full(app, http):
    st = app.extensions["janlib"]
    st.engine.queue_size = 0
    model = st.engine.slots[0].model
    model.gate.clear()  # hold the one slot
    body = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    t = threading.Thread(target=lambda: http.post("/v1/chat/completions", json=body))
    t.start()
    import time
    for _ in range(100):
        if st.engine.status()["busy"]:
            break
        time.sleep(0.01)
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    model.gate.set()
    t.join(5)


def test_parse_and_defaults():
    f = parse_fields({})
    assert f["temperature"] == 0.8 and f["top_k"] == 40 and f["stop"] == [] and f["cache_prompt"] is True
    assert effective_max_tokens(parse_fields({"max_tokens": 5, "n_predict": 7})) == (7, "n_predict")
    assert effective_max_tokens(parse_fields({"max_tokens": 5})) == (5, "max_tokens")
    assert effective_max_tokens(parse_fields({})) == (-1, "n_predict")
    assert parse_fields({"top_k": 3.0})["top_k"] == 3
    with pytest.raises(APIError) as e:
        parse_fields({"top_k": True})
    assert e.value.param == "top_k"
    with pytest.raises(APIError):
        parse_json_body(b'{"a": NaN}')
    assert parse_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                                      "text": "b"}]}])[0]["content"] == "ab"


def test_config():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ConfigError):
        ServerConfig(host="0.0.0.0").validate()
    ServerConfig(host="0.0.0.0", api_keys=["k"]).validate()
