"""The server's settings: one dataclass, filled from the command line or by callers of create_app."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

from janlib.reasoning import REASONING_FORMATS, REASONING_MODES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1337
DEFAULT_MAX_BODY = 8 * 1024 * 1024
API_KEY_ENV = "JANLIB_API_KEY"
POOLING = ("none", "mean", "cls", "last", "rank")
ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", re.IGNORECASE)  # what a browser sends as Origin


class ConfigError(ValueError):
    """A setting the server cannot start with; the message is one line for the user."""


KV_CACHE_TYPES = ("f16", "f32", "q8_0", "q4_0")


@dataclass
class ServerConfig:
    model: str | None = None  # path or registry name; None = the default model
    host: str = DEFAULT_HOST  # one address, or several separated by commas (llama-server's "127.0.0.1,::1")
    port: int = DEFAULT_PORT
    api_keys: list[str] = field(default_factory=list)
    threads: int | None = None  # compute threads of each slot's model; None = the engine's choice
    ctx_size: int | None = None  # KV cells of all slots together (llama-server's -c); None or 0 = the model's default
    parallel: int = 1  # slots; each holds ctx_size // parallel positions, or all ctx_size with kv_unified
    kv_unified: bool = False
    cache_type_k: str = "f16"  # KV cache types (llama-server's -ctk, -ctv): one of KV_CACHE_TYPES
    cache_type_v: str = "f16"
    swa_full: bool = False  # --swa-full: sliding-window layers keep every position, not only their window
    batch_size: int | None = None  # tokens per engine step (llama-server's -b); None = the engine's default
    queue_size: int = 16  # requests that may wait for a slot before 503
    alias: str | None = None  # the model id served; None = the file name
    aliases: list[str] = field(default_factory=list)  # further names the model answers to
    # True: a request naming another model gets 404 (OpenAI's); False: the served model answers any name
    # (llama-server's: clients and host apps send names of their own)
    strict_model_name: bool = False
    n_predict: int = -1  # server-wide cap on generated tokens per request; -1 = none
    context_shift: bool = True  # False: a full context ends generation with finish_reason "length"
    max_body: int = DEFAULT_MAX_BODY
    # browser origins allowed (llama-server's --cors-origins, server/cors.py): "*" any (the default), "localhost"
    # those of this machine (the default with --tools), or origins; empty = same origin only
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    cors_credentials: bool = True  # allow credentialed requests: "*" then reflects the request's Origin
    cors_proxy: bool = False  # --ui-mcp-proxy: /cors-proxy fetches http(s) URLs for the page (server/cors_proxy.py)
    log_level: str = "info"
    shutdown_timeout: float = 10.0  # seconds in-flight requests may run on after SIGTERM/SIGINT
    # request defaults where a request does not say (llama-server's --seed, --temp)
    seed: int = -1
    temperature: float | None = None
    chat_template: str | None = None  # a Jinja template replacing the model's (--chat-template[-file])
    reasoning: str = "auto"  # --reasoning on|off|auto: the templates' enable_thinking default (janlib.reasoning)
    reasoning_format: str = "deepseek"  # --reasoning-format: where a chat request that names none gets its thinking
    tags: list[str] = field(default_factory=list)  # shown in /v1/models (llama-server's --tags)
    # llama-server's endpoint switches
    metrics: bool = False  # GET /metrics, off unless --metrics (501 otherwise)
    slots: bool = True  # GET /slots
    props: bool = False  # POST /props may change the defaults
    webui: bool = True  # the chat page at /
    slot_save_path: str | None = None  # POST /slots/{id}?action=save|restore reads and writes here
    embeddings: bool = False  # --embeddings: a text-generation model serves embeddings too (server/embeddings.py)
    pooling: str | None = None  # --pooling for embeddings; None: the model's
    lora: list[tuple[str, float]] = field(default_factory=list)  # LoRA adapter files and their scales (--lora)
    lora_init_without_apply: bool = False  # load the adapters at scale 0 (POST /lora-adapters sets them)
    mmproj: str | None = None  # --mmproj: the model's multimodal projector GGUF (requests may then hold images)
    allow_remote_media: bool = False  # --allow-remote-media: image URLs over http(s), not only inline data

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {self.parallel}")
        for flag, value in (("--cache-type-k", self.cache_type_k), ("--cache-type-v", self.cache_type_v)):
            if value not in KV_CACHE_TYPES:
                raise ConfigError(f"{flag} must be one of {', '.join(KV_CACHE_TYPES)}, got {value!r}")
        if self.queue_size < 0:
            raise ConfigError(f"--queue-size must be at least 0, got {self.queue_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.ctx_size is not None and self.ctx_size < 0:
            raise ConfigError(f"--ctx-size must be 0 (the model's) or more, got {self.ctx_size}")
        if self.ctx_size and not self.kv_unified and self.ctx_size < self.parallel:
            raise ConfigError(f"--ctx-size {self.ctx_size} split over --parallel {self.parallel} slots leaves "
                              "no room in a slot")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not -1 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be -1 (random) or in 0..{2**32 - 1}, got {self.seed}")
        if self.temperature is not None and not 0 <= self.temperature < float("inf"):
            raise ConfigError(f"--temp must be 0 or more, got {self.temperature}")
        if self.pooling is not None and self.pooling not in POOLING:
            raise ConfigError(f"--pooling must be one of {', '.join(POOLING)}, got {self.pooling!r}")
        if self.slot_save_path is not None and not os.path.isdir(self.slot_save_path):
            raise ConfigError(f"--slot-save-path must be an existing directory, got {self.slot_save_path!r}")
        if self.n_predict < -1:
            raise ConfigError(f"--n-predict must be -1 (no cap) or more, got {self.n_predict}")
        if not self.shutdown_timeout >= 0:
            raise ConfigError(f"--shutdown-timeout must be 0 or more seconds, got {self.shutdown_timeout}")
        if self.mmproj is not None and not os.path.isfile(self.mmproj):
            raise ConfigError(f"--mmproj must be an existing file, got {self.mmproj!r}")
        if self.max_body < 1:
            raise ConfigError(f"--max-body must be positive, got {self.max_body}")
        if any(not k for k in self.api_keys):
            raise ConfigError("an API key must not be empty")
        for origin in self.cors_origins:
            if origin not in ("*", "localhost") and not ORIGIN_RE.fullmatch(origin):
                raise ConfigError(f"--cors-origins must be *, localhost or an origin such as https://example.com:8080 "
                                  f"(scheme://host[:port], no path), got {origin!r}")
        if self.reasoning not in REASONING_MODES:
            raise ConfigError(f"--reasoning must be one of {', '.join(REASONING_MODES)}, got {self.reasoning!r}")
        if self.reasoning_format not in REASONING_FORMATS:
            raise ConfigError(f"--reasoning-format must be one of {', '.join(REASONING_FORMATS)}, "
                              f"got {self.reasoning_format!r}")
        if self.alias is not None and not self.alias:
            raise ConfigError("--alias must not be empty")
        if not self.hosts:
            raise ConfigError("--host must name an address")
        if not self.api_keys and not all(is_loopback(h) for h in self.hosts):
            raise ConfigError(
                f"refusing to serve {self.host} without an API key: pass --api-key or set {API_KEY_ENV}, "
                f"or bind a loopback address such as {DEFAULT_HOST}")


    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.host.split(",") if h.strip()]


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
