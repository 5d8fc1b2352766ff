"""The engine: one thread that owns the slots (one Model, so one KV cache, each) and runs every
generation; request threads hand it a Job and read the Job's events back.

Active slots are stepped round-robin one token at a time, so several requests make progress at
once and a cancelled one (client gone) stops within a token. Requests beyond the free slots wait
in a bounded queue; submit raises QueueFull past it."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

log = logging.getLogger("janlib.server")


class QueueFull(Exception):
    pass


@dataclass
class Job:
    ids: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    sampling: Any = None  # janlib.sampling.SamplingParams once that module exists
    id_slot: int = -1
    cache_prompt: bool = True
    t_max_predict_ms: int = 0
    context_shift: bool = True  # a full context drops half of what follows n_keep, then goes on
    n_keep: int = 0
    n_indent: int = 0
    constraint: Any = None  # janlib.structured.Constraint: grammar, json_schema or response_format
    disconnected: Callable[[], bool] | None = None  # the server's client-gone probe
    events: queue.Queue = field(default_factory=queue.Queue)
    _cancel: threading.Event = field(default_factory=threading.Event)
    slot: int | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        if self._cancel.is_set():
            return True
        if self.disconnected is not None:
            try:
                if self.disconnected():
                    self._cancel.set()
                    return True
            except Exception:  # a probe that fails must not take the engine down
                return False
        return False

    def results(self) -> Iterator[tuple[str, Any]]:
        """("start", info), ("token", GeneratedToken)..., then ("done", info) | ("error", exc) | ("cancelled", None)."""
        while True:
            kind, payload = self.events.get()
            yield kind, payload
            if kind in ("done", "error", "cancelled"):
                return


@dataclass
class Slot:
    index: int
    model: Any
    job: Job | None = None
    generation: Any = None
    tokens: list[int] = field(default_factory=list)  # what its cache holds, for choosing slots
    generated: list[int] = field(default_factory=list)
    t_start: float = 0.0
    t_first: float = 0.0
    t_prompt_ms: float = 0.0
    last_used: float = 0.0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Engine:
    def __init__(self, models: list, queue_size: int = 16):
        if not models:
            raise ValueError("at least one slot is needed")
        self.slots = [Slot(i, m) for i, m in enumerate(models)]
        self.model = models[0]  # tokenizer, template and metadata are the same in every slot
        self.queue_size = queue_size
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.metrics = {"requests_total": 0, "prompt_tokens_total": 0, "predicted_tokens_total": 0,
                        "prompt_seconds_total": 0.0, "predicted_seconds_total": 0.0, "rejected_total": 0,
                        "cancelled_total": 0}
        self._thread = threading.Thread(target=self._run, name="janlib-engine", daemon=True)
        self._thread.start()

    # request-thread side -------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            idle = sum(1 for s in self.slots if s.job is None)
            if len(self._waiting) - idle >= self.queue_size:
                self.metrics["rejected_total"] += 1
                raise QueueFull
            self._waiting.append(job)
            self._cond.notify()

    def status(self) -> dict:
        with self._cond:
            return {"busy": sum(1 for s in self.slots if s.job is not None), "waiting": len(self._waiting),
                    "slots": [{"id": s.index, "is_processing": s.job is not None, "n_cached": len(s.tokens)}
                              for s in self.slots]}

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)

    # engine-thread side --------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._assign()
                while not self._stopping and not any(s.job for s in self.slots):
                    self._cond.wait()
                    self._assign()
                if self._stopping:
                    for job in self._waiting:
                        job.events.put(("cancelled", None))
                    return
                active = [s for s in self.slots if s.job is not None]
            for slot in active:
                try:
                    self._step(slot)
                except Exception as error:  # the request fails, the engine keeps serving
                    log.exception("generation failed")
                    self._finish(slot, "error", error)

    def _assign(self) -> None:
        """Give waiting jobs (in order) their slots: a pinned one, else the idle slot sharing the
        longest prefix with the prompt (ties: least recently used)."""
        for job in list(self._waiting):
            if job.cancelled():
                self._waiting.remove(job)
                self.metrics["cancelled_total"] += 1
                job.events.put(("cancelled", None))
                continue
            idle = [s for s in self.slots if s.job is None]
            if not idle:
                return
            if job.id_slot >= 0:
                choice = next((s for s in idle if s.index == job.id_slot), None)
                if choice is None:
                    continue
            else:
                choice = max(idle, key=lambda s: (_common_prefix(s.tokens, job.ids) if job.cache_prompt else 0,
                                                  -s.last_used))
            self._waiting.remove(job)
            job.slot = choice.index
            choice.job = job
            choice.generation = None

    def _step(self, slot: Slot) -> None:
        job = slot.job
        if job.cancelled():
            self.metrics["cancelled_total"] += 1
            self._finish(slot, "cancelled", None)
            return
        if slot.generation is None:
            self._start(slot)
            return
        if job.t_max_predict_ms and (time.perf_counter() - slot.t_first) * 1000 > job.t_max_predict_ms:
            self._finish(slot, "done", self._done_info(slot, "length", timed_out=True))
            return
        try:
            token = next(slot.generation)
        except StopIteration:
            reason = slot.generation.finish_reason or "length"
            self._finish(slot, "done", self._done_info(slot, reason))
            return
        if token.id is not None:
            slot.generated.append(token.id)
            self.metrics["predicted_tokens_total"] += 1
        job.events.put(("token", token))

    def _start(self, slot: Slot) -> None:
        job, model = slot.job, slot.model
        self.metrics["requests_total"] += 1
        if not job.cache_prompt:
            model.reset()
            slot.tokens = []
        slot.generated = []
        slot.t_start = time.perf_counter()
        slot.generation = model.generate(job.ids, max_tokens=job.max_tokens, stop=job.stop,  # evaluates the prompt
                                         ignore_eos=job.ignore_eos, sampling=job.sampling,
                                         context_shift=job.context_shift, n_keep=job.n_keep,
                                         n_indent=job.n_indent, constraint=job.constraint)
        slot.t_first = time.perf_counter()
        slot.t_prompt_ms = (slot.t_first - slot.t_start) * 1000
        n_cached = int(getattr(slot.generation, "n_cached_tokens", 0))
        self.metrics["prompt_tokens_total"] += len(job.ids) - n_cached
        self.metrics["prompt_seconds_total"] += slot.t_prompt_ms / 1000
        job.events.put(("start", {"slot": slot.index, "n_prompt": len(job.ids), "n_cached": n_cached,
                                  "prompt_ms": slot.t_prompt_ms}))

    def _done_info(self, slot: Slot, reason: str, timed_out: bool = False) -> dict:
        now = time.perf_counter()
        n_ctx = slot.model.n_ctx
        n_gen = len(slot.generated)
        return {"finish_reason": reason, "n_predicted": n_gen, "prompt_ms": slot.t_prompt_ms,
                "predicted_ms": (now - slot.t_first) * 1000, "slot": slot.index, "timed_out": timed_out,
                "context_full": slot.generation is not None and slot.generation.truncated
                or (reason == "length" and len(slot.job.ids) + n_gen >= n_ctx)}

    def _finish(self, slot: Slot, kind: str, payload: Any) -> None:
        job = slot.job
        if slot.generation is not None:
            close = getattr(slot.generation, "close", None) or getattr(getattr(slot.generation, "_tokens", None),
                                                                       "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass
            self.metrics["predicted_seconds_total"] += (time.perf_counter() - slot.t_first)
        slot.tokens = list(slot.model.cached_tokens)
        slot.generation = None
        slot.last_used = time.monotonic()
        with self._cond:
            slot.job = None
            self._cond.notify()
        job.events.put((kind, payload))
