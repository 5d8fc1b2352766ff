"""python -m janlib.server: serve a GGUF model over the Jan / OpenAI API (default http://127.0.0.1:1337/v1)."""

from __future__ import annotations

import argparse
import _thread
import logging
import os
import signal
import sys
import threading
import time
import warnings

from janlib.lora import parse_lora_arg
from janlib.reasoning import REASONING_FORMATS, REASONING_MODES

from .config import (API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, KV_CACHE_TYPES, POOLING, ConfigError, ServerConfig,
                     keys_from_env)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def build_parser(prog: str = "python -m janlib.server") -> argparse.ArgumentParser:
    """The command line: janlib's own flags and llama-server's (same names, same meaning), so a script that
    launches llama-server can launch janlib instead."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, allow_abbrev=False)
    p.add_argument("--model", "-m", help="path of a .gguf file or a registry name (default: the default model)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}; any other "
                   "than loopback needs an API key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help=f"accept this Bearer key (repeatable or comma-separated; also ${API_KEY_ENV})")
    p.add_argument("--threads", "-t", type=int, help="compute threads of the engine (default: the engine's choice)")
    p.add_argument("--ctx-size", "-c", type=int,
                   help="KV cache size in tokens, shared by the slots: each holds ctx-size / parallel "
                   "(default 0: the model's)")
    p.add_argument("--parallel", "-np", type=int, default=1, help="slots: requests generated at once (default 1)")
    p.add_argument("--kv-unified", "-kvu", action="store_true",
                   help="every slot may use the whole --ctx-size instead of its share")
    p.add_argument("--cache-type-k", "-ctk", choices=KV_CACHE_TYPES, default="f16",
                   help="KV cache type of the keys (default f16; q8_0 and q4_0 trade fidelity for memory)")
    p.add_argument("--cache-type-v", "-ctv", choices=KV_CACHE_TYPES, default="f16",
                   help="KV cache type of the values (default f16)")
    p.add_argument("--batch-size", "-b", type=int, help="tokens evaluated per engine step (default 256)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="requests that may wait for a free slot; beyond it 503 (default 16)")
    p.add_argument("--n-predict", "--predict", "-n", type=int, default=-1,
                   help="tokens generated per request when it does not say, and the most it may ask for "
                   "(default -1: up to the context)")
    p.add_argument("--context-shift", dest="context_shift", action="store_true", default=True,
                   help="at a full context drop the older half of what follows n_keep and go on (default)")
    p.add_argument("--no-context-shift", dest="context_shift", action="store_false",
                   help="end generation at a full context (finish_reason length)")
    p.add_argument("--seed", "-s", type=int, default=-1,
                   help="seed of the requests that give none (default -1: a random one each)")
    p.add_argument("--temp", "--temperature", dest="temperature", type=float,
                   help="temperature of the requests that give none (default 0.8)")
    p.add_argument("--alias", "-a", help="the model id to serve (default: the model's file name); "
                   "comma-separated: several names, the alphabetically first is the id")
    p.add_argument("--tags", help="comma-separated tags shown in /v1/models")
    p.add_argument("--strict-model-name", action="store_true",
                   help="answer 404 to a request naming a model other than the served one and its aliases, as "
                   "OpenAI does (default: the served model answers any name, as llama-server)")
    p.add_argument("--chat-template", metavar="JINJA_TEMPLATE",
                   help="a Jinja chat template instead of the model's, or one of llama.cpp's built-in names: "
                        "chatml, llama3, command-r, gemma, phi3, zephyr")
    p.add_argument("--chat-template-file", metavar="PATH", help="read the chat template from this file")
    p.add_argument("--reasoning", "-rea", choices=REASONING_MODES, default="auto",
                   help="thinking of reasoning models: the chat template's enable_thinking, true for on and auto "
                   "(default), false for off, which also closes a thinking block the template opens")
    p.add_argument("--reasoning-format", choices=REASONING_FORMATS, default="deepseek",
                   help="where chat requests that name no reasoning_format get the thinking: deepseek (or auto) in "
                   "reasoning_content (default), none in the content")
    p.add_argument("--jinja", action="store_true", help="accepted: janlib always renders Jinja templates")
    p.add_argument("--no-jinja", dest="jinja", action="store_false",
                   help="accepted: janlib has no other template engine, so templates are still Jinja")
    p.add_argument("--metrics", dest="metrics", action="store_true", default=False,
                   help="serve GET /metrics (default: off, GET /metrics answers 501)")
    p.add_argument("--no-metrics", dest="metrics", action="store_false",
                   help="GET /metrics answers 501 (the default; kept for scripts from when it was on by default)")
    p.add_argument("--slots", dest="slots", action="store_true", default=True, help="serve GET /slots (default)")
    p.add_argument("--no-slots", dest="slots", action="store_false", help="GET /slots answers 501")
    p.add_argument("--props", action="store_true", help="let POST /props change the request defaults")
    p.add_argument("--slot-save-path", metavar="DIR",
                   help="directory where POST /slots/ID?action=save and restore keep slot files")
    p.add_argument("--embedding", "--embeddings", dest="embeddings", action="store_true",
                   help="serve /v1/embeddings and /embedding with a text-generation model too (an encoder always does)")
    p.add_argument("--pooling", choices=POOLING, help="how --embedding pools a sequence's final hidden states (default: the model's; last for a decoder)")
    p.add_argument("--reranking", "--rerank", action="store_true",
                   help="accepted; the rerank endpoints answer 501: janlib has no reranking models")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="load a LoRA adapter (llama.cpp's GGUF) at SCALE (default 1); repeatable; its id is its "
                   "place among them, from 0")
    p.add_argument("--lora-scaled", action="append", default=[], metavar="FILE:SCALE",
                   help="as --lora (llama-server's name for a scaled adapter)")
    p.add_argument("--lora-init-without-apply", action="store_true",
                   help="load the adapters at scale 0, to be applied per request or by POST /lora-adapters")
    p.add_argument("--mmproj", "-mm", metavar="FILE",
                   help="the model's multimodal projector (llama.cpp's mmproj GGUF): requests may then hold images")
    p.add_argument("--allow-remote-media", action="store_true",
                   help="fetch http(s) image URLs in requests (size-limited, with a timeout); default: inline data only")
    p.add_argument("--no-webui", "--no-ui", dest="webui", action="store_false", help="no chat page at /")
    p.add_argument("--cont-batching", "-cb", action="store_true",
                   help="accepted: janlib always batches new requests into running ones")
    p.add_argument("--n-gpu-layers", "--gpu-layers", "-ngl", metavar="N",
                   help="accepted: janlib runs on the CPU whatever N is")
    p.add_argument("--flash-attn", "-fa", nargs="?", const="on", metavar="on|off|auto",
                   help="accepted: janlib has one attention kernel")
    p.add_argument("--ubatch-size", "-ub", type=int, help="accepted: janlib has no separate physical batch")
    p.add_argument("--cors-origins", "--cors-origin", dest="cors_origins", action="extend", type=_comma_separated,
                   metavar="ORIGINS", help="comma-separated origins whose web pages may call the API from a browser: "
                   "* for any (default), localhost for any on this machine (default with --tools), or origins such "
                   "as http://localhost:3000; \"\" for none (same origin only); repeatable")
    p.add_argument("--cors-credentials", dest="cors_credentials", action="store_true", default=True,
                   help="allow credentialed cross-origin requests; with * the request's Origin is reflected (default)")
    p.add_argument("--no-cors-credentials", dest="cors_credentials", action="store_false",
                   help="no credentialed cross-origin requests; * is answered as *")
    p.add_argument("--swa-full", action="store_true",
                   help="keep every position in sliding-window layers' KV cache (default: only their window)")
    p.add_argument("--cache-ram", "-cram", type=int, metavar="MIB",
                   help="accepted: janlib's prompt cache is the slots' own KV cells, no copy in RAM besides")
    p.add_argument("--cache-idle-slots", "--no-cache-idle-slots", action="store_true",
                   help="accepted: an idle slot keeps its cells until another request needs them")
    p.add_argument("--backend-sampling", "--backend_sampling", "-bs", action="store_true",
                   help="accepted: janlib samples on the CPU, beside the model")
    p.add_argument("--media-path", metavar="DIR",
                   help="accepted (must be a directory): janlib reads no local media files; images come inline, or "
                   "over http(s) with --allow-remote-media")
    p.add_argument("--tools", metavar="TOOL1,TOOL2", help="janlib has no built-in tools; as llama-server, the CORS "
                   "default becomes localhost")
    p.add_argument("--ui-mcp-proxy", "--webui-mcp-proxy", dest="cors_proxy", action="store_true",
                   help="serve /cors-proxy?url=..., which fetches http(s) URLs for browser pages (MCP servers); "
                   "experimental, do not enable where untrusted users reach the server")
    p.add_argument("--no-ui-mcp-proxy", "--no-webui-mcp-proxy", dest="cors_proxy", action="store_false",
                   help="no /cors-proxy (default)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, requests in flight may finish for this long; those still generating "
                   "then end with finish_reason length (default 10)")
    p.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="largest request body in bytes (8 MiB)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log level (default info)")
    p.add_argument("--verbose", "-v", dest="log_level", action="store_const", const="debug",
                   help="log level debug")
    return p


def _comma_separated(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None, prog: str = "python -m janlib.server") -> ServerConfig:
    """The command line as a ServerConfig; an unknown flag, or a file that cannot be read, is an error
    naming it (argparse exits with status 2)."""
    p = build_parser(prog)
    a, unknown = p.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        p.error(f"unknown flag {flag!r}" if flag.startswith("-") else f"unexpected argument {flag!r}")
    template = a.chat_template
    if a.chat_template_file is not None:
        try:
            with open(a.chat_template_file, encoding="utf-8") as f:
                template = f.read()
        except OSError as error:
            p.error(f"--chat-template-file: cannot read {a.chat_template_file!r}: {error.strerror or error}")
    if a.media_path is not None and not os.path.isdir(a.media_path):
        p.error(f"--media-path must be an existing directory, got {a.media_path!r}")
    if a.tools:  # a feature the launcher asked for and will not get: say so rather than drop it silently
        print(f"{prog}: warning: --tools: janlib has no built-in tools; it only makes localhost the CORS default",
              file=sys.stderr)
    cors_origins = a.cors_origins
    if cors_origins is None:  # llama-server's defaults: no page of another site may drive built-in tools
        cors_origins = ["localhost"] if a.tools else ["*"]
    api_keys = [k.strip() for given in a.api_key for k in given.split(",") if k.strip()] + keys_from_env()
    aliases = sorted({n.strip() for n in (a.alias or "").split(",") if n.strip()})
    return ServerConfig(model=a.model, host=a.host, port=a.port, api_keys=api_keys,
                        threads=a.threads, ctx_size=a.ctx_size, parallel=a.parallel, kv_unified=a.kv_unified,
                        cache_type_k=a.cache_type_k, cache_type_v=a.cache_type_v, swa_full=a.swa_full,
                        batch_size=a.batch_size, queue_size=a.queue_size,
                        alias=aliases[0] if aliases else a.alias, aliases=aliases[1:],
                        strict_model_name=a.strict_model_name,
                        tags=[t.strip() for t in (a.tags or "").split(",") if t.strip()],
                        n_predict=a.n_predict, context_shift=a.context_shift, max_body=a.max_body,
                        log_level=a.log_level, cors_origins=cors_origins, shutdown_timeout=a.shutdown_timeout,
                        seed=a.seed, temperature=a.temperature, chat_template=template, reasoning=a.reasoning,
                        reasoning_format=a.reasoning_format, metrics=a.metrics,
                        slots=a.slots, props=a.props, slot_save_path=a.slot_save_path, embeddings=a.embeddings,
                        pooling=a.pooling, webui=a.webui,
                        lora=[parse_lora_arg(value) for value in a.lora + a.lora_scaled],
                        lora_init_without_apply=a.lora_init_without_apply, mmproj=a.mmproj,
                        allow_remote_media=a.allow_remote_media, cors_credentials=a.cors_credentials,
                        cors_proxy=a.cors_proxy)


def main(argv: list[str] | None = None, prog: str = "python -m janlib.server") -> int:
    """Serve until interrupted; prog names the command in usage and help (`janlib serve` reuses this)."""
    config = parse_args(argv, prog)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("janlib.server")
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        config.validate()
        from . import create_app, make_server

        server, holder = make_server(config)
    except ConfigError as error:
        print(f"janlib.server: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"janlib.server: error: cannot listen on {config.host}:{config.port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    try:
        holder.app = create_app(config)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # missing file, bad GGUF, ...: one line, no traceback
        log.debug("start-up failed", exc_info=True)
        print(f"janlib.server: error: cannot load the model: {str(error) or type(error).__name__}", file=sys.stderr)
        server.close()
        return 1
    st = holder.app.extensions["janlib"]
    host = server.effective_host if hasattr(server, "effective_host") else config.hosts[0]
    port = server.effective_port if hasattr(server, "effective_port") else config.port
    if ":" in str(host):
        host = f"[{host}]"
    auth = f"{len(config.api_keys)} API key(s) required" if config.api_keys else "no API key: loopback only"
    print(f"janlib.server: serving '{st.model_id}' (ctx {st.model.n_ctx}, {config.parallel} slot(s), {auth}) "
          f"on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    _drain_on_signals(server, st, config.shutdown_timeout, log)
    try:
        server.run()  # returns when the drain (or a second signal) interrupts the main thread
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _drain_on_signals(server, st, timeout: float, log) -> None:
    """SIGTERM or SIGINT: refuse new requests (503 + Retry-After), let those in flight run for up to
    timeout seconds (then the engine ends them with finish_reason length), wait until their responses
    have gone out, and stop the server. A second signal stops it at once."""

    def drain():
        st.engine.close(timeout)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_unfinished(channel) for channel in list(_channels(server))):
            time.sleep(0.05)
        _thread.interrupt_main()

    def on_signal(signum, frame):
        if st.draining:
            raise KeyboardInterrupt
        log.warning("%s: shutting down (in-flight requests have %.0f s)", signal.Signals(signum).name, timeout)
        st.draining = True
        threading.Thread(target=drain, name="janlib-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _channels(server):
    """The server's connections: one Waitress server's map, or the shared map of one bound to several hosts."""
    return (server._map if hasattr(server, "_map") else server.map).values()


def _unfinished(channel) -> bool:
    """A client connection with a request being served or a response not yet sent."""
    return bool(getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0))


if __name__ == "__main__":
    sys.exit(main())
