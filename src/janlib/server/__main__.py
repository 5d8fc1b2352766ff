"""python -m janlib.server: serve a GGUF model over the Jan / OpenAI API (default http://127.0.0.1:1337/v1)."""

from __future__ import annotations

import argparse
import _thread
import logging
import signal
import sys
import threading
import time
import warnings

from .config import API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, ConfigError, ServerConfig, keys_from_env

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_args(argv: list[str] | None = None, prog: str = "python -m janlib.server") -> ServerConfig:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--model", "-m", help="path of a .gguf file or a registry name (default: the default model)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}; any other "
                   "than loopback needs an API key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help=f"accept this Bearer key (repeatable; also ${API_KEY_ENV}, comma-separated)")
    p.add_argument("--threads", "-t", type=int, help="compute threads of the engine (default: the engine's choice)")
    p.add_argument("--ctx-size", "-c", type=int, help="context size per slot in tokens (default: the model's)")
    p.add_argument("--parallel", "-np", type=int, default=1, help="slots: requests generated at once (default 1)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="requests that may wait for a free slot; beyond it 503 (default 16)")
    p.add_argument("--n-predict", type=int, default=-1,
                   help="cap on tokens generated per request, whatever it asks (default -1: none)")
    p.add_argument("--no-context-shift", dest="context_shift", action="store_false",
                   help="end generation at a full context (finish_reason length) instead of dropping the "
                   "older half of what follows n_keep")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000, or *) call the API from a browser "
                   "(repeatable; default: none, same origin only)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, requests in flight may finish for this long; those still generating "
                   "then end with finish_reason length (default 10)")
    p.add_argument("--alias", help="the model id to serve (default: the model's file name)")
    p.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="largest request body in bytes (8 MiB)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log level (default info)")
    a = p.parse_args(argv)
    return ServerConfig(model=a.model, host=a.host, port=a.port, api_keys=a.api_key + keys_from_env(),
                        threads=a.threads, ctx_size=a.ctx_size, parallel=a.parallel, queue_size=a.queue_size,
                        alias=a.alias, n_predict=a.n_predict, context_shift=a.context_shift, max_body=a.max_body,
                        log_level=a.log_level, cors_origins=a.cors_origin,
                        shutdown_timeout=a.shutdown_timeout)


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
    host = server.effective_host if hasattr(server, "effective_host") else config.host
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
        while time.monotonic() < deadline and any(_unfinished(channel) for channel in list(server._map.values())):
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


def _unfinished(channel) -> bool:
    """A client connection with a request being served or a response not yet sent."""
    return bool(getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0))


if __name__ == "__main__":
    sys.exit(main())
