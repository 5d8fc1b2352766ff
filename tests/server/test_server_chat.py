"""The real server on the real SmolLM2 model, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import json

import pytest

from server_util import CTX, MODEL_ID

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def chat(api, **body):
    body.setdefault("model", MODEL_ID)
    body.setdefault("messages", HI)
    body.setdefault("temperature", 0)  # greedy: answers the tests can compare
    return api.post(api.url("/v1/chat/completions"), json=body, timeout=120)


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith(b"data: "), line
        data = line[6:]
        events.append(data if data == b"[DONE]" else json.loads(data))
    return events


def test_models_lists_one_complete_model(api, validate):
    r = api.get(api.url("/v1/models"))
    assert r.status_code == 200
    body = r.json()
    validate(body, "ListModelsResponseDto")
    validate(body["data"][0], "ModelDto")
    [model] = body["data"]
    assert model["id"] == MODEL_ID and model["object"] == "model"
    assert model["format"] == "gguf" and model["engine"] == "janlib"
    assert model["ctx_len"] == CTX and model["size"] > 10_000_000
    assert "im_start" in model["prompt_template"]


def test_openai_client_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]


def test_chat_non_stream(client, api, validate):
    answer = client.chat.completions.create(temperature=0, model=MODEL_ID, messages=HI, max_tokens=24)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    raw = chat(api, max_tokens=24).json()
    validate(raw, "ChatCompletionResponseDto")
    assert raw["choices"][0]["message"]["content"] == choice.message.content  # greedy: the same answer
    assert raw["prompt"].endswith("<|im_start|>assistant\n")
    assert raw["tokens_evaluated"] == raw["usage"]["prompt_tokens"]
    assert raw["generation_settings"]["n_predict"] == 24
    assert {"prompt_n", "predicted_n", "predicted_ms"} <= raw["timings"].keys()


def test_chat_stream_matches_non_stream(client):
    whole = client.chat.completions.create(temperature=0, model=MODEL_ID, messages=HI, max_tokens=24).choices[0].message.content
    chunks = list(client.chat.completions.create(temperature=0, model=MODEL_ID, messages=HI, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and chunks[-2].choices[0].finish_reason == finishes[0]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_raw_stream_frames(api):
    r = chat(api, max_tokens=8, stream=True, ignore_eos=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == b"[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}  # as llama-server opens
    # llama.cpp's own test client refuses an empty content delta: no chunk sends one
    assert all(e["choices"][0]["delta"].get("content", "-") != "" for e in events[:-1])
    assert "usage" not in events[-2]  # no include_usage: no usage chunk
    assert events[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_never_leaks(client, stream):
    full = client.chat.completions.create(temperature=0, model=MODEL_ID, messages=HI, max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip() and stop in full
    kwargs = dict(model=MODEL_ID, messages=HI, max_tokens=24, stop=[stop, "zzzz"])
    if stream:
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(temperature=0, stream=True, **kwargs)
                  if c.choices]
        assert all(stop not in p for p in pieces)
        text, reason = "".join(pieces), "stop"
    else:
        answer = client.chat.completions.create(temperature=0, **kwargs)
        text, reason = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert text == full[:full.index(stop)]
    assert reason == "stop"


def test_stop_as_a_single_string(api):
    full = chat(api, max_tokens=16).json()["choices"][0]["message"]["content"]
    word = full.split()[2]
    text = chat(api, max_tokens=16, stop=word).json()["choices"][0]["message"]["content"]
    assert text == full[:full.index(word)]


def test_content_as_text_parts(api):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France? "},
                                          {"type": "text", "text": "Answer in one sentence."}]}]
    a = chat(api, max_tokens=12).json()["choices"][0]["message"]["content"]
    b = chat(api, max_tokens=12, messages=parts).json()["choices"][0]["message"]["content"]
    assert a == b


def test_prefill_given_as_text_parts_joins_them_with_a_blank_line(api):
    """A continued assistant message's text parts are joined as llama.cpp's render_content joins them:
    llama.cpp's own test asserts "Wh\n\nill" for the parts "Wh" and "ill"."""
    parts = [{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}]
    r = chat(api, max_tokens=1, messages=HI + [{"role": "assistant", "content": parts}]).json()
    assert r["prompt"].endswith("Answer in one sentence.<|im_end|>\n<|im_start|>assistant\nWh\n\nill")


def test_n_predict_wins_over_max_tokens(api):
    r = chat(api, max_tokens=3, n_predict=5, ignore_eos=True).json()
    assert r["usage"]["completion_tokens"] == 5 and r["choices"][0]["finish_reason"] == "length"
    r = chat(api, max_tokens=3, ignore_eos=True).json()
    assert r["usage"]["completion_tokens"] == 3
    r = chat(api, max_tokens=0).json()
    assert r["usage"]["completion_tokens"] == 0 and r["choices"][0]["message"]["content"] == ""


def test_cache_prompt_reports_cached_tokens(api):
    msgs = [{"role": "user", "content": "List three colours, please. Only the names."}]
    chat(api, messages=msgs, max_tokens=4)
    again = chat(api, messages=msgs, max_tokens=4).json()
    assert again["tokens_cached"] > 10
    fresh = chat(api, messages=msgs, max_tokens=4, cache_prompt=False).json()
    assert fresh["tokens_cached"] == 0
    assert fresh["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]


def test_return_tokens_and_response_fields(api):
    r = chat(api, max_tokens=4, return_tokens=True).json()
    assert len(r["tokens"]) == 4 and all(isinstance(t, int) for t in r["tokens"])
    r = chat(api, max_tokens=4, response_fields=["choices/0/message/content", "usage/completion_tokens"]).json()
    assert set(r) == {"choices/0/message/content", "usage/completion_tokens", "id", "object", "created", "model",
                      "choices", "usage"}
    assert r["usage/completion_tokens"] == 4


def test_stream_extras(api):
    events = sse_events(chat(api, max_tokens=4, stream=True, return_progress=True, timings_per_token=True,
                             return_tokens=True))
    assert events[0]["prompt_progress"]["total"] > 0
    content = [e for e in events[1:-1] if e.get("tokens")]
    assert content and all("timings" in e for e in content)


def test_sampler_fields_are_accepted(api):
    r = chat(api, max_tokens=4, temperature=0.5, top_k=10, top_p=0.9, min_p=0.1, typical_p=0.9, repeat_penalty=1.2,
             repeat_last_n=32, presence_penalty=0.5, frequency_penalty=0.5, dry_multiplier=0.8, dry_base=1.5,
             dry_allowed_length=3, dry_penalty_last_n=64, dry_sequence_breakers=["\n"], xtc_probability=0.1,
             xtc_threshold=0.2, mirostat=2, mirostat_tau=4.0, mirostat_eta=0.2, seed=42, logit_bias={"1": -5},
             min_keep=1, samplers=["top_k", "temperature"], dynatemp_range=0.1, dynatemp_exponent=1.5, n_keep=4,
             n_indent=0, user="someone", n=1, id_slot=1)
    assert r.status_code == 200, r.text
    settings = r.json()["generation_settings"]
    assert settings["top_k"] == 10 and settings["seed"] == 42 and settings["id_slot"] == 1


def test_completions_text_and_ids(api, client):
    r = api.post(api.url("/v1/completions"), json={"model": MODEL_ID, "temperature": 0, "prompt": "The capital of France is",
                                                   "max_tokens": 6}).json()
    assert r["object"] == "text_completion" and r["choices"][0]["text"]
    ids = api.post(api.url("/tokenize"), json={"content": "The capital of France is"}).json()["tokens"]
    r2 = api.post(api.url("/v1/completions"), json={"model": MODEL_ID, "temperature": 0, "prompt": ids, "max_tokens": 6}).json()
    assert r2["choices"][0]["text"] == r["choices"][0]["text"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(temperature=0, 
        model=MODEL_ID, prompt="The capital of France is", max_tokens=6, stream=True) if c.choices)
    assert streamed == r["choices"][0]["text"]


def test_tokenize_detokenize(api):
    ids = api.post(api.url("/tokenize"), json={"content": "Hello world"}).json()["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    assert api.post(api.url("/detokenize"), json={"tokens": ids}).json() == {"content": "Hello world"}
    pieces = api.post(api.url("/tokenize"), json={"content": "Hello", "with_pieces": True}).json()["tokens"]
    assert pieces[0]["piece"] == "Hello"


def test_health_props_metrics(server, api):
    import requests

    assert requests.get(server.base + "/health").json()["status"] == "ok"  # no key needed
    props = api.get(api.url("/props")).json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == CTX
    text = api.get(api.url("/metrics")).text
    assert "janlib_requests_total" in text and "janlib_tokens_predicted_total" in text
    assert api.get(api.url("/v1/health")).status_code == 200
