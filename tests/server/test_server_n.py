"""OpenAI `n`: several choices from one prompt, streamed (each chunk names its choice) and not; the
prompt is evaluated once; choice 0 repeats the same seeded request with n = 1. return_progress reports
each evaluated prompt chunk."""

from __future__ import annotations

import json

import pytest
import requests

from server_util import MODEL_ID

pytestmark = pytest.mark.slow

SEEDED = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 42}


def _sse(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:]
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


def test_chat_n_gives_n_choices_and_choice_0_repeats_n_1(client):
    messages = [{"role": "user", "content": "Write a word."}]
    many = client.chat.completions.create(model=MODEL_ID, messages=messages, n=2, max_tokens=12,
                                          extra_body=SEEDED)
    assert [c.index for c in many.choices] == [0, 1]
    one = client.chat.completions.create(model=MODEL_ID, messages=messages, n=1, max_tokens=12, extra_body=SEEDED)
    assert many.choices[0].message.content == one.choices[0].message.content
    assert many.choices[0].message.content != many.choices[1].message.content  # seeds 42 and 43
    assert many.usage.prompt_tokens == one.usage.prompt_tokens
    assert many.usage.completion_tokens > one.usage.completion_tokens


def test_streamed_choices_carry_their_index_and_match_the_non_stream_answer(api):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Name an animal."}], "n": 2,
            "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True}, **SEEDED}
    events = _sse(api.post(api.url("/v1/chat/completions"), json=body, stream=True, timeout=120))
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    text, finish, roles = {0: "", 1: ""}, {}, set()
    for event in events[:-2]:
        (choice,) = event["choices"]
        if choice["delta"].get("role"):
            roles.add(choice["index"])
        text[choice["index"]] += (choice["delta"].get("content") or "")
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert roles == {0, 1} and set(finish) == {0, 1}
    whole = api.post(api.url("/v1/chat/completions"), json=dict(body, stream=False), timeout=120).json()
    assert [c["message"]["content"] for c in whole["choices"]] == [text[0], text[1]]
    assert [c["finish_reason"] for c in whole["choices"]] == [finish[0], finish[1]]


def test_completions_n(api):
    body = {"model": MODEL_ID, "prompt": "The sea is", "n": 2, "max_tokens": 8, **SEEDED}
    r = api.post(api.url("/v1/completions"), json=body, timeout=120).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert all(c["text"] for c in r["choices"])
    events = _sse(api.post(api.url("/v1/completions"), json=dict(body, stream=True), stream=True, timeout=120))
    streamed = {0: "", 1: ""}
    for event in events[:-1]:
        for choice in event["choices"]:
            streamed[choice["index"]] += choice["text"]
    assert [streamed[0], streamed[1]] == [c["text"] for c in r["choices"]]


@pytest.mark.parametrize("n", [3, 9])
def test_n_beyond_the_slots_is_a_400_naming_n(api, n):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "n": n, "max_tokens": 2}
    r = api.post(api.url("/v1/chat/completions"), json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_return_progress_reports_each_prompt_chunk(api):
    long = "Here is a list of words: " + ", ".join(f"word{i}" for i in range(150))
    body = {"model": MODEL_ID, "prompt": long, "max_tokens": 2, "stream": True, "return_progress": True,
            "cache_prompt": False}
    events = _sse(api.post(api.url("/v1/completions"), json=body, stream=True, timeout=120))
    progress = [e["prompt_progress"] for e in events if isinstance(e, dict) and "prompt_progress" in e]
    assert len(progress) >= 2  # one per chunk, not one at the end
    processed = [p["processed"] for p in progress]
    assert processed == sorted(processed) and processed[-1] == progress[-1]["total"] > processed[0]
    assert all(p["cache"] == 0 for p in progress)
    assert events[-1] == "[DONE]"
