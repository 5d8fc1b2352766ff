"""Per-token probabilities on the real server: logprobs / top_logprobs (OpenAI), n_probs and
post_sampling_probs (llama.cpp), non-stream and stream, chat and text completions."""

from __future__ import annotations

import json
import math

import pytest

from server_util import MODEL_ID

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# greedy, with no penalty between the raw logits and the draw, and no cached prefix (so that two
# requests evaluate the prompt alike): the drawn token is the raw softmax's most probable one
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "cache_prompt": False}
TOL = 1e-4


def post(api, path="/v1/chat/completions", **body):
    body.setdefault("model", MODEL_ID)
    if path.endswith("chat/completions"):
        body.setdefault("messages", HI)
    return api.post(api.url(path), json=body, timeout=120, stream=bool(body.get("stream")))


def sse_events(response) -> list:
    assert response.status_code == 200, response.text
    events = []
    for line in response.iter_lines():
        if line:
            assert line.startswith(b"data: "), line
            if line[6:] != b"[DONE]":
                events.append(json.loads(line[6:]))
    return events


def stream_entries(events) -> list:
    out = []
    for event in events:
        for choice in event.get("choices", []):
            if choice.get("logprobs") is not None:
                out.extend(choice["logprobs"]["content"])
    return out


def check_entries(entries, n_top, greedy=False, post_sampling=False):
    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    other, other_top = ("logprob", "top_logprobs") if post_sampling else ("prob", "top_probs")
    assert entries
    for e in entries:
        assert {"id", "token", "bytes", key, top_key} <= e.keys() and other not in e and other_top not in e
        assert isinstance(e["id"], int) and isinstance(e["token"], str)
        assert all(isinstance(b, int) and 0 <= b < 256 for b in e["bytes"])
        assert bytes(e["bytes"]).decode("utf-8", "replace").startswith(e["token"])
        top = e[top_key]
        assert len(top) <= n_top and (post_sampling or len(top) == n_top)
        values = [t[key] for t in top]
        assert values == sorted(values, reverse=True)
        probs = values if post_sampling else [math.exp(v) for v in values]
        assert all(0 <= p <= 1 + TOL for p in probs) and sum(probs) <= 1 + TOL
        if post_sampling:
            assert 0 <= e[key] <= 1 + TOL
        else:
            assert e[key] <= 0
        if top:
            assert e[key] <= top[0][key] + TOL
        if greedy and top:
            assert e["id"] == top[0]["id"] and e[key] == pytest.approx(top[0][key], abs=TOL)


def same_entries(a, b):
    assert [(e["id"], e["token"], e["bytes"]) for e in a] == [(e["id"], e["token"], e["bytes"]) for e in b]
    for x, y in zip(a, b):
        assert x["logprob"] == pytest.approx(y["logprob"], abs=TOL)
        assert [t["id"] for t in x["top_logprobs"]] == [t["id"] for t in y["top_logprobs"]]
        assert [t["logprob"] for t in x["top_logprobs"]] == pytest.approx([t["logprob"] for t in y["top_logprobs"]],
                                                                           abs=TOL)


def validate_response(raw, validate, schema_name, doc="jan"):
    """The envelope against the spec; the entries against its ChatChoiceLogprobs / LogprobContent.

    The Jan spec types choice.logprobs as an array of ChatChoiceLogprobs, while OpenAI clients (and
    llama.cpp) carry {"content": [...]}: the server answers the latter, so the entries are checked
    one by one."""
    for choice in raw["choices"]:
        logprobs = choice["logprobs"]
        for entry in logprobs["content"]:
            validate(entry, "ChatChoiceLogprobs", doc=doc)
            for top in entry.get("top_logprobs", entry.get("top_probs", [])):
                validate(top, "LogprobContent", doc=doc)
    stripped = dict(raw, choices=[dict(c, logprobs=None) for c in raw["choices"]])
    validate(stripped, schema_name, doc=doc)


def test_openai_client_non_stream_and_stream(client):
    kwargs = dict(model=MODEL_ID, messages=HI, max_tokens=16, logprobs=True, top_logprobs=3, extra_body=GREEDY)
    answer = client.chat.completions.create(**kwargs)
    choice = answer.choices[0]
    content = choice.logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    entries = [t.model_dump() for t in content]
    check_entries(entries, 3, greedy=True)

    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [t.model_dump() for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    same_entries(streamed, entries)
    for c in chunks:  # each chunk carries the entries of the tokens whose text it brings
        if c.choices and c.choices[0].delta.content and c.choices[0].logprobs:
            assert "".join(t.token for t in c.choices[0].logprobs.content) == c.choices[0].delta.content


def test_raw_http_validates_against_the_spec(api, validate):
    raw = post(api, max_tokens=12, logprobs=True, top_logprobs=2, **GREEDY).json()
    validate_response(raw, validate, "ChatCompletionResponseDto")
    entries = raw["choices"][0]["logprobs"]["content"]
    check_entries(entries, 2, greedy=True)
    assert "".join(e["token"] for e in entries) == raw["choices"][0]["message"]["content"]

    events = sse_events(post(api, max_tokens=12, logprobs=True, top_logprobs=2, stream=True, **GREEDY))
    for event in events:
        validate(event, "ChatCompletionChunk", doc="janlib")
    same_entries(stream_entries(events), entries)
    assert events[0]["choices"][0]["logprobs"] is None  # the role chunk carries no token


def test_top_logprobs_zero_and_absent_give_empty_lists(api):
    for extra in ({"top_logprobs": 0}, {}):
        raw = post(api, max_tokens=4, logprobs=True, **GREEDY, **extra).json()
        entries = raw["choices"][0]["logprobs"]["content"]
        assert len(entries) == raw["usage"]["completion_tokens"]
        assert all(e["top_logprobs"] == [] and e["logprob"] <= 0 for e in entries)


def test_no_logprobs_unless_asked(api):
    raw = post(api, max_tokens=4, **GREEDY).json()
    assert raw["choices"][0]["logprobs"] is None
    events = sse_events(post(api, max_tokens=4, stream=True, **GREEDY))
    assert all(c.get("logprobs") is None for e in events for c in e["choices"])


def test_n_probs_without_logprobs(api):
    raw = post(api, max_tokens=8, n_probs=4, **GREEDY).json()
    entries = raw["choices"][0]["logprobs"]["content"]
    assert len(entries) == raw["usage"]["completion_tokens"]
    check_entries(entries, 4, greedy=True)
    # both given: the larger count
    raw = post(api, max_tokens=3, n_probs=2, logprobs=True, top_logprobs=5, **GREEDY).json()
    check_entries(raw["choices"][0]["logprobs"]["content"], 5, greedy=True)


def test_post_sampling_probs(api, validate):
    body = dict(max_tokens=10, n_probs=5, post_sampling_probs=True, temperature=0.8, top_k=5, seed=7,
                cache_prompt=False)
    raw = post(api, **body).json()
    validate_response(raw, validate, "ChatCompletionResponseDto")
    entries = raw["choices"][0]["logprobs"]["content"]
    check_entries(entries, 5, post_sampling=True)
    for e in entries:  # top_k 5: every survivor is listed, the drawn one among them
        assert 1 <= len(e["top_probs"]) <= 5 and e["id"] in [t["id"] for t in e["top_probs"]]
        assert sum(t["prob"] for t in e["top_probs"]) == pytest.approx(1.0, abs=1e-3)
        assert e["prob"] > 0
    events = sse_events(post(api, stream=True, **body))  # the same seed: the same draws
    assert [e["id"] for e in stream_entries(events)] == [e["id"] for e in entries]


def test_completions_non_stream_and_stream(api, validate):
    body = dict(prompt="The capital of France is", max_tokens=10, n_probs=3, **GREEDY)
    raw = post(api, "/v1/completions", **body).json()
    validate_response(raw, validate, "CompletionResponseDto", doc="janlib")  # not in the Jan spec
    entries = raw["choices"][0]["logprobs"]["content"]
    assert len(entries) == raw["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in entries) == raw["choices"][0]["text"]
    check_entries(entries, 3, greedy=True)
    events = sse_events(post(api, "/v1/completions", stream=True, **body))
    same_entries(stream_entries(events), entries)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == raw["choices"][0]["text"]


def test_stop_strings_stream_and_non_stream_agree(api):
    plain = post(api, max_tokens=16, logprobs=True, top_logprobs=1, **GREEDY).json()
    content = plain["choices"][0]["message"]["content"]
    words = content.split()
    assert len(words) >= 3
    stop = " " + words[2]  # a stop string the answer meets, spanning or ending a token
    raw = post(api, max_tokens=16, logprobs=True, top_logprobs=1, stop=[stop], **GREEDY).json()
    text = raw["choices"][0]["message"]["content"]
    assert raw["choices"][0]["finish_reason"] == "stop" and stop not in text
    entries = raw["choices"][0]["logprobs"]["content"]
    joined = "".join(e["token"] for e in entries)
    # the stop string's own tokens are left out, bar the one that also brings the text before it
    assert joined.startswith(text) and len(entries) <= raw["usage"]["completion_tokens"]
    events = sse_events(post(api, max_tokens=16, logprobs=True, top_logprobs=1, stop=[stop], stream=True,
                             **GREEDY))
    same_entries(stream_entries(events), entries)


def test_out_of_range_requests_are_refused(api):
    r = post(api, max_tokens=2, logprobs=True, top_logprobs=21)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    n_vocab = api.get(api.url("/props")).json()["n_vocab"]
    r = post(api, max_tokens=2, n_probs=n_vocab + 1)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n_probs"
    r = post(api, max_tokens=2, n_probs=-1)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n_probs"
