"""GET /lora-adapters (the loaded adapters and the server's scales) and POST /lora-adapters (set them),
as llama-server. A request's `lora` field overrides the scales of the adapters it names for that request."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from . import schema
from .errors import invalid
from .state import state

bp = Blueprint("lora", __name__)


@bp.get("/lora-adapters")
def list_adapters():
    return jsonify([{"id": a.id, "path": a.path, "scale": a.scale, "alpha": a.alpha, "rank": a.rank,
                     "task_name": a.task_name, "prompt_prefix": a.prompt_prefix} for a in state().model.adapters])


@bp.post("/lora-adapters")
def set_scales():
    """The body [{"id": N, "scale": S}, ...] becomes the server's scales; adapters it does not name get
    scale 0, as llama-server. Requests already submitted keep the scales they were given."""
    adapters = state().model.adapters
    scales = [0.0] * len(adapters)
    for i, item in enumerate(_body()):
        where = f"[{i}]"
        schema.check_lora_item(item, where)
        if item["id"] >= len(adapters):
            loaded = f"ids 0..{len(adapters) - 1}" if adapters else "none"
            raise invalid(f"'{where}.id': no LoRA adapter has id {item['id']} (loaded: {loaded})", f"{where}.id")
        scales[item["id"]] = float(item["scale"])
    for adapter, scale in zip(adapters, scales):
        adapter.scale = scale
    return jsonify({"success": True})


def _body() -> list:
    """The request body: a JSON array (400 otherwise; NaN and Infinity are not JSON)."""
    body = schema.parse_json(request.get_data(cache=False) or b"null")
    if not isinstance(body, list):
        raise invalid("the request body must be a JSON array of {id, scale} objects", None, "invalid_type")
    return body
