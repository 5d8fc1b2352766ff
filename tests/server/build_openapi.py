"""Writes src/janlib/server/openapi.json: the Jan spec (../shared/spec/jan-openapi.json) kept whole, with
the server's ranges (janlib.server.schema.FIELDS), the OpenAI names it also accepts, its error
responses and the endpoints beside the spec.

    python tests/server/build_openapi.py [SPEC] [OUT]

The shipped document is the product; this script is how it was made, and test_openapi.py checks
that the two still agree."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "spec" / "jan-openapi.json"
OUT = ROOT / "src" / "janlib" / "server" / "openapi.json"

ERR = {"$ref": "#/components/schemas/ErrorResponse"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERR}}}


ERRORS = {
    "400": _error("Invalid request: bad JSON, a field of the wrong type or out of range (param names it), an "
                  "unsupported option, or context_length_exceeded"),
    "401": _error("Missing or wrong API key (when the server has keys)"),
    "404": _error("Unknown model (code model_not_found)"),
    "413": _error("Request body larger than the limit (8 MiB by default)"),
    "503": _error("Every slot busy and the queue full; retry after Retry-After seconds"),
}

EXTRA_CHAT_PROPERTIES = {
    "max_completion_tokens": {"type": "integer", "description": "OpenAI's newer name for max_tokens. When "
                              "several limits are given, n_predict wins, then max_completion_tokens, then "
                              "max_tokens; -1 = up to the end of the context."},
    "logprobs": {"type": "boolean", "default": False, "description": "Return per-token log probabilities."},
    "top_logprobs": {"type": "integer", "description": "With logprobs: how many alternatives per token."},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}},
                       "description": "With stream: include_usage adds a last chunk carrying usage."},
    "response_format": {"type": "object", "properties": {"type": {"type": "string",
                        "enum": ["text", "json_object", "json_schema"]}},
                        "description": "Only type text is served yet; the others are refused with 400."},
    "n": {"type": "integer", "default": 1, "description": "Number of choices, at most the server's --parallel; the "
          "prompt is evaluated once and the choices share it. With a seed s, choice i samples with seed s + i."},
    "user": {"type": "string", "description": "End-user id (accepted, ignored)."},
}

ERROR_SCHEMA = {
    "type": "object",
    "description": "The OpenAI error envelope.",
    "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True},
        "n_prompt_tokens": {"type": "integer", "description": "With code context_length_exceeded: the prompt's "
                            "length in tokens (as llama.cpp's server reports it)."},
        "n_ctx": {"type": "integer", "description": "With code context_length_exceeded: the context size."}},
        "required": ["message", "type", "param", "code"]}},
    "required": ["error"],
}

TIMINGS = {"type": "object", "description": "llama.cpp-style timings.", "properties": {
    k: {"type": "number"} for k in ("prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
                                    "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second")}}


def build(spec: dict) -> dict:
    from janlib.server.schema import FIELDS

    doc = copy.deepcopy(spec)
    doc["info"]["title"] = "janlib server: the Jan API"
    doc["info"]["description"] = (spec["info"]["description"] + "\n\nServed by janlib (`python -m janlib.server`). "
                                  "Beside the Jan paths: /completions, /health, /tokenize, /detokenize, /props, "
                                  "/metrics and /openapi.json, all also served at the root.")
    schemas = doc["components"]["schemas"]
    chat = schemas["CreateChatCompletionDto"]
    props = chat["properties"]
    for name, extra in EXTRA_CHAT_PROPERTIES.items():
        props.setdefault(name, extra)
    for name, field in FIELDS.items():
        if name not in props:
            continue
        if field.minimum is not None:
            props[name]["minimum"] = field.minimum
        if field.maximum is not None:
            props[name]["maximum"] = field.maximum
        if field.enum is not None:
            props[name]["enum"] = list(field.enum)
    props["messages"]["minItems"] = 1
    props["stop"]["description"] += " A single string is accepted too."
    props["samplers"]["items"]["enum"] = list(__import__("janlib.server.schema", fromlist=["x"]).SAMPLER_NAMES)
    props["n_predict"]["description"] += " Wins over max_tokens and max_completion_tokens when given."
    schemas["ChatCompletionMessage"]["properties"]["content"]["description"] += (
        " In requests, an array of OpenAI text parts ({type: text, text}) is accepted too.")
    role = schemas["ChatCompletionMessage"]["properties"]["role"]
    role["enum"].append("developer")
    role["description"] += (" developer is OpenAI's successor to system: a chat template that does not name it gets "
                            "it as a system message.")

    completion = copy.deepcopy(chat)
    completion["description"] = "Request body for `POST /v1/completions`: the chat fields, with prompt for messages."
    del completion["properties"]["messages"]
    completion["properties"] = {"prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items":
                                           {"type": "integer", "minimum": 0}, "minItems": 1}],
                                           "description": "Text, or token ids."}, **completion["properties"]}
    completion["required"] = ["model", "prompt"]
    schemas["CreateCompletionDto"] = completion
    schemas["CompletionResponseDto"] = {
        "type": "object", "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["text_completion"]},
            "created": {"type": "integer"}, "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "text": {"type": "string"}, "finish_reason": {"type": "string"},
                "logprobs": LOGPROBS}, "required": ["index", "text", "finish_reason"]}},
            "usage": {"$ref": "#/components/schemas/UsageDto"}, "timings": TIMINGS},
        "required": ["id", "object", "created", "model", "choices", "usage"]}
    schemas["ChatCompletionResponseDto"]["properties"]["timings"] = TIMINGS
    schemas["ChoiceDto"]["properties"]["logprobs"] = LOGPROBS
    schemas["ChatCompletionChunk"] = {
        "type": "object", "description": "One Server-Sent Event of a streamed chat completion (`data: {...}`), "
        "ending with `data: [DONE]`.", "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": {"type": "integer"}, "model": {"type": "string"}, "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "delta": {"type": "object", "properties": {
                    "role": {"type": "string"}, "content": {"type": "string", "nullable": True}}},
                "finish_reason": {"type": "string", "nullable": True},
                "logprobs": LOGPROBS}, "required": ["index", "delta"]}},
            "usage": {"allOf": [{"$ref": "#/components/schemas/UsageDto"}], "nullable": True}},
        "required": ["id", "object", "created", "model", "choices"]}
    schemas["ErrorResponse"] = ERROR_SCHEMA
    schemas["Timings"] = TIMINGS

    paths = doc["paths"]
    chat_op = paths["/chat/completions"]["post"]
    chat_op["responses"]["200"]["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "With stream: ChatCompletionChunk events, then [DONE]."}}
    chat_op["responses"].update(copy.deepcopy(ERRORS))
    paths["/models"]["get"]["responses"]["401"] = ERRORS["401"]

    def op(method, path, summary, op_id, response, request=None, errors=("400", "401"), public=False,
           content_type="application/json"):
        entry = {"summary": summary, "operationId": op_id, "tags": ["janlib"], "responses": {
            "200": {"description": "OK", "content": {content_type: {"schema": response}}}}}
        for code in errors:
            entry["responses"][code] = copy.deepcopy(ERRORS[code])
        if request is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": request}}}
        if public:
            entry["security"] = []
        paths.setdefault(path, {})[method] = entry

    op("post", "/completions", "Create a text completion", "createCompletion",
       {"$ref": "#/components/schemas/CompletionResponseDto"}, {"$ref": "#/components/schemas/CreateCompletionDto"},
       errors=("400", "401", "404", "413", "503"))
    paths["/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    op("get", "/models/{model_id}", "Describe the served model", "getModel",
       {"$ref": "#/components/schemas/ModelDto"}, errors=("401", "404"))
    paths["/models/{model_id}"]["get"]["parameters"] = [
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    op("get", "/health", "Liveness", "health", {"type": "object", "properties": {"status": {"type": "string"}},
       "required": ["status"]}, errors=(), public=True)
    op("post", "/tokenize", "Text to token ids (llama.cpp shape)", "tokenize",
       {"type": "object", "properties": {"tokens": {"type": "array"}}, "required": ["tokens"]},
       {"type": "object", "properties": {"content": {"type": "string"}, "add_special": {"type": "boolean",
        "default": False}, "parse_special": {"type": "boolean", "default": True},
        "with_pieces": {"type": "boolean", "default": False}}, "required": ["content"]},
       errors=("400", "401", "413"))
    op("post", "/detokenize", "Token ids to text (llama.cpp shape)", "detokenize",
       {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]},
       {"type": "object", "properties": {"tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
       errors=("400", "401", "413"))
    op("get", "/props", "Server and model properties (llama.cpp shape)", "props",
       {"type": "object", "properties": {"total_slots": {"type": "integer"}}, "required": ["total_slots"]},
       errors=("401",))
    op("get", "/metrics", "Prometheus metrics", "metrics", {"type": "string"}, errors=("401",),
       content_type="text/plain")
    op("get", "/openapi.json", "This document", "openapi", {"type": "object"}, errors=("401",))
    for item in paths.values():
        for operation in item.values():
            if "requestBody" in operation:
                _optional_properties_nullable(operation["requestBody"]["content"]["application/json"]["schema"],
                                              schemas)
    return doc


def _optional_properties_nullable(schema: dict, schemas: dict) -> None:
    """Every optional property of a request body may be null, meaning "not given" (what OpenAI clients
    send for the options they leave unset)."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        if name not in required:
            prop["nullable"] = True


# What OpenAI clients read (choice.logprobs.content), as llama.cpp's server answers too; the Jan
# spec's ChoiceDto has the array of ChatChoiceLogprobs bare, which those clients cannot parse.
LOGPROBS = {"type": "object", "nullable": True, "description": "Per-token log probabilities, when requested.",
            "properties": {"content": {"type": "array", "items": {"$ref": "#/components/schemas/ChatChoiceLogprobs"}}}}


def main() -> None:
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else SPEC
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
    doc = build(json.loads(spec_path.read_text("utf-8")))
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(out)


if __name__ == "__main__":
    main()
