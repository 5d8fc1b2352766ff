"""Embeddings: OpenAI's POST /v1/embeddings and llama-server's /embedding and /embeddings.

An encoder model (bert, nomic-bert) serves them always and refuses text generation with a 400; a
decoder serves them with --embedding, pooling its final hidden state as --pooling says (default:
the file's pooling_type, else the last token). All of a request's inputs run in as few forward
passes as fit (janlib.Model.embed), beside the engine's generation."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request

from janlib.embedding import normalize

from . import completion as c, schema
from .errors import APIError, invalid
from .state import ServerState, state

bp = Blueprint("embeddings", __name__)

# what an encoder cannot do: every route that generates text
GENERATION_PATHS = ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/completion",
                    "/infill", "/v1/responses", "/responses", "/v1/messages")


@bp.before_app_request
def _refuse_generation_on_an_encoder():
    st = state()
    if request.method == "POST" and request.path.startswith(GENERATION_PATHS) and getattr(st.model, "is_encoder", False):
        raise APIError(400, f"the model {st.model_id!r} is an embedding model (an encoder): it cannot generate text; "
                            "use POST /v1/embeddings", param="model", code="model_not_supported")


def _pooling(st: ServerState) -> str | None:
    """The pooling this server uses (None: the model's), or a 501 when it serves no embeddings."""
    model = st.model
    if not getattr(model, "is_encoder", False) and not st.config.embeddings:
        raise APIError(501, "this server does not serve embeddings for a text-generation model: start it with "
                            "--embedding", code="not_supported", type="not_supported_error")
    if st.config.pooling == "rank":
        raise APIError(501, "--pooling rank is for reranking, not embeddings", code="not_supported",
                       type="not_supported_error")
    return st.config.pooling


def _inputs(st: ServerState, value: Any, param: str) -> list[list[int]]:
    """OpenAI's input forms (a string, strings, token ids, lists of token ids) as token lists."""
    model = st.model

    def tokens(item: Any, where: str) -> list[int]:
        if isinstance(item, str):
            ids = model.tokenize(item, add_special=True, parse_special=True)
        else:
            ids = schema.check_token_ids(item, model.n_vocab, where)
        if not ids:
            raise invalid(f"'{where}' must not be empty", where, "invalid_value")
        return ids

    if isinstance(value, str) or (isinstance(value, list) and value and all(
            isinstance(t, int) and not isinstance(t, bool) for t in value)):
        return [tokens(value, param)]
    if not isinstance(value, list) or not value:
        raise invalid(f"'{param}' must be a string, a list of token ids, or a non-empty list of strings or token-id "
                      f"lists", param, "invalid_type")
    for i, item in enumerate(value):
        if not isinstance(item, (str, list)):
            raise invalid(f"'{param}[{i}]' must be a string or a list of token ids, got {schema._json_type(item)}",
                          f"{param}[{i}]", "invalid_type")
    return [tokens(item, f"{param}[{i}]") for i, item in enumerate(value)]


def _embed(st: ServerState, inputs: list[list[int]], pooling: str | None, norm: int) -> Any:
    try:
        out = st.model.embed(inputs, pooling=pooling, normalize=norm)
    except ValueError as error:  # an input longer than the context, a bad token
        raise invalid(str(error), "input", "invalid_value") from None
    st.count_embedding(sum(map(len, inputs)))
    return out


@bp.post("/v1/embeddings")
def openai_embeddings():
    st = state()
    pooling = _pooling(st)
    body = schema.parse_json_body(request.get_data(cache=False))
    if "input" not in body or body["input"] is None:
        raise invalid("'input' is required", "input", "missing_required_parameter")
    encoding = body.get("encoding_format")
    encoding = "float" if encoding is None else encoding
    if encoding not in ("float", "base64"):
        raise invalid(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}", "encoding_format",
                      "invalid_value")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or
                                   not 1 <= dimensions <= st.model.n_embd):
        raise invalid(f"'dimensions' must be an int in [1, {st.model.n_embd}], got {dimensions!r}", "dimensions",
                      "invalid_value")
    if (pooling or st.model.embedder.default_pooling) == "none":
        raise invalid("--pooling none gives one vector per token, which /v1/embeddings cannot return: use "
                      "/embedding", "input", "invalid_value")
    if body.get("model") is not None:
        c.check_served(st, str(body["model"]))
    inputs = _inputs(st, body["input"], "input")
    vectors = _embed(st, inputs, pooling, 2)
    if dimensions is not None:  # Matryoshka: keep the first dimensions, at unit length again
        vectors = normalize(np.ascontiguousarray(vectors[:, :dimensions]), 2)
    data = []
    for i, vector in enumerate(vectors):
        value = (base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64"
                 else vector.tolist())
        data.append({"object": "embedding", "index": i, "embedding": value})
    n_tokens = sum(len(ids) for ids in inputs)
    return jsonify({"object": "list", "data": data, "model": st.model_id,
                    "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


@bp.post("/embedding")
@bp.post("/embeddings")
def native_embeddings():
    """llama-server's shape: [{"index": i, "embedding": [[...]]}], one row per token with pooling none."""
    st = state()
    pooling = _pooling(st)
    body = schema.parse_json_body(request.get_data(cache=False))
    key = "content" if "content" in body else "input"
    if body.get(key) is None:
        raise invalid("'content' is required", "content", "missing_required_parameter")
    norm = body.get("embd_normalize", 2)
    if isinstance(norm, bool) or not isinstance(norm, int) or norm < -1:
        raise invalid(f"'embd_normalize' must be an int >= -1, got {norm!r}", "embd_normalize", "invalid_value")
    inputs = _inputs(st, body[key], key)
    vectors = _embed(st, inputs, pooling, norm)
    pooled = (pooling or st.model.embedder.default_pooling) != "none"
    return jsonify([{"index": i, "embedding": [v.tolist()] if pooled else v.tolist()}
                    for i, v in enumerate(vectors)])
