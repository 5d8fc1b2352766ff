"""Resumable streams, as llama-server has them (tools/server/server-stream.cpp).

A streaming request with the header `X-Conversation-Id: <id>` records the bytes of its event stream in a session
that outlives the connection: when the client goes, the generation runs on into the session, so that a page
reload can pick it up again.

    GET    /v1/stream?conv_id=<id>&from=N   the session's bytes from byte offset N (default 0), then the live ones
                                            until the generation ends; 404 when there is no such session
    DELETE /v1/stream?conv_id=<id>          stop the generation and forget the session: 204, known or not
    POST   /v1/streams/lookup               {"conversation_ids": [...]}: the sessions of those ids (an id also
                                            matches the ids "<id>::<model>"); a caller lists only ids it knows

The id travels in the query string because it may hold a model name with slashes. A new stream under a live id
stops and replaces the old one. Each session keeps its last 4 MiB (whole events; a replay from before them is a
400) and a finished one is kept 300 s, as in llama-server; janlib also bounds what the finished sessions hold
together (running ones are bounded by the engine's slots and queue)."""

from __future__ import annotations

import bisect
import threading
import time
from typing import Callable, Iterator

from flask import Blueprint, Response, current_app, jsonify, request

from . import schema, sse
from .errors import APIError, invalid

bp = Blueprint("streams", __name__)

HEADER = "X-Conversation-Id"
MAX_ID_CHARS = 512
SESSION_BYTES = 4 * 1024 * 1024  # llama-server's cap per session
TTL_S = 300.0  # how long a finished session can still be replayed (llama-server's)
MAX_FINISHED = 64  # finished sessions kept at most, and the bytes they hold together: the oldest go first
MAX_FINISHED_BYTES = 64 * 1024 * 1024
WAKE_S = 0.2  # a waiting replay looks this often whether its client has gone
_STORE = "janlib.streams"


class Session:
    """One generation's event stream: whole chunks appended by the request that generates, read from any byte
    offset by replays. The oldest chunks go once the session holds more than its cap."""

    def __init__(self, conv_id: str, stop: Callable[[], None], cap: int = SESSION_BYTES):
        self.conv_id = conv_id
        self.started_at = int(time.time())
        self.completed_at = 0  # unix seconds once finished (what lookup reports)
        self.finished_at = 0.0  # time.time() once finished (what the sweep orders by)
        self.cancelled = False
        self.stop = stop  # cancels the generation
        self._cap = cap
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # byte offset of each chunk
        self._end = 0  # bytes that ever entered
        self._held = 0  # bytes still in _chunks
        self._done = False
        self._changed = threading.Condition()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def total_bytes(self) -> int:
        return self._end

    @property
    def dropped(self) -> int:
        """Bytes gone from the front: a replay must start at or after this offset."""
        with self._changed:
            return self._starts[0] if self._starts else 0

    @property
    def held(self) -> int:
        return self._held

    def append(self, chunk: bytes) -> None:
        if not chunk:
            return
        with self._changed:
            if self._done:
                return
            self._chunks.append(chunk)
            self._starts.append(self._end)
            self._end += len(chunk)
            self._held += len(chunk)
            n_drop = 0
            while self._held > self._cap and n_drop < len(self._chunks) - 1:  # the newest chunk always stays
                self._held -= len(self._chunks[n_drop])
                n_drop += 1
            if n_drop:
                del self._chunks[:n_drop], self._starts[:n_drop]
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            if not self._done:
                self._done = True
                self.finished_at = time.time()
                self.completed_at = int(self.finished_at)
            self._changed.notify_all()

    def cancel(self) -> None:
        """Stop the generation; readers end."""
        self.cancelled = True
        self.stop()
        self.finish()

    def read(self, offset: int, wait_s: float) -> bytes | None:
        """The bytes from offset on, waiting up to wait_s for some (b"" when none came); None once the session
        has finished and offset is at its end, or the bytes at offset are gone."""
        with self._changed:
            for _ in range(2):
                if self._starts and offset < self._starts[0]:
                    return None
                if offset < self._end:
                    i = bisect.bisect_right(self._starts, offset) - 1
                    return b"".join(self._chunks[i:])[offset - self._starts[i]:]
                if self._done:
                    return None
                self._changed.wait(wait_s)
            return b""

    def info(self) -> dict:
        return {"conversation_id": self.conv_id, "is_done": self._done, "total_bytes": self.total_bytes,
                "started_at": self.started_at, "completed_at": self.completed_at}


class SessionStore:
    """The sessions by conversation id; expired and surplus finished ones are swept on each use."""

    def __init__(self, ttl_s: float = TTL_S, max_finished: int = MAX_FINISHED,
                 max_finished_bytes: int = MAX_FINISHED_BYTES):
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self.max_finished_bytes = max_finished_bytes
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, conv_id: str, stop: Callable[[], None]) -> Session:
        """A new session under conv_id; a live one there is stopped and replaced."""
        session = Session(conv_id, stop)
        with self._lock:
            previous = self._sessions.get(conv_id)
            self._sessions[conv_id] = session
            self._sweep()
        if previous is not None:
            previous.cancel()
        return session

    def get(self, conv_id: str) -> Session | None:
        with self._lock:
            self._sweep()
            return self._sessions.get(conv_id)

    def matching(self, conv_ids: list[str]) -> list[Session]:
        """The sessions of each id, and of the ids "<id>::..." (one per model in llama-server's router)."""
        with self._lock:
            self._sweep()
            return [s for conv_id in conv_ids for key, s in self._sessions.items()
                    if key == conv_id or key.startswith(conv_id + "::")]

    def stop(self, conv_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(conv_id, None)
        if session is not None:
            session.cancel()

    def _sweep(self) -> None:
        cutoff = time.time() - self.ttl_s
        finished = sorted((s for s in self._sessions.values() if s.done), key=lambda s: s.finished_at)
        total = sum(s.held for s in finished)
        for i, session in enumerate(finished):
            if session.finished_at > cutoff and len(finished) - i <= self.max_finished \
                    and total <= self.max_finished_bytes:
                break
            total -= session.held
            del self._sessions[session.conv_id]


bp.record_once(lambda setup: setup.app.extensions.setdefault(_STORE, SessionStore()))


def _store() -> SessionStore:
    return current_app.extensions[_STORE]


def requested() -> bool:
    """Whether this request asks for a resumable stream; an id too long is a 400."""
    conv_id = request.headers.get(HEADER, "")
    if len(conv_id) > MAX_ID_CHARS:
        raise invalid(f"the header {HEADER} must be at most {MAX_ID_CHARS} characters, got {len(conv_id)}", HEADER)
    return bool(conv_id)


def recorded(chunks: Iterator[bytes], stop: Callable[[], None]) -> Iterator[bytes]:
    """chunks as they go to the client; with X-Conversation-Id also into a new session. stop() cancels the
    generation; it runs when the stream ends, or at once when its client goes, unless the stream is recorded:
    then the generation runs on into the session (in this request's thread, as llama-server drains it) until it
    ends or DELETE /v1/stream cancels it. Call it in the request (it reads the header)."""
    if not requested():
        return _plain(chunks, stop)
    return _recording(chunks, _store().create(request.headers[HEADER], stop))


def _plain(chunks: Iterator[bytes], stop: Callable[[], None]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        stop()


def _recording(chunks: Iterator[bytes], session: Session) -> Iterator[bytes]:
    try:
        for chunk in chunks:
            if session.cancelled:
                return
            session.append(chunk)
            yield chunk
    finally:
        try:
            for chunk in chunks:  # the client has gone: the rest goes to the session only
                if session.cancelled:
                    break
                session.append(chunk)
        finally:
            session.finish()
            session.stop()


def _conv_id() -> str:
    conv_id = request.args.get("conv_id", "")
    if not conv_id:
        raise invalid("the query parameter 'conv_id' is required: the X-Conversation-Id the stream was started "
                      "with", "conv_id", "missing_required_parameter")
    return conv_id


@bp.get("/v1/stream")
def replay():
    conv_id = _conv_id()
    given = request.args.get("from", "0")
    if not (given.isascii() and given.isdigit() and len(given) <= 18):
        raise invalid(f"'from' must be a byte offset into the stream (an integer >= 0), got {given!r}", "from")
    offset = int(given)
    session = _store().get(conv_id)
    if session is None:
        raise APIError(404, f"no stream for conv_id {conv_id!r}: it was never started, was stopped, or finished more "
                       f"than {TTL_S:.0f} s ago", param="conv_id", code="stream_not_found")
    if offset < session.dropped:
        raise invalid(f"the stream's bytes before offset {session.dropped} are gone (a stream keeps its last "
                      f"{SESSION_BYTES // 1024 ** 2} MiB): restart the request", "from")
    probe = request.environ.get("waitress.client_disconnected")

    def body():
        at = offset
        while True:
            data = session.read(at, WAKE_S)
            if data is None or probe is not None and probe():
                return
            at += len(data)
            if data:
                yield data

    return Response(body(), mimetype=sse.MIMETYPE, headers=sse.HEADERS, direct_passthrough=True)


@bp.delete("/v1/stream")
def stop_stream():
    _store().stop(_conv_id())
    return Response(status=204)


@bp.post("/v1/streams/lookup")
def lookup():
    body = schema.parse_json_body(request.get_data(cache=False))
    conv_ids = body.get("conversation_ids")
    if not isinstance(conv_ids, list):
        raise invalid("'conversation_ids' must be an array of the conversation ids to look up",
                      "conversation_ids", "invalid_type")
    for i, conv_id in enumerate(conv_ids):
        if not isinstance(conv_id, str) or not conv_id:
            raise invalid(f"'conversation_ids[{i}]' must be a non-empty string", f"conversation_ids[{i}]",
                          "invalid_type")
    return jsonify([session.info() for session in _store().matching(conv_ids)])
