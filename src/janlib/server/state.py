"""What the blueprints share: the settings, the engine and the served model's description."""

from __future__ import annotations

import os
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

    @property
    def model(self):
        return self.engine.model

    def accepts_model(self, name: str) -> bool:
        base = os.path.basename(self.model_path)
        return name in {self.model_id, base, os.path.splitext(base)[0], self.config.model or "",
                        *self.config.aliases} - {""}


def state() -> ServerState:
    return current_app.extensions["janlib"]
