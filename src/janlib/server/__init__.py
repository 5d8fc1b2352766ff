"""The Jan API server: an OpenAI-compatible HTTP endpoint on a janlib Model.

    python -m janlib.server --model smollm2-135m-instruct --port 1337

`create_app(config)` builds the Flask application (blueprints: models, inference, misc, the chat page) around
one Engine; `serve(config)` runs it under Waitress."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Callable, Sequence

from flask import Flask, request

from . import cors, webui
from .config import ConfigError, ServerConfig
from .errors import APIError, error_response, register_error_handlers
from .state import ServerState

from janlib.engine import Engine

__all__ = ["ConfigError", "Engine", "ServerConfig", "create_app", "load_engine", "serve"]

log = logging.getLogger("janlib.server")

PUBLIC_PATHS = ("/health", "/v1/health")


def load_engine(config: ServerConfig) -> Engine:
    """One Model (weights, tokenizer, template, loaded once) served by one Engine: --parallel sequences
    sharing --ctx-size KV cells, each holding its share (or all of them with --kv-unified), as llama-server."""
    from janlib.chat import NAMED_TEMPLATES, ChatTemplate, ChatTemplateError
    from janlib.model import Model

    def share(total: int) -> int:
        return total if config.kv_unified else total // config.parallel

    # the Model's own context is one slot's size: the engine's sequences are where the cells live
    model = Model(config.model, n_ctx=share(config.ctx_size) if config.ctx_size else None, n_threads=config.threads,
                  kv_type=config.cache_type_k, kv_type_v=config.cache_type_v)
    if config.mmproj is not None:
        try:
            model.load_projector(config.mmproj)
        except (OSError, ValueError) as error:
            raise ConfigError(f"--mmproj {config.mmproj}: {error}") from None
    for path, scale in config.lora:
        try:
            model.load_lora(path, 0.0 if config.lora_init_without_apply else scale)
        except (OSError, ValueError) as error:
            raise ConfigError(f"--lora {path}: {error}") from None
    if config.chat_template is not None:
        source = NAMED_TEMPLATES.get(config.chat_template, config.chat_template)
        try:
            model.template = ChatTemplate(source, model.template.bos_token, model.template.eos_token)
        except ChatTemplateError as error:
            raise ConfigError(f"--chat-template: {error}") from None
    n_ctx = share(config.ctx_size) if config.ctx_size else share(model.n_ctx)
    if n_ctx < 1:
        raise ConfigError(f"a context of {model.n_ctx} tokens split over {config.parallel} slots leaves none")
    options = {"n_batch": config.batch_size} if config.batch_size else {}
    return Engine(model, n_seq_max=config.parallel, n_ctx=n_ctx, n_threads=config.threads,
                  queue_size=config.queue_size, kv_type=config.cache_type_k, kv_type_v=config.cache_type_v,
                  swa_full=config.swa_full, **options)


def create_app(config: ServerConfig | None = None, engine: Engine | None = None) -> Flask:
    """The application around engine (default: loaded from config)."""
    config = config or ServerConfig()
    config.validate()
    engine = engine or load_engine(config)
    model_path = str(getattr(engine.model, "path", config.model or "model"))
    model_id = config.alias or os.path.basename(model_path)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    st = ServerState(config=config, engine=engine, model_id=model_id, model_path=model_path)
    if config.seed != -1:
        st.defaults["seed"] = config.seed
    if config.temperature is not None:
        st.defaults["temperature"] = config.temperature
    app.extensions["janlib"] = st
    keys = [k.encode() for k in config.api_keys]

    cors.install(app, config)

    @app.before_request
    def _refuse_while_draining():
        if st.draining:
            return error_response(APIError(503, "the server is shutting down", code="shutting_down",
                                           type="server_error", headers={"Retry-After": "1"}))
        return None

    @app.before_request
    def _authenticate():
        if not keys or request.path in PUBLIC_PATHS or webui.is_page(request.path) or cors.is_preflight():
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        bearer = token.strip().encode() if scheme.lower() == "bearer" else b""
        given = (bearer, request.headers.get("X-Api-Key", "").strip().encode())
        ok = False
        for key in keys:  # every key and header compared, each in constant time
            for candidate in given:
                ok |= hmac.compare_digest(candidate, key)
        if ok:
            return None
        message = ("invalid API key" if header or "X-Api-Key" in request.headers else
                   "missing API key: send Authorization: Bearer <key> or X-Api-Key: <key>")
        return error_response(APIError(401, message, code="invalid_api_key", type="authentication_error",
                                       headers={"WWW-Authenticate": 'Bearer realm="janlib"'}))

    @app.after_request
    def _count(response):
        rule = request.url_rule.rule if request.url_rule is not None else "unknown"
        key = (rule, response.status_code)
        st.http_requests[key] = st.http_requests.get(key, 0) + 1
        return response

    from . import chat, lora, misc, models as models_bp, native

    app.register_blueprint(models_bp.bp)
    app.register_blueprint(chat.bp)
    from . import responses  # noqa: E402  (the Responses API beside chat completions)
    app.register_blueprint(responses.bp)
    from . import anthropic  # noqa: E402  (Anthropic's Messages API)
    app.register_blueprint(anthropic.bp)
    app.register_blueprint(native.bp)
    from . import embeddings  # noqa: E402  (/v1/embeddings, /embedding; an encoder refuses generation)
    app.register_blueprint(embeddings.bp)
    app.register_blueprint(misc.bp)
    app.register_blueprint(lora.bp)
    from . import cors_proxy  # noqa: E402  (/cors-proxy, 403 unless --ui-mcp-proxy)
    app.register_blueprint(cors_proxy.bp)
    from . import streams  # noqa: E402  (resumable streams: GET/DELETE /v1/stream)
    app.register_blueprint(streams.bp)
    if config.webui:
        app.register_blueprint(webui.bp)
    register_error_handlers(app)
    return app


def make_server(config: ServerConfig, app=None):
    """A bound Waitress server (the port is taken here, so port-in-use fails before any model loads).
    Its application is set later with `server.application = app` when app is None."""
    import waitress.server

    threads = max(8, config.parallel + config.queue_size + 4)
    holder = _AppHolder(app)
    # send_bytes=1: every SSE event goes out at once; channel_request_lookahead lets a request thread
    # see that its client has gone (waitress.client_disconnected), which cancels its generation.
    # Flask enforces max_body (413 in the envelope); Waitress's own cap is only a backstop above it.
    hosts = config.hosts
    # several addresses: one socket each (waitress's listen="h1:port [h2]:port")
    where = {"host": hosts[0], "port": config.port} if len(hosts) == 1 else \
        {"listen": " ".join(f"[{h}]:{config.port}" if ":" in h else f"{h}:{config.port}" for h in hosts)}
    server = waitress.server.create_server(
        holder, **where, threads=threads, channel_request_lookahead=1,
        send_bytes=1, ident="janlib", max_request_body_size=4 * config.max_body + 65536,
        clear_untrusted_proxy_headers=True)
    return server, holder


class _AppHolder:
    """The WSGI callable Waitress holds; the Flask app is plugged in once the models are loaded."""

    def __init__(self, app=None):
        self.app = app

    def __call__(self, environ, start_response):
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "application/json"), ("Retry-After", "1")])
            return [b'{"error": {"message": "loading model", "type": "server_error", "param": null, '
                    b'"code": "loading"}}']
        return self.app(environ, start_response)


def serve(config: ServerConfig, app: Flask | None = None) -> None:
    """Run the application under Waitress until interrupted."""
    server, holder = make_server(config, app)
    holder.app = app or create_app(config)
    server.run()
