"""POST /v1/chat/completions and POST /v1/completions."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from janlib.chat import ChatTemplateError

from . import completion as c
from . import schema, sse
from .errors import APIError, invalid
from .state import state

bp = Blueprint("inference", __name__)


def _render(st, messages: list[dict]) -> tuple[str, list[int]]:
    try:
        return st.model.chat_prompt(messages)
    except ChatTemplateError as error:  # the messages don't fit the template
        raise invalid(f"the messages cannot be rendered with the model's chat template: {error}",
                      "messages") from None


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    c.check_model_name(st, body)
    messages = schema.parse_messages(body.get("messages", schema._MISSING))
    fields = schema.parse_fields(body)
    for name in ("tools", "tool_choice", "functions", "function_call"):
        if body.get(name):
            raise APIError(400, f"'{name}': tool calls are not supported yet", param=name,
                           code="unsupported_parameter")
    c.check_request_options(st, fields)
    prompt, ids = _render(st, messages)
    job, max_tokens = c.make_job(st, ids, fields)
    c.submit(st, job)
    cid, created = c.new_id("chatcmpl"), c.now()
    if fields["stream"]:
        start = c.first_event(job)
        return c.stream_response(_chat_chunks(st, job, fields, start, cid, created), job)
    out = c.collect(job, c.TokenLogprobs.for_request(st, fields))
    choice = {"index": 0, "message": {"role": "assistant", "content": out.text},
              "finish_reason": out.done["finish_reason"], "logprobs": out.logprobs}
    return _response(st, out, fields, max_tokens, prompt, cid, created, "chat.completion", choice)


def _response(st, out, fields, max_tokens, prompt, cid, created, kind, choice):
    """The non-stream answer of either endpoint around its one choice."""
    response = {
        "id": cid, "object": kind, "created": created, "model": st.model_id,
        "system_fingerprint": c.system_fingerprint(st),
        "choices": [choice],
        "usage": c.usage(out.start, out.done["n_predicted"]),
        "generation_settings": c.generation_settings(st, fields, max_tokens),
        "prompt": prompt,
        "truncated": bool(out.done["context_full"]),
        "tokens_cached": out.start.get("n_cached", 0),
        "tokens_evaluated": out.start.get("n_prompt", 0),
        "timings": c.timings(out.start, out.done, out.done["n_predicted"]),
    }
    if fields["return_tokens"]:
        response["tokens"] = out.tokens
    return jsonify(c.select_fields(response, fields["response_fields"]))


def _chat_chunks(st, job, fields, start, cid, created):
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": st.model_id,
            "system_fingerprint": c.system_fingerprint(st)}
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))

    def chunk(text=None, finish=None, logprobs=None, delta=None, **extra):
        content = {"content": text} if text else {}
        payload = dict(base, choices=[{"index": 0, "delta": delta or content, "logprobs": logprobs,
                                       "finish_reason": finish}])
        if include_usage:
            payload["usage"] = None
        payload.update(extra)
        return sse.event(payload)

    if fields["return_progress"]:
        yield sse.event(dict(base, choices=[], prompt_progress={
            "total": start["n_prompt"], "cache": start["n_cached"], "processed": start["n_prompt"],
            "time_ms": start["prompt_ms"]}))
    yield chunk(delta={"role": "assistant", "content": ""})
    yield from _stream_tokens(st, job, fields, start, base, chunk)


def _stream_tokens(st, job, fields, start, base, chunk):
    """The token, finish, usage and [DONE] events of either endpoint; chunk(text, finish, logprobs,
    **extra) makes the endpoint's own chunk."""
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))
    per_token = fields["timings_per_token"]
    probs = c.TokenLogprobs.for_request(st, fields)
    n_predicted = 0
    for kind, payload in job.results():
        if kind == "token":
            if payload.id is not None:
                n_predicted += 1
            extra = {}
            if fields["return_tokens"] and payload.id is not None:
                extra["tokens"] = [payload.id]
            if per_token:
                extra["timings"] = c.timings(start, None, n_predicted)
            entries = probs.feed(payload) if probs is not None else None  # of the tokens whose text it brings
            if payload.text or extra:
                yield chunk(payload.text, logprobs=None if entries is None else {"content": entries}, **extra)
        elif kind == "done":
            extra = {"timings": c.timings(start, payload, payload["n_predicted"])} if per_token else {}
            yield chunk("", payload["finish_reason"], **extra)
            if include_usage:
                yield sse.event(dict(base, choices=[], usage=c.usage(start, payload["n_predicted"]),
                                     timings=c.timings(start, payload, payload["n_predicted"])))
            yield sse.DONE
            return
        else:
            yield _stream_error(kind, payload)
            return


def _stream_error(kind, payload) -> bytes:
    try:
        c._raise_for(kind, payload)
    except APIError as error:
        return sse.event(error.body())
    return sse.event(APIError(500, "generation failed").body())


@bp.post("/v1/completions")
@bp.post("/completions")
def completions():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    c.check_model_name(st, body)
    prompt_value = schema.parse_prompt(body.get("prompt", schema._MISSING), st.model.n_vocab)
    fields = schema.parse_fields(body)
    for name in ("echo", "suffix"):
        if body.get(name):
            raise APIError(400, f"'{name}' is not supported", param=name, code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise invalid("'best_of' must be 1", "best_of")
    c.check_request_options(st, fields)
    if isinstance(prompt_value, str):
        ids = st.model.tokenize(prompt_value, add_special=True, parse_special=True)
        prompt_text = prompt_value
    else:
        ids = prompt_value
        prompt_text = st.model.detokenize(ids)
    job, max_tokens = c.make_job(st, ids, fields)
    c.submit(st, job)
    cid, created = c.new_id("cmpl"), c.now()
    if fields["stream"]:
        start = c.first_event(job)
        return c.stream_response(_text_chunks(st, job, fields, start, cid, created), job)
    out = c.collect(job, c.TokenLogprobs.for_request(st, fields))
    choice = {"index": 0, "text": out.text, "finish_reason": out.done["finish_reason"], "logprobs": out.logprobs}
    return _response(st, out, fields, max_tokens, prompt_text, cid, created, "text_completion", choice)


def _text_chunks(st, job, fields, start, cid, created):
    base = {"id": cid, "object": "text_completion", "created": created, "model": st.model_id,
            "system_fingerprint": c.system_fingerprint(st)}

    def chunk(text, finish=None, logprobs=None, **extra):
        return sse.event(dict(base, choices=[{"index": 0, "text": text, "logprobs": logprobs,
                                              "finish_reason": finish}], **extra))

    yield from _stream_tokens(st, job, fields, start, base, chunk)