"""What real clients send, on a real server process: null for the options they leave unset, lone
surrogates (a JavaScript string cut inside an emoji), NULs and control characters, the developer
role — and generated bodies with such strings in every string field of every endpoint. No 5xx, the
OpenAI envelope on every 4xx, and the server serves the next request."""

from __future__ import annotations

import json

import pytest

from server_util import API_KEY, MODEL_ID, start

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow

MSGS = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def capped_server():
    s = start("--api-key", API_KEY, "--alias", MODEL_ID, "--ctx-size", "512", "--n-predict", "2", "--threads", "1",
              "--log-level", "error")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(capped_server):
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"

    def post(path, body, timeout=60):
        # json.dumps escapes every non-ASCII character, so a lone surrogate goes out as "\ud800", as
        # JavaScript's JSON.stringify sends one
        return session.post(capped_server.base + path, data=json.dumps(body), timeout=timeout,
                            headers={"Content-Type": "application/json"})

    post.get = lambda path: session.get(capped_server.base + path, timeout=30)
    yield post
    session.close()


def ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def request_schema(doc: dict, path: str) -> dict:
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def optional_properties(schema: dict) -> list[str]:
    return sorted(set(schema["properties"]) - set(schema.get("required", [])))


@pytest.fixture(scope="module")
def shipped_doc():
    from janlib.server.misc import openapi_document

    return openapi_document()


# --- null means "not given" -------------------------------------------------------------------------

# Where the Jan spec's stated default and the served one differ in writing only: the spec writes the
# newline breaker escaped ("\\n", as llama.cpp's documentation does) and "no bias" as {} (generation_settings
# lists biases as llama.cpp does: [{"bias", "token"}], so none is []).
SPEC_DEFAULT_SPELLINGS = {"dry_sequence_breakers": ["\n", ":", "\"", "*"], "logit_bias": []}


def test_every_optional_chat_field_null_at_once_gives_the_spec_defaults(http, jan_spec):
    chat = jan_spec["components"]["schemas"]["CreateChatCompletionDto"]
    optional = optional_properties(chat)
    assert len(optional) > 40  # the whole of the spec's list, not a hand-picked few
    absent = ok(http(CHAT, {"model": MODEL_ID, "messages": MSGS}))
    nulls = ok(http(CHAT, {"model": MODEL_ID, "messages": MSGS, **dict.fromkeys(optional)}))
    assert nulls["generation_settings"] == absent["generation_settings"]
    settings_ = nulls["generation_settings"]
    for name in optional:
        prop = chat["properties"][name]
        if "default" in prop and name in settings_ and name != "n_predict":  # n_predict: the server's cap
            assert settings_[name] == SPEC_DEFAULT_SPELLINGS.get(name, prop["default"]), name


@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/tokenize", "/detokenize"])
def test_each_optional_field_null_is_not_given(http, shipped_doc, jan_spec, path):
    """One request per optional property of the endpoint's request schema (the Jan spec's for chat,
    the shipped document's for the others), that property null: the same answer as without it."""
    schema = (jan_spec["components"]["schemas"]["CreateChatCompletionDto"] if path == "/chat/completions"
              else request_schema(shipped_doc, path))
    base = {"/chat/completions": {"model": MODEL_ID, "messages": MSGS}, "/completions": {"model": MODEL_ID,
            "prompt": "Hi"}, "/tokenize": {"content": "Hi there"}, "/detokenize": {}}[path]
    assert set(schema.get("required", [])) <= set(base)
    comparable = "generation_settings" if "completions" in path else None
    expected = ok(http("/v1" + path, base))
    failures = {}
    for name in optional_properties(schema):
        r = http("/v1" + path, {**base, name: None})
        if r.status_code != 200:
            failures[name] = r.text
        elif (r.json()[comparable] if comparable else r.json()) != (expected[comparable] if comparable else expected):
            failures[name] = "a different answer than without the field"
    assert not failures, failures


def test_nested_optional_null(http):
    body = {"model": MODEL_ID, "messages": MSGS, "stream": True, "stream_options": {"include_usage": None}}
    r = http(CHAT, body)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert '"usage": {' not in r.text and '"usage":{' not in r.text  # include_usage null = false


# --- strings: lone surrogates become U+FFFD, everywhere ---------------------------------------------

def test_lone_surrogate_in_content_is_the_replacement_character(http):
    answer = ok(http(CHAT, {"model": MODEL_ID, "messages": [{"role": "user", "content": "\ud800 hi \udfff"}],
                            "temperature": 0}))
    same = ok(http(CHAT, {"model": MODEL_ID, "messages": [{"role": "user", "content": "\ufffd hi \ufffd"}],
                          "temperature": 0}))
    assert "\ufffd hi \ufffd" in answer["prompt"]
    assert answer["prompt"] == same["prompt"]
    assert answer["choices"][0]["message"] == same["choices"][0]["message"]
    tokens = ok(http("/v1/tokenize", {"content": "a\udbffb"}))["tokens"]
    assert tokens == ok(http("/v1/tokenize", {"content": "a\ufffdb"}))["tokens"]
    completion = ok(http("/v1/completions", {"model": MODEL_ID, "prompt": ["x\ud83d"]}))
    assert completion["prompt"] == "x\ufffd"
    pair = ok(http("/v1/tokenize", {"content": "\ud83d\ude00"}))["tokens"]  # a pair is one character, kept
    assert pair == ok(http("/v1/tokenize", {"content": "\U0001f600"}))["tokens"]


@pytest.mark.parametrize("field, value", [
    ("stop", ["\ud800"]), ("stop", "a\udc00"), ("dry_sequence_breakers", ["\udfff"]), ("grammar", 'root ::= "\ud800"'),
    ("json_schema", {"type": "string", "pattern": "\ud800+"}), ("json_schema", {"enum": ["\udc00"]}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "\ud800", "schema": {"const": "\udc01"}}}),
    ("user", "\ud800"), ("response_fields", ["\ud800"]), ("samplers", ["top_k\ud800"]), ("logit_bias", {"\ud800": 1}),
])
def test_lone_surrogate_in_any_field_is_never_a_5xx(http, field, value):
    r = http(CHAT, {"model": MODEL_ID, "messages": MSGS, field: value})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["param"].startswith(field), r.text


def test_lone_surrogate_in_a_grammar_is_its_replacement_character(http):
    answer = ok(http(CHAT, {"model": MODEL_ID, "messages": MSGS, "grammar": 'root ::= "\ud800\ud800"'}))
    assert answer["choices"][0]["message"]["content"] == "\ufffd\ufffd"


# --- the developer role -----------------------------------------------------------------------------

def test_developer_role_is_the_system_message_for_smollm2(http):
    def prompt(role):
        return ok(http(CHAT, {"model": MODEL_ID, "messages": [{"role": role, "content": "Be brief."}, *MSGS],
                              "temperature": 0}))
    developer, system = prompt("developer"), prompt("system")
    assert developer["prompt"] == system["prompt"]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in developer["prompt"]
    assert developer["choices"][0]["message"] == system["choices"][0]["message"]


# --- generated bodies: hostile strings in every string field of every endpoint ----------------------

HOSTILE_PIECES = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\x01", "\x08", "\x1b[31m", "\x7f", "\u2028",
                  "\ufeff", "\ufffe", "\U0010ffff", "\r\n", "\\", "\"", "<|im_start|>", "<|im_end|>", "{{ x }}",
                  "{% if %}", "😀"]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=4)), max_size=6).map("".join)
hostile_object = st.dictionaries(hostile_text, hostile_text, max_size=2)


def mostly(valid, rarely):
    """valid nine times in ten: bodies must get past the first check to reach the engine."""
    return st.sampled_from(range(10)).flatmap(lambda i: rarely if i == 9 else valid)


messages = st.lists(st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["system", "developer", "user", "assistant"]), hostile_text),
     "content": st.one_of(hostile_text, st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                        "text": hostile_text}), min_size=1,
                                                 max_size=2))},
    optional={"name": hostile_text}), min_size=1, max_size=3)
json_schemas = st.one_of(
    st.builds(lambda s: {"type": "string", "pattern": s}, hostile_text),
    st.builds(lambda s: {"enum": [s]}, hostile_text),
    st.builds(lambda k: {"type": "object", "properties": {k: {"type": "string"}}, "required": [k]}, hostile_text),
    hostile_object)

# Compound fields whose strings sit inside; every other string field is found in the document.
COMPOUND = {
    "messages": messages,
    "prompt": st.one_of(hostile_text, st.lists(hostile_text, min_size=1, max_size=1)),
    "stop": st.one_of(hostile_text, st.lists(hostile_text, max_size=3)),
    "json_schema": json_schemas,
    "response_format": st.one_of(
        st.builds(lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}, json_schemas),
        st.builds(lambda t: {"type": t}, st.one_of(st.just("json_object"), hostile_text))),
    "logit_bias": st.dictionaries(hostile_text, st.one_of(st.booleans(), st.integers(-100, 100)), max_size=2),
    "stream_options": hostile_object,
    "lora": st.lists(hostile_object, max_size=1),
}


def string_fields(schema: dict) -> dict:
    """field → a strategy for it with hostile strings: every string, string-array and compound field."""
    out = {}
    for name, prop in schema["properties"].items():
        if name in COMPOUND:
            out[name] = COMPOUND[name]
        elif prop.get("type") == "string":
            out[name] = hostile_text
        elif prop.get("type") == "array" and prop.get("items", {}).get("type") == "string":
            out[name] = st.lists(hostile_text, max_size=3)
    return out


ENDPOINTS = {  # path: (fields always sent valid, examples)
    "/chat/completions": ({"model": MODEL_ID}, 40),
    "/completions": ({"model": MODEL_ID}, 30),
    "/tokenize": ({}, 20),
    "/detokenize": ({"tokens": [1, 2]}, 10),
}


def check_answer(r) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        error = r.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error), r.text
    elif r.headers["Content-Type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]") or '"invalid_request_error"' in r.text, r.text[-2000:]
        assert '"server_error"' not in r.text, r.text[-2000:]


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_hostile_strings_in_every_string_field(http, shipped_doc, capped_server, path):
    valid, n_examples = ENDPOINTS[path]
    fields = string_fields(request_schema(shipped_doc, path))
    required = {name: strategy for name, strategy in fields.items() if name not in valid and name in
                request_schema(shipped_doc, path).get("required", [])}
    optional = {name: strategy for name, strategy in fields.items() if name not in valid and name not in required}
    if "completions" in path:
        optional["stream"] = st.booleans()
    # a few optional fields at a time, so that most bodies pass validation and reach the engine
    chosen = st.sets(st.sampled_from(sorted(optional)), max_size=3) if optional else st.just(set())
    bodies = chosen.flatmap(lambda names: st.fixed_dictionaries(
        {**{k: st.just(v) for k, v in valid.items()}, **required, **{n: optional[n] for n in names}}))
    seen = []

    @settings(max_examples=n_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies, hostile_object)
    def run(body, unknown_fields):
        seen.append(body)
        check_answer(http("/v1" + path, {**unknown_fields, **body}))
        # the next request is served, by the engine too
        assert ok(http(CHAT, {"model": MODEL_ID, "messages": MSGS, "max_tokens": 1}))["choices"]

    run()
    assert len(seen) >= n_examples // 2
    assert "Traceback" not in capped_server.output()
