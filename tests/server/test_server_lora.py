"""LoRA in the real server: --lora FILE[:SCALE], the per-request `lora` field, GET/POST /lora-adapters.

The server runs SmolLM2 with two random adapters written by gguf's writer (tests/test_lora.py), one at
scale 1 and one at 0. What a request gets is compared with janlib.Model.generate in this process under the
same adapter scales (tests/test_lora.py checks those against a float64 merged reference)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import janlib
from janlib.server.__main__ import parse_args
from server_util import API_KEY, MODEL_ID, Server, api_session, start
from test_lora import EVERY, write_adapter

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def adapters(smollm2_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("server_lora")
    return (write_adapter(root / "attention.gguf", smollm2_path, seed=1),
            write_adapter(root / "every.gguf", smollm2_path, targets=EVERY, rank=4, alpha=4.0, seed=2))


@pytest.fixture(scope="module")
def lora_server(adapters):
    first, second = adapters
    s = start("--api-key", API_KEY, "--alias", MODEL_ID, "--parallel", "2", "--ctx-size", "512", "--threads", "1",
              "--log-level", "warning", "--lora", str(first), "--lora", f"{second}:0")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(lora_server):
    session = api_session(lora_server)
    yield session
    session.close()


@pytest.fixture(scope="module")
def local(smollm2_path, adapters):
    """The library with the same adapters at the server's start-up scales."""
    return janlib.Model(smollm2_path, lora=[adapters[0], (adapters[1], 0.0)])


def complete(http, **extra) -> dict:
    r = http.post(http.url("/v1/completions"), json={"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 8,
                                                     "temperature": 0, "repeat_penalty": 1.0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def expected(local, selection=None) -> str:
    ids = local.tokenize(PROMPT)
    return "".join(t.text for t in local.generate(ids, max_tokens=8, lora=selection))


def test_adapters_are_listed(http, adapters):
    listed = http.get(http.url("/lora-adapters")).json()
    assert [(a["id"], a["path"], a["scale"]) for a in listed] == [(0, str(adapters[0]), 1.0), (1, str(adapters[1]), 0.0)]
    assert [(a["alpha"], a["rank"]) for a in listed] == [(16.0, 8), (4.0, 4)]


def test_per_request_selection(http, local):
    assert complete(http)["choices"][0]["text"] == expected(local)
    for selection in ([{"id": 0, "scale": 0.0}], [{"id": 1, "scale": 1.5}], [{"id": 0, "scale": 0.5}, {"id": 1, "scale": -1}]):
        assert complete(http, lora=selection)["choices"][0]["text"] == expected(local, selection), selection
    assert expected(local) != expected(local, [{"id": 0, "scale": 0.0}])  # the adapter does change the text


def test_concurrent_requests_with_different_adapters(http, local):
    selections = [[{"id": 0, "scale": 0.0}], None, [{"id": 1, "scale": 2.0}], [{"id": 0, "scale": 0.3}]] * 2
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda s: complete(http, **({"lora": s} if s else {}))["choices"][0]["text"], selections))
    assert texts == [expected(local, s) for s in selections]


def test_chat_takes_lora_too(http, local):
    messages = [{"role": "user", "content": "Hi"}]
    r = http.post(http.url("/v1/chat/completions"), json={"model": MODEL_ID, "messages": messages, "max_tokens": 6,
                                                          "temperature": 0, "repeat_penalty": 1.0,
                                                          "lora": [{"id": 1, "scale": 1.0}]})
    assert r.status_code == 200, r.text
    _, ids = local.chat_prompt(messages)
    want = "".join(t.text for t in local.generate(ids, max_tokens=6, lora={1: 1.0}))
    assert r.json()["choices"][0]["message"]["content"] == want


@pytest.mark.parametrize("lora, param, text", [
    ([{"id": 2, "scale": 1.0}], "lora", "no LoRA adapter has id 2 (loaded: ids 0..1)"),
    ([{"id": 0}], "lora[0].scale", "required"),
    ([{"id": "0", "scale": 1.0}], "lora[0].id", "integer"),
    ([{"id": 0, "scale": "big"}], "lora[0].scale", "number"),
    ([7], "lora[0]", "object"),
    ([{"id": 0, "scale": 1.0, "alpha": 2}], "lora[0].alpha", "unknown key"),
])
def test_bad_selection_is_400_naming_the_field(http, lora, param, text):
    r = http.post(http.url("/v1/completions"), json={"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 1,
                                                     "lora": lora})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and text in error["message"], error


def test_post_sets_the_server_scales(http, local):
    try:
        r = http.post(http.url("/lora-adapters"), json=[{"id": 1, "scale": 0.5}])
        assert r.status_code == 200 and r.json() == {"success": True}
        assert [a["scale"] for a in http.get(http.url("/lora-adapters")).json()] == [0.0, 0.5]  # unlisted: 0
        assert complete(http)["choices"][0]["text"] == expected(local, {0: 0.0, 1: 0.5})
        # a request's own selection still overrides only the adapters it names
        assert complete(http, lora=[{"id": 0, "scale": 1.0}])["choices"][0]["text"] == expected(local, {0: 1.0, 1: 0.5})
        for body, param in (([{"id": 5, "scale": 1.0}], "[0].id"), ({"id": 0}, None), ([{"id": 0, "scale": None}],
                                                                                        "[0].scale")):
            r = http.post(http.url("/lora-adapters"), json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert [a["scale"] for a in http.get(http.url("/lora-adapters")).json()] == [0.0, 0.5]  # unchanged
    finally:
        http.post(http.url("/lora-adapters"), json=[{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}])


def test_command_line():
    config = parse_args(["--lora", "a.gguf", "--lora", "b.gguf:0.25", "--lora-scaled", "c.gguf:2",
                         "--lora-init-without-apply"])
    assert config.lora == [("a.gguf", 1.0), ("b.gguf", 0.25), ("c.gguf", 2.0)] and config.lora_init_without_apply


def test_init_without_apply_loads_at_scale_zero(adapters):
    from janlib.server import create_app

    app = create_app(parse_args(["-c", "256", "-t", "1", "--lora", f"{adapters[0]}:0.7", "--lora-init-without-apply"]))
    assert [a["scale"] for a in app.test_client().get("/lora-adapters").get_json()] == [0.0]
    app.extensions["janlib"].engine.close()


def test_mismatched_adapter_stops_start_up_naming_it(tmp_path):
    from test_forward import write_tiny_model

    tiny = write_tiny_model(tmp_path / "tiny.gguf", "qwen2", weights="float")
    adapter = write_adapter(tmp_path / "qwen2-lora.gguf", tiny)
    server = Server("--lora", str(adapter), "--threads", "1")
    code = server.proc.wait(120)
    output = server.output()
    server.stop()
    assert code == 1 and "--lora" in output and "for architecture 'qwen2', but the model is 'llama'" in output
