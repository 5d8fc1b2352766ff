"""The server's settings: one dataclass, filled from the command line or by callers of create_app."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1337
DEFAULT_MAX_BODY = 8 * 1024 * 1024
API_KEY_ENV = "JANLIB_API_KEY"
ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", re.IGNORECASE)  # what a browser sends as Origin


class ConfigError(ValueError):
    """A setting the server cannot start with; the message is one line for the user."""


@dataclass
class ServerConfig:
    model: str | None = None  # path or registry name; None = the default model
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_keys: list[str] = field(default_factory=list)
    threads: int | None = None  # compute threads of each slot's model; None = the engine's choice
    ctx_size: int | None = None  # context per slot; None = the model's default
    parallel: int = 1  # slots
    queue_size: int = 16  # requests that may wait for a slot before 503
    alias: str | None = None  # the model id served; None = the file name
    n_predict: int = -1  # server-wide cap on generated tokens per request; -1 = none
    context_shift: bool = True  # False: a full context ends generation with finish_reason "length"
    max_body: int = DEFAULT_MAX_BODY
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed, "*" any; empty = same origin
    log_level: str = "info"
    shutdown_timeout: float = 10.0  # seconds in-flight requests may run on after SIGTERM/SIGINT

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {self.parallel}")
        if self.queue_size < 0:
            raise ConfigError(f"--queue-size must be at least 0, got {self.queue_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.ctx_size is not None and self.ctx_size < 1:
            raise ConfigError(f"--ctx-size must be at least 1, got {self.ctx_size}")
        if self.n_predict < -1:
            raise ConfigError(f"--n-predict must be -1 (no cap) or more, got {self.n_predict}")
        if not self.shutdown_timeout >= 0:
            raise ConfigError(f"--shutdown-timeout must be 0 or more seconds, got {self.shutdown_timeout}")
        if self.max_body < 1:
            raise ConfigError(f"--max-body must be positive, got {self.max_body}")
        if any(not k for k in self.api_keys):
            raise ConfigError("an API key must not be empty")
        for origin in self.cors_origins:
            if origin != "*" and not ORIGIN_RE.fullmatch(origin):
                raise ConfigError(f"--cors-origin must be * or an origin such as https://example.com:8080 "
                                  f"(scheme://host[:port], no path), got {origin!r}")
        if self.alias is not None and not self.alias:
            raise ConfigError("--alias must not be empty")
        if not self.api_keys and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve {self.host} without an API key: pass --api-key or set {API_KEY_ENV}, "
                f"or bind a loopback address such as {DEFAULT_HOST}")


def keys_from_env(environ=os.environ) -> list[str]:
    """JANLIB_API_KEY: one key, or several separated by commas."""
    return [k.strip() for k in environ.get(API_KEY_ENV, "").split(",") if k.strip()]


def is_loopback(host: str) -> bool:
    """True when every address host resolves to is a loopback address ("localhost", 127.x, ::1)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
