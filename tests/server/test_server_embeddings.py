"""Embedding endpoints on the real server: nomic-embed-text-v1.5 (an encoder: embeddings by default,
no text generation) with the openai SDK and plain HTTP, and SmolLM2 with --embedding. The vectors
are checked against janlib.Model.embed, itself checked against sentence-transformers in
tests/test_embeddings.py."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from server_util import Server

pytestmark = pytest.mark.slow

TEXTS = ["search_query: What is TSNE?", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def nomic_model():
    import janlib
    return janlib.Model("nomic-embed-text-v1.5")


@pytest.fixture(scope="module")
def encoder(nomic_model):
    server = Server("--model", str(nomic_model.path), "--alias", "nomic").wait_ready()
    yield server
    server.stop()


def post(server, path, **body):
    return requests.post(server.base + path, json=body, timeout=120)


def test_openai_sdk_input_forms(encoder, nomic_model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=encoder.base + "/v1", api_key="none", max_retries=0, timeout=120)
    expected = nomic_model.embed(TEXTS)
    got = client.embeddings.create(model="nomic", input=TEXTS, encoding_format="float")
    assert [d.index for d in got.data] == [0, 1]
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), expected, atol=1e-6)
    ids = [nomic_model.tokenize(t) for t in TEXTS]
    assert got.usage.prompt_tokens == got.usage.total_tokens == sum(map(len, ids))
    one = client.embeddings.create(model="nomic", input=TEXTS[0])  # the SDK asks for base64 and decodes it
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-6)
    by_ids = client.embeddings.create(model="nomic", input=ids, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in by_ids.data]), expected, atol=1e-6)
    single_ids = client.embeddings.create(model="nomic", input=ids[1], encoding_format="float")
    np.testing.assert_allclose(single_ids.data[0].embedding, expected[1], atol=1e-6)


def test_base64_and_dimensions(encoder, nomic_model):
    body = post(encoder, "/v1/embeddings", model="nomic", input=TEXTS[0], encoding_format="base64",
                dimensions=256).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    full = nomic_model.embed(TEXTS[0])
    assert vector.shape == (256,)
    np.testing.assert_allclose(vector, full[:256] / np.linalg.norm(full[:256]), atol=1e-6)


def test_llama_server_shape(encoder, nomic_model):
    body = post(encoder, "/embedding", content=TEXTS[0]).json()
    assert body[0]["index"] == 0
    np.testing.assert_allclose(body[0]["embedding"][0], nomic_model.embed(TEXTS[0]), atol=1e-6)
    raw = post(encoder, "/embeddings", input=TEXTS, embd_normalize=-1).json()
    np.testing.assert_allclose(np.array([r["embedding"][0] for r in raw]), nomic_model.embed(TEXTS, normalize=-1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": 3}, "input"),
    ({"input": [[1, 2], []]}, "input[1]"),
    ({"input": [[1, 10**7]]}, "input[0][1]"),
    ({"input": ["x", 2.5]}, "input[1]"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": 769}, "dimensions"),
    ({"input": [[101] * 3000]}, "input"),
])
def test_bad_requests_name_the_field(encoder, body, param):
    r = post(encoder, "/v1/embeddings", **body)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["param"] == param
    assert post(encoder, "/v1/embeddings", input="still serving").status_code == 200


def test_encoder_refuses_generation(encoder):
    for path, body in (("/v1/chat/completions", {"model": "nomic", "messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"model": "nomic", "prompt": "hi"}), ("/completion", {"prompt": "hi"})):
        r = post(encoder, path, **body)
        assert r.status_code == 400 and "embedding model" in r.json()["error"]["message"]


def test_decoder_serves_embeddings_with_the_flag():
    import janlib

    model = janlib.Model("smollm2-135m-instruct")
    plain = Server("--model", str(model.path), "--ctx-size", "1024").wait_ready()
    try:
        assert post(plain, "/v1/embeddings", input="hi").status_code == 501
    finally:
        plain.stop()
    server = Server("--model", str(model.path), "--alias", "smol", "--ctx-size", "1024", "--embedding", "--pooling",
                    "mean").wait_ready()
    try:
        body = post(server, "/v1/embeddings", input=TEXTS).json()
        np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]),
                                   model.embed(TEXTS, pooling="mean"), atol=1e-5)
        chat = post(server, "/v1/chat/completions", model="smol", messages=[{"role": "user", "content": "hi"}],
                    max_tokens=2)
        assert chat.status_code == 200, chat.text  # a decoder keeps generating beside its embeddings
    finally:
        server.stop()
