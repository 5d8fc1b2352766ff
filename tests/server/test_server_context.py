"""A generation that reaches the end of the context: shifted (the default) or ended with length."""

from __future__ import annotations

import pytest

from server_util import MODEL_ID, start

requests = pytest.importorskip("requests")
pytestmark = pytest.mark.slow
CTX = 64


@pytest.fixture(scope="module", params=["shift", "no-shift"])
def small_context(request):
    flags = ["--no-context-shift"] if request.param == "no-shift" else []
    s = start("--alias", MODEL_ID, "--ctx-size", str(CTX), "--threads", "1", *flags)
    yield request.param, s
    s.stop()


def test_end_of_context(small_context):
    mode, server = small_context
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count to a hundred."}],
            "max_tokens": 120, "ignore_eos": True, "temperature": 0, "n_keep": -1}
    r = requests.post(server.base + "/v1/chat/completions", json=body, timeout=120).json()
    n_prompt, n_gen = r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]
    assert r["choices"][0]["finish_reason"] == "length" and r["truncated"] is True
    if mode == "shift":
        assert n_gen == 120  # past the 64-token context, the older half after the prompt is dropped
    else:
        assert n_prompt + n_gen == CTX + 1  # the last token is sampled but never evaluated


def test_n_indent_ends_at_a_shallow_line(small_context):
    _, server = small_context
    body = {"model": MODEL_ID, "prompt": "def f(x):\n    y = x + 1\n", "max_tokens": 40, "temperature": 0,
            "n_indent": 4}
    r = requests.post(server.base + "/v1/completions", json=body, timeout=120).json()
    text = r["choices"][0]["text"]
    lines = text.split("\n")
    # every line after the first newline of the answer keeps the indentation, or the answer ended there
    assert all(line.startswith(("    ", "\t")) or line.strip() == "" for line in lines[1:])
