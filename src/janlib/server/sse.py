"""Server-Sent Events framing: one `data:` line per JSON event, a blank line after each."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MIMETYPE = "text/event-stream"


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def named_event(name: str, payload: Any) -> bytes:
    """An event with its type line (the Responses and Anthropic streams name every event)."""
    return f"event: {name}\n".encode() + event(payload)
