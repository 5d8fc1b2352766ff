"""llama-server's native API on the real server (one process for the module): /completion in its prompt forms
and stream, /infill, /apply-template, /props, /slots actions, /metrics names, and /v1/completions echo with the
prompt's logprobs checked against log-softmax over the model's own logits (Model.logits)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

requests = pytest.importorskip("requests")

from server_util import MODEL_ID, start  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def base(slot_dir):
    s = start("--alias", MODEL_ID, "-np", "2", "-c", "2048", "-t", "1", "--seed", "42", "--metrics",
              "--slot-save-path", str(slot_dir), "--log-level", "warning")
    yield s.base
    s.stop()


@pytest.fixture(scope="module")
def model():
    import janlib

    return janlib.Model("smollm2-135m-instruct", n_ctx=256, n_threads=1)


def post(base, path, **body):
    return requests.post(base + path, json=body, timeout=120)


GREEDY = {"temperature": 0.0, "n_predict": 8}


def test_completion_prompt_forms_agree(base, model):
    text = "The capital of France is"
    ids = model.tokenize(text, add_special=True, parse_special=True)
    by_text = post(base, "/completion", prompt=text, **GREEDY).json()
    assert by_text["stop"] is True and by_text["stop_type"] == "limit" and by_text["tokens_predicted"] == 8
    assert by_text["timings"]["prompt_n"] + by_text["timings"]["cache_n"] == by_text["tokens_evaluated"] == len(ids)
    assert by_text["generation_settings"]["seed"] == 42  # --seed is the default of requests without one
    by_ids = post(base, "/completion", prompt=ids, **GREEDY).json()
    mixed = post(base, "/completions", prompt=[ids[0], text[len(model.detokenize(ids[:1])):]], **GREEDY).json()
    assert by_ids["content"] == by_text["content"] == mixed["content"]
    both = post(base, "/completion", prompt=[text, {"prompt_string": text}], **GREEDY).json()
    assert [r["index"] for r in both] == [0, 1] and {r["content"] for r in both} == {by_text["content"]}
    openai = post(base, "/v1/completions", model=MODEL_ID, prompt=text, max_tokens=8, temperature=0.0).json()
    assert openai["choices"][0]["text"] == by_text["content"]


def test_completion_stream_is_llamacpp_shaped(base):
    body = {"prompt": "Once upon a time", "stream": True, "n_probs": 2, **GREEDY}
    whole = post(base, "/completion", **{**body, "stream": False}).json()
    lines = requests.post(base + "/completion", json=body, timeout=120).text.split("\n\n")
    assert "data: [DONE]" not in lines  # llama.cpp's native stream has no closing marker
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    *tokens, last = events
    assert all(e["stop"] is False and len(e["tokens"]) == 1 for e in tokens)
    assert all(len(e["completion_probabilities"][0]["top_logprobs"]) == 2 for e in tokens)
    assert "".join(e["content"] for e in tokens) == whole["content"]
    assert last["stop"] is True and last["timings"]["predicted_n"] == 8


def test_stop_word_and_logit_bias_forms(base, model):
    plain = post(base, "/completion", prompt="1, 2, 3, 4,", **GREEDY).json()["content"]
    word = plain.strip().split()[1]
    stopped = post(base, "/completion", prompt="1, 2, 3, 4,", stop=[word], **GREEDY).json()
    assert stopped["stop_type"] == "word" and stopped["stopping_word"] == word
    first = model.tokenize(plain, add_special=False)[0]
    for bias in ([[first, False]], [[model.detokenize([first]), -100]], {str(first): -100}):
        content = post(base, "/completion", prompt="1, 2, 3, 4,", logit_bias=bias, **GREEDY).json()["content"]
        assert model.tokenize(content, add_special=False)[:1] != [first], bias


def test_infill_needs_fim_tokens(base):
    r = post(base, "/infill", input_prefix="def f():\n", input_suffix="\n", prompt="    return")
    assert r.status_code == 400 and "fill-in-the-middle" in r.json()["error"]["message"]
    r = post(base, "/infill", input_prefix="a", input_extra=[{"filename": 1, "text": "x"}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_extra[0].filename"


def test_infill_layout_from_gguf_metadata():
    """llama.cpp's order: [REPO name, SEP file + text] PRE prefix+prompt SUF suffix MID."""
    from janlib.server import native

    vocabulary = ["<pad>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|file_sep|>"]
    metadata = {"tokenizer.ggml.tokens": vocabulary, "tokenizer.ggml.fim_pre_token_id": 1}
    model = SimpleNamespace(metadata=metadata, n_vocab=300, tokenize=lambda s, **_: [100 + ord(ch) % 100 for ch in s],
                            tokenizer=SimpleNamespace(add_bos=False, bos_id=None))
    st = SimpleNamespace(model=model, engine=SimpleNamespace(n_batch=64, n_ctx=512), extras={})
    assert native.fim_tokens(st) == {"pre": 1, "suf": 2, "mid": 3, "rep": None, "sep": 4}
    ids = native.infill_prompt(st, "ab", "c", "d", [{"filename": "f", "text": "t"}], n_predict=8)
    t = model.tokenize
    assert ids == [4, *t("f"), *t("t"), 4, *t("filename\n"), 1, *t("ab"), *t("d"), 2, *t("c"), 3]
    st.extras.clear()
    model.metadata = {"tokenizer.ggml.tokens": ["<pad>"]}
    with pytest.raises(native.APIError) as error:
        native.infill_prompt(st, "a", "b", "", [], 8)
    assert error.value.status == 400


def test_apply_template_props_and_metrics(base, model):
    messages = [{"role": "user", "content": "Hi there"}]
    assert post(base, "/apply-template", messages=messages).json()["prompt"] == model.chat_prompt(messages)[0]
    props = requests.get(base + "/props", timeout=30).json()
    assert props["default_generation_settings"]["n_ctx"] == 1024  # -c 2048 shared by -np 2
    assert props["default_generation_settings"]["params"]["seed"] == 42
    r = post(base, "/props", temperature=0.1)
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
    text = requests.get(base + "/metrics", timeout=30).text
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:n_decode_total", "llamacpp:requests_processing",
                 "janlib_requests_total"):
        assert f"# TYPE {name} " in text and f"\n{name} " in text
    for path in ("/embedding", "/v1/embeddings", "/rerank"):
        assert post(base, path, input="x", content="x").status_code == 501


def test_slot_save_restore_erase(base, slot_dir):
    prompt = "Water boils at one hundred degrees Celsius at sea level, and"
    first = post(base, "/completion", prompt=prompt, id_slot=1, **GREEDY).json()
    saved = post(base, "/slots/1?action=save", filename="one.slot").json()
    assert saved["n_saved"] == first["tokens_evaluated"] + first["tokens_predicted"] - 1
    assert (slot_dir / "one.slot").exists()
    assert post(base, "/slots/0?action=erase").status_code == 200
    restored = post(base, "/slots/0?action=restore", filename="one.slot").json()
    assert restored["n_restored"] == saved["n_saved"]
    again = post(base, "/completion", prompt=prompt + " more", id_slot=0, cache_prompt=True, **GREEDY).json()
    assert again["timings"]["cache_n"] >= first["tokens_evaluated"] - 1
    assert post(base, "/slots/1?action=erase").json()["n_erased"] == saved["n_saved"]
    assert post(base, "/slots/0?action=save", filename="../escape").status_code == 400
    assert post(base, "/slots/0?action=restore", filename="missing.slot").status_code == 404
    assert post(base, "/slots/9?action=save", filename="x").status_code == 400
    assert post(base, "/slots/0?action=fly", filename="x").status_code == 400


ITEMS = [  # (context, choices): multiple-choice items scored as lm-eval-harness's loglikelihood does
    ("The capital of France is", [" Paris", " Berlin", " a banana"]),
    ("Two plus two equals", [" four", " seven"]),
    ("The opposite of hot is", [" cold", " purple", " hotter"]),
]


def _reference(model, ids: list[int]) -> list[float]:
    """log-softmax over the model's own logits at every position: the logprob of each next token."""
    out = []
    for i in range(1, len(ids)):
        logits = model.logits(ids[:i]).astype(np.float64)
        out.append(float(logits[ids[i]] - logits.max() - np.log(np.exp(logits - logits.max()).sum())))
    return out


def test_echo_logprobs_score_multiple_choice_items(base, model):
    for context, choices in ITEMS:
        scores, references = [], []
        for choice in choices:
            ids = model.tokenize(context + choice, add_special=True, parse_special=True)
            body = {"model": MODEL_ID, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                    "echo": True}
            answer = post(base, "/v1/completions", **body).json()["choices"][0]
            lp = answer["logprobs"]
            assert answer["text"].startswith(context + choice)
            assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
            assert len(lp["tokens"]) == len(ids) + 1 and "".join(lp["tokens"][:len(ids)]) == context + choice
            assert lp["text_offset"][:2] == [0, len(lp["tokens"][0])]
            reference = _reference(model, ids)
            np.testing.assert_allclose(lp["token_logprobs"][1:len(ids)], reference, atol=2e-3)
            for token, top, value in zip(lp["tokens"][1:len(ids)], lp["top_logprobs"][1:], reference):
                assert len(top) == 1 and max(top.values()) >= value - 2e-3
            n_context = len(model.tokenize(context, add_special=True, parse_special=True))
            scores.append(sum(lp["token_logprobs"][n_context:len(ids)]))
            references.append(sum(reference[n_context - 1:]))
        assert int(np.argmax(scores)) == int(np.argmax(references)) == 0
        assert all(math.isclose(a, b, abs_tol=5e-3) for a, b in zip(scores, references))


def test_legacy_logprobs_without_echo_and_bad_values(base):
    body = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "logprobs": 2}
    lp = post(base, "/v1/completions", **body).json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert all(len(top) == 2 for top in lp["top_logprobs"]) and lp["text_offset"][0] == 0
    for bad, param in (({"logprobs": -1}, "logprobs"), ({"logprobs": 2, "top_logprobs": 2}, "top_logprobs"),
                       ({"echo": True, "stream": True}, "echo")):
        r = post(base, "/v1/completions", **{**body, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, bad


def test_ignore_eos_lists_the_banned_end_tokens(base, model):
    banned = post(base, "/completion", prompt="Hi", ignore_eos=True, **GREEDY).json()["generation_settings"]
    assert {e["token"] for e in banned["logit_bias"]} == set(model.eos_token_ids)
    assert all(e["bias"] is None for e in banned["logit_bias"])  # -inf, which JSON has no number for
    plain = post(base, "/completion", prompt="Hi", logit_bias=[[5, -2.5]], **GREEDY).json()["generation_settings"]
    assert plain["logit_bias"] == [{"bias": -2.5, "token": 5}]


def test_chat_input_tokens_counts_the_rendered_prompt(base, model):
    messages = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]
    for path, named in (("/chat/completions/input_tokens", {}), ("/v1/chat/completions/input_tokens",
                                                                  {"model": MODEL_ID})):
        r = post(base, path, messages=messages, **named)
        assert r.status_code == 200 and r.json() == {"input_tokens": len(model.chat_prompt(messages)[1])}
    r = post(base, "/chat/completions/input_tokens", messages="Hi")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = post(base, "/v1/chat/completions/input_tokens", model=5, messages=messages)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_first_progress_event_comes_before_any_prompt_token(base):
    body = {"prompt": "Count: " + " ".join(map(str, range(200))), "stream": True, "return_progress": True,
            "cache_prompt": False, **GREEDY}
    lines = requests.post(base + "/completion", json=body, timeout=120).text.split("\n\n")
    progress = [json.loads(line[6:])["prompt_progress"] for line in lines if '"prompt_progress"' in line]
    assert progress[0]["processed"] == progress[0]["cache"] == 0
    assert progress[-1]["processed"] == progress[-1]["total"] and len(progress) >= 2


def test_a_request_naming_no_model_or_another_gets_the_served_one(base):
    """As llama-server: scripts and host apps leave model out or send names of their own (without
    --strict-model-name); the answer names the served model."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    for path in ("/chat/completions", "/v1/chat/completions"):
        assert post(base, path, **body).status_code == 200
        assert post(base, path, model=None, **body).status_code == 200
        assert post(base, path, model="gpt-4o", **body).json()["model"] == MODEL_ID
    assert post(base, "/v1/completions", prompt="Hi", max_tokens=2).json()["model"] == MODEL_ID
    assert post(base, "/v1/chat/completions", model=5, **body).json()["error"]["param"] == "model"


def test_anthropic_messages_answer_any_model_name(base):
    """Claude Code and other Anthropic clients send Anthropic's model names; the served model answers them."""
    body = {"model": "claude-sonnet-4-5", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    answer = post(base, "/v1/messages", **body)
    assert answer.status_code == 200 and answer.json()["type"] == "message"


def test_context_overflow_has_llamacpp_type_on_its_routes(base):
    messages = [{"role": "user", "content": "word " * 1500}]
    native = post(base, "/chat/completions", messages=messages).json()["error"]
    assert native["type"] == "exceed_context_size_error" and native["n_ctx"] == 1024 and native["n_prompt_tokens"] > 1024
    openai = post(base, "/v1/chat/completions", model=MODEL_ID, messages=messages).json()["error"]
    assert (openai["type"], openai["code"]) == ("invalid_request_error", "context_length_exceeded")


def test_verbose_adds_the_native_result(base, model):
    messages = [{"role": "user", "content": "Hi"}]
    answer = post(base, "/chat/completions", messages=messages, max_tokens=2, verbose=True).json()
    assert answer["__verbose"]["prompt"] == model.detokenize(model.chat_prompt(messages)[1])
    assert answer["__verbose"]["content"] == answer["choices"][0]["message"]["content"]
    assert "__verbose" not in post(base, "/chat/completions", messages=messages, max_tokens=2).json()


def test_anthropic_thinking_blocks_reach_templates_that_keep_them():
    """An agent loop's earlier thinking (Anthropic thinking blocks) is the message's reasoning_content, which
    Qwen3's template renders after the last user query."""
    from pathlib import Path

    from janlib.server import create_app
    from janlib.server.__main__ import parse_args

    template = Path(__file__).resolve().parents[1] / "templates" / "Qwen-Qwen3-0.6B.jinja"
    app = create_app(parse_args(["-c", "256", "-t", "1", "--chat-template-file", str(template)]))
    call = {"type": "tool_use", "id": "call_1", "name": "list_files", "input": {"path": "."}}
    thought = {"type": "thinking", "thinking": "I should look at the project first."}

    def count(assistant_blocks):
        messages = [{"role": "user", "content": "Fix the bug"}, {"role": "assistant", "content": assistant_blocks},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a.py"}]}]
        r = app.test_client().post("/v1/messages/count_tokens", json={"model": "any", "messages": messages})
        assert r.status_code == 200, r.get_json()
        return r.get_json()["input_tokens"]

    try:
        assert count([thought, call]) > count([call])
    finally:
        app.extensions["janlib"].engine.close()


def test_responses_stream_carries_llamacpp_telemetry(base):
    body = {"input": "This is a test " * 20, "max_output_tokens": 4, "stream": True, "timings_per_token": True,
            "return_progress": True}
    lines = requests.post(base + "/responses", json=body, timeout=120).text.split("\n")
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    progress = [e for e in events if "prompt_progress" in e]
    assert progress and all(e["type"] == "response.in_progress" for e in progress)
    assert progress[-1]["prompt_progress"]["processed"] == progress[-1]["prompt_progress"]["total"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert deltas and all(e["timings"]["predicted_n"] >= 1 for e in deltas)
    assert events[-1]["timings"]["predicted_n"] == 4


def test_completions_score_a_batch_of_prompts_as_each_alone(base):
    """lm-eval-harness sends its loglikelihood requests in batches: prompt is a list of texts (or of id lists)."""
    batch = ["The capital of France is Paris", "Two plus two equals four"]
    body = {"model": MODEL_ID, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True}
    together = post(base, "/v1/completions", prompt=batch, **body).json()
    alone = [post(base, "/v1/completions", prompt=text, **body).json() for text in batch]
    assert [c["index"] for c in together["choices"]] == [0, 1]
    for choice, single in zip(together["choices"], alone):
        assert choice["text"] == single["choices"][0]["text"]
        np.testing.assert_allclose(choice["logprobs"]["token_logprobs"][1:],
                                   single["choices"][0]["logprobs"]["token_logprobs"][1:], atol=1e-4)
    assert together["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in alone)
    r = post(base, "/v1/completions", prompt=batch, **{**body, "echo": False, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_generation_rate_counts_decode_steps(base):
    """The first token comes from the prompt's logits: n tokens take n - 1 decode steps, as llama-server counts."""
    one = post(base, "/completion", prompt="I believe", n_predict=1, ignore_eos=True).json()["timings"]
    assert one["predicted_n"] == 1 and one["predicted_per_second"] == one["predicted_per_token_ms"] == 0.0
    six = post(base, "/completion", prompt="I believe", n_predict=6, ignore_eos=True).json()["timings"]
    assert math.isclose(six["predicted_per_second"], 5 * 1000 / six["predicted_ms"])


def test_embedding_prompts_count_in_metrics():
    from janlib.server import create_app
    from janlib.server.__main__ import parse_args

    app = create_app(parse_args(["-c", "256", "-t", "1", "--embedding", "--metrics"]))
    client = app.test_client()

    def counters():
        text = client.get("/metrics").get_data(as_text=True)
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line.startswith(("llamacpp:prompt_tokens_total", "llamacpp:n_decode_total",
                                    "llamacpp:tokens_predicted_total"))}

    try:
        before = counters()
        assert client.post("/v1/embeddings", json={"input": ["hello world", "goodbye world"]}).status_code == 200
        after = counters()
        assert after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"] >= 4
        assert after["llamacpp:n_decode_total"] > before["llamacpp:n_decode_total"]
        assert after["llamacpp:tokens_predicted_total"] == before["llamacpp:tokens_predicted_total"]
    finally:
        app.extensions["janlib"].engine.close()
