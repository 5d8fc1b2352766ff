"""Request validation: every field of the spec's CreateChatCompletionDto (and the OpenAI and llama.cpp
names clients send) checked for type and range, with the spec's stated defaults.

Two rules hold for every endpoint: null for an optional field means "not given" (clients send null
for the options they leave unset), and a lone UTF-16 surrogate in any string of the body (valid JSON,
but no UTF-8 text can carry it) is replaced by U+FFFD when the body is parsed, as a browser's
TextEncoder does, so every string reaching the tokenizer, stop filter or grammar compiler is text.

The table FIELDS is the one source: the validator reads it, and the ranges in the shipped
openapi.json were written from it (tests/server check that they agree)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from janlib.tokenizer import replace_lone_surrogates

from .errors import APIError, invalid

_MISSING = object()


@dataclass(frozen=True)
class Field:
    kind: str  # integer | number | boolean | string | string_list | object | array
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple | None = None
    sampler: bool = False  # goes into janlib.sampling.SamplingParams


SAMPLER_NAMES = ("dry", "top_k", "typ_p", "typical_p", "top_p", "min_p", "xtc", "temperature",
                 "penalties", "top_n_sigma", "infill")

# Generation and sampler fields shared by /v1/chat/completions and /v1/completions.
FIELDS: dict[str, Field] = {
    "stream": Field("boolean", False),
    "max_tokens": Field("integer", None, -1, None),
    "max_completion_tokens": Field("integer", None, -1, None),
    "n_predict": Field("integer", -1, -1, None),
    "temperature": Field("number", 0.8, 0.0, None, sampler=True),
    "dynatemp_range": Field("number", 0.0, 0.0, None, sampler=True),
    "dynatemp_exponent": Field("number", 1.0, 0.0, None, sampler=True),
    "top_k": Field("integer", 40, 0, None, sampler=True),
    "top_p": Field("number", 0.95, 0.0, 1.0, sampler=True),
    "min_p": Field("number", 0.05, 0.0, 1.0, sampler=True),
    "typical_p": Field("number", 1.0, 0.0, 1.0, sampler=True),
    "n_indent": Field("integer", 0, 0, None),
    "n_keep": Field("integer", 0, -1, None),
    "presence_penalty": Field("number", 0.0, -2.0, 2.0, sampler=True),
    "frequency_penalty": Field("number", 0.0, -2.0, 2.0, sampler=True),
    "repeat_penalty": Field("number", 1.1, 0.0, None, sampler=True),
    "repeat_last_n": Field("integer", 64, -1, None, sampler=True),
    "dry_multiplier": Field("number", 0.0, 0.0, None, sampler=True),
    "dry_base": Field("number", 1.75, 1.0, None, sampler=True),
    "dry_allowed_length": Field("integer", 2, 0, None, sampler=True),
    "dry_penalty_last_n": Field("integer", -1, -1, None, sampler=True),
    "dry_sequence_breakers": Field("string_list", ("\n", ":", "\"", "*"), sampler=True),
    "xtc_probability": Field("number", 0.0, 0.0, 1.0, sampler=True),
    "xtc_threshold": Field("number", 0.1, 0.0, 1.0, sampler=True),
    "mirostat": Field("integer", 0, enum=(0, 1, 2), sampler=True),
    "mirostat_tau": Field("number", 5.0, 0.0, None, sampler=True),
    "mirostat_eta": Field("number", 0.1, 0.0, None, sampler=True),
    "grammar": Field("string", ""),
    "json_schema": Field("object", None),
    "seed": Field("integer", -1, -1, 2**32 - 1, sampler=True),
    "ignore_eos": Field("boolean", False),
    "logit_bias": Field("object", None, sampler=True),
    "n_probs": Field("integer", 0, 0, None, sampler=True),
    "min_keep": Field("integer", 0, 0, None, sampler=True),
    "t_max_predict_ms": Field("integer", 0, 0, None),
    "id_slot": Field("integer", -1, -1, None),
    "cache_prompt": Field("boolean", True),
    "return_tokens": Field("boolean", False),
    "samplers": Field("string_list", ("dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"),
                      sampler=True),
    "timings_per_token": Field("boolean", False),
    "return_progress": Field("boolean", False),
    "post_sampling_probs": Field("boolean", False, sampler=True),
    "response_fields": Field("string_list", None),
    "lora": Field("array", None),
    "multimodal_data": Field("string_list", None),
    # OpenAI names
    "logprobs": Field("boolean", False),
    "top_logprobs": Field("integer", None, 0, 20),
    "stream_options": Field("object", None),
    "response_format": Field("object", None),
    "n": Field("integer", 1, 1, 8),  # choices; at most --parallel (checked per request)
    "user": Field("string", None),
    "model": Field("string", None),
}

LOGIT_BIAS_LIMIT = 100.0

# Strict UTF-8 refuses encoded surrogates, so one can only arrive as a \uD800-\uDFFF escape: bodies
# without such an escape (nearly all) skip the walk over their strings.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON of any shape, lone surrogates replaced by U+FFFD in every string and key;
    400 when it is not JSON (NaN and Infinity included)."""

    def _no_constants(name):
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=_no_constants)
        if _SURROGATE_ESCAPE.search(raw):
            body = _without_lone_surrogates(body)
    except UnicodeDecodeError:
        raise invalid("the request body is not UTF-8", None, "invalid_json") from None
    except (ValueError, RecursionError) as error:
        raise invalid(f"the request body is not valid JSON: {error}", None, "invalid_json") from None
    return body


def parse_json_body(raw: bytes) -> dict:
    """The request body as a JSON object, lone surrogates replaced by U+FFFD in every string and key;
    400 for anything else (NaN and Infinity included)."""
    if not raw:
        raise invalid("the request body is empty: a JSON object is expected", None, "invalid_json")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, not {_json_type(body)}", None, "invalid_json")
    return body


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def check_value(name: str, value: Any, spec: Field) -> Any:
    """value checked against spec; returns it normalized (integral floats become ints, lists stay lists)."""
    kind = spec.kind
    if kind == "integer":
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"'{name}' must be an integer, got {_json_type(value)}", name, "invalid_type")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"'{name}' must be a number, got {_json_type(value)}", name, "invalid_type")
        value = float(value)
        if not math.isfinite(value):
            raise invalid(f"'{name}' must be finite", name)
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise invalid(f"'{name}' must be a boolean, got {_json_type(value)}", name, "invalid_type")
    elif kind == "string":
        if not isinstance(value, str):
            raise invalid(f"'{name}' must be a string, got {_json_type(value)}", name, "invalid_type")
    elif kind == "string_list":
        if not isinstance(value, list):
            raise invalid(f"'{name}' must be an array of strings, got {_json_type(value)}", name, "invalid_type")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise invalid(f"'{name}[{i}]' must be a string, got {_json_type(item)}", f"{name}[{i}]",
                              "invalid_type")
        value = list(value)
    elif kind == "array":
        if not isinstance(value, list):
            raise invalid(f"'{name}' must be an array, got {_json_type(value)}", name, "invalid_type")
    elif kind == "object":
        if not isinstance(value, dict):
            raise invalid(f"'{name}' must be an object, got {_json_type(value)}", name, "invalid_type")
    if spec.enum is not None and value not in spec.enum:
        raise invalid(f"'{name}' must be one of {', '.join(map(str, spec.enum))}, got {value!r}", name)
    if spec.minimum is not None and value < spec.minimum:
        raise invalid(f"'{name}' must be at least {spec.minimum:g}, got {value!r}", name)
    if spec.maximum is not None and value > spec.maximum:
        raise invalid(f"'{name}' must be at most {spec.maximum:g}, got {value!r}", name)
    return value


def parse_fields(body: dict) -> dict:
    """Every FIELDS entry: the checked value from body, or the default when absent or null."""
    out: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        value = body.get(name)
        if value is None:
            default = spec.default
            out[name] = list(default) if isinstance(default, tuple) else default
            continue
        out[name] = check_value(name, value, spec)
    out["stop"] = _parse_stop(body.get("stop"))
    out["_given"] = {name for name in FIELDS if body.get(name) is not None}
    _check_semantics(out)
    return out


def _parse_stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        raise invalid(f"'stop' must be a string or an array of strings, got {_json_type(value)}", "stop",
                      "invalid_type")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"'stop[{i}]' must be a string, got {_json_type(item)}", f"stop[{i}]", "invalid_type")
    return [s for s in value if s]


def check_lora_item(item: Any, where: str) -> None:
    """One {"id": N, "scale": S} entry of a LoRA selection (whether id names a loaded adapter is the
    caller's check)."""
    if not isinstance(item, dict):
        raise invalid(f"'{where}' must be an object with id and scale, got {_json_type(item)}", where, "invalid_type")
    unknown = sorted(set(item) - {"id", "scale"})
    if unknown:
        raise invalid(f"'{where}' has the unknown key {unknown[0]!r}: an entry is {{id, scale}}", f"{where}.{unknown[0]}")
    adapter_id = item.get("id")
    if isinstance(adapter_id, bool) or not isinstance(adapter_id, int) or adapter_id < 0:
        raise invalid(f"'{where}.id' must be a non-negative integer, got {adapter_id!r}", f"{where}.id", "invalid_type")
    if "scale" not in item:
        raise invalid(f"'{where}.scale' is required", f"{where}.scale", "missing_required_parameter")
    scale = item["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise invalid(f"'{where}.scale' must be a number, got {_json_type(scale)}", f"{where}.scale", "invalid_type")


def _check_semantics(out: dict) -> None:
    constraints = [name for name in ("grammar", "json_schema") if out[name] not in (None, "")]
    fmt = out["response_format"]
    if fmt is not None:
        kind = fmt.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise invalid("'response_format.type' must be one of text, json_object, json_schema",
                          "response_format.type")
        if kind != "text":
            constraints.append("response_format")
    if len(constraints) > 1:  # as llama.cpp: one constraint per request
        raise invalid(f"only one of grammar, json_schema and response_format may constrain the output, got "
                      f"{' and '.join(constraints)}", constraints[1])
    for i, item in enumerate(out["lora"] or ()):
        check_lora_item(item, f"lora[{i}]")
    if out["multimodal_data"]:  # the endpoints that take images read it before the fields are parsed
        raise APIError(400, "'multimodal_data' is taken by /v1/chat/completions, /v1/completions and /completion "
                       "only", param="multimodal_data", code="unsupported_parameter")
    options = out["stream_options"]
    if options is not None:
        include = options.get("include_usage")
        if include is not None and not isinstance(include, bool):
            raise invalid("'stream_options.include_usage' must be a boolean", "stream_options.include_usage",
                          "invalid_type")
    for name in ("samplers",):
        for i, item in enumerate(out[name]):
            if item not in SAMPLER_NAMES:
                raise invalid(f"'{name}[{i}]' is not a sampler: {item!r} (known: {', '.join(SAMPLER_NAMES)})",
                              f"{name}[{i}]")
    for i, item in enumerate(out["dry_sequence_breakers"]):
        if not item:
            raise invalid(f"'dry_sequence_breakers[{i}]' must not be empty", f"dry_sequence_breakers[{i}]")
    if out["top_logprobs"] is not None and not out["logprobs"]:
        raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")


def check_logit_bias(bias: dict | None, n_vocab: int) -> dict[int, float]:
    """{"token id": bias in [-100, 100] | false (ban) | true (no change, as llama.cpp)} → {id: bias}."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        param = f"logit_bias.{key}"
        try:
            token = int(key)
        except ValueError:
            raise invalid(f"'logit_bias' keys must be token ids, got {key!r}", param) from None
        if not 0 <= token < n_vocab:
            raise invalid(f"'logit_bias' token id {token} is outside the vocabulary (0..{n_vocab - 1})", param)
        if isinstance(value, bool):
            if not value:
                out[token] = -math.inf
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise invalid(f"'logit_bias.{key}' must be a number or a boolean", param, "invalid_type")
        if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
            raise invalid(f"'logit_bias.{key}' must be in -100..100, got {value!r}", param)
        out[token] = float(value)
    return out


def effective_max_tokens(fields: dict) -> tuple[int, str]:
    """The generation limit and the field it came from: a given n_predict wins over
    max_completion_tokens, which wins over max_tokens (llama.cpp's order: n_predict is its own
    name, the OpenAI ones are aliases); -1 = no limit but the context."""
    for name in ("n_predict", "max_completion_tokens", "max_tokens"):
        if name in fields["_given"]:
            return fields[name], name
    return -1, "n_predict"


def _text_of(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        if not content:
            raise invalid(f"'{param}' must not be an empty array", param)
        parts = []
        for i, part in enumerate(content):
            p = f"{param}[{i}]"
            if not isinstance(part, dict):
                raise invalid(f"'{p}' must be a content part object", p, "invalid_type")
            kind = part.get("type")
            if kind != "text":
                if kind in ("image_url", "image"):  # /v1/chat/completions turns image_url parts into markers first
                    raise APIError(400, f"'{p}': {kind} content is not taken here: send images to "
                                   "/v1/chat/completions as image_url parts", param=p, code="unsupported_parameter")
                if kind in ("input_audio", "file"):
                    raise APIError(400, f"'{p}': {kind} content is not supported (janlib takes images only)",
                                   param=p, code="unsupported_parameter")
                raise invalid(f"'{p}.type' must be 'text', got {kind!r}", f"{p}.type")
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"'{p}.text' must be a string", f"{p}.text", "invalid_type")
            parts.append(text)
        return "".join(parts)
    raise invalid(f"'{param}' must be a string or an array of text parts, got {_json_type(content)}", param,
                  "invalid_type")


# developer: OpenAI's successor to system (janlib.chat renders it as system for templates without it);
# tool: a tool's result; function: the legacy name of a tool result (mapped to tool)
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_messages(value: Any) -> list[dict]:
    """Chat messages as the template gets them: role and content text, and for tool use the assistant's
    tool_calls (content may then be null or absent), a tool result's tool_call_id, and a name."""
    if value is _MISSING or value is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(value, list):
        raise invalid(f"'messages' must be an array, got {_json_type(value)}", "messages", "invalid_type")
    if not value:
        raise invalid("'messages' must contain at least one message", "messages")
    return [_parse_message(message, f"messages[{i}]") for i, message in enumerate(value)]


def _parse_message(message: Any, p: str) -> dict:
    if not isinstance(message, dict):
        raise invalid(f"'{p}' must be an object, got {_json_type(message)}", p, "invalid_type")
    role = message.get("role", _MISSING)
    if role is _MISSING:
        raise invalid(f"'{p}.role' is required", f"{p}.role", "missing_required_parameter")
    if role not in ROLES:
        raise invalid(f"'{p}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{p}.role")
    out: dict[str, Any] = {"role": role}
    calls = message.get("tool_calls")
    legacy_call = message.get("function_call")
    if role == "assistant" and (calls is not None or legacy_call is not None):
        out["tool_calls"] = (_parse_tool_calls(calls, f"{p}.tool_calls") if calls is not None else
                             [_parse_call_function(legacy_call, f"{p}.function_call", "call_0")])
    content = message.get("content", _MISSING)
    if content is _MISSING or content is None:
        if not out.get("tool_calls"):
            raise invalid(f"'{p}.content' is required", f"{p}.content", "missing_required_parameter")
        out["content"] = None
    elif role == "assistant" and isinstance(content, list) and not content and out.get("tool_calls"):
        out["content"] = None
    else:
        out["content"] = _text_of(content, f"{p}.content")
    name = message.get("name")
    if name is not None:
        out["name"] = check_value(f"{p}.name", name, Field("string"))
    if role == "function":  # legacy: the result of function_call, named by the function
        out["role"] = "tool"
        out["tool_call_id"] = "call_0"
    elif role == "tool":
        call_id = message.get("tool_call_id")
        if call_id is None:
            raise invalid(f"'{p}.tool_call_id' is required for a tool message", f"{p}.tool_call_id",
                          "missing_required_parameter")
        out["tool_call_id"] = check_value(f"{p}.tool_call_id", call_id, Field("string"))
    reasoning = message.get("reasoning_content")
    if role == "assistant" and reasoning is not None:  # templates of thinking models render it (Qwen3)
        out["reasoning_content"] = check_value(f"{p}.reasoning_content", reasoning, Field("string"))
    return out


def _parse_tool_calls(value: Any, p: str) -> list[dict]:
    if not isinstance(value, list):
        raise invalid(f"'{p}' must be an array, got {_json_type(value)}", p, "invalid_type")
    calls = []
    for i, call in enumerate(value):
        q = f"{p}[{i}]"
        if not isinstance(call, dict):
            raise invalid(f"'{q}' must be an object, got {_json_type(call)}", q, "invalid_type")
        if call.get("type") not in (None, "function"):
            raise invalid(f"'{q}.type' must be 'function', got {call.get('type')!r}", f"{q}.type")
        call_id = call.get("id")
        call_id = f"call_{i}" if call_id is None else check_value(f"{q}.id", call_id, Field("string"))
        calls.append(_parse_call_function(call.get("function", _MISSING), f"{q}.function", call_id))
    return calls


def _parse_call_function(function: Any, p: str, call_id: str) -> dict:
    if function is _MISSING or function is None:
        raise invalid(f"'{p}' is required", p, "missing_required_parameter")
    if not isinstance(function, dict):
        raise invalid(f"'{p}' must be an object, got {_json_type(function)}", p, "invalid_type")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"'{p}.name' must be a non-empty string", f"{p}.name", "invalid_type")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif isinstance(arguments, dict):  # an object where OpenAI has its JSON text: accepted
        arguments = json.dumps(arguments, ensure_ascii=False)
    elif not isinstance(arguments, str):
        raise invalid(f"'{p}.arguments' must be a JSON string, got {_json_type(arguments)}", f"{p}.arguments",
                      "invalid_type")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


REASONING_FORMATS = ("none", "deepseek", "auto")


def parse_chat_options(body: dict) -> dict:
    """The chat-only fields: tools (or the legacy functions), tool_choice, parallel_tool_calls, prefill
    (add_generation_prompt, continue_final_message), reasoning_format and chat_template_kwargs.

    tool_choice is "none" | "auto" | "required" | a function's name; without tools it is ignored (some
    clients always send it). parallel_tool_calls defaults to false, as llama.cpp: small models asked
    for "one or more" calls tend to repeat a call until max_tokens."""
    tools, legacy = _parse_tools(body)
    choice = "auto" if tools else "none"
    choice_field = "function_call" if legacy else "tool_choice"
    raw_choice = body.get(choice_field)
    if tools and raw_choice is not None:
        choice = _parse_tool_choice(raw_choice, choice_field, {t["function"]["name"] for t in tools})
    add_prompt = get_typed(body, "add_generation_prompt", "boolean", None)
    continue_final = get_typed(body, "continue_final_message", "boolean", False)
    if continue_final and add_prompt:
        raise invalid("'continue_final_message' and 'add_generation_prompt' cannot both be true: the first "
                      "continues the last message, the second starts a new one", "continue_final_message")
    kwargs = get_typed(body, "chat_template_kwargs", "object", {})
    reasoning_format = get_typed(body, "reasoning_format", "string", None)  # None: the server's default
    if reasoning_format is not None and reasoning_format not in REASONING_FORMATS:
        raise invalid(f"'reasoning_format' must be one of {', '.join(REASONING_FORMATS)}, got {reasoning_format!r}",
                      "reasoning_format")
    if tools and choice != "none" and body.get("grammar"):
        raise invalid("'grammar' cannot constrain the output together with tools (the calls are constrained)",
                      "grammar")
    return {"tools": tools, "tool_choice": choice,
            "parallel_tool_calls": get_typed(body, "parallel_tool_calls", "boolean", False),
            "legacy_functions": legacy, "add_generation_prompt": add_prompt,
            "continue_final_message": continue_final, "chat_template_kwargs": kwargs,
            "reasoning_format": reasoning_format}


def _parse_tools(body: dict) -> tuple[list[dict], bool]:
    """[{"type": "function", "function": {name, description, parameters}}], and whether they came as the
    legacy functions."""
    tools, functions = body.get("tools"), body.get("functions")
    if tools is not None and functions is not None:
        raise invalid("give 'tools' or the legacy 'functions', not both", "functions")
    legacy = tools is None and functions is not None
    name = "functions" if legacy else "tools"
    value = functions if legacy else tools
    if value is None:
        return [], False
    if not isinstance(value, list):
        raise invalid(f"'{name}' must be an array, got {_json_type(value)}", name, "invalid_type")
    out, seen = [], set()
    for i, tool in enumerate(value):
        p = f"{name}[{i}]"
        if not isinstance(tool, dict):
            raise invalid(f"'{p}' must be an object, got {_json_type(tool)}", p, "invalid_type")
        if not legacy:
            if tool.get("type") != "function":
                raise invalid(f"'{p}.type' must be 'function', got {tool.get('type')!r}", f"{p}.type")
            function = tool.get("function")
            p = f"{p}.function"
            if not isinstance(function, dict):
                raise invalid(f"'{p}' must be an object", p, "missing_required_parameter" if function is None
                              else "invalid_type")
        else:
            function = tool
        fname = function.get("name")
        if not isinstance(fname, str) or not _TOOL_NAME.fullmatch(fname):
            raise invalid(f"'{p}.name' must be 1-64 letters, digits, _ . or -, got {fname!r}", f"{p}.name")
        if fname in seen:
            raise invalid(f"'{p}.name': two tools are named {fname!r}", f"{p}.name")
        seen.add(fname)
        entry = {"name": fname}
        description = function.get("description")
        if description is not None:
            entry["description"] = check_value(f"{p}.description", description, Field("string"))
        parameters = function.get("parameters")
        if parameters is not None:
            entry["parameters"] = check_value(f"{p}.parameters", parameters, Field("object"))
        out.append({"type": "function", "function": entry})
    return out, legacy


def _parse_tool_choice(value: Any, name: str, names: set[str]) -> str:
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise invalid(f"'{name}' must be none, auto, required or an object naming a function, got {value!r}",
                          name)
        return value
    if not isinstance(value, dict):
        raise invalid(f"'{name}' must be a string or an object, got {_json_type(value)}", name, "invalid_type")
    function = value.get("function") if name == "tool_choice" else value
    if name == "tool_choice" and value.get("type") != "function":
        raise invalid("'tool_choice.type' must be 'function'", "tool_choice.type")
    param = f"{name}.function.name" if name == "tool_choice" else f"{name}.name"
    chosen = function.get("name") if isinstance(function, dict) else None
    if not isinstance(chosen, str):
        raise invalid(f"'{param}' must be a string", param, "invalid_type")
    if chosen not in names:
        raise invalid(f"'{param}' names {chosen!r}, which is not among the tools", param)
    return chosen


def require_model(body: dict) -> str:
    model = body.get("model", _MISSING)
    if model is _MISSING or model is None:
        raise invalid("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise invalid(f"'model' must be a string, got {_json_type(model)}", "model", "invalid_type")
    return model


def parse_prompt(value: Any, n_vocab: int) -> str | list[int]:
    """/v1/completions prompt: text, token ids, or a one-element array of either."""
    if value is _MISSING or value is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            raise invalid("'prompt' must not be empty", "prompt")
        return check_token_ids(value, n_vocab, "prompt")
    raise invalid(f"'prompt' must be a string or an array of token ids, got {_json_type(value)}", "prompt",
                  "invalid_type")


def check_token_ids(value: Any, n_vocab: int, name: str) -> list[int]:
    if not isinstance(value, list):
        raise invalid(f"'{name}' must be an array of token ids, got {_json_type(value)}", name, "invalid_type")
    out = []
    for i, token in enumerate(value):
        if isinstance(token, float) and token.is_integer():
            token = int(token)
        if isinstance(token, bool) or not isinstance(token, int):
            raise invalid(f"'{name}[{i}]' must be an integer token id", f"{name}[{i}]", "invalid_type")
        if not 0 <= token < n_vocab:
            raise invalid(f"'{name}[{i}]' = {token} is outside the vocabulary (0..{n_vocab - 1})", f"{name}[{i}]")
        out.append(token)
    return out


def get_typed(body: dict, name: str, kind: str, default: Any) -> Any:
    """An optional field of kind: default when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    return check_value(name, value, Field(kind))
