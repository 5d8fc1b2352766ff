"""Engine: many sequences over one model — continuous batching with chunked prefill.

One Model (weights, tokenizer, chat template: loaded once) and one multi-sequence context
(janlib.BatchContext) serve up to n_seq_max sequences at once. A thread owns the context; each step it
packs one batch: the next token of every generating sequence, then chunks of prompts still being
evaluated, up to n_batch tokens in all. Running streams thus get a token every step while a long prompt
is processed a chunk at a time.

    engine = janlib.Engine("smollm2-135m-instruct", n_seq_max=4, n_ctx=2048)
    handle = engine.submit(janlib.Request("Once upon a time", max_tokens=64))
    for event in handle:                   # progress, start, token..., done (per choice)
        if event.kind == "token":
            print(event.token.text, end="")
    results = engine.generate(["The sky is", "Water is"], max_tokens=32)   # batched: list[Result]
    engine.close()

Per sequence it keeps its own sampler chain (so a seeded request draws the same tokens whatever runs
beside it: the context's logits rows are batch-invariant), constraint, stop strings, n_indent,
incremental detokenizer, cancellation, context shift and time limit.

Prompt cache: a finished sequence keeps its cells. A new request goes to the idle sequence whose cached
tokens share the longest prefix with its prompt (id_slot pins one), and when another sequence holds a
longer computed prefix, that prefix is copied (seq_cp: shared cells, no recomputation); a prompt that
shares a prefix with an earlier one still being evaluated waits for it and copies it. A request with n
choices evaluates its prompt once on its first sequence; the others copy it and sample from the same
logits. Choice i of a request seeded s draws with seed s + i (mod 2**64), so choice 0 repeats the
same request with n = 1; unseeded choices each draw a random seed.

Images: a prompt may be a MediaPrompt (Model.media_prompt; Engine(..., mmproj=...) loads the projector).
Its image positions hold pseudo ids from a hash of the image's bytes, so the prefix cache above reuses an
image's cells like tokens'. A chunk never ends inside a non-causal image block (gemma3): the block goes
whole into one step, even past that step's token budget.

Supervision: an exception while serving one request fails that request only (its handle gets an
"error" event; the traceback is logged). If the engine thread itself dies, every waiting and later
request fails at once with EngineDead and `healthy` is False."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from janlib.errors import JanlibError, KVCacheFull
from janlib.media import MediaPrompt
from janlib.model import GREEDY, GeneratedToken, Model
from janlib.sampling import SamplingParams, TokenProbs
from janlib.stop import IndentLimit, StopStringFilter
from janlib.structured import Constraint

log = logging.getLogger("janlib.engine")

MAX_CHOICES = 8
DEFAULT_BATCH = 256  # the most tokens in one step
DEFAULT_MAX_GAP_MS = 200.0  # while sequences generate, a step beside them aims to take no longer
MIN_CHUNK = 16  # a prompt beside running sequences advances at least this much per step
_LARGE_STEP = 32  # steps of this many tokens or more carry a prompt chunk's cost (smaller ones are decode)
_POSITION_SPREAD = 256  # the large steps' mean positions must spread this much to fit the attention term
_POLL_S = 0.5  # a handle's reader re-checks the engine's health this often while it waits


class _StepTimes:
    """How long a step takes: t = t0 + per_row * rows + per_attended * attended, where attended counts
    the cache positions its rows attend to. A prompt chunk's attention grows with its position, so late
    in a long prompt a token costs several times what it costs early; a rate per token alone would let
    those chunks overrun the gap they are sized for. t0, what a step costs whatever its rows (streaming
    the weights), is the median of the recent small steps (decode); the two costs are fitted by least
    squares over the recent large steps (prompt chunks), the attention cost only once their positions
    spread enough to tell it from the cost per row."""

    def __init__(self) -> None:
        self._large: deque[tuple[float, float, float]] = deque(maxlen=32)  # (rows, attended / 1024, seconds)
        self._small: deque[float] = deque(maxlen=16)  # seconds

    def add(self, rows: int, attended: int, seconds: float) -> None:
        if rows >= _LARGE_STEP:
            self._large.append((rows, attended / 1024, seconds))
        else:
            self._small.append(seconds)

    def fit(self) -> tuple[float, float, float] | None:
        """(t0, per_row, per_attended) in seconds, attended in units of 1,024 positions; None before two
        large steps were timed (nothing says what a chunk costs)."""
        if len(self._large) < 2:
            return None
        t0 = float(np.median(self._small)) if self._small else 0.0
        large = np.array(self._large)
        terms, variable = large[:, :2], np.maximum(large[:, 2] - t0, 0.0)
        if np.ptp(large[:, 1] * 1024 / large[:, 0]) >= _POSITION_SPREAD:  # the steps' mean positions
            per_row, per_attended = np.linalg.lstsq(terms, variable, rcond=None)[0]
            if per_row >= 0 and per_attended >= 0:
                return t0, float(per_row), float(per_attended)
        per_row = float(np.linalg.lstsq(terms[:, :1], variable, rcond=None)[0][0])
        if per_row <= 0:  # decode steps at a long context cost more than the chunks timed: a plain rate then
            return 0.0, float(np.median(large[:, 2] / large[:, 0])), 0.0
        return t0, per_row, 0.0

    def max_chunk(self, rows: int, attended: int, start: int, seconds: float) -> int | None:
        """The longest prompt chunk from position start that fits beside rows attending to attended
        positions within seconds (0 when none does); None without a fit."""
        fit = self.fit()
        return None if fit is None else self._solve(fit, rows, attended, start, seconds)

    @staticmethod
    def _solve(fit: tuple[float, float, float], rows: int, attended: int, start: int, seconds: float) -> int:
        t0, per_row, per_kpos = fit
        # a chunk of c tokens from start attends to c * start + c (c + 1) / 2 positions: solve
        # t0 + per_row (rows + c) + per_kpos (attended + c start + c (c + 1) / 2) / 1024 = seconds for c
        qa = per_kpos / 2048
        qb = per_row + per_kpos * (start + 0.5) / 1024
        qc = t0 + per_row * rows + per_kpos * attended / 1024 - seconds
        if qc >= 0:
            return 0
        if qa <= 0:
            return int(-qc / qb) if qb > 0 else 1 << 30
        return int((-qb + (qb * qb - 4 * qa * qc) ** 0.5) / (2 * qa))


def _attended(entries) -> int:
    """The cache positions the rows of a step's entries attend to (each token sees itself and all before)."""
    return sum(len(tokens) * len(seq.slot.cached) + len(tokens) * (len(tokens) + 1) // 2 for seq, tokens in entries)


class EngineError(JanlibError, RuntimeError):
    """The engine cannot take or finish a request."""


class EngineDead(EngineError):
    """The engine thread has died: no request can be served."""


class EngineClosed(EngineError):
    """The engine is shutting down or closed: it takes no new request."""


class QueueFull(EngineError):
    """Every sequence is busy and the waiting queue is full."""


class RequestCancelled(EngineError):
    """The request was cancelled (by its handle, its consumer going away, or shutdown) before it ended."""


class RequestFailed(EngineError):
    """Serving one request raised; the cause is chained."""


@dataclass
class Request:
    """One completion request: the prompt (text, tokenized with special tokens added, token ids, or a
    janlib.MediaPrompt with images) and how to continue it. The fields mean what Model.generate's arguments mean; beside them:
    n (1..8) choices sharing the prompt, id_slot (a sequence id to run on; -1: the engine's choice),
    cache_prompt (reuse cached prefixes), t_max_predict_ms (stop generating after this long, 0: never)
    and disconnected (a probe: True once the consumer has gone, which cancels the request)."""

    prompt: str | Sequence[int] | MediaPrompt
    max_tokens: int = 256
    sampling: SamplingParams | None = None  # None: greedy
    stop: str | Sequence[str] | None = None
    ignore_eos: bool = False
    n: int = 1
    grammar: str | None = None
    json_schema: dict | str | None = None
    constraint: Constraint | None = None  # compiled; each further choice gets a copy
    id_slot: int = -1
    cache_prompt: bool = True
    context_shift: bool = False
    n_keep: int = 0
    n_indent: int = 0
    t_max_predict_ms: int = 0
    disconnected: Callable[[], bool] | None = None
    prompt_logprobs: int | None = None  # k: score the prompt (evaluated whole, no cached prefix) with top k
    lora: Any = None  # LoRA adapter scales for this request (janlib.lora: {id: scale} or [{"id", "scale"}]); None: defaults


@dataclass(frozen=True)
class Event:
    """What a handle yields. kind:
    "progress" — the prompt was admitted (processed = cache), then after each evaluated chunk:
                 info {total, cache, processed, time_ms};
    "prompt_logprobs" — with Request.prompt_logprobs, per prompt chunk: info {first (the position of the
                 first token scored), tokens, logprobs, top_ids, top_logprobs}; the first prompt token has none;
    "start"    — the prompt is done: info {slot, n_prompt, n_cached, prompt_ms};
    "token"    — choice `index` released token (a GeneratedToken);
    "done"     — choice `index` ended: info {finish_reason, n_predicted, prompt_ms, predicted_ms, slot,
                 timed_out, context_full, truncated};
    "error"    — the request failed (error holds the exception); nothing follows;
    "cancelled"— the request was cancelled or the engine shut down before it started; nothing follows."""

    kind: str
    index: int = 0
    token: GeneratedToken | None = None
    info: dict | None = None
    error: BaseException | None = None


@dataclass
class Choice:
    text: str
    tokens: list[int]
    finish_reason: str
    probs: list[TokenProbs | None]  # per generated token, when sampling.n_probs > 0
    info: dict


@dataclass
class Result:
    """A whole request: its choices (choices[0] alone unless n > 1) and its prompt's accounting."""

    choices: list[Choice]
    n_prompt_tokens: int
    n_cached_tokens: int
    prompt_ms: float

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason


_END = object()  # closes a handle's event queue


class Handle:
    """A submitted request: iterate its events (blocking; each event is delivered once), cancel it, or
    wait for its Result."""

    def __init__(self, engine: Engine, request: Request, prompt: list[int], lora_scales: tuple[float, ...] = ()):
        self.request = request
        self.prompt = prompt  # token ids; an image's positions hold its pseudo id (janlib.media.image_key)
        self.media = request.prompt if isinstance(request.prompt, MediaPrompt) else None
        self.lora_scales = lora_scales  # every adapter's scale for this request, fixed at submission
        self.id = next(engine._ids)
        self._engine = engine
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._n_done = 0
        self._closed = False  # engine side: no further event
        self.t_submit = time.perf_counter()

    def cancel(self) -> None:
        """Stop the request: the engine frees its sequences within a step."""
        self._cancel.set()

    def cancelled(self) -> bool:
        if self._cancel.is_set():
            return True
        probe = self.request.disconnected
        if probe is not None:
            try:
                if probe():
                    self._cancel.set()
                    return True
            except Exception:  # a probe that fails must not take the engine down
                return False
        return False

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                event = self._events.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._engine.healthy:  # the thread died without reaching this handle
                    yield Event("error", error=self._engine._dead_error())
                    return
                continue
            if event is _END:
                self._events.put(_END)  # a later iteration ends at once too
                return
            yield event

    def result(self) -> Result:
        """Wait for every choice; raises the request's error (RequestFailed, EngineDead, ...) or EngineClosed
        when it was cancelled."""
        n = self.request.n
        pieces: list[list[str]] = [[] for _ in range(n)]
        tokens: list[list[int]] = [[] for _ in range(n)]
        probs: list[list] = [[] for _ in range(n)]
        done: list[dict | None] = [None] * n
        start: dict = {}
        for event in self:
            if event.kind == "start":
                start = event.info
            elif event.kind == "token":
                pieces[event.index].append(event.token.text)
                if event.token.id is not None:
                    tokens[event.index].append(event.token.id)
                    probs[event.index].append(event.token.probs)
            elif event.kind == "done":
                done[event.index] = event.info
            elif event.kind == "error":
                raise event.error
            elif event.kind == "cancelled":
                raise RequestCancelled("the request was cancelled")
        choices = [Choice("".join(p), t, d["finish_reason"], pr, d) for p, t, pr, d in zip(pieces, tokens, probs, done)]
        return Result(choices, start.get("n_prompt", len(self.prompt)), start.get("n_cached", 0),
                      start.get("prompt_ms", 0.0))

    # engine side
    def _put(self, event: Event) -> None:
        if self._closed:
            return
        self._events.put(event)
        if event.kind in ("error", "cancelled"):
            self._close()
        elif event.kind == "done":
            self._n_done += 1
            if self._n_done == self.request.n:
                self._close()

    def _close(self) -> None:
        self._closed = True
        self._events.put(_END)


class _Slot:
    """One sequence id of the context and what its cells hold."""

    def __init__(self, index: int):
        self.index = index
        self.cached: list[int] = []  # the tokens whose cells the context holds, positions 0..
        self.lora_scales: tuple[float, ...] = ()  # the adapter scales those cells were computed with
        self.seq: _Sequence | None = None
        self.last_used = 0.0
        self.n_requests = 0


@dataclass(eq=False)
class _Sequence:
    """One choice of one request, in flight on one slot."""

    handle: Handle
    index: int  # the choice
    slot: _Slot
    sampler: Any
    constraint: Constraint | None
    keep: int | None  # context shift keeps this many first tokens; None: no shift
    leader: _Sequence | None = None  # a further choice copies the leader's evaluated prompt
    n_done: int = 0  # prompt tokens in the cells
    n_cached: int = 0  # of which reused
    pending: int | None = None  # the sampled token to evaluate next step
    refill: list[int] = field(default_factory=list)  # tokens a context shift evaluates again before it
    n_generated: int = 0
    truncated: bool = False
    timed_out: bool = False
    decoder: Any = None
    stops: StopStringFilter | None = None
    indent: IndentLimit | None = None
    t_first: float = 0.0
    t_prompt_ms: float = 0.0

    @property
    def prompt(self) -> list[int]:
        return self.handle.prompt

    @property
    def in_prompt(self) -> bool:
        return self.n_done < len(self.prompt)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(diff[0]) if diff.size else n


class _Fault:
    """Test hook: JANLIB_ENGINE_FAULT="finish:<word>" makes finishing a request whose prompt contains
    <word> raise; "thread:<word>" kills the engine thread when such a request arrives."""

    def __init__(self, spec: str | None):
        self.where, _, self.word = (spec or "").partition(":")

    def check(self, where: str, engine: Engine, prompt: list[int]) -> None:
        if self.word and self.where == where and self.word in engine.model.detokenize(prompt):
            if where == "thread":
                raise SystemExit("injected engine fault")
            raise RuntimeError(f"injected fault while finishing a request ({where})")


class Engine:
    """Many sequences over one model. model: a Model, or a path / registry name to load.
    n_seq_max: sequences served at once; n_ctx: positions per sequence (None: the model's);
    n_batch: tokens per step (decode tokens first, then prompt chunks); max_gap_ms: while sequences
    generate, the prompt chunk beside them is sized from the timed steps (see _StepTimes) so that a step
    (the gap between two of their tokens) takes about this long (None: n_batch whatever it costs); queue_size: requests that may
    wait for a sequence beyond the idle ones (None: no limit; past it submit raises QueueFull);
    context: a ready multi-sequence context (default: model.create_context(...)); mmproj: a multimodal
    projector GGUF for a model loaded here (prompts may then be MediaPrompts with images); swa_full:
    sliding-window layers keep every position (default: only their window; see BatchContext)."""

    def __init__(self, model: Model | str | None = None, n_seq_max: int = 4, n_ctx: int | None = None,
                 n_threads: int | None = None, n_batch: int = DEFAULT_BATCH, queue_size: int | None = None,
                 kv_type: str = "f16", n_cells: int | None = None, context: Any = None,
                 max_gap_ms: float | None = DEFAULT_MAX_GAP_MS, kv_type_v: str | None = None,
                 mmproj: str | None = None, swa_full: bool = False):
        for name, value, low in (("n_seq_max", n_seq_max, 1), ("n_batch", n_batch, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if queue_size is not None and (not isinstance(queue_size, int) or queue_size < 0):
            raise ValueError(f"queue_size must be None or an int >= 0, got {queue_size!r}")
        if isinstance(model, Model) and mmproj is not None:
            raise ValueError("mmproj loads with the model: give it to Model(..., mmproj=...) for a ready Model")
        self.model = model if isinstance(model, Model) else \
            Model(model, n_ctx=n_ctx, n_threads=n_threads, kv_type=kv_type, kv_type_v=kv_type_v, mmproj=mmproj)
        if context is None:
            context = self.model.create_context(n_ctx=n_ctx or self.model.n_ctx, n_seq_max=n_seq_max,
                                                n_cells=n_cells, kv_type=kv_type, n_batch=n_batch, kv_type_v=kv_type_v,
                                                swa_full=swa_full)
        self.context = context
        self.n_seq_max = context.n_seq_max
        self.n_ctx = context.n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.max_gap_ms = max_gap_ms
        self._step_times = _StepTimes()
        self.queue_size = queue_size
        self.metrics = {"requests_total": 0, "prompt_tokens_total": 0, "predicted_tokens_total": 0,
                        "prompt_seconds_total": 0.0, "predicted_seconds_total": 0.0, "rejected_total": 0,
                        "cancelled_total": 0, "failed_total": 0, "steps_total": 0,
                        "prompt_tokens_cached_total": 0, "busy_slots_total": 0, "n_tokens_max": 0}
        self._slots = [_Slot(i) for i in range(self.n_seq_max)]
        self._waiting: deque[Handle] = deque()
        self._active: list[Handle] = []  # admitted, in admission order
        self._seqs: dict[int, list[_Sequence]] = {}  # handle id -> its sequences still running
        self._cond = threading.Condition()
        self._ids = iter(range(1, 1 << 62))
        self._accepting = True
        self._drain_deadline: float | None = None  # closing: in-flight requests end by then
        self._death: BaseException | None = None
        self._to_erase: set[int] = set()  # erased sequences whose cells the thread still has to free
        self._fault = _Fault(os.environ.get("JANLIB_ENGINE_FAULT"))
        self._thread = threading.Thread(target=self._run, name="janlib-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    @property
    def healthy(self) -> bool:
        """False once the engine thread has died (closing normally keeps it True until closed)."""
        return self._death is None and (self._thread.is_alive() or not self._accepting)

    def submit(self, request: Request) -> Handle:
        """Queue request; returns its Handle at once. Raises ValueError for a bad request, QueueFull,
        EngineClosed while shutting down, EngineDead when the engine thread has died."""
        prompt = self._check(request)
        handle = Handle(self, request, prompt, self.model.lora_scales(request.lora))
        with self._cond:
            if not self.healthy:
                raise self._dead_error()
            if not self._accepting:
                raise EngineClosed("the engine is shutting down")
            if self.queue_size is not None:
                idle = sum(1 for s in self._slots if s.seq is None)
                if sum(h.request.n for h in self._waiting) + request.n - idle > self.queue_size:
                    self.metrics["rejected_total"] += 1
                    raise QueueFull("every sequence is busy and the queue is full")
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def generate(self, prompts: Sequence[str | Sequence[int]], max_tokens: int = 256, **options) -> list[Result]:
        """Every prompt as one request (options: Request's fields), run together; the Results in order."""
        handles = [self.submit(Request(p, max_tokens=max_tokens, **options)) for p in prompts]
        try:
            return [h.result() for h in handles]
        finally:
            for h in handles:
                h.cancel()  # no-op for finished ones; frees the rest if one failed

    def status(self) -> dict:
        with self._cond:
            return {"busy": sum(1 for s in self._slots if s.seq is not None),
                    "waiting": sum(h.request.n for h in self._waiting), "healthy": self.healthy}

    def slots(self) -> list[dict]:
        """Each sequence's state, as llama.cpp's GET /slots."""
        with self._cond:
            out = []
            for s in self._slots:
                seq = s.seq
                entry = {"id": s.index, "id_task": seq.handle.id if seq else -1, "n_ctx": self.n_ctx,
                         "is_processing": seq is not None, "n_past": len(s.cached), "n_requests": s.n_requests}
                if seq is not None:
                    request = seq.handle.request
                    entry["state"] = "prompt" if seq.in_prompt else "generating"
                    entry["index"] = seq.index
                    entry["n_prompt_tokens"] = len(seq.prompt)
                    entry["n_prompt_tokens_processed"] = seq.n_done
                    entry["next_token"] = {"has_next_token": True, "n_decoded": seq.n_generated,
                                           "n_remain": request.max_tokens - seq.n_generated}
                else:
                    entry["state"] = "idle"
                out.append(entry)
            return out

    def slot_tokens(self, index: int) -> list[int]:
        """The tokens whose cells sequence index holds (what a later prompt with that prefix reuses)."""
        with self._cond:
            return list(self._slots[index].cached)

    def erase_slot(self, index: int) -> int:
        """Forget what idle sequence index holds; the number of tokens forgotten. Its cells are freed by the
        engine thread before the next step (the context is the thread's alone)."""
        with self._cond:
            slot = self._slots[index]
            if slot.seq is not None:
                raise EngineError(f"sequence {index} is busy")
            n, slot.cached = len(slot.cached), []
            self._to_erase.add(index)
            return n

    def close(self, timeout: float = 0.0) -> None:
        """Stop taking requests; let in-flight ones run for up to timeout seconds, then end those still
        generating with finish_reason "length" (and cancel those that never started); stop the thread."""
        with self._cond:
            self._accepting = False
            self._drain_deadline = time.monotonic() + max(0.0, timeout)
            self._cond.notify()
        self._thread.join()

    def _dead_error(self) -> EngineDead:
        cause = self._death
        error = EngineDead(f"the engine has stopped: {type(cause).__name__}: {cause}" if cause is not None
                           else "the engine has stopped")
        error.__cause__ = cause
        return error

    def _check(self, request: Request) -> list[int]:
        if not isinstance(request, Request):
            raise TypeError(f"submit takes a janlib.Request, got {type(request).__name__}")
        if isinstance(request.prompt, str):
            prompt = self.model.tokenize(request.prompt)
        elif isinstance(request.prompt, MediaPrompt):
            prompt = self._check_media(request)
        else:
            prompt = [int(t) for t in request.prompt]
        if not prompt:
            raise ValueError("the prompt is empty: at least one token is needed")
        if len(prompt) > self.n_ctx:
            raise ValueError(f"the prompt has {len(prompt)} tokens but a sequence holds {self.n_ctx}")
        bad = [t for t in prompt if t >= self.model.n_vocab or t < 0 and not isinstance(request.prompt, MediaPrompt)]
        if bad:
            raise ValueError(f"token {bad[0]} is outside the vocabulary [0, {self.model.n_vocab})")
        if request.prompt_logprobs is not None and (isinstance(request.prompt_logprobs, bool) or not isinstance(
                request.prompt_logprobs, int) or request.prompt_logprobs < 0):
            raise ValueError(f"prompt_logprobs must be None or an int >= 0, got {request.prompt_logprobs!r}")
        for name, value, low in (("max_tokens", request.max_tokens, 0), ("n_keep", request.n_keep, -1),
                                 ("n_indent", request.n_indent, 0), ("t_max_predict_ms", request.t_max_predict_ms, 0),
                                 ("id_slot", request.id_slot, -1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(request.n, bool) or not isinstance(request.n, int) or not 1 <= request.n <= MAX_CHOICES:
            raise ValueError(f"n must be an int in 1..{MAX_CHOICES}, got {request.n!r}")
        if request.n > self.n_seq_max:
            raise ValueError(f"n = {request.n} choices need as many sequences; this engine has {self.n_seq_max}")
        if request.id_slot >= self.n_seq_max:
            raise ValueError(f"id_slot must be -1 or a sequence id in 0..{self.n_seq_max - 1}, got {request.id_slot}")
        return prompt

    def _check_media(self, request: Request) -> list[int]:
        media = request.prompt
        if request.prompt_logprobs is not None:
            raise ValueError("prompt_logprobs cannot score a prompt with images (its image positions have no tokens)")
        n_batch = getattr(self.context, "n_batch", self.n_batch)
        for block in media.images:
            if block.non_causal and len(block.embd) > n_batch:
                raise ValueError(f"an image of {len(block.embd)} embeddings is evaluated in one batch, but n_batch is "
                                 f"{n_batch}: raise n_batch (--batch-size) to at least {len(block.embd)}")
            if block.embd.shape[1:] != (self.model.n_embd,):
                raise ValueError(f"an image block has embeddings of shape {block.embd.shape}, the model's n_embd is "
                                 f"{self.model.n_embd}")
        return list(media.tokens)

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._waiting or self._active or self._drain_deadline is not None):
                        self._cond.wait()
                    if self._drain_deadline is not None and (
                            time.monotonic() >= self._drain_deadline or not (self._waiting or self._active)):
                        self._end_all()
                        return
                    self._admit()
                    if not self._active:  # requests wait for a pinned sequence: let time pass
                        self._cond.wait(0.05)
                        continue
                self._step()
        except BaseException as error:  # noqa: B036 — whatever kills the thread must fail every request
            log.exception("the engine thread died")
            self._death = error
            with self._cond:
                for handle in list(self._waiting) + list(self._active):
                    handle._put(Event("error", error=self._dead_error()))
                self._waiting.clear()
                self._active.clear()

    def _end_all(self) -> None:
        """Shutdown: generating sequences end with "length"; requests not started are cancelled."""
        for handle in list(self._active):
            for seq in list(self._seqs.get(handle.id, ())):
                if seq.in_prompt or seq.leader is not None and seq.leader.in_prompt:
                    self._cancel(handle)
                    break
                self._guarded(handle, self._finish, seq, "length")
        for handle in self._waiting:
            handle._put(Event("cancelled"))
        self._waiting.clear()

    def _guarded(self, handle: Handle, fn: Callable, *args) -> bool:
        """Run fn for one request; an exception fails that request only. False when it failed."""
        try:
            fn(*args)
            return True
        except Exception as error:
            self._fail(handle, error)
            return False

    def _fail(self, handle: Handle, error: Exception) -> None:
        log.error("request %d failed", handle.id, exc_info=error)
        self.metrics["failed_total"] += 1
        for seq in self._seqs.pop(handle.id, ()):
            self._forget(seq.slot)  # its cells may hold half-evaluated state
            self._release(seq)
        if handle in self._active:
            self._active.remove(handle)
        if handle in self._waiting:
            self._waiting.remove(handle)
        failure = error if isinstance(error, (ValueError, EngineError)) else RequestFailed(f"{type(error).__name__}: {error}")
        if failure is not error:
            failure.__cause__ = error
        handle._put(Event("error", error=failure))

    def _cancel(self, handle: Handle) -> None:
        self.metrics["cancelled_total"] += 1
        for seq in self._seqs.pop(handle.id, ()):
            self._release(seq)
        if handle in self._active:
            self._active.remove(handle)
        handle._put(Event("cancelled"))

    def _release(self, seq: _Sequence) -> None:
        with self._cond:
            seq.slot.seq = None
            seq.slot.last_used = time.monotonic()
            self._cond.notify()

    def _forget(self, slot: _Slot) -> None:
        self.context.seq_rm(slot.index, 0, -1)
        slot.cached = []

    # admission: waiting requests (in order) get sequences ---------------------------
    def _admit(self) -> None:
        for index in self._to_erase:
            if not self._slots[index].cached:  # not refilled since
                self.context.seq_rm(index, 0, -1)
        self._to_erase.clear()
        for handle in list(self._waiting):
            if handle.cancelled():
                self._waiting.remove(handle)
                self.metrics["cancelled_total"] += 1
                handle._put(Event("cancelled"))
                continue
            slots = self._choose_slots(handle)
            if slots is None:
                if handle.request.id_slot >= 0:
                    continue  # its pinned sequence is busy: later requests may still fit
                return  # first come, first served
            self._fault.check("thread", self, handle.prompt)
            self._waiting.remove(handle)
            if self._guarded(handle, self._start, handle, slots):
                self._active.append(handle)

    def _choose_slots(self, handle: Handle) -> list[_Slot] | None:
        request, prompt = handle.request, handle.prompt
        free = [s for s in self._slots if s.seq is None]
        if len(free) < request.n:
            return None
        if request.id_slot >= 0:
            first = self._slots[request.id_slot]
            if first.seq is not None:
                return None
        else:
            first = max(free, key=lambda s: (self._slot_value(s, handle), -s.last_used))
        # further choices overwrite their cells: take those whose cache is least useful
        rest = sorted((s for s in free if s is not first), key=lambda s: (len(s.cached) > 0, s.last_used))
        return [first] + rest[:request.n - 1]

    def _start(self, handle: Handle, slots: list[_Slot]) -> None:
        request, prompt = handle.request, handle.prompt
        model = self.model
        constraint = request.constraint if request.constraint is not None else \
            model._constraint(request.grammar, request.json_schema, None)
        keep = None
        if request.context_shift and handle.media is None:  # no shift across images, as llama-server
            keep = len(prompt) if request.n_keep == -1 else request.n_keep
            if request.n_keep != -1 and prompt[0] == model.tokenizer.bos_id:
                keep += 1  # the BOS token is never shifted out (llama.cpp adds it to n_keep)
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        params = request.sampling or GREEDY
        seqs = []
        for i, slot in enumerate(slots):
            choice_params = params
            if i and params.seed != -1:
                choice_params = dataclasses.replace(params, seed=(params.seed + i) % (1 << 64))
            sampler = model.sampler(choice_params, request.ignore_eos)
            sampler.accept_prompt(handle.media.text_tokens if handle.media is not None else prompt)
            choice_constraint = constraint
            if i and constraint is not None:
                choice_constraint = constraint.copy()
            seq = _Sequence(handle, i, slot, sampler, choice_constraint, keep,
                            decoder=model.tokenizer.decoder(), stops=StopStringFilter(stops),
                            indent=IndentLimit(request.n_indent))
            seq.leader = seqs[0] if i else None
            seqs.append(seq)
        leader = seqs[0]
        self._reuse_prefix(leader, request.cache_prompt and request.prompt_logprobs is None)
        self.metrics["requests_total"] += 1
        for seq in seqs:
            seq.slot.seq = seq
            seq.slot.n_requests += 1
        self._seqs[handle.id] = seqs
        handle.t_start = time.perf_counter()
        self._progress(leader, handle.t_start)  # 0% (only the reused prefix): the prompt's work has started

    def _slot_value(self, slot: _Slot, handle: Handle) -> int:
        """How good a home slot is for handle: the prefix it reuses in place less the cells it overwrites.
        A prefix can be copied from any sequence (_reuse_prefix), so a slot that shares only a short one
        (a system prompt, the text before an image) is worth less than an empty one: taking it would
        throw away another conversation's cache for nothing."""
        reuse = self._reusable(slot, handle) if handle.request.cache_prompt else 0
        return reuse - (len(slot.cached) - reuse)

    def _reusable(self, slot: _Slot, handle: Handle) -> int:
        """The prompt tokens slot's cells hold for handle, short of the last one (always evaluated, for
        its logits): none when computed under other adapter scales, or when the slot's sliding-window
        layers gave back that prefix's window (the prompt is then recomputed)."""
        if slot.lora_scales != handle.lora_scales:
            return 0
        n = min(_common_prefix(slot.cached, handle.prompt), len(handle.prompt) - 1)
        return n if n >= self.context.seq_pos_min(slot.index)[1] else 0

    def _reuse_prefix(self, seq: _Sequence, cache_prompt: bool) -> None:
        """Keep the slot's cells that match the prompt, or copy a longer computed prefix from another
        sequence; the last prompt token is always evaluated, for its logits."""
        slot, prompt = seq.slot, seq.prompt
        reuse = self._reusable(slot, seq.handle) if cache_prompt else 0
        source = None
        if cache_prompt:
            source, reuse = self._longer_prefix(seq, reuse)
        if source is not None:
            self._copy_prefix(source, slot, reuse)
        else:
            self.context.seq_rm(slot.index, reuse, -1)
        slot.cached = list(prompt[:reuse])
        slot.lora_scales = seq.handle.lora_scales
        seq.n_done = seq.n_cached = reuse

    # one step -----------------------------------------------------------------
    def _step(self) -> None:
        for handle in list(self._active):
            if handle.cancelled():
                self._cancel(handle)
        entries = self._plan()
        if not entries:
            return
        attended = _attended(entries)
        t0 = time.perf_counter()
        logits = self._decode(entries)
        if logits is None:
            return
        self._step_times.add(sum(len(tokens) for _, tokens in entries), attended, time.perf_counter() - t0)
        self.metrics["steps_total"] += 1
        self.metrics["busy_slots_total"] += len({seq.slot.index for seq, _ in entries})
        self.metrics["n_tokens_max"] = max(self.metrics["n_tokens_max"], sum(len(t) for _, t in entries))
        row = 0
        now = time.perf_counter()
        for seq, tokens in entries:
            if seq.handle.id not in self._seqs:  # failed earlier in this step (a sibling choice)
                row += self._wants_logits(seq, tokens)
                continue
            seq.slot.cached.extend(tokens)
            if seq.in_prompt:
                n_rows = self._wants_logits(seq, tokens)
                if seq.handle.request.prompt_logprobs is not None:
                    self._guarded(seq.handle, self._prompt_logprobs, seq, logits[row:row + n_rows])
                seq.n_done += len(tokens)
                done = not seq.in_prompt
                self._guarded(seq.handle, self._progress, seq, now)
                if done:
                    self._guarded(seq.handle, self._prompt_done, seq, logits[row + n_rows - 1], now)
                row += n_rows
            else:
                self._guarded(seq.handle, self._after_token, seq, logits[row])
                row += 1

    @staticmethod
    def _wants_logits(seq: _Sequence, tokens: list[int]) -> int:
        """The logits rows this entry needs (its last ones): every prompt row for prompt_logprobs, else
        one for a generated token or a prompt's last chunk."""
        if seq.in_prompt and seq.handle.request.prompt_logprobs is not None:
            return len(tokens)
        return 1 if not seq.in_prompt or seq.n_done + len(tokens) == len(seq.prompt) else 0

    def _plan(self) -> list[tuple[_Sequence, list[int]]]:
        """This step's batch: every generating sequence's pending token, then prompt chunks (oldest
        request first) while the budget lasts."""
        entries: list[tuple[_Sequence, list[int]]] = []
        budget = self.n_batch
        prompts = []
        for handle in list(self._active):
            for seq in list(self._seqs.get(handle.id, ())):
                if seq.leader is not None and seq.leader.in_prompt:
                    continue
                if seq.in_prompt:
                    prompts.append(seq)
                elif seq.pending is not None and self._guarded(handle, self._make_room, seq):
                    if seq.pending is not None:
                        entries.append((seq, seq.refill + [seq.pending]))
                        budget -= 1 + len(seq.refill)
                        seq.refill = []
        if entries and prompts and self.max_gap_ms:  # keep the generating sequences' gaps short
            fits = self._step_times.max_chunk(sum(len(t) for _, t in entries), _attended(entries),
                                              len(prompts[0].slot.cached), self.max_gap_ms / 1000)
            if fits is not None:
                budget = min(budget, max(fits, MIN_CHUNK))
        budget = max(budget, 1)  # a prompt always advances, so a full batch of streams cannot starve it
        for i, seq in enumerate(prompts):
            if budget <= 0:
                break
            if self._share_prefix(seq, prompts[:i]):
                continue
            end = seq.n_done + budget
            block = seq.handle.media.block_at(end) if seq.handle.media is not None else None
            if block is not None:  # a non-causal image goes whole: wait for it, or take it past the budget
                end = block.start if block.start > seq.n_done else block.stop
            chunk = seq.prompt[seq.n_done:end]
            entries.append((seq, chunk))
            budget -= len(chunk)
        return entries

    def _longer_prefix(self, seq: _Sequence, floor: int) -> tuple[_Slot | None, int]:
        """The other slot whose cells hold the longest reusable prefix of seq's prompt, longer than floor
        tokens, and its length; (None, floor) when none does."""
        source, best = None, floor
        for slot in self._slots:
            if slot is not seq.slot:
                n = self._reusable(slot, seq.handle)
                if n > best:
                    source, best = slot, n
        return source, best

    def _copy_prefix(self, source: _Slot, slot: _Slot, n: int) -> None:
        """slot's cells replaced by source's first n positions."""
        self.context.seq_rm(slot.index, 0, -1)
        self.context.seq_cp(source.index, slot.index, 0, n)

    def _share_prefix(self, seq: _Sequence, earlier: list[_Sequence]) -> bool:
        """Equal prompts are evaluated once: copy a longer prefix another sequence has computed since
        seq was admitted, and wait (True) while an earlier prompt is still computing more of it."""
        if not seq.handle.request.cache_prompt or seq.handle.request.prompt_logprobs is not None:
            return False
        limit = len(seq.prompt) - 1
        source, best = self._longer_prefix(seq, seq.n_done)
        if source is not None:
            self._copy_prefix(source, seq.slot, best)
            seq.slot.cached = list(seq.prompt[:best])
            seq.n_done = seq.n_cached = best
        return any(min(_common_prefix(other.prompt, seq.prompt), limit) > seq.n_done for other in earlier
                   if other.handle.lora_scales == seq.handle.lora_scales)

    def _make_room(self, seq: _Sequence) -> None:
        """Before a generated token is evaluated: the time limit, then a full context (shift or end)."""
        request = seq.handle.request
        if request.t_max_predict_ms and (time.perf_counter() - seq.t_first) * 1000 > request.t_max_predict_ms:
            seq.timed_out = True
            self._finish(seq, "length")
            return
        slot = seq.slot
        if len(slot.cached) < self.n_ctx:
            return
        keep = min(seq.keep, len(slot.cached)) if seq.keep is not None else 0
        n_discard = (len(slot.cached) - keep) // 2
        if seq.keep is None or n_discard <= 0:
            self._finish(seq, "length")
            return
        if self.context.seq_can_shift(slot.index, keep, n_discard):
            self.context.seq_shift(slot.index, keep, n_discard)
            del slot.cached[keep:keep + n_discard]
        else:  # sliding-window layers gave back kept positions the new window sees: evaluate them again
            seq.refill = slot.cached[:keep] + slot.cached[keep + n_discard:]
            self._forget(slot)
        seq.truncated = True

    def _decode(self, entries: list[tuple[_Sequence, list[int]]]) -> np.ndarray | None:
        tokens, positions, seq_ids, want = [], [], [], []
        embd, labels, label = [], [], 0  # image rows' embeddings; non-causal block labels, unique in the batch
        for seq, chunk in entries:
            n0 = len(seq.slot.cached)
            media = seq.handle.media if seq.in_prompt else None
            if media is not None:
                ids, rows, blocks, label = media.rows(n0, n0 + len(chunk), label)
                tokens.extend(ids)
                if rows is not None:
                    embd.append(rows)
                labels.append(blocks if blocks is not None else np.zeros(len(chunk), np.int32))
            else:
                tokens.extend(chunk)
                labels.append(np.zeros(len(chunk), np.int32))
            positions.extend(range(n0, n0 + len(chunk)))
            seq_ids.extend([seq.slot.index] * len(chunk))
            n_rows = self._wants_logits(seq, chunk)
            want.extend([False] * (len(chunk) - n_rows) + [True] * n_rows)
        arrays = (np.array(tokens, np.int32), np.array(positions, np.int64), np.array(seq_ids, np.int32),
                  np.array(want, np.bool_))
        media_rows = {}
        if embd:
            media_rows["embd"] = np.concatenate(embd)
        if label:
            media_rows["non_causal_blocks"] = np.concatenate(labels)
        lora = {}
        if self.model.adapters:  # each row takes its request's scales
            lora = {"adapters": tuple(self.model.adapters), "adapter_scales": np.repeat(
                np.array([seq.handle.lora_scales for seq, _ in entries], np.float32),
                [len(chunk) for _, chunk in entries], axis=0)}
        while True:
            try:
                return self.context.decode(*arrays, n_threads=self.n_threads, **lora, **media_rows)
            except KVCacheFull:
                if self._evict_idle():
                    continue
                error = KVCacheFull("the KV cache is full: no idle sequence's cells are left to free")
                log.error("%s", error)
            except Exception as exc:
                log.exception("decode failed")
                error = exc
            # the batch cannot run: fail every request in it (the cells are unchanged)
            for handle in {seq.handle for seq, _ in entries}:
                if handle.id in self._seqs:
                    self._fail(handle, error)
            return None

    def _evict_idle(self) -> bool:
        """Free the least recently used idle sequence's cached cells; False when none holds any."""
        idle = [s for s in self._slots if s.seq is None and s.cached]
        if not idle:
            return False
        self._forget(min(idle, key=lambda s: s.last_used))
        return True

    # per-sequence outcomes -------------------------------------------------------
    def _progress(self, seq: _Sequence, now: float) -> None:
        seq.handle._put(Event("progress", info={"total": len(seq.prompt), "cache": seq.n_cached,
                                                "processed": seq.n_done,
                                                "time_ms": (now - seq.handle.t_start) * 1000}))

    def _prompt_logprobs(self, seq: _Sequence, rows: np.ndarray) -> None:
        """A prompt chunk's rows (n, n_vocab) as the log-probabilities of the prompt tokens they precede
        (row j follows position n_done + j) and the top k alternatives of each."""
        first = seq.n_done + 1
        targets = np.asarray(seq.prompt[first:first + len(rows)], np.int64)  # the last prompt row scores no prompt token
        rows = rows[:len(targets)]
        peak = rows.max(axis=1, keepdims=True)
        log_z = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))  # (n,)
        k = min(seq.handle.request.prompt_logprobs, rows.shape[1])
        top = np.argpartition(-rows, k - 1, axis=1)[:, :k] if k else np.zeros((len(rows), 0), np.int64)
        top_values = np.take_along_axis(rows, top, axis=1)
        order = np.argsort(-top_values, axis=1, kind="stable")
        seq.handle._put(Event("prompt_logprobs", seq.index, info={
            "first": first, "tokens": targets.tolist(),
            "logprobs": (rows[np.arange(len(targets)), targets] - log_z).tolist(),
            "top_ids": np.take_along_axis(top, order, axis=1).tolist(),
            "top_logprobs": (np.take_along_axis(top_values, order, axis=1) - log_z[:, None]).tolist()}))

    def _prompt_done(self, seq: _Sequence, logits: np.ndarray, now: float) -> None:
        handle = seq.handle
        seq.t_first = now
        seq.t_prompt_ms = (now - handle.t_start) * 1000
        self.metrics["prompt_tokens_total"] += len(seq.prompt) - seq.n_cached
        self.metrics["prompt_tokens_cached_total"] += seq.n_cached
        self.metrics["prompt_seconds_total"] += seq.t_prompt_ms / 1000
        handle._put(Event("start", info={"slot": seq.slot.index, "n_prompt": len(seq.prompt),
                                         "n_cached": seq.n_cached, "prompt_ms": seq.t_prompt_ms}))
        choices = list(self._seqs[handle.id])
        for other in choices[1:]:  # further choices share the evaluated prompt's cells
            self.context.seq_rm(other.slot.index, 0, -1)
            self.context.seq_cp(seq.slot.index, other.slot.index, 0, len(seq.prompt))
            other.slot.cached = list(seq.prompt)
            other.n_done, other.n_cached = len(seq.prompt), len(seq.prompt)
            other.t_first, other.t_prompt_ms = now, seq.t_prompt_ms
        for choice in choices:
            if handle.request.max_tokens == 0:
                self._finish(choice, "length")
            else:
                self._after_token(choice, logits)

    def _after_token(self, seq: _Sequence, logits: np.ndarray) -> None:
        """Draw the next token of seq from its logits row and release what it completes."""
        seq.pending = None
        sampler, constraint = seq.sampler, seq.constraint
        token = sampler.sample(logits, constraint)
        if token in self.model.eos_token_ids:
            self._finish(seq, "stop")
            return
        probs = sampler.last_probs() if sampler.params.n_probs > 0 else None
        text = seq.indent.feed(seq.stops.feed(seq.decoder.feed(token)))
        seq.n_generated += 1
        self.metrics["predicted_tokens_total"] += 1
        seq.handle._put(Event("token", seq.index, GeneratedToken(token, text, probs)))
        if seq.stops.stopped or seq.indent.stopped:
            self._finish(seq, "stop" if seq.stops.stopped else "length")
        elif constraint is not None and constraint.is_stopped():
            self._finish(seq, "stop")  # the grammar is complete: nothing more can follow
        elif seq.n_generated >= seq.handle.request.max_tokens:
            self._finish(seq, "length")
        else:
            seq.pending = token

    def _finish(self, seq: _Sequence, reason: str) -> None:
        handle = seq.handle
        self._fault.check("finish", self, seq.prompt)
        if not (seq.stops.stopped or seq.indent.stopped):  # the text still held back
            tail = seq.indent.feed(seq.stops.feed(seq.decoder.flush()) + seq.stops.flush()) + seq.indent.flush()
            if tail:
                handle._put(Event("token", seq.index, GeneratedToken(None, tail)))
        seq.pending = None
        now = time.perf_counter()
        self.metrics["predicted_seconds_total"] += now - seq.t_first
        n_gen = seq.n_generated
        info = {"finish_reason": reason, "n_predicted": n_gen, "prompt_ms": seq.t_prompt_ms,
                "predicted_ms": (now - seq.t_first) * 1000, "slot": seq.slot.index, "timed_out": seq.timed_out,
                "truncated": seq.truncated, "stop_word": seq.stops.matched,
                "context_full": seq.truncated or (reason == "length" and len(seq.prompt) + n_gen >= self.n_ctx)}
        running = self._seqs.get(handle.id, [])
        if seq in running:
            running.remove(seq)
        if not running:
            self._seqs.pop(handle.id, None)
            if handle in self._active:
                self._active.remove(handle)
        self._release(seq)
        handle._put(Event("done", seq.index, info=info))

