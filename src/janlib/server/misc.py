"""Beside the spec: /health, /slots, /tokenize, /detokenize, /props, /metrics, /openapi.json."""

from __future__ import annotations

import json
from importlib import resources

from flask import Blueprint, Response, jsonify, request

from . import schema
from .errors import APIError
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
    """Each sequence's state, as llama.cpp's GET /slots (501 with --no-slots)."""
    st = state()
    if not st.config.slots:
        raise APIError(501, "the slots endpoint is off: start the server without --no-slots",
                       code="not_supported", type="not_supported_error")
    return jsonify(st.engine.slots())


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
    defaults.update(st.defaults)
    defaults["n_predict"] = st.config.n_predict
    defaults["stop"] = []
    return jsonify({
        "default_generation_settings": {"n_ctx": st.engine.n_ctx, "model": st.model_id, "params": defaults},
        "total_slots": st.engine.n_seq_max,
        "model_path": st.model_path,
        "model_alias": st.model_id,
        "chat_template": st.model.template.source if st.config.chat_template else st.model.chat_template or "",
        "n_vocab": st.model.n_vocab,
        "modalities": {"vision": False, "audio": False},
        "endpoint_slots": st.config.slots,
        "endpoint_props": st.config.props,
        "endpoint_metrics": st.config.metrics,
        "build_info": f"janlib {__import__('janlib').__version__}",
    })


# llama-server's metric names, beside janlib's own: (name, type, help, value from (metrics, status))
LLAMACPP_METRICS = (
    ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", lambda m, s: m["prompt_tokens_total"]),
    ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache.",
     lambda m, s: m.get("prompt_tokens_cached_total", 0)),
    ("prompt_seconds_total", "counter", "Prompt process time", lambda m, s: m["prompt_seconds_total"]),
    ("tokens_predicted_total", "counter", "Number of generation tokens processed.",
     lambda m, s: m["predicted_tokens_total"]),
    ("tokens_predicted_seconds_total", "counter", "Predict process time", lambda m, s: m["predicted_seconds_total"]),
    ("n_decode_total", "counter", "Total number of llama_decode() calls", lambda m, s: m["steps_total"]),
    ("n_tokens_max", "counter", "Largest observed n_tokens.", lambda m, s: m.get("n_tokens_max", 0)),
    ("spec_decode_num_draft_tokens_total", "counter", "Speculative draft tokens (janlib has no draft model).",
     lambda m, s: 0),
    ("spec_decode_num_accepted_tokens_total", "counter", "Accepted speculative tokens.", lambda m, s: 0),
    ("spec_decode_num_drafts_total", "counter", "Speculative drafts.", lambda m, s: 0),
    ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
     lambda m, s: m["prompt_tokens_total"] / m["prompt_seconds_total"] if m["prompt_seconds_total"] else 0.0),
    ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
     lambda m, s: m["predicted_tokens_total"] / m["predicted_seconds_total"] if m["predicted_seconds_total"] else 0.0),
    ("requests_processing", "gauge", "Number of requests processing.", lambda m, s: s["busy"]),
    ("requests_deferred", "gauge", "Number of requests deferred.", lambda m, s: s["waiting"]),
    ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call",
     lambda m, s: m.get("busy_slots_total", 0) / m["steps_total"] if m["steps_total"] else 0.0),
)


@_route("/metrics", "GET")
def metrics():
    st = state()
    if not st.config.metrics:
        raise APIError(501, "This server does not support metrics endpoint. Start it with `--metrics`",
                       code="not_supported", type="not_supported_error")
    m = dict(st.engine.metrics)
    for name, value in st.embedded.items():
        m[name] += value
    status = st.engine.status()
    lines = []

    def metric(name, kind, help_, value, labels=""):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{labels} {value}")

    for name, kind, help_, value in LLAMACPP_METRICS:
        metric(f"llamacpp:{name}", kind, help_, value(m, status))
    for name, kind, help_, value in (
            ("requests_total", "counter", "Generations started.", m["requests_total"]),
            ("requests_rejected_total", "counter", "Requests answered 503 because the queue was full.",
             m["rejected_total"]),
            ("requests_cancelled_total", "counter", "Generations stopped because the client went away.",
             m["cancelled_total"]),
            ("prompt_tokens_total", "counter", "Prompt tokens evaluated (cached ones excluded).",
             m["prompt_tokens_total"]),
            ("prompt_seconds_total", "counter", "Time spent evaluating prompts.", f"{m['prompt_seconds_total']:.6f}"),
            ("tokens_predicted_total", "counter", "Tokens generated.", m["predicted_tokens_total"]),
            ("tokens_predicted_seconds_total", "counter", "Time spent generating.",
             f"{m['predicted_seconds_total']:.6f}"),
            ("requests_failed_total", "counter", "Requests that failed while being served.", m["failed_total"]),
            ("requests_processing", "gauge", "Slots busy now.", status["busy"]),
            ("requests_deferred", "gauge", "Requests waiting in the queue.", status["waiting"]),
            ("slots_total", "gauge", "Slots configured (--parallel).", st.engine.n_seq_max)):
        metric(f"janlib_{name}", kind, help_, value)
    lines.append("# HELP janlib_http_requests_total HTTP responses by endpoint and status.")
    lines.append("# TYPE janlib_http_requests_total counter")
    for (endpoint, code), count in sorted(st.http_requests.items()):
        lines.append(f'janlib_http_requests_total{{endpoint="{endpoint}",status="{code}"}} {count}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4",
                    headers={"Process-Start-Time-Unix": str(st.started)})


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
