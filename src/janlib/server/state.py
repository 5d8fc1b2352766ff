"""What the blueprints share: the settings, the engine and the served model's description."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from flask import current_app

from .config import ServerConfig
from janlib.engine import Engine


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine
    model_id: str
    model_path: str
    started: int = field(default_factory=lambda: int(time.time()))
    http_requests: dict = field(default_factory=dict)  # (endpoint, status) -> count
    draining: bool = False  # shutting down: new requests get 503, in-flight ones finish
    extras: dict = field(default_factory=dict)  # facts about the model found once (its FIM tokens)
    defaults: dict = field(default_factory=dict)  # request fields' server-wide defaults (--seed, --temp, POST /props)
    # embedding requests run beside the engine; their prompt tokens and forward passes count in /metrics too
    embedded: dict = field(default_factory=lambda: {"prompt_tokens_total": 0, "steps_total": 0})
    _embedded_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_embedding(self, n_tokens: int) -> None:
        with self._embedded_lock:
            self.embedded["prompt_tokens_total"] += n_tokens
            self.embedded["steps_total"] += 1

    @property
    def model(self):
        return self.engine.model

    def accepts_model(self, name: str) -> bool:
        base = os.path.basename(self.model_path)
        return name in {self.model_id, base, os.path.splitext(base)[0], self.config.model or "",
                        *self.config.aliases} - {""}


def state() -> ServerState:
    return current_app.extensions["janlib"]
