"""Images through the real server: --mmproj with the tiny VLM fixtures (tests/fixtures/vlm), real clients.

* /completion with llama.cpp's {prompt_string, multimodal_data} prompt gives the first token's log-probabilities
  of transformers' logits for that prompt (the fixture's reference): the whole way from base64 to logits.
* The same image as an OpenAI image_url data: URI, as multimodal_data with a <__media__> marker, as an
  Anthropic image block, on /v1/completions: the same prompt and answer; the next turn reuses its cells.
* http(s) image URLs only with --allow-remote-media (a local HTTP server: the image, a 404, one over the size
  limit); bad image data and marker mismatches are 400s naming the field, and the server keeps serving.
* A model without a projector refuses images with a 400 saying so."""

from __future__ import annotations

import base64
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

requests = pytest.importorskip("requests")

from server_util import MODEL_ID, Server  # noqa: E402

from janlib.server.media import REMOTE_MEDIA_MAX_BYTES  # noqa: E402

VLM = Path(__file__).resolve().parents[1] / "fixtures" / "vlm"
LANDSCAPE = (VLM / "landscape.png").read_bytes()
PORTRAIT = (VLM / "portrait.jpg").read_bytes()
B64 = base64.b64encode(LANDSCAPE).decode()
DATA_URI = "data:image/png;base64," + B64
FIXTURE_PROMPT = "hello world, <__media__> what is this?"  # the fixtures' prompt (their tokenizer adds no BOS)


def vlm_server(case: str, *flags: str) -> Server:
    return Server("--model", str(VLM / f"{case}.gguf"), "--mmproj", str(VLM / f"{case}-mmproj.gguf"), "--alias",
                  case, "--threads", "1", "--parallel", "2", "--ctx-size", "1024", "--log-level", "warning",
                  *flags).wait_ready()


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    server = vlm_server("gemma3", "--slot-save-path", str(tmp_path_factory.mktemp("slots")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def idefics3_remote():
    server = vlm_server("idefics3", "--allow-remote-media")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image_host():
    """A local HTTP server: /landscape.png, /huge.png (one byte over the limit); anything else 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            huge = b"\x89PNG" + bytes(REMOTE_MEDIA_MAX_BYTES - 3)
            body = {"/landscape.png": LANDSCAPE, "/huge.png": huge}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()  # no Content-Length: the limit is enforced while reading
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def post(server: Server, path: str, body: dict) -> requests.Response:
    return requests.post(server.base + path, json=body, timeout=120)


def chat(server: Server, content, **extra) -> dict:
    r = post(server, "/v1/chat/completions", {"model": server.args[server.args.index("--alias") + 1],
                                              "messages": [{"role": "user", "content": content}], "max_tokens": 6,
                                              "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def error(r: requests.Response, param: str) -> str:
    assert r.status_code == 400, r.text
    body = r.json()["error"]
    assert body["param"] == param, body
    return body["message"]


def test_native_prompt_object_matches_transformers(gemma3):
    """The first token's top log-probabilities are those of transformers' logits for the fixture's prompt."""
    with np.load(VLM / "gemma3.npz") as f:
        logits = f["landscape-logits"].astype(np.float64)
    logprobs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    r = post(gemma3, "/completion", {"prompt": {"prompt_string": FIXTURE_PROMPT, "multimodal_data": [B64]},
                                     "n_predict": 1, "n_probs": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokens_evaluated"] == len(np.load(VLM / "gemma3.npz")["landscape-tokens"])
    top = out["completion_probabilities"][0]["top_logprobs"]
    assert [t["id"] for t in top] == list(np.argsort(-logits, kind="stable")[:5])
    np.testing.assert_allclose([t["logprob"] for t in top], logprobs[[t["id"] for t in top]], atol=1e-3)
    # the same through the top-level field and on /v1/completions
    same = post(gemma3, "/completion", {"prompt": FIXTURE_PROMPT, "multimodal_data": [B64], "n_predict": 1,
                                        "n_probs": 5, "temperature": 0}).json()
    assert same["completion_probabilities"][0]["top_logprobs"] == top
    v1 = post(gemma3, "/v1/completions", {"model": "gemma3", "prompt": FIXTURE_PROMPT, "multimodal_data": [B64],
                                          "max_tokens": 1, "temperature": 0})
    assert v1.status_code == 200 and v1.json()["usage"]["prompt_tokens"] == out["tokens_evaluated"]


def test_one_image_in_every_form_gives_one_answer(gemma3):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=gemma3.base + "/v1", api_key="none", max_retries=0, timeout=120)
    parts = client.chat.completions.create(model="gemma3", max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": DATA_URI}}]}])
    marker = chat(gemma3, "what is this?<__media__>", multimodal_data=[B64])
    assert parts.choices[0].message.content == marker["choices"][0]["message"]["content"]
    assert parts.usage.prompt_tokens == marker["usage"]["prompt_tokens"]
    other = chat(gemma3, "what is this?<__media__>", multimodal_data=[base64.b64encode(PORTRAIT).decode()])
    assert other["usage"]["prompt_tokens"] == marker["usage"]["prompt_tokens"]  # gemma3: one tile whatever the image
    anthropic = pytest.importorskip("anthropic")
    reply = anthropic.Anthropic(base_url=gemma3.base, api_key="none", max_retries=0).messages.create(
        model="gemma3", max_tokens=6, extra_body={"temperature": 0}, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}]}])
    # Anthropic's blocks are joined by a newline
    joined = chat(gemma3, "what is this?\n<__media__>", multimodal_data=[B64])
    assert reply.content[0].text == joined["choices"][0]["message"]["content"]
    assert reply.usage.input_tokens == joined["usage"]["prompt_tokens"]


def test_responses_input_image(gemma3):
    """The Responses API's input_image parts are the same image as a chat image_url part."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=gemma3.base + "/v1", api_key="none", max_retries=0, timeout=120)
    reply = client.responses.create(model="gemma3", max_output_tokens=6, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                     {"type": "input_image", "image_url": DATA_URI}]}])
    marker = chat(gemma3, "what is this?<__media__>", multimodal_data=[B64])
    assert reply.output_text == marker["choices"][0]["message"]["content"]
    assert reply.usage.input_tokens == marker["usage"]["prompt_tokens"]
    bad = post(gemma3, "/v1/responses", {"model": "gemma3", "instructions": "be brief", "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]})
    error(bad, "input[0].content[0].image_url")


def test_the_next_turn_reuses_the_image(gemma3):
    first = chat(gemma3, "describe <__media__>", multimodal_data=[B64], id_slot=1)
    answer = first["choices"][0]["message"]["content"]
    r = post(gemma3, "/v1/chat/completions", {"model": "gemma3", "max_tokens": 2, "id_slot": 1, "messages": [
        {"role": "user", "content": "describe <__media__>"}, {"role": "assistant", "content": answer},
        {"role": "user", "content": "and now?"}], "multimodal_data": [B64]})
    assert r.status_code == 200, r.text
    assert r.json()["tokens_cached"] >= first["usage"]["prompt_tokens"] - 2  # the template may close a turn anew
    # a slot file keeps token ids: a slot holding an image is not saved
    assert "holds an image" in error(post(gemma3, "/slots/1?action=save", {"filename": "s.json"}), "id_slot")


def test_bad_images_are_400_naming_the_field(gemma3):
    text = "x <__media__>"
    assert "base64" in error(post(gemma3, "/v1/chat/completions", {
        "model": "gemma3", "messages": [{"role": "user", "content": text}], "multimodal_data": ["@@@"]}),
        "multimodal_data[0]")
    assert "cannot decode" in error(post(gemma3, "/v1/chat/completions", {
        "model": "gemma3", "messages": [{"role": "user", "content": text}],
        "multimodal_data": [base64.b64encode(b"not an image").decode()]}), "multimodal_data[0]")
    assert "1 images" in error(post(gemma3, "/v1/chat/completions", {
        "model": "gemma3", "messages": [{"role": "user", "content": "no marker"}], "multimodal_data": [B64]}),
        "multimodal_data")
    bad_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    error(post(gemma3, "/v1/chat/completions", {"model": "gemma3", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, bad_part]}]}), "messages[0].content[1].image_url")
    r = post(gemma3, "/v1/messages", {"model": "gemma3", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}]}]})
    # Anthropic's envelope: no param, the field in the message
    assert r.status_code == 400 and "messages[0].content[0].source.data" in r.json()["error"]["message"]
    error(post(gemma3, "/v1/completions", {"model": "gemma3", "prompt": [1, 2], "multimodal_data": [B64]}),
          "multimodal_data")
    error(post(gemma3, "/completion", {"prompt": {"prompt_string": text, "multimodal_data": ["@"]}}),
          "prompt.multimodal_data[0]")
    assert "--allow-remote-media" in error(post(gemma3, "/v1/chat/completions", {"model": "gemma3", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}}]}]}),
        "messages[0].content[0].image_url")
    chat(gemma3, "still serving <__media__>", multimodal_data=[B64])


def test_remote_images_with_allow_remote_media(idefics3_remote, image_host):
    inline = chat(idefics3_remote, [{"type": "image_url", "image_url": {"url": DATA_URI}},
                                    {"type": "text", "text": "?"}])
    remote = chat(idefics3_remote, [{"type": "image_url", "image_url": {"url": image_host + "/landscape.png"}},
                                    {"type": "text", "text": "?"}])
    assert remote["choices"][0]["message"] == inline["choices"][0]["message"]
    assert remote["usage"]["prompt_tokens"] == inline["usage"]["prompt_tokens"] > 80  # idefics3: 4 tiles + overview
    for path, text in (("/missing.png", "HTTP 404"), ("/huge.png", "limit")):
        r = post(idefics3_remote, "/v1/chat/completions", {"model": "idefics3", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_host + path}}]}]})
        assert text in error(r, "messages[0].content[0].image_url")
    chat(idefics3_remote, [{"type": "image_url", "image_url": {"url": image_host + "/landscape.png"}}])


def test_a_model_without_projector_refuses_images(api):
    body = {"model": MODEL_ID, "max_tokens": 2}
    for path, extra, param in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x <__media__>"}], "multimodal_data": [B64]},
         "multimodal_data"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": DATA_URI}}]}]}, "messages[0].content[0]"),
        ("/v1/completions", {"prompt": "x <__media__>", "multimodal_data": [B64]}, "multimodal_data"),
        ("/completion", {"prompt": {"prompt_string": "x <__media__>", "multimodal_data": [B64]}},
         "prompt.multimodal_data"),
        ("/v1/messages", {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}]}]},
         "messages[0].content[0]"),
    ]:
        r = api.post(api.url(path), json={**body, **extra})
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert f"'{param}'" in err["message"] and "no multimodal projector" in err["message"], (path, err)
        assert err.get("param", param) == param  # Anthropic's envelope has no param
