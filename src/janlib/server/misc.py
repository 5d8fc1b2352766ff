"""Beside the spec: /health, /slots, /tokenize, /detokenize, /props, /metrics, /openapi.json."""

from __future__ import annotations

import json
from importlib import resources

from flask import Blueprint, Response, jsonify, request

from . import schema
from .state import state

bp = Blueprint("misc", __name__)


def _route(path: str, method: str):
    def wrap(func):
        bp.add_url_rule(path, view_func=func, methods=[method])
        bp.add_url_rule("/v1" + path, endpoint=func.__name__ + "_v1", view_func=func, methods=[method])
        return func
    return wrap


@_route("/health", "GET")
def health():
    st = state()
    status = st.engine.status()
    body = {"status": "ok", "slots_idle": st.engine.n_seq_max - status["busy"], "slots_processing": status["busy"]}
    if not status["healthy"]:
        body.update(status="error", error="the inference engine has stopped")
        return jsonify(body), 503
    if st.draining:
        body["status"] = "shutting down"
        return jsonify(body), 503, {"Retry-After": "1"}
    return jsonify(body)


@_route("/slots", "GET")
def slots():
    """Each sequence's state, as llama.cpp's GET /slots."""
    return jsonify(state().engine.slots())


@_route("/tokenize", "POST")
def tokenize():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    content = body.get("content", schema._MISSING)
    if content is schema._MISSING:
        raise schema.invalid("'content' is required", "content", "missing_required_parameter")
    content = schema.check_value("content", content, schema.Field("string"))
    add_special = schema.get_typed(body, "add_special", "boolean", False)
    parse_special = schema.get_typed(body, "parse_special", "boolean", True)
    with_pieces = schema.get_typed(body, "with_pieces", "boolean", False)
    ids = st.model.tokenize(content, add_special=add_special, parse_special=parse_special)
    if not with_pieces:
        return jsonify({"tokens": ids})
    tokenizer = st.model.tokenizer
    pieces = []
    for token in ids:
        raw = tokenizer.token_bytes(token)
        try:
            piece = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        pieces.append({"id": token, "piece": piece})
    return jsonify({"tokens": pieces})


@_route("/detokenize", "POST")
def detokenize():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    ids = schema.check_token_ids(schema.get_typed(body, "tokens", "array", []), st.model.n_vocab, "tokens")
    return jsonify({"content": st.model.detokenize(ids)})


@_route("/props", "GET")
def props():
    st = state()
    defaults = {name: (list(f.default) if isinstance(f.default, tuple) else f.default)
                for name, f in schema.FIELDS.items() if name not in ("model", "user", "n")}
    defaults["n_predict"] = st.config.n_predict
    defaults["stop"] = []
    return jsonify({
        "default_generation_settings": {"n_ctx": st.engine.n_ctx, "model": st.model_id, "params": defaults},
        "total_slots": st.engine.n_seq_max,
        "model_path": st.model_path,
        "model_alias": st.model_id,
        "chat_template": st.model.chat_template or "",
        "n_vocab": st.model.n_vocab,
        "modalities": {"vision": False, "audio": False},
        "build_info": f"janlib {__import__('janlib').__version__}",
    })


@_route("/metrics", "GET")
def metrics():
    st = state()
    m = dict(st.engine.metrics)
    status = st.engine.status()
    lines = []

    def metric(name, kind, help_, value, labels=""):
        lines.append(f"# HELP janlib_{name} {help_}")
        lines.append(f"# TYPE janlib_{name} {kind}")
        lines.append(f"janlib_{name}{labels} {value}")

    metric("requests_total", "counter", "Generations started.", m["requests_total"])
    metric("requests_rejected_total", "counter", "Requests answered 503 because the queue was full.",
           m["rejected_total"])
    metric("requests_cancelled_total", "counter", "Generations stopped because the client went away.",
           m["cancelled_total"])
    metric("prompt_tokens_total", "counter", "Prompt tokens evaluated (cached ones excluded).",
           m["prompt_tokens_total"])
    metric("prompt_seconds_total", "counter", "Time spent evaluating prompts.", f"{m['prompt_seconds_total']:.6f}")
    metric("tokens_predicted_total", "counter", "Tokens generated.", m["predicted_tokens_total"])
    metric("tokens_predicted_seconds_total", "counter", "Time spent generating.",
           f"{m['predicted_seconds_total']:.6f}")
    metric("requests_failed_total", "counter", "Requests that failed while being served.", m["failed_total"])
    metric("requests_processing", "gauge", "Slots busy now.", status["busy"])
    metric("requests_deferred", "gauge", "Requests waiting in the queue.", status["waiting"])
    metric("slots_total", "gauge", "Slots configured (--parallel).", st.engine.n_seq_max)
    lines.append("# HELP janlib_http_requests_total HTTP responses by endpoint and status.")
    lines.append("# TYPE janlib_http_requests_total counter")
    for (endpoint, code), count in sorted(st.http_requests.items()):
        lines.append(f'janlib_http_requests_total{{endpoint="{endpoint}",status="{code}"}} {count}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


_DOC: bytes | None = None


def openapi_document() -> dict:
    return json.loads(resources.files("janlib.server").joinpath("openapi.json").read_text("utf-8"))


@bp.get("/openapi.json")
@bp.get("/v1/openapi.json")
def openapi():
    global _DOC
    if _DOC is None:
        _DOC = json.dumps(openapi_document()).encode()
    return Response(_DOC, mimetype="application/json")
