"""Every error case over raw HTTP: the OpenAI envelope, the status, the field named; never a 500."""

from __future__ import annotations

import pytest

from janlib.server.schema import FIELDS
from server_util import API_KEY, CTX, MODEL_ID

pytestmark = pytest.mark.slow

MSGS = [{"role": "user", "content": "Hi"}]


def post(api, path="/v1/chat/completions", **kwargs):
    return api.post(api.url(path), timeout=60, **kwargs)


def envelope(r, status, param=None, code=None, validate=None, details=()):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code", *details}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    if validate is not None:
        validate(body, "ErrorResponse", doc="janlib")
    return body["error"]


@pytest.mark.parametrize("raw", [b"{", b"", b"[1, 2]", b'"text"', b'{"model": NaN}', b"\xff\xfe{}",
                                 b'{"a": Infinity}'])
def test_invalid_json_is_400(api, raw, validate):
    envelope(post(api, data=raw, headers={"Content-Type": "application/json"}), 400, code="invalid_json",
             validate=validate)


def _wrong_type(kind):
    return {"integer": "7", "number": "0.5", "boolean": 1, "string": 5, "string_list": [1], "object": [1],
            "array": "x"}[kind]


@pytest.mark.parametrize("name", [n for n in FIELDS])
def test_each_field_wrong_type_is_400_naming_it(api, name):
    value = _wrong_type(FIELDS[name].kind)
    err = envelope(post(api, json={"model": MODEL_ID, "messages": MSGS, name: value}), 400)
    assert err["param"] in (name, f"{name}[0]")
    assert name in err["message"]


@pytest.mark.parametrize("name", [n for n, f in FIELDS.items() if f.minimum is not None or f.maximum is not None
                                  or f.enum is not None])
def test_each_field_out_of_range_is_400(api, name):
    f = FIELDS[name]
    if f.enum is not None:
        value = max(f.enum) + 1
    elif f.minimum is not None:
        value = f.minimum - 1
    else:
        value = f.maximum + 1
    if f.kind == "integer":
        value = int(value)
    envelope(post(api, json={"model": MODEL_ID, "messages": MSGS, name: value}), 400, param=name)


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL_ID}, "messages"),
    ({"model": MODEL_ID, "messages": []}, "messages"),
    ({"model": MODEL_ID, "messages": "hi"}, "messages"),
    ({"model": MODEL_ID, "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": MODEL_ID, "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": MODEL_ID, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0]"),
    ({"model": 5, "messages": MSGS}, "model"),
    ({"model": MODEL_ID, "messages": MSGS, "stop": 5}, "stop"),
    ({"model": MODEL_ID, "messages": MSGS, "stop": ["a", 5]}, "stop[1]"),
    ({"model": MODEL_ID, "messages": MSGS, "logit_bias": {"x": 1}}, "logit_bias.x"),
    ({"model": MODEL_ID, "messages": MSGS, "logit_bias": {"1": 500}}, "logit_bias.1"),
    ({"model": MODEL_ID, "messages": MSGS, "logit_bias": {"99999999": 1}}, "logit_bias.99999999"),
    ({"model": MODEL_ID, "messages": MSGS, "samplers": ["nope"]}, "samplers[0]"),
    ({"model": MODEL_ID, "messages": MSGS, "id_slot": 7}, "id_slot"),
    ({"model": MODEL_ID, "messages": MSGS, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"model": MODEL_ID, "messages": MSGS, "top_logprobs": 2}, "top_logprobs"),
    ({"model": MODEL_ID, "messages": MSGS, "max_tokens": True}, "max_tokens"),
    ({"model": MODEL_ID, "messages": MSGS, "seed": 1.5}, "seed"),
])
def test_bad_values_name_the_field(api, body, param, validate):
    envelope(post(api, json=body), 400, param=param, validate=validate)


@pytest.mark.parametrize("extra, param", [
    ({"multimodal_data": ["aGVsbG8="]}, "multimodal_data"),
])
def test_unsupported_features_are_refused_not_ignored(api, extra, param):
    envelope(post(api, json={"model": MODEL_ID, "messages": MSGS, **extra}), 400, param=param,
             code="unsupported_parameter")


def test_lora_id_without_adapters_is_refused(api):
    err = envelope(post(api, json={"model": MODEL_ID, "messages": MSGS, "lora": [{"id": 0, "scale": 1.0}]}), 400,
                   param="lora")
    assert "no LoRA adapter has id 0" in err["message"]


def test_accepted_empty_forms(api):
    body = {"model": MODEL_ID, "messages": MSGS, "max_tokens": 2, "grammar": "", "lora": [], "multimodal_data": [],
            "response_format": {"type": "text"}, "stop": None, "user": None,
            "logit_bias": {"5": False, "6": True, "7": -3.5}}
    assert post(api, json=body).status_code == 200


def test_with_strict_model_name_an_unknown_model_is_404_naming_the_served_id(api, validate):
    err = envelope(post(api, json={"model": "gpt-4o", "messages": MSGS}), 404, param="model",
                   code="model_not_found", validate=validate)
    assert MODEL_ID in err["message"] and "gpt-4o" in err["message"]
    envelope(post(api, "/v1/completions", json={"model": "gpt-4o", "prompt": "x"}), 404, code="model_not_found")
    envelope(api.get(api.url("/v1/models/gpt-4o")), 404, code="model_not_found")


def test_body_over_8_mib_is_413(api):
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (8 * 1024 * 1024) + b'"}]}'
    envelope(post(api, data=big, headers={"Content-Type": "application/json"}), 413, code="request_too_large")


def test_wrong_method_is_405_and_unknown_path_404(api):
    r = api.get(api.url("/v1/chat/completions"))
    envelope(r, 405, code="method_not_allowed")
    assert "POST" in r.headers["Allow"]
    envelope(api.delete(api.url("/v1/models")), 405)
    envelope(api.get(api.url("/v1/nothing/here")), 404, code="not_found")
    envelope(post(api, "/v2/chat", json={}), 404)


CONTEXT_DETAILS = ("n_prompt_tokens", "n_ctx")  # llama.cpp's server reports both


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_before_any_stream(api, stream, validate):
    long = "hello " * (CTX + 100)
    r = post(api, json={"model": MODEL_ID, "messages": [{"role": "user", "content": long}], "stream": stream})
    err = envelope(r, 400, param="messages", code="context_length_exceeded", validate=validate,
                   details=CONTEXT_DETAILS)
    assert r.headers["Content-Type"].startswith("application/json")
    assert err["n_ctx"] == CTX and err["n_prompt_tokens"] > CTX + 100  # every "hello" at least one token
    assert str(CTX) in err["message"] and str(err["n_prompt_tokens"]) in err["message"]
    r = post(api, "/v1/completions", json={"model": MODEL_ID, "prompt": long, "stream": stream})
    envelope(r, 400, param="prompt", code="context_length_exceeded", details=CONTEXT_DETAILS)


def test_context_length_exceeded_counts_the_prompt_tokens(api):
    # token ids as the prompt: the count is known without any tokenizer
    for n_tokens in (CTX, CTX + 37):
        r = post(api, "/v1/completions", json={"model": MODEL_ID, "prompt": [1] * n_tokens})
        err = envelope(r, 400, code="context_length_exceeded", details=CONTEXT_DETAILS)
        assert (err["n_prompt_tokens"], err["n_ctx"]) == (n_tokens, CTX)


def test_completions_and_tokenize_errors(api):
    envelope(post(api, "/v1/completions", json={"model": MODEL_ID}), 400, param="prompt")
    envelope(post(api, "/v1/completions", json={"model": MODEL_ID, "prompt": [1, "x"]}), 400, param="prompt[1]")
    envelope(post(api, "/v1/completions", json={"model": MODEL_ID, "prompt": [10 ** 9]}), 400, param="prompt[0]")
    envelope(post(api, "/tokenize", json={}), 400, param="content")
    envelope(post(api, "/tokenize", json={"content": 5}), 400, param="content")
    envelope(post(api, "/detokenize", json={"tokens": [-1]}), 400, param="tokens[0]")
    envelope(post(api, "/detokenize", json={"tokens": "abc"}), 400, param="tokens")


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA==", f"Bearer {API_KEY}x", "Bearer"])
def test_auth_required_everywhere_but_health(server, header):
    import requests

    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/props"),
                         ("GET", "/metrics"), ("POST", "/tokenize"), ("GET", "/openapi.json"), ("GET", "/nope")]:
        r = requests.request(method, server.base + path, headers=headers, json={}, timeout=30)
        envelope(r, 401, code="invalid_api_key")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(server.base + "/health", headers=headers).status_code == 200


def test_server_keeps_serving_after_errors(api):
    r = post(api, json={"model": MODEL_ID, "messages": MSGS, "max_tokens": 2})
    assert r.status_code == 200
