"""GET /v1/models: the one served model as a ModelDto, from the GGUF metadata and the settings."""

from __future__ import annotations

import os

from flask import Blueprint, jsonify

from . import completion as c, schema
from .state import ServerState, state

bp = Blueprint("models", __name__)


def _text(metadata: dict, *keys: str, default: str = "") -> str:
    for key in keys:
        value = metadata.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value:
            return value
    return default


def model_dto(st: ServerState) -> dict:
    model = st.model
    md = model.metadata
    tags = md.get("general.tags")
    tags = st.config.tags or ([str(t) for t in tags] if isinstance(tags, (list, tuple)) else [])  # --tags first
    repo = _text(md, "general.source.huggingface.repository", "general.base_model.0.repo_url")
    source_url = _text(md, "general.source.url", "general.url", "general.base_model.0.repo_url")
    if not source_url and repo:
        source_url = repo if "://" in repo else f"https://huggingface.co/{repo}"
    defaults = schema.FIELDS
    n_predict = st.config.n_predict
    return {
        "id": st.model_id,
        "object": "model",
        "created": st.started,
        "owned_by": _text(md, "general.organization", "general.author", default="janlib"),
        "name": _text(md, "general.name", default=os.path.splitext(os.path.basename(st.model_path))[0]),
        "version": _text(md, "general.version", default="1.0"),
        "description": _text(md, "general.description",
                             default=f"{_text(md, 'general.architecture', default='GGUF')} model "
                                     f"{_text(md, 'general.size_label')}".replace("  ", " ").strip()),
        "format": "gguf",
        "ctx_len": int(model.n_ctx),
        "prompt_template": model.chat_template or "",
        "temperature": defaults["temperature"].default,
        "top_p": defaults["top_p"].default,
        "stream": defaults["stream"].default,
        "max_tokens": int(n_predict if n_predict >= 0 else model.n_ctx),
        "stop": [],
        "frequency_penalty": defaults["frequency_penalty"].default,
        "presence_penalty": defaults["presence_penalty"].default,
        "author": _text(md, "general.author", "general.organization"),
        "tags": tags,
        "aliases": sorted({st.model_id, *st.config.aliases}),  # every name the model answers to (-a a,b,c)
        "size": int(os.path.getsize(st.model_path)) if os.path.exists(st.model_path) else 0,
        "cover": "",
        "engine": "janlib",
        "source_url": source_url,
    }


@bp.get("/v1/models")
@bp.get("/models")
def list_models():
    return jsonify({"object": "list", "data": [model_dto(state())]})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    st = state()
    c.check_served(st, model_id, strict=True)  # a lookup says what is served, whatever generation accepts
    return jsonify(model_dto(st))
