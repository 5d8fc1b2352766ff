"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API (what Claude Code and the
anthropic SDK speak).

The request becomes a chat request (system → a system message, text / tool_use / tool_result blocks →
messages with tool_calls and tool results, tools' input_schema → parameters, tool_choice any → required)
served by the same rendering, tool-call constraint and output parser as /v1/chat/completions. Errors on
these routes use Anthropic's envelope: {"type": "error", "error": {"type", "message"}}."""

from __future__ import annotations

import itertools
import json

from flask import Blueprint, jsonify, request

from . import completion as c
from . import media, schema, sse
from .chat import prepare, submit
from .errors import APIError, invalid
from .state import state

bp = Blueprint("anthropic", __name__)

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
_STOP_REASONS = {"length": "max_tokens", "stop": "end_turn"}


def anthropic_error(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


@bp.after_request
def _anthropic_envelope(response):
    """Every error of these routes (validation, the API key, an unknown model, a body too large) in
    Anthropic's envelope; the OpenAI one is what the rest of the server raises."""
    if response.status_code < 400 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error and body.get("type") != "error":
        message = error["message"] + (f" (param: {error['param']})" if error.get("param") else "")
        response.set_data(json.dumps(anthropic_error(response.status_code, message)))
    return response


def _text(content, p: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{p}' must be a string or an array of content blocks", p, "invalid_type")
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise invalid(f"'{p}[{i}]' must be a text block", f"{p}[{i}]")
        texts.append(block["text"])
    return "\n".join(texts)


def chat_messages(st, body: dict) -> tuple[list[dict], list[bytes], list[str]]:
    """system and messages as chat messages: a user turn's tool_result blocks become tool messages (before
    its text), an assistant turn's tool_use blocks its tool_calls, an image block a <__media__> marker in its
    text; and the images' bytes and fields."""
    out, images, image_fields = [], [], []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "content": _text(system, "system")})
    messages = body.get("messages", schema._MISSING)
    if messages is schema._MISSING or messages is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array", "messages", "invalid_type")
    for i, message in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise invalid(f"'{p}.role' must be user or assistant", f"{p}.role")
        role, content = message["role"], message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise invalid(f"'{p}.content' must be a string or an array of content blocks", f"{p}.content",
                          "invalid_type")
        texts, calls, thoughts = [], [], []
        for j, block in enumerate(content):
            q = f"{p}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text([block], q))
            elif kind == "tool_use" and role == "assistant":
                calls.append({"id": block.get("id"), "type": "function", "function": {
                    "name": block.get("name"), "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
            elif kind == "tool_result" and role == "user":
                result = block.get("content")
                text = "" if result is None else _text(result, f"{q}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thoughts.append(block["thinking"])  # reasoning_content: templates that keep it (Qwen3) render it
            elif kind in ("thinking", "redacted_thinking"):
                continue
            elif kind == "image":
                images.append(media.anthropic_image(st, block, q))
                image_fields.append(q)
                texts.append(media.MEDIA_MARKER)
            elif kind == "document":
                raise APIError(400, f"'{q}': document content is not supported", param=q, code="unsupported_parameter")
            else:
                raise invalid(f"'{q}.type' {kind!r} is not a content block a {role} message can hold", f"{q}.type")
        if texts or calls:
            message_out = {"role": role, "content": "\n".join(texts) if texts else None}
            if calls:
                message_out["tool_calls"] = calls
            if thoughts:
                message_out["reasoning_content"] = "\n".join(thoughts)
            out.append(message_out)
    return schema.parse_messages(out), images, image_fields


def chat_body(body: dict) -> dict:
    """The chat fields of an Anthropic request."""
    out = {name: body[name] for name in ("model", "temperature", "top_p", "top_k", "stream") if name in body}
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("'max_tokens' is required", "max_tokens", "missing_required_parameter")
    out["max_tokens"] = max_tokens
    if body.get("stop_sequences") is not None:
        out["stop"] = body["stop_sequences"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("'tools' must be an array", "tools", "invalid_type")
        out["tools"] = [{"type": "function", "function": {
            k: v for k, v in (("name", t.get("name")), ("description", t.get("description")),
                              ("parameters", t.get("input_schema"))) if v is not None}}
            if isinstance(t, dict) else t for t in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise invalid("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")
        out["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name")}} if kind == "tool" else
                              "required" if kind == "any" else kind)
        # one call unless disable_parallel_tool_use is given false: the server's default (as llama.cpp's),
        # since small models asked for "one or more" tend to repeat a call until max_tokens
        out["parallel_tool_calls"] = choice.get("disable_parallel_tool_use") is False
    return out


def _setup(st, body: dict):
    c.check_model_name(st, body)
    messages, images, image_fields = chat_messages(st, body)
    chat = chat_body(body)
    fields = schema.parse_fields(chat)
    options = schema.parse_chat_options(chat)
    c.check_request_options(st, fields)
    setup = prepare(st, messages, options, fields)
    media.add_chat_images(st, setup, images, image_fields, "messages")
    return setup, fields


@bp.post("/v1/messages/count_tokens")
def count_tokens():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    body.setdefault("max_tokens", 1)  # not part of this request's shape
    setup, _fields = _setup(st, body)
    return jsonify({"input_tokens": len(setup.ids)})


@bp.post("/v1/messages")
def messages():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    setup, fields = _setup(st, body)
    handle, _ = submit(st, setup, fields)
    message = {"id": c.new_id("msg_"), "type": "message", "role": "assistant", "model": st.model_id, "content": [],
               "stop_reason": None, "stop_sequence": None}
    if fields["stream"]:
        events = iter(handle)
        first = c.first_events(events, False)
        return c.stream_response(_stream(itertools.chain(first, events), setup.parser(), message), handle)
    out = c.collect(handle, lambda: None)
    choice = out.choices[0]
    delta, calls = setup.parser().parse(choice.text)
    content = []
    if delta.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": delta["reasoning_content"], "signature": ""})
    if delta.get("content") or not calls:
        content.append({"type": "text", "text": delta.get("content", "")})
    content += [_tool_use(call) for call in calls]
    return jsonify(dict(message, content=content, **_stop(choice.done, calls),
                        usage=_usage(out.start, choice.done["n_predicted"])))


def _tool_use(call: dict) -> dict:
    return {"type": "tool_use", "id": "toolu_" + call["id"].removeprefix("call_"), "name": call["function"]["name"],
            "input": json.loads(call["function"]["arguments"] or "{}")}


def _stop(done: dict, calls: list) -> dict:
    reason = done["finish_reason"]
    word = done.get("stop_word") or None
    if calls and reason == "stop":
        return {"stop_reason": "tool_use", "stop_sequence": None}
    if reason == "stop" and word:
        return {"stop_reason": "stop_sequence", "stop_sequence": word}
    return {"stop_reason": _STOP_REASONS.get(reason, "end_turn"), "stop_sequence": None}


def _usage(start: dict, n_out: int) -> dict:
    return {"input_tokens": start.get("n_prompt", 0), "output_tokens": n_out,
            "cache_read_input_tokens": start.get("n_cached", 0), "cache_creation_input_tokens": 0}


def _stream(events, parser, message):
    """message_start, then per content block its start, deltas and stop, then message_delta and message_stop."""
    emit = lambda kind, **payload: sse.named_event(kind, {"type": kind, **payload})  # noqa: E731
    blocks: list[str] = []  # the kind of each block opened so far; the last one may still be open
    is_open = False

    def close():
        nonlocal is_open
        if is_open:
            is_open = False
            yield emit("content_block_stop", index=len(blocks) - 1)

    def deltas(delta: dict):
        nonlocal is_open
        for key, kind, delta_kind in (("reasoning_content", "thinking", "thinking_delta"),
                                      ("content", "text", "text_delta")):
            text = delta.get(key)
            if not text:
                continue
            if not is_open or blocks[-1] != kind:
                yield from close()
                blocks.append(kind)
                is_open = True
                yield emit("content_block_start", index=len(blocks) - 1,
                           content_block={"type": kind, kind: ""} if kind == "text" else
                           {"type": kind, "thinking": "", "signature": ""})
            yield emit("content_block_delta", index=len(blocks) - 1,
                       delta={"type": delta_kind, "thinking" if kind == "thinking" else "text": text})

    start: dict = {}
    for event in events:
        if event.kind == "start":
            start = event.info
            yield emit("message_start", message=dict(message, usage=_usage(start, 0)))
        elif event.kind == "token":
            if event.token.text:
                yield from deltas(parser.feed(event.token.text))
        elif event.kind == "done":
            tail, calls = parser.finish()
            yield from deltas(tail)
            yield from close()
            if not calls and "text" not in blocks:  # an empty answer is still one text block
                blocks.append("text")
                yield emit("content_block_start", index=len(blocks) - 1, content_block={"type": "text", "text": ""})
                yield emit("content_block_stop", index=len(blocks) - 1)
            for call in calls:
                block = _tool_use(call)
                blocks.append("tool_use")
                index = len(blocks) - 1
                yield emit("content_block_start", index=index, content_block=dict(block, input={}))
                yield emit("content_block_delta", index=index,
                           delta={"type": "input_json_delta", "partial_json": call["function"]["arguments"]})
                yield emit("content_block_stop", index=index)
            yield emit("message_delta", delta=_stop(event.info, calls),
                       usage={"output_tokens": event.info["n_predicted"]})
            yield emit("message_stop")
            return
        elif event.kind in ("error", "cancelled"):
            try:
                c.raise_for(event)
            except APIError as error:
                yield emit("error", error=anthropic_error(error.status, error.message)["error"])
            return
