"""POST /v1/responses: OpenAI's Responses API, stateless.

The request becomes a chat request (input items → messages, instructions → a system message, flat
function tools → chat tools, text.format → response_format) served by the same prompt rendering,
tool-call constraint and output parser as /v1/chat/completions; the answer is the Responses shape:
output items (reasoning, message, function_call) and, streamed, the Responses event sequence.
Nothing is stored, so previous_response_id and store: true are refused."""

from __future__ import annotations

import itertools
import re

from flask import Blueprint, jsonify, request

from . import completion as c
from . import schema, sse
from .chat import prepare_body, submit
from .errors import APIError, invalid
from .state import state

bp = Blueprint("responses", __name__)

_MESSAGE_NAME = re.compile(r"\bmessages(?:\[(\d+)\])?")

# Responses names → chat names
_RENAMED = {"max_output_tokens": "max_tokens"}
_PASSED = ("temperature", "top_p", "seed", "stream", "parallel_tool_calls", "top_k", "min_p", "repeat_penalty",
           "presence_penalty", "frequency_penalty", "stop", "user", "model", "reasoning_format",
           "chat_template_kwargs", "return_progress", "timings_per_token")


def chat_body(body: dict) -> dict:
    """The /v1/chat/completions body that asks for what a Responses body asks."""
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise APIError(400, f"'{name}': this server keeps no responses (stateless); send the whole "
                           "conversation in 'input'", param=name, code="unsupported_parameter")
    if body.get("store") is True:
        raise APIError(400, "'store': this server keeps no responses; leave store out or set it to false",
                       param="store", code="unsupported_parameter")
    if body.get("background") is True:
        raise APIError(400, "'background' is not supported", param="background", code="unsupported_parameter")
    out = {name: body[name] for name in _PASSED if name in body}
    for name, chat_name in _RENAMED.items():
        if body.get(name) is not None:
            out[chat_name] = body[name]
    messages = []
    instructions = schema.get_typed(body, "instructions", "string", None)
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += input_messages(body.get("input", schema._MISSING))
    out["messages"] = messages
    if body.get("tools") is not None:
        out["tools"] = _chat_tools(body["tools"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        out["tool_choice"] = choice
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise invalid("'text' must be an object", "text", "invalid_type")
        fmt = text.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict):
                raise invalid("'text.format' must be an object", "text.format", "invalid_type")
            if fmt.get("type") == "json_schema":
                out["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": fmt.get("name"), "schema": fmt.get("schema", {}), "strict": fmt.get("strict")}}
            else:
                out["response_format"] = fmt
    return out


def input_messages(value) -> list[dict]:
    """input (a string, or message / function_call / function_call_output items) as raw chat messages: a
    run of function_call items is one assistant message with tool_calls."""
    if value is schema._MISSING or value is None:
        raise invalid("'input' is required", "input", "missing_required_parameter")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid("'input' must be a string or an array of items", "input", "invalid_type")
    messages: list[dict] = []
    for i, item in enumerate(value):
        p = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{p}' must be an object", p, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [_chat_part(part) for part in content]
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and last["content"] is None:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        elif kind == "reasoning":
            continue  # earlier thinking: templates drop it from past turns anyway
        else:
            raise invalid(f"'{p}.type' must be message, function_call or function_call_output, got {kind!r}",
                          f"{p}.type")
    return messages


def _chat_part(part):
    """A Responses content part as the chat content part it stands for (input_image: an image_url part)."""
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text")}
    if kind == "input_image":
        return {"type": "image_url", "image_url": part.get("image_url")}
    return part


def _chat_tools(tools) -> list:
    if not isinstance(tools, list):
        raise invalid("'tools' must be an array", "tools", "invalid_type")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise APIError(400, f"'tools[{i}]': only function tools are supported", param=f"tools[{i}].type",
                           code="unsupported_parameter")
        out.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters")
                                                      if tool.get(k) is not None}})
    return out


@bp.post("/v1/responses")
@bp.post("/responses")
def create_response():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    c.check_model_name(st, body)
    chat = chat_body(body)
    try:
        setup, fields, options = prepare_body(st, chat)
    except APIError as error:  # name the input item, not the chat message made of it
        shift = 1 if body.get("instructions") else 0  # the system message the instructions became
        rename = lambda m: f"input[{int(m[1]) - shift}]" if m[1] else "input"  # noqa: E731
        error.param = error.param and _MESSAGE_NAME.sub(rename, error.param, 1)
        error.message = _MESSAGE_NAME.sub(rename, error.message, 1)
        raise
    handle, _ = submit(st, setup, fields)
    shell = _shell(st, body, options)
    if fields["stream"]:
        events = iter(handle)
        first = c.first_events(events, fields["return_progress"])
        return c.stream_response(_stream(itertools.chain(first, events), setup.parser(), shell, fields), handle)
    out = c.collect(handle, lambda: None)
    choice = out.choices[0]
    delta, calls = setup.parser().parse(choice.text)
    items = []
    if delta.get("reasoning_content"):
        items.append(_reasoning_item(delta["reasoning_content"]))
    if delta.get("content") or not calls:
        items.append(_message_item(delta.get("content", "")))
    items += [_call_item(call) for call in calls]
    return jsonify(_finished(shell, items, choice.done, out.start))


def _shell(st, body: dict, options: dict) -> dict:
    """The response object without its output: what the request asked, echoed as OpenAI does."""
    return {"id": c.new_id("resp_"), "object": "response", "created_at": c.now(), "status": "in_progress",
            "model": st.model_id, "output": [], "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": options["parallel_tool_calls"], "previous_response_id": None, "store": False,
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice") or ("auto" if options["tools"] else "none"),
            "tools": body.get("tools") or [], "metadata": body.get("metadata") or {}, "usage": None}


def _finished(shell: dict, items: list[dict], done: dict, start: dict) -> dict:
    incomplete = done["finish_reason"] == "length"
    n_prompt, n_out = start.get("n_prompt", 0), done["n_predicted"]
    return dict(shell, status="incomplete" if incomplete else "completed", output=items,
                incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
                usage={"input_tokens": n_prompt, "input_tokens_details": {"cached_tokens": start.get("n_cached", 0)},
                       "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": n_prompt + n_out})


def _message_item(text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": c.new_id("msg_"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning_item(text: str) -> dict:
    return {"type": "reasoning", "id": c.new_id("rs_"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict, status: str = "completed") -> dict:
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"), "call_id": call["id"],
            "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}


class _Events:
    """Responses streaming events, numbered."""

    def __init__(self):
        self.sequence = itertools.count()

    def __call__(self, kind: str, **payload) -> bytes:
        return sse.named_event(kind, {"type": kind, "sequence_number": next(self.sequence), **payload})


def _stream(events, parser, shell, fields):
    """The Responses event sequence; llama-server's telemetry on request: return_progress adds prompt_progress
    to further response.in_progress events, timings_per_token adds timings to the text deltas, and the final
    event carries timings."""
    emit = _Events()
    yield emit("response.created", response=shell)
    yield emit("response.in_progress", response=shell)
    items: list[dict] = []
    open_item: dict | None = None  # the reasoning or message item receiving deltas

    def close_open():
        nonlocal open_item
        item, open_item = open_item, None
        if item is None:
            return
        index = items.index(item)
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                       text=text)
            yield emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                       part=item["content"][0])
        else:
            text = item["content"][0]["text"]
            yield emit("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                       text=text)
        item["status"] = "completed"
        yield emit("response.output_item.done", output_index=index, item=item)

    def deltas(delta: dict):
        nonlocal open_item
        for key, kind in (("reasoning_content", "reasoning"), ("content", "message")):
            text = delta.get(key)
            if not text:
                continue
            if open_item is None or open_item["type"] != kind:
                yield from close_open()
                open_item = _message_item("", "in_progress") if kind == "message" else _reasoning_item("")
                items.append(open_item)
                index = len(items) - 1
                yield emit("response.output_item.added", output_index=index,
                           item=dict(open_item, content=[]))
                if kind == "message":
                    yield emit("response.content_part.added", item_id=open_item["id"], output_index=index,
                               content_index=0, part={"type": "output_text", "text": "", "annotations": []})
            index = len(items) - 1
            open_item["content"][0]["text"] += text
            name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
            timings = {"timings": c.timings(start, None, n_tokens)} if fields["timings_per_token"] else {}
            yield emit(name, item_id=open_item["id"], output_index=index, content_index=0, delta=text, **timings)

    start: dict = {}
    n_tokens = 0
    for event in events:
        if event.kind == "progress" and fields["return_progress"]:
            yield emit("response.in_progress", response=shell, prompt_progress=event.info)
        elif event.kind == "start":
            start = event.info
        elif event.kind == "token":
            n_tokens += event.token.id is not None
            if event.token.text:
                yield from deltas(parser.feed(event.token.text))
        elif event.kind == "done":
            tail, calls = parser.finish()
            yield from deltas(tail)
            yield from close_open()
            if not calls and not any(item["type"] == "message" for item in items):
                items.append(_message_item(""))  # an empty answer is still a message, as non-stream
                index = len(items) - 1
                yield emit("response.output_item.added", output_index=index, item=dict(items[-1], content=[]))
                yield emit("response.output_item.done", output_index=index, item=items[-1])
            for call in calls:
                item = _call_item(call, "in_progress")
                items.append(item)
                index = len(items) - 1
                yield emit("response.output_item.added", output_index=index, item=dict(item, arguments=""))
                yield emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=item["arguments"])
                yield emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           arguments=item["arguments"])
                item["status"] = "completed"
                yield emit("response.output_item.done", output_index=index, item=item)
            final = _finished(shell, items, event.info, start)
            yield emit("response.completed" if final["status"] == "completed" else "response.incomplete",
                       response=final, timings=c.timings(start, event.info, event.info["n_predicted"]))
            return
        elif event.kind in ("error", "cancelled"):
            try:
                c.raise_for(event)
            except APIError as error:
                yield emit("error", code=error.code, message=error.message, param=error.param)
            return
