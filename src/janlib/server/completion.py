"""Shared by /v1/chat/completions and /v1/completions: request → janlib.Request, its Handle → response or SSE stream."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import uuid
from typing import Any, Callable, Iterator

import numpy as np
from flask import Response, request

from . import schema, sse, streams
from .errors import APIError, context_length_exceeded, invalid
from .state import ServerState

from janlib.engine import EngineClosed, EngineDead, Event, Handle, QueueFull, Request
from janlib.sampling import SamplingParams, SamplingParamsError
from janlib.structured import Constraint, GrammarError

RETRY_AFTER_S = 1
FINGERPRINT_PREFIX = "janlib"


def system_fingerprint(st: ServerState) -> str:
    from janlib import __version__
    return f"{FINGERPRINT_PREFIX}-{__version__}-{st.engine.n_ctx}"


ANTHROPIC_PATH = "/v1/messages"


def check_model_name(st: ServerState, body: dict) -> None:
    """The served model answers a request that names no model (absent or null) and, as in llama-server, one
    naming any model: clients and the apps that host a llama-server send names of their own (answers carry
    the served model's id). With --strict-model-name another name is a 404, OpenAI's answer, except on
    Anthropic's /v1/messages: its clients (Claude Code) send Anthropic's model names, which a one-model
    server can only answer with its model."""
    if body.get("model") is None:
        return
    name = schema.require_model(body)
    if request.path.startswith(ANTHROPIC_PATH):
        return
    check_served(st, name)


def check_served(st: ServerState, name: str, strict: bool | None = None) -> None:
    """404 for a name the server does not serve, when strict (default: with --strict-model-name)."""
    strict = st.config.strict_model_name if strict is None else strict
    if strict and not st.accepts_model(name):
        raise APIError(404, f"the model '{name}' does not exist: this server serves '{st.model_id}'",
                       param="model", code="model_not_found")


def build_sampling(fields: dict, n_vocab: int):
    bias = schema.check_logit_bias(fields["logit_bias"], n_vocab)
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    values = {k: v for k, v in fields.items() if k in names and not k.startswith("_")}
    # JSON keys as they came; true (no change, as llama.cpp) left out
    values["logit_bias"] = {k: v for k, v in (fields["logit_bias"] or {}).items() if v is not True}
    try:
        params = SamplingParams(**values)
        params.validate(n_vocab)
    except SamplingParamsError as error:
        field = getattr(error, "field", None)
        raise invalid(f"'{field}': {error}" if field and not str(error).startswith(field) else str(error),
                      field) from None
    return params, bias


def build_constraint(st: ServerState, fields: dict) -> Constraint | None:
    """The request's grammar, json_schema or response_format compiled for the model (at most one)."""
    try:
        if fields["grammar"]:
            return Constraint.from_gbnf(fields["grammar"], st.model)
        if fields["json_schema"] is not None:
            return Constraint.from_json_schema(fields["json_schema"], st.model)
        if fields["response_format"] is not None:
            return Constraint.from_response_format(fields["response_format"], st.model)
    except GrammarError as error:
        raise invalid(str(error), error.field) from None
    return None


def apply_server_defaults(st: ServerState, fields: dict) -> None:
    """The server's request defaults (--seed, --temp, POST /props) for the fields the request left out."""
    for name, value in st.defaults.items():
        if name not in fields["_given"]:
            fields[name] = value


def check_request_options(st: ServerState, fields: dict) -> None:
    apply_server_defaults(st, fields)
    if fields.get("lora"):
        try:
            st.model.lora_scales(fields["lora"])
        except ValueError as error:
            raise invalid(str(error), "lora") from None
    n_vocab = st.model.n_vocab
    n_seq = st.engine.n_seq_max
    if fields["id_slot"] >= n_seq:
        raise invalid(f"'id_slot' must be -1 or a slot id in 0..{n_seq - 1}, got {fields['id_slot']}", "id_slot")
    if fields["n"] > n_seq:
        raise invalid(f"'n' = {fields['n']} choices need as many slots; this server runs {n_seq} (--parallel)", "n")
    if fields["n_probs"] > n_vocab:
        raise invalid(f"'n_probs' must be at most the vocabulary size {n_vocab}", "n_probs")


def make_request(st: ServerState, ids: list[int], fields: dict,
                 prompt_logprobs: int | None = None) -> tuple[Request, int]:
    n_ctx = st.engine.n_ctx
    if not ids:
        raise invalid("the prompt is empty: at least one token is needed", "messages" if "messages" in
                      request.path else "prompt")
    if len(ids) >= n_ctx:
        raise context_length_exceeded(len(ids), n_ctx,
                                      "messages" if request.path.endswith("chat/completions") else "prompt")
    sampling, _bias = build_sampling(fields, st.model.n_vocab)
    if wants_probs(fields):  # the sampler reports the top max(top_logprobs, n_probs, 1) of each draw
        sampling = dataclasses.replace(sampling, n_probs=max(n_top_probs(fields), 1))
    constraint = build_constraint(st, fields)
    limit, _source = schema.effective_max_tokens(fields)
    room = n_ctx - len(ids)
    max_tokens = room if limit == -1 else limit
    cap = st.config.n_predict
    if cap >= 0:
        max_tokens = min(max_tokens, cap)
    # a resumable stream generates on when its client goes (server/streams.py)
    resumable = fields["stream"] and streams.requested()
    probe = None if resumable else request.environ.get("waitress.client_disconnected")
    job = Request(ids, max_tokens=max_tokens, stop=fields["stop"], ignore_eos=fields["ignore_eos"],
                  sampling=sampling, n=fields["n"], id_slot=fields["id_slot"], cache_prompt=fields["cache_prompt"],
                  t_max_predict_ms=fields["t_max_predict_ms"], context_shift=st.config.context_shift,
                  n_keep=fields["n_keep"], n_indent=fields["n_indent"], constraint=constraint, disconnected=probe,
                  prompt_logprobs=prompt_logprobs, lora=fields.get("lora"))
    return job, max_tokens


def submit(st: ServerState, job: Request) -> Handle:
    try:
        return st.engine.submit(job)
    except QueueFull:
        raise APIError(503, "the server is busy: every slot is in use and the queue is full; retry shortly",
                       code="server_busy", type="server_error", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except EngineClosed:
        raise shutting_down() from None
    except EngineDead as error:
        raise engine_dead(error) from None
    except ValueError as error:
        raise invalid(str(error), None) from None


def submit_all(st: ServerState, jobs: list[Request]) -> list[Handle]:
    """Submit several requests (the engine runs them side by side); if one is refused, none runs."""
    handles: list[Handle] = []
    try:
        for job in jobs:
            handles.append(submit(st, job))
    except APIError:
        for handle in handles:
            handle.cancel()
        raise
    return handles


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", code="shutting_down", type="server_error",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def engine_dead(error: Exception) -> APIError:
    return APIError(503, f"the inference engine has stopped and cannot serve requests: {error}",
                    code="engine_unavailable", type="server_error")


def generation_settings(st: ServerState, fields: dict, max_tokens: int) -> dict:
    out = {k: v for k, v in fields.items() if not k.startswith("_") and k not in ("stream_options",)}
    out["logit_bias"] = settings_logit_bias(st, fields)
    out["n_predict"] = max_tokens
    out["model"] = st.model_id
    out["n_ctx"] = st.model.n_ctx
    return out


def settings_logit_bias(st: ServerState, fields: dict) -> list[dict]:
    """The biases the sampler applies, as llama.cpp lists them: [{"bias", "token"}], a ban (-inf) as null, and
    with ignore_eos every end-of-generation token banned."""
    bias = schema.check_logit_bias(fields["logit_bias"], st.model.n_vocab)
    if fields["ignore_eos"]:
        bias.update(dict.fromkeys(sorted(st.model.eos_token_ids), -math.inf))
    return [{"bias": None if math.isinf(value) else value, "token": token} for token, value in bias.items()]


def timings(start: dict | None, done: dict | None, n_predicted: int) -> dict:
    prompt_ms = (start or {}).get("prompt_ms", 0.0)
    cache_n = (start or {}).get("n_cached", 0)
    prompt_n = (start or {}).get("n_prompt", 0) - cache_n
    predicted_ms = (done or {}).get("predicted_ms", 0.0)
    steps = n_predicted - 1  # the first token comes from the prompt's last logits: no decode step of its own
    return {
        "cache_n": cache_n, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n * 1000 / prompt_ms if prompt_ms else 0.0,
        "predicted_n": n_predicted, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / steps if steps > 0 else 0.0,
        "predicted_per_second": steps * 1000 / predicted_ms if steps > 0 and predicted_ms else 0.0,
    }


def raise_for(event: Event) -> None:
    """An error or cancelled event as the HTTP error it means."""
    if event.kind == "error":
        error = event.error
        if isinstance(error, EngineDead):
            raise engine_dead(error)
        if isinstance(error, ValueError):
            raise invalid(str(error), None)
        raise APIError(500, f"generation failed: {error}", code="internal_error", type="server_error")
    if event.kind == "cancelled":  # a reader still there sees this only when shutdown came first
        raise shutting_down()


# Per-token probabilities (logprobs: true, top_logprobs, and llama.cpp's n_probs), in llama.cpp's
# OpenAI-compatible shape: choice.logprobs = {"content": [entry per generated token]}, an entry being
# {id, token, bytes, logprob, top_logprobs: [{id, token, bytes, logprob}...]}; with post_sampling_probs
# the entries carry prob / top_probs (probabilities after the sampler chain) instead, as llama.cpp does.

# log(0) is -inf, which JSON cannot carry: such a logprob is reported as this floor instead (OpenAI's
# own "practically impossible" value; far below any float32 probability's log, which is > -104).
LOGPROB_FLOOR = -9999.0


def wants_probs(fields: dict) -> bool:
    return bool(fields["logprobs"]) or fields["n_probs"] > 0


def n_top_probs(fields: dict) -> int:
    """How many alternatives each entry lists: top_logprobs (absent: 0, as OpenAI) or n_probs, the larger."""
    return max((fields["top_logprobs"] or 0) if fields["logprobs"] else 0, fields["n_probs"])


@functools.lru_cache(maxsize=1 << 16)
def _piece(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    """A token's text (its bytes' longest valid UTF-8 prefix, as llama.cpp) and its bytes."""
    raw = tokenizer.token_bytes(token_id)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        text = raw[:error.start].decode("utf-8")
    return text, list(raw)


def _logs(probs: np.ndarray) -> list[float]:
    with np.errstate(divide="ignore"):
        out = np.log(probs.astype(np.float64))
    return np.maximum(out, LOGPROB_FLOOR).tolist()


class TokenLogprobs:
    """GeneratedToken → the response's per-token entries, each released together with its token's text.

    A token whose text is held back (an unfinished UTF-8 character, a possible stop string) keeps its
    entry pending; the next token (or the closing tail) that releases text carries the pending entries
    with its own, so that a stream chunk lists exactly the tokens whose text it brings. Entries still
    pending when generation ends were swallowed by a stop string (their text never went out): they
    are not reported, as llama.cpp leaves the stop word's tokens out. The end-of-generation token is
    not a generated token here and has no entry either."""

    def __init__(self, tokenizer: Any, n_top: int, post_sampling: bool):
        self.tokenizer = tokenizer
        self.n_top = n_top
        self.key, self.top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
        self.post_sampling = post_sampling
        self._pending: list[dict] = []

    @classmethod
    def for_request(cls, st: ServerState, fields: dict) -> "TokenLogprobs | None":
        if not wants_probs(fields):
            return None
        return cls(st.model.tokenizer, n_top_probs(fields), bool(fields["post_sampling_probs"]))

    def entry(self, token_id: int, probs: Any) -> dict:
        key, tokenizer = self.key, self.tokenizer
        top = probs.probs[:self.n_top]
        values = top.tolist() if self.post_sampling else _logs(top)
        alternatives = []
        for alt, value in zip(probs.ids[:self.n_top].tolist(), values):
            text, raw = _piece(tokenizer, alt)
            alternatives.append({"id": alt, "token": text, "bytes": raw, key: value})
        chosen = float(probs.token_prob)
        if not self.post_sampling:
            chosen = math.log(chosen) if chosen > 0 else LOGPROB_FLOOR
            chosen = max(chosen, LOGPROB_FLOOR)
        text, raw = _piece(tokenizer, token_id)
        return {"id": token_id, "token": text, "bytes": raw, key: chosen, self.top_key: alternatives}

    def feed(self, token: Any) -> list[dict]:
        """The entries whose text this token releases (none while its text is held back)."""
        if token.id is not None and token.probs is not None:
            self._pending.append(self.entry(token.id, token.probs))
        if not token.text:
            return []
        out, self._pending = self._pending, []
        return out


@dataclasses.dataclass
class ChoiceOutcome:
    text: str
    tokens: list[int]
    done: dict
    logprobs: dict | None = None  # {"content": [entries]} when requested


@dataclasses.dataclass
class Outcome:
    choices: list[ChoiceOutcome]
    start: dict
    prompt_logprobs: list[dict] = dataclasses.field(default_factory=list)  # the engine's events' infos

    @property
    def n_predicted(self) -> int:
        return sum(c.done["n_predicted"] for c in self.choices)


def merged(outcomes: list[Outcome]) -> Outcome:
    """Several prompts' outcomes as one answer's: every choice in order, the prompts' tokens summed."""
    if len(outcomes) == 1:
        return outcomes[0]
    starts = [o.start for o in outcomes]
    start = {"slot": starts[0].get("slot", -1), "prompt_ms": max(s.get("prompt_ms", 0.0) for s in starts),
             **{k: sum(s.get(k, 0) for s in starts) for k in ("n_prompt", "n_cached")}}
    return Outcome([choice for o in outcomes for choice in o.choices], start)


def collect(handle: Handle, probs: Callable[[], "TokenLogprobs | None"]) -> Outcome:
    """Wait for a whole generation, every choice (non-stream)."""
    n = handle.request.n
    pieces, tokens = [[] for _ in range(n)], [[] for _ in range(n)]
    entries, done, start, prompt_logprobs = [[] for _ in range(n)], [None] * n, {}, []
    feeds = [probs() for _ in range(n)]
    try:
        for event in handle:
            if event.kind == "start":
                start = event.info
            elif event.kind == "token":
                i, token = event.index, event.token
                pieces[i].append(token.text)
                if token.id is not None:
                    tokens[i].append(token.id)
                if feeds[i] is not None:
                    entries[i].extend(feeds[i].feed(token))
            elif event.kind == "done":
                done[event.index] = event.info
            elif event.kind == "prompt_logprobs":
                prompt_logprobs.append(event.info)
            elif event.kind != "progress":
                raise_for(event)
    finally:
        handle.cancel()  # no-op once done; frees the slots if this thread is torn down early
    if any(d is None for d in done):
        raise APIError(500, "generation ended without a result", code="internal_error", type="server_error")
    return Outcome([ChoiceOutcome("".join(p), t, d, {"content": e} if f is not None else None)
                    for p, t, d, e, f in zip(pieces, tokens, done, entries, feeds)], start, prompt_logprobs)


# OpenAI's legacy /v1/completions logprobs: "logprobs": k (an integer, 0..20 here) asks for
# {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}; with "echo" the prompt's tokens
# come first, the first of them without a logprob (null), as lm-eval-harness's loglikelihood tasks expect.
# "logprobs": true stays llama.cpp's {"content": [...]} shape.

def legacy_logprobs_request(body: dict) -> tuple[dict, int | None]:
    """body with an integer logprobs turned into logprobs: true + top_logprobs, and that integer."""
    value = body.get("logprobs")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return body, None
    if value < 0:
        raise invalid(f"'logprobs' must be a boolean or an integer in 0..20, got {value}", "logprobs")
    if body.get("top_logprobs") is not None:
        raise invalid("'top_logprobs' cannot be given with an integer 'logprobs' (which is the count)",
                      "top_logprobs")
    return dict(body, logprobs=True, top_logprobs=value), value


def legacy_logprobs(st: ServerState, entries: list[dict], prompt: list[dict] | None, prompt_ids: list[int],
                    offset: int = 0) -> dict:
    """entries (llama.cpp's per generated token) and, with echo, the prompt's scores (the engine's
    prompt_logprobs infos over prompt_ids) in the legacy shape; text_offset counts characters from
    offset (the length of a suffix-less prompt text that precedes, without echo)."""
    tokenizer = st.model.tokenizer
    tokens, token_logprobs, top_logprobs = [], [], []
    if prompt is not None:
        scores: dict[int, tuple[float, dict]] = {}
        for info in prompt:
            for j, (lp, ids, lps) in enumerate(zip(info["logprobs"], info["top_ids"], info["top_logprobs"])):
                scores[info["first"] + j] = (max(lp, LOGPROB_FLOOR),
                                             {_piece(tokenizer, t)[0]: max(v, LOGPROB_FLOOR) for t, v in zip(ids, lps)})
        for position, token in enumerate(prompt_ids):
            tokens.append(_piece(tokenizer, token)[0])
            lp, top = scores.get(position, (None, None))
            token_logprobs.append(lp)
            top_logprobs.append(top)
    for entry in entries:
        tokens.append(entry["token"])
        token_logprobs.append(entry["logprob"])
        top_logprobs.append({alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]})
    text_offset, at = [], offset
    for text in tokens:
        text_offset.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}


def usage(start: dict, n_predicted: int) -> dict:
    """n_predicted: over every choice; the prompt counts once."""
    n_prompt = start.get("n_prompt", 0)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_predicted, "total_tokens": n_prompt + n_predicted}


ALWAYS_KEPT = ("id", "object", "created", "model", "choices", "usage")


def select_fields(response: dict, paths: list[str] | None, kept: tuple[str, ...] = ALWAYS_KEPT) -> dict:
    """llama.cpp's response_fields: the values at the given "/"-separated paths, keyed by path, beside
    the kept fields (by default those the OpenAI response schema requires, which llama.cpp drops; the spec
    does not allow that; llama.cpp's native /completion keeps none)."""
    if not paths:
        return response
    out = {k: response[k] for k in kept if k in response}
    for path in paths:
        node: Any = response
        ok = True
        for part in path.split("/"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                ok = False
                break
        if ok:
            out[path] = node
    return out


def new_id(prefix: str) -> str:
    """A unique id in the provider's own form: prefix carries its separator (OpenAI's chatcmpl-, resp_)."""
    return prefix + uuid.uuid4().hex


def stream_response(chunks: Iterator[bytes], *handles: Handle) -> Response:
    """The event stream; once it ends (or its client goes, unless the stream is resumable) the engine frees
    the handles' slots."""
    def stop():
        for handle in handles:
            handle.cancel()

    return Response(streams.recorded(chunks, stop), mimetype=sse.MIMETYPE, headers=sse.HEADERS,
                    direct_passthrough=True)


def first_events(events: Iterator[Event], progress: bool) -> list[Event]:
    """Block until the engine has evaluated the prompt (or, with progress, its first chunk), so that
    failures before it are still plain HTTP errors; the events read so far, in order."""
    seen = []
    for event in events:
        if event.kind in ("error", "cancelled"):
            raise_for(event)
        seen.append(event)
        if event.kind == "start" or progress and event.kind == "progress":
            return seen
    raise APIError(500, "generation ended before it started", code="internal_error", type="server_error")


def now() -> int:
    return int(time.time())
