"""Tool calls: the tools go to the model in its own format, and its calls come back as OpenAI tool_calls.

    setup = prepare_chat(model, messages, tools=[...], tool_choice="required")
    request = Request(setup.ids, constraint=setup.constraint, ...)
    parser = setup.parser()            # one per choice
    delta = parser.feed(text)          # {"reasoning_content": ..., "content": ...} as text arrives
    rest, calls = parser.finish()      # what was held back, and the calls: [{id, type, function}]

The format is recognized from the chat template: Hermes / Qwen2.5 / Qwen3 ``<tool_call>{json}</tool_call>``,
Llama 3.x JSON (``{"name", "parameters"}``, optionally after ``<|python_tag|>``), Mistral
``[TOOL_CALLS][{...}]`` (and ``[TOOL_CALLS]name[ARGS]{...}``), and for every other template the generic
JSON format (``{"tool_call": {"name", "arguments"}}`` or ``{"response": "..."}``, as llama.cpp's generic
format). A template that knows no tools gets their description in the system prompt, and the
conversation's calls and results rewritten into that format.

Calls always parse: with tool_choice "required" or a named function the whole output is constrained
(llguidance) to a call whose arguments validate against the tool's JSON schema; with "auto" the
constraint engages when the model writes the format's opening marker (a lazy grammar), so a call
the model starts is finished valid, while plain text before it is free."""

from __future__ import annotations

import json
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from janlib.chat import ChatTemplateError
from janlib.reasoning import ReasoningMarkers, markers_for
from janlib.structured import Constraint, GrammarError

__all__ = ["FORMATS", "AssistantParser", "ChatSetup", "LazyConstraint", "ToolFormat", "detect_format",
           "prepare_chat", "tool_grammar"]

# compact and stable, as the JSON the constrained decoder writes (structured.py's separators)
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class ToolFormat:
    """How one family of models writes a call. markers: texts that open a call anywhere in the output;
    at_start: texts that open one only as the first thing written (JSON formats)."""

    name: str
    markers: tuple[str, ...] = ()
    at_start: tuple[str, ...] = ()
    arguments_key: str = "arguments"

    def call_schema(self, tool: dict) -> dict:
        return {"type": "object", "properties": {"name": {"const": tool["name"]},
                                                 self.arguments_key: closed_parameters(tool["parameters"])},
                "required": ["name", self.arguments_key], "additionalProperties": False}


def closed_parameters(parameters: dict) -> dict:
    """The arguments' schema with no properties beyond those listed unless it says otherwise: as
    llama.cpp's grammars, so that a small model does not pad a call with invented arguments."""
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


HERMES = ToolFormat("hermes", markers=("<tool_call>",))
LLAMA3 = ToolFormat("llama3", markers=("<|python_tag|>",), at_start=("{",), arguments_key="parameters")
MISTRAL = ToolFormat("mistral", markers=("[TOOL_CALLS]",))
MISTRAL_ARGS = ToolFormat("mistral_args", markers=("[TOOL_CALLS]",))  # [TOOL_CALLS]name[ARGS]{...}
GENERIC = ToolFormat("generic", at_start=("{",))
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, GENERIC)}


def detect_format(template_source: str) -> ToolFormat:
    """The tool format a chat template teaches its model; GENERIC when it is none of the known ones."""
    if "[TOOL_CALLS]" in template_source:
        return MISTRAL_ARGS if "[ARGS]" in template_source else MISTRAL
    # <tool_call> with JSON inside (GLM and Qwen3-Coder put XML-like arguments there: not this format)
    if "<tool_call>" in template_source and "<function=" not in template_source and "<arg_key>" not in template_source:
        return HERMES
    if "<|start_header_id|>" in template_source and "<function=" not in template_source and (
            "<|python_tag|>" in template_source or '"parameters"' in template_source):
        return LLAMA3
    return GENERIC


def knows_tools(template_source: str) -> bool:
    """True when the template renders the `tools` it is given (else they would vanish silently)."""
    from jinja2 import meta

    from janlib.chat import _ENV
    try:
        return "tools" in meta.find_undeclared_variables(_ENV.parse(template_source))
    except Exception:  # a template that does not parse fails later, with its own error
        return False


# ---------------------------------------------------------------- request side

def normalize_tools(tools: Sequence[dict]) -> list[dict]:
    """OpenAI tools ({"type": "function", "function": {...}}) → [{name, description, parameters}]."""
    out = []
    for tool in tools:
        function = tool.get("function", tool)
        out.append({"name": function["name"], "description": function.get("description") or "",
                    "parameters": function.get("parameters") or {"type": "object", "properties": {}}})
    return out


def _marker_lark(text: str, tokenizer) -> str:
    """A marker in a Lark rule: the vocabulary's special token when it has one for the text (the model
    writes that token, not its letters), else the literal."""
    ids = tokenizer.encode(text, add_special=False, parse_special=True)
    if len(ids) == 1 and tokenizer.is_special(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(text)


def _json_rule(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_STYLE})


def tool_grammar(fmt: ToolFormat, tools: list[dict], parallel: bool, tokenizer, with_response: bool = False) -> str:
    """Lark (llguidance) for the calls of fmt to any of tools; with_response (generic format only) also
    allows {"response": text}."""
    any_call = {"anyOf": [fmt.call_schema(t) for t in tools]} if len(tools) > 1 else fmt.call_schema(tools[0])
    mark = _marker_lark(fmt.markers[0], tokenizer) if fmt.markers else ""
    if fmt is HERMES:
        close = _marker_lark("</tool_call>", tokenizer)
        more = ' ("\\n" block)*' if parallel else ""
        rules = [f"start: block{more}", f'block: {mark} "\\n" call "\\n" {close}', "call: " + _json_rule(any_call)]
    elif fmt is LLAMA3:
        rules = [f"start: {mark}? call", "call: " + _json_rule(any_call)]
    elif fmt is MISTRAL:
        calls = {"type": "array", "items": any_call, "minItems": 1}
        if not parallel:
            calls["maxItems"] = 1
        rules = [f"start: {mark} calls", "calls: " + _json_rule(calls)]
    elif fmt is MISTRAL_ARGS:
        alternatives = " | ".join(f"{json.dumps(t['name'])} {_marker_lark('[ARGS]', tokenizer)} args_{i}"
                                  for i, t in enumerate(tools))
        rules = [f'start: {mark} one{" (" + mark + " one)*" if parallel else ""}', f"one: {alternatives}"]
        rules += [f"args_{i}: " + _json_rule(closed_parameters(t["parameters"])) for i, t in enumerate(tools)]
    else:
        wrapper = ({"type": "object", "properties": {"tool_calls": {"type": "array", "items": any_call,
                                                                    "minItems": 1}},
                    "required": ["tool_calls"], "additionalProperties": False} if parallel else
                   {"type": "object", "properties": {"tool_call": any_call}, "required": ["tool_call"],
                    "additionalProperties": False})
        if with_response:
            wrapper = {"anyOf": [wrapper, {"type": "object", "properties": {"response": {"type": "string"}},
                                           "required": ["response"], "additionalProperties": False}]}
        rules = ["start: answer", "answer: " + _json_rule(wrapper)]
    return "\n".join(rules) + "\n"


_OPENERS: "weakref.WeakKeyDictionary[Any, dict[bytes, np.ndarray]]" = weakref.WeakKeyDictionary()


def _opening_tokens(tokenizer, n_vocab: int, first: bytes) -> np.ndarray:
    """uint8 (n_vocab,): 1 for the tokens whose first non-space byte is one of first; built once per
    tokenizer (a pass over the vocabulary, outside any decode step)."""
    per = _OPENERS.setdefault(tokenizer, {})
    if first not in per:
        flags = np.zeros(n_vocab, np.uint8)
        for i in range(tokenizer.n_vocab):
            flags[i] = tokenizer.token_bytes(i).lstrip()[:1] in first
        per[first] = flags
    return per[first]


class LazyConstraint:
    """A Constraint that lets the model write freely until it opens a call, then constrains the rest,
    so the call is finished valid. Two kinds of opening (ToolFormat): a marker anywhere in the output
    (the text from the marker on is fed to the grammar), and a JSON call as the first thing written:
    while only spaces have come, the tokens that would open one are masked to those the grammar allows
    (every other token stays free). The engine and Model.generate see the Constraint interface (a None
    mask = no constraint)."""

    def __init__(self, grammar: str, target, fmt: ToolFormat, field: str = "tools"):
        self._inner = Constraint(grammar, target, field)  # compiled now: a bad schema fails the request
        self._tokenizer = getattr(target, "tokenizer", target)
        self._markers = [m.encode() for m in fmt.markers]
        self._opens = (_opening_tokens(self._tokenizer, self._inner.n_vocab, b"".join(m.encode()[:1] for m in
                                                                                       fmt.at_start))
                       if fmt.at_start else None)
        self._seen = bytearray()
        self.triggered = False
        self._given_up = False  # the text after a marker did not fit the grammar: parse what comes

    def copy(self) -> "LazyConstraint":
        twin = object.__new__(LazyConstraint)
        twin.__dict__.update(self.__dict__)
        twin._inner = self._inner.copy()
        twin._seen = bytearray(self._seen)
        return twin

    def allowed_mask(self):
        if self.triggered:
            return self._inner.allowed_mask()
        if self._opens is not None and not self._given_up:  # nothing but spaces yet: a JSON call may open
            return self._inner.allowed_mask() | (1 - self._opens)
        return None

    def accept(self, token: int) -> None:
        if self.triggered:
            self._inner.accept(token)
            return
        if self._given_up:
            return
        before = len(self._seen)
        self._seen += self._tokenizer.token_bytes(int(token))
        if self._opens is not None and self._seen.strip():
            opens, self._opens = self._opens[token], None  # the output has begun: no JSON opening later
            if opens:  # allowed by the grammar's mask
                self._inner.accept(token)
                self.triggered = True
                return
        for marker in self._markers:
            at = self._seen.find(marker, max(0, before - len(marker) + 1))
            if at >= 0:
                self._trigger(bytes(self._seen[at:]).decode("utf-8", "replace"))
                return

    def _trigger(self, text: str) -> None:
        try:
            for piece in self._tokenizer.encode(text, add_special=False, parse_special=True):
                self._inner.accept(piece)
            self.triggered = True
        except GrammarError:
            self._given_up = True

    def is_accepting(self) -> bool:
        return not self.triggered or self._inner.is_accepting()

    def is_stopped(self) -> bool:
        return self.triggered and self._inner.is_stopped()



# ---------------------------------------------------------------- rendering

def _arguments_object(arguments: Any) -> Any:
    """Templates expect arguments as a mapping (transformers' convention); OpenAI sends a JSON string."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _generic_call_text(calls: list[dict], parallel: bool) -> str:
    objects = [{"name": c["function"]["name"], "arguments": _arguments_object(c["function"].get("arguments"))}
               for c in calls]
    if parallel or len(objects) > 1:
        return json.dumps({"tool_calls": objects}, ensure_ascii=False)
    return json.dumps({"tool_call": objects[0]}, ensure_ascii=False)


def generic_description(tools: list[dict], choice: str | None, parallel: bool) -> str:
    """What a template without tools gets in its system prompt: the tools and the JSON to answer with."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    call = ('{"tool_calls": [{"name": "<tool name>", "arguments": {...}}, ...]}' if parallel else
            '{"tool_call": {"name": "<tool name>", "arguments": {...}}}')
    text = f"You can call these tools (JSON schemas of their arguments):\n{listing}\n\n"
    if choice == "required":
        return text + f"Respond in JSON format with a tool call: {call}"
    if choice is not None and choice not in ("auto", "none"):
        return text + f'Respond in JSON format with a call of {choice}: {call.replace("<tool name>", choice)}'
    return text + (f"Respond in JSON format, either with a tool call: {call}\n"
                   'or with a reply to the user: {"response": "<your reply>"}')


def _tool_names_by_id(messages: list[dict]) -> dict[str, str]:
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and call.get("id"):
                names[call["id"]] = (call.get("function") or {}).get("name", "")
    return names


def template_messages(messages: list[dict], source: str, template_has_tools: bool, description: str | None,
                      parallel: bool) -> list[dict]:
    """messages as a template gets them: calls with mapping arguments and "" for a missing content (as
    llama.cpp: several templates concatenate it); for a template without tools, calls rewritten as the
    generic JSON, results as user turns, and description put into the system prompt."""
    names = _tool_names_by_id(messages)
    knows_tool_role = template_has_tools and ("'tool'" in source or '"tool"' in source)
    out: list[dict] = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            if template_has_tools:
                message["tool_calls"] = [dict(c, function=dict(c["function"], arguments=_arguments_object(
                    c["function"].get("arguments")))) for c in calls]
            else:
                text = message.get("content") or ""
                message["content"] = (text + "\n" if text else "") + _generic_call_text(calls, parallel)
                del message["tool_calls"]
        if message.get("content") is None:
            message["content"] = ""
        if message["role"] == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id", ""), "")
            if name:
                message.setdefault("name", name)
            if not knows_tool_role:
                result = {"tool_response": {"name": name, "tool_call_id": message.get("tool_call_id"),
                                            "content": message["content"]}}
                text = json.dumps(result, ensure_ascii=False)
                if out and out[-1].get("_tool_results"):  # parallel results: one user turn
                    out[-1]["content"] += "\n" + text
                    continue
                message = {"role": "user", "content": text, "_tool_results": True}
        out.append(message)
    for message in out:
        message.pop("_tool_results", None)
    if description:
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = dict(out[0], content=(out[0]["content"] + "\n\n" + description).lstrip())
        else:
            out.insert(0, {"role": "system", "content": description})
    return out


@dataclass
class ChatSetup:
    """A chat request made ready: the prompt, its tokens, the constraint for the tool calls (or None),
    and what parses each choice's output."""

    prompt: str
    ids: list[int]
    constraint: Any
    tool_format: ToolFormat | None
    reasoning: ReasoningMarkers | None
    in_reasoning: bool
    continued: str = ""  # the prefilled text of a continued assistant message
    tool_names: tuple[str, ...] = field(default_factory=tuple)

    def parser(self) -> "AssistantParser":
        return AssistantParser(self.tool_format, self.reasoning, self.in_reasoning)


def prepare_chat(model, messages: list[dict], tools: list[dict] | None = None, tool_choice: str = "auto",
                 parallel_tool_calls: bool = False, add_generation_prompt: bool = True,
                 continue_final_message: bool = False, reasoning_format: str = "deepseek",
                 template_kwargs: dict | None = None, constrain: bool = True) -> ChatSetup:
    """Render messages (and tools) with model's chat template and build what generation and parsing
    need. tool_choice: "none", "auto", "required" or a function's name. continue_final_message
    continues the last (assistant) message instead of closing it. ChatTemplateError when the
    messages or the template cannot be rendered, GrammarError when a tool's schema cannot constrain."""
    template = model.template
    source = template.source
    active = list(tools or []) if tool_choice != "none" else []
    tool_list = normalize_tools(active)
    fmt = detect_format(source) if tool_list else None
    has_tools = knows_tools(source)
    named = tool_choice if tool_choice not in ("auto", "required", "none") else None
    if named is not None and named not in {t["name"] for t in tool_list}:
        raise ChatTemplateError(f"tool_choice names {named!r}, which is not among the tools")
    description = None
    if tool_list and not has_tools:
        fmt = GENERIC  # the model is told the generic format: parse (and constrain) that one
        description = generic_description(tool_list, tool_choice, parallel_tool_calls)
    rendered = template_messages(messages, source, has_tools, description, parallel_tool_calls)
    extra = dict(template_kwargs or {})
    if tool_list and has_tools:
        extra["tools"] = [{"type": "function", "function": t} for t in tool_list]
    prompt, ids = model.chat_prompt(rendered, add_generation_prompt=add_generation_prompt,
                                    continue_final_message=continue_final_message, **extra)
    constraint = None
    if fmt is not None and constrain:
        allowed = [t for t in tool_list if named is None or t["name"] == named]
        if tool_choice == "auto":
            grammar = tool_grammar(fmt, allowed, parallel_tool_calls, model.tokenizer, with_response=True)
            constraint = LazyConstraint(grammar, model, fmt)
        else:
            constraint = Constraint(tool_grammar(fmt, allowed, parallel_tool_calls, model.tokenizer), model, "tools")
    reasoning = markers_for(source) if reasoning_format != "none" else None
    in_reasoning = reasoning is not None and reasoning.opened_by(prompt)
    continued = messages[-1].get("content") or "" if continue_final_message else ""
    return ChatSetup(prompt, ids, constraint, fmt, reasoning, in_reasoning, continued,
                     tuple(t["name"] for t in tool_list))


# ---------------------------------------------------------------- output side

def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _openai_call(name: str, arguments: Any) -> dict:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": text}}


_DECODER = json.JSONDecoder()


def _json_at(text: str, pos: int) -> tuple[Any, int] | None:
    pos = len(text) - len(text[pos:].lstrip())
    try:
        return _DECODER.raw_decode(text, pos)
    except ValueError:
        return None


def _call_of(obj: Any, key: str) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(key, obj.get("arguments", obj.get("parameters", {})))
    return _openai_call(obj["name"], arguments)


def parse_calls(fmt: ToolFormat, text: str) -> tuple[list[dict], str] | None:
    """The calls in text (which starts at the format's marker, or is the whole JSON output) and the
    text beside them; None when it is not a call in fmt."""
    if fmt is HERMES:
        calls, rest, pos = [], [], 0
        while True:
            at = text.find("<tool_call>", pos)
            if at < 0:
                rest.append(text[pos:])
                break
            rest.append(text[pos:at])
            found = _json_at(text, at + len("<tool_call>"))
            call = found and _call_of(found[0], "arguments")
            if not call:
                return None
            calls.append(call)
            pos = found[1]
            end = len(text) - len(text[pos:].lstrip())
            pos = end + len("</tool_call>") if text.startswith("</tool_call>", end) else end
        return calls, "".join(rest).strip()
    if fmt is MISTRAL_ARGS:
        calls = []
        for piece in text.split("[TOOL_CALLS]")[1:]:
            name, sep, arguments = piece.partition("[ARGS]")
            found = _json_at(arguments, 0) if sep else None
            if not found or not name.strip():
                return None
            calls.append(_openai_call(name.strip(), found[0]))
        return calls, ""
    body = text
    for marker in fmt.markers:
        if body.startswith(marker):
            body = body[len(marker):]
    found = _json_at(body, 0)
    if not found:
        return None
    obj, end = found
    tail = body[end:].strip()
    if fmt is MISTRAL:
        items = obj if isinstance(obj, list) else [obj]
        calls = [_call_of(item, "arguments") for item in items]
    elif fmt is LLAMA3:
        calls = [_call_of(obj, "parameters")]
    else:  # generic
        if isinstance(obj, dict) and "response" in obj and len(obj) == 1:
            reply = obj["response"]
            return [], (reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False))
        items = obj.get("tool_calls") if isinstance(obj, dict) and "tool_calls" in obj else \
            [obj.get("tool_call")] if isinstance(obj, dict) and "tool_call" in obj else None
        if not isinstance(items, list) or not items:
            return None
        calls = [_call_of(item, "arguments") for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls, tail


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of text that could begin one of markers (to hold back)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


class AssistantParser:
    """Splits an assistant's output, as it arrives, into reasoning, content and tool calls.

    feed(text) returns the delta ready to go out ({"reasoning_content": ..., "content": ...}, empty keys
    left out); text that may be the start of a marker is held back until it is clear. Once a call opens,
    the rest is kept and parsed by finish(). The non-stream answer is this same parser fed the whole
    text, so a stream assembles to exactly the non-stream message."""

    def __init__(self, fmt: ToolFormat | None, reasoning: ReasoningMarkers | None, in_reasoning: bool = False):
        self.fmt = fmt
        self.reasoning = reasoning
        self.state = "reasoning" if in_reasoning else ("start" if reasoning else "content")
        self._buf = ""
        self._content_started = False
        self._strip_lead = False  # the whitespace between the thinking and the answer is dropped
        self._at_start = bool(fmt and fmt.at_start)
        self._spaces = ""  # content whitespace held until more content follows (dropped before a call)
        self.calls: list[dict] = []

    def feed(self, text: str) -> dict:
        self._buf += text
        out: dict[str, str] = {}
        while self._step(out):
            pass
        return out

    def _emit(self, out: dict, key: str, text: str) -> None:
        if text:
            out[key] = out.get(key, "") + text

    def _step(self, out: dict) -> bool:
        """Consume what can be decided from the buffer; True when the state changed (run again)."""
        buf = self._buf
        if self.state == "start":  # does the output open a thinking block?
            head = buf.lstrip()
            opening = self.reasoning.open
            if head.startswith(opening):
                self._buf, self.state = head[len(opening):], "reasoning"
                return True
            if opening.startswith(head):
                return False  # not decided yet
            self.state = "content"
            return True
        if self.state == "reasoning":
            closing = self.reasoning.close
            at = buf.find(closing)
            if at >= 0:
                self._emit(out, "reasoning_content", buf[:at])
                self._buf, self.state = buf[at + len(closing):], "content"
                self._strip_lead = True
                return True
            keep = _partial_suffix(buf, [closing])
            self._emit(out, "reasoning_content", buf[:len(buf) - keep])
            self._buf = buf[len(buf) - keep:]
            return False
        if self.state == "content":
            if self._strip_lead and not self._content_started:
                buf = self._buf = buf.lstrip()
                if not buf:
                    return False
            if self.fmt is None:
                self._content(out, buf)
                self._buf = ""
                return False
            if self._at_start and not self._content_started:
                head = buf.lstrip()
                if any(head.startswith(m) for m in self.fmt.at_start):
                    self.state = "call"
                    return False
                if not head:
                    return False
                self._at_start = False
            at = min((i for i in (buf.find(m) for m in self.fmt.markers) if i >= 0), default=-1)
            if at >= 0:
                self._content(out, buf[:at], before_call=True)
                self._buf, self.state = buf[at:], "call"
                return False
            keep = _partial_suffix(buf, self.fmt.markers)
            self._content(out, buf[:len(buf) - keep])
            self._buf = buf[len(buf) - keep:]
            return False
        return False  # "call": kept whole for finish()

    def _content(self, out: dict, text: str, before_call: bool = False) -> None:
        if not text:
            return
        if self.fmt is None:
            self._content_started = True
            self._emit(out, "content", text)
            return
        text = self._spaces + text
        body = text.rstrip()
        self._spaces = "" if before_call else text[len(body):]
        if body:
            self._content_started = True
            self._emit(out, "content", body)

    def parse(self, text: str) -> tuple[dict, list[dict]]:
        """A whole answer at once: its parts (content, reasoning_content) and its tool calls."""
        parts = self.feed(text)
        tail, calls = self.finish()
        for key, value in tail.items():
            parts[key] = parts.get(key, "") + value
        return parts, calls

    def finish(self) -> tuple[dict, list[dict]]:
        """The held-back text as a last delta, and the tool calls ([] when none)."""
        out: dict[str, str] = {}
        buf, self._buf = self._buf, ""
        if self.state == "reasoning":
            self._emit(out, "reasoning_content", buf)
        elif self.state == "call":
            parsed = parse_calls(self.fmt, buf)
            if parsed is None:
                self._content(out, buf)
            else:
                self.calls, rest = parsed
                self._content(out, rest)
        elif self.state == "start":
            self._emit(out, "content", buf)
        else:
            self._content(out, buf)
        if self._spaces and not self.calls:
            self._emit(out, "content", self._spaces)
        self._spaces = ""
        return out, self.calls
