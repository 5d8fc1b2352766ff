"""POST /v1/chat/completions and POST /v1/completions."""

from __future__ import annotations

import itertools

from flask import Blueprint, jsonify, request

from janlib import tools
from janlib.chat import ChatTemplateError
from janlib.reasoning import thinking_variables
from janlib.structured import GrammarError

from . import completion as c
from . import media, native, schema, sse
from .errors import APIError, invalid
from .state import state

bp = Blueprint("inference", __name__)


def prepare(st, messages: list[dict], options: dict, fields: dict, final_parts: list[str] | None = None):
    """The rendered prompt and the tool-call constraint and parsers (janlib.tools.ChatSetup) for a chat
    request; prefill as llama.cpp: a final assistant message is continued unless add_generation_prompt
    says otherwise. final_parts: the texts of the final message's content parts, which a continued message
    joins with a blank line (llama.cpp's common_chat_msg::render_content)."""
    final = messages[-1]
    continue_final = options["continue_final_message"]
    add_prompt = options["add_generation_prompt"]
    if not continue_final and add_prompt is None and final["role"] == "assistant" and not final.get("tool_calls"):
        if len(messages) > 1 and messages[-2]["role"] == "assistant":
            raise invalid("two assistant messages end the conversation: the last one would be continued "
                          "(prefill), which needs one", "messages")
        continue_final = True
    if continue_final and final_parts:
        messages = messages[:-1] + [dict(final, content="\n\n".join(final_parts))]
    active = options["tools"] and options["tool_choice"] != "none"
    if active:
        for name in ("json_schema", "response_format"):
            if name in fields["_given"] and (name != "response_format" or fields[name].get("type") != "text"):
                raise invalid(f"'{name}' cannot constrain the output together with tools (the calls are "
                              "constrained); give tool_choice 'none' or leave the tools out", name)
    try:
        return tools.prepare_chat(
            st.model, messages, tools=options["tools"], tool_choice=options["tool_choice"],
            parallel_tool_calls=options["parallel_tool_calls"],
            add_generation_prompt=not continue_final if add_prompt is None else add_prompt,
            continue_final_message=continue_final,
            reasoning_format=options["reasoning_format"] or st.config.reasoning_format,
            template_kwargs={**thinking_variables(st.config.reasoning), **options["chat_template_kwargs"]})
    except ChatTemplateError as error:  # the messages don't fit the template
        raise invalid(f"the messages cannot be rendered with the model's chat template: {error}",
                      "messages") from None
    except GrammarError as error:
        raise invalid(f"the tools cannot constrain the output: {error.reason}", "tools") from None


def prepare_body(st, body: dict):
    """A chat request body's setup (prepare) and fields; its images (image_url content parts, or
    multimodal_data for the <__media__> markers in the messages' text) go into setup.ids, a MediaPrompt."""
    raw_messages, images, image_fields = media.chat_images(st, body.get("messages", schema._MISSING))
    data = media.multimodal_data(st, body.pop("multimodal_data", None), "multimodal_data")
    if data and images:
        raise invalid("give images either as multimodal_data (for <__media__> markers in the text) or as image_url "
                      "content parts, not both", "multimodal_data")
    if data:
        images, image_fields = data, [f"multimodal_data[{i}]" for i in range(len(data))]
    messages = schema.parse_messages(raw_messages)
    fields = schema.parse_fields(body)
    options = schema.parse_chat_options(body)
    c.check_request_options(st, fields)
    final_content = raw_messages[-1].get("content")  # parse_messages checked its parts
    final_parts = [part["text"] for part in final_content] if isinstance(final_content, list) else None
    setup = prepare(st, messages, options, fields, final_parts)
    media.add_chat_images(st, setup, images, image_fields, "multimodal_data" if data else "messages")
    return setup, fields, options


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    c.check_model_name(st, body)
    setup, fields, options = prepare_body(st, body)
    handle, max_tokens = submit(st, setup, fields)
    cid, created = c.new_id("chatcmpl-"), c.now()
    legacy = options["legacy_functions"]
    if fields["stream"]:
        events = iter(handle)
        first = c.first_events(events, fields["return_progress"])
        return c.stream_response(_chat_chunks(st, events, first, handle, fields, cid, created, setup, legacy),
                                 handle)
    out = c.collect(handle, lambda: c.TokenLogprobs.for_request(st, fields))
    choices = []
    for i, choice in enumerate(out.choices):
        message, finish = assistant_message(setup.parser(), choice.text, choice.done["finish_reason"], legacy)
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": choice.logprobs})
    return _response(st, out, fields, max_tokens, setup.prompt, cid, created, "chat.completion", choices,
                     verbose_ids=setup.ids if verbose(st, body) else None)


@bp.post("/v1/chat/completions/input_tokens")
@bp.post("/chat/completions/input_tokens")
def chat_input_tokens():
    """How many tokens the chat request's prompt is (template, tools and all), without generating:
    {"input_tokens": n}, as llama-server answers it."""
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    c.check_model_name(st, body)
    setup, _fields, _options = prepare_body(st, body)
    return jsonify({"input_tokens": len(setup.ids)})


def submit(st, setup, fields: dict):
    """Queue a prepared chat request (its tool-call constraint included): (handle, max_tokens)."""
    job, max_tokens = c.make_request(st, setup.ids, fields)
    if setup.constraint is not None:
        job.constraint = setup.constraint
    return c.submit(st, job), max_tokens


def assistant_message(parser, text: str, finish_reason: str, legacy: bool = False) -> tuple[dict, str]:
    """The OpenAI message for a whole output and its finish_reason: content null when there are only
    calls, finish_reason tool_calls (function_call for the legacy functions) when the model called."""
    delta, calls = parser.parse(text)
    message = {"role": "assistant", "content": delta.get("content", None if calls else "")}
    if "reasoning_content" in delta:
        message["reasoning_content"] = delta["reasoning_content"]
    if calls and legacy:
        message["function_call"] = calls[0]["function"]
    elif calls:
        message["tool_calls"] = calls
    return message, _finish_reason(finish_reason, calls, legacy)


def _finish_reason(reason: str, calls: list, legacy: bool) -> str:
    if calls and reason == "stop":
        return "function_call" if legacy else "tool_calls"
    return reason


def call_deltas(calls: list[dict], legacy: bool) -> list[dict]:
    """The streamed form of calls: per call a delta with its index, id, type and name, then one with its
    arguments (the legacy function_call: name, then arguments)."""
    if legacy:
        function = calls[0]["function"]
        return [{"function_call": {"name": function["name"], "arguments": ""}},
                {"function_call": {"arguments": function["arguments"]}}]
    out = []
    for i, call in enumerate(calls):
        out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""}}]})
        out.append({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]})
    return out


def verbose(st, body: dict) -> bool:
    """llama-server's `verbose` request field, on by default when the server runs with --verbose."""
    return schema.get_typed(body, "verbose", "boolean", st.config.log_level == "debug")


def _response(st, out, fields, max_tokens, prompt, cid, created, kind, choices, verbose_ids=None):
    """The non-stream answer of either endpoint around its choices; with verbose_ids (the prompt's tokens),
    llama-server's debugging copy of the first choice in its native shape under "__verbose"."""
    done = [choice.done for choice in out.choices]
    response = {
        "id": cid, "object": kind, "created": created, "model": st.model_id,
        "system_fingerprint": c.system_fingerprint(st),
        "choices": choices,
        "usage": c.usage(out.start, out.n_predicted),
        "generation_settings": c.generation_settings(st, fields, max_tokens),
        "prompt": prompt,
        "truncated": any(d["context_full"] for d in done),
        "tokens_cached": out.start.get("n_cached", 0),
        "tokens_evaluated": out.start.get("n_prompt", 0),
        "id_slot": out.start.get("slot", -1),
        "timings": c.timings(out.start, max(done, key=lambda d: d["predicted_ms"]), out.n_predicted),
    }
    if fields["return_tokens"]:
        response["tokens"] = out.choices[0].tokens
    if verbose_ids is not None:
        first = out.choices[0]
        response["__verbose"] = native.final_result(st, fields, max_tokens, verbose_ids, out.start, first.done,
                                                    first.text, first.tokens, 0)
    return jsonify(c.select_fields(response, fields["response_fields"]))


def _chat_chunks(st, events, first, handle, fields, cid, created, setup, legacy):
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": st.model_id,
            "system_fingerprint": c.system_fingerprint(st)}
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))
    parsers = [setup.parser() for _ in range(handle.request.n)]

    def event(index, delta, finish=None, logprobs=None, **extra):
        payload = dict(base, choices=[{"index": index, "delta": delta, "logprobs": logprobs,
                                       "finish_reason": finish}])
        if include_usage:
            payload["usage"] = None
        payload.update(extra)
        return sse.event(payload)

    def chunk(index, text=None, finish=None, logprobs=None, **extra):
        """The text's reasoning and content deltas; at the finish, what the parser held back and the calls."""
        delta = parsers[index].feed(text) if text else {}
        if finish is None:
            return event(index, delta, None, logprobs, **extra) if delta or logprobs or extra else b""
        tail, calls = parsers[index].finish()
        for key, value in tail.items():
            delta[key] = delta.get(key, "") + value
        out = [event(index, delta, None, logprobs)] if delta or logprobs else []
        out += [event(index, d) for d in call_deltas(calls, legacy)] if calls else []
        out.append(event(index, {}, _finish_reason(finish, calls, legacy), **extra))
        return b"".join(out)

    def opening():  # content null, as llama-server and OpenAI open (no chunk carries an empty content string)
        return [event(i, {"role": "assistant", "content": None}) for i in range(handle.request.n)]

    yield from _stream_tokens(st, events, first, handle, fields, base, chunk, opening)


def _stream_tokens(st, events, first, handle, fields, base, chunk, opening=lambda: []):
    """The progress, token, finish, usage and [DONE] events of either endpoint; chunk(index, text, finish,
    logprobs, **extra) makes the endpoint's own chunk, opening() the chunks sent once the prompt is done."""
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))
    per_token = fields["timings_per_token"]
    n = handle.request.n
    probs = [c.TokenLogprobs.for_request(st, fields) for _ in range(n)]
    n_predicted = [0] * n
    done: list[dict | None] = [None] * n
    start: dict = {}
    for event in itertools.chain(first, events):
        if event.kind == "progress":
            if fields["return_progress"]:
                yield sse.event(dict(base, choices=[], prompt_progress=event.info))
        elif event.kind == "start":
            start = event.info
            yield from opening()
        elif event.kind == "token":
            i, token = event.index, event.token
            if token.id is not None:
                n_predicted[i] += 1
            extra = {}
            if fields["return_tokens"] and token.id is not None:
                extra["tokens"] = [token.id]
            if per_token:
                extra["timings"] = c.timings(start, None, n_predicted[i])
            entries = probs[i].feed(token) if probs[i] is not None else None  # of the tokens whose text it brings
            if token.text or extra:
                yield chunk(i, token.text, logprobs=None if entries is None else {"content": entries}, **extra)
        elif event.kind == "done":
            i, info = event.index, event.info
            done[i] = info
            extra = {"timings": c.timings(start, info, info["n_predicted"])} if per_token else {}
            yield chunk(i, "", info["finish_reason"], **extra)
            if all(d is not None for d in done):
                total = sum(d["n_predicted"] for d in done)
                if include_usage:
                    slowest = max(done, key=lambda d: d["predicted_ms"])
                    yield sse.event(dict(base, choices=[], usage=c.usage(start, total),
                                         timings=c.timings(start, slowest, total)))
                yield sse.DONE
                return
        else:
            yield _stream_error(event)
            return


def _stream_error(event) -> bytes:
    try:
        c.raise_for(event)
    except APIError as error:
        return sse.event(error.body())
    return sse.event(APIError(500, "generation failed").body())


@bp.post("/v1/completions")
def completions():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    c.check_model_name(st, body)
    raw = body.get("prompt", schema._MISSING)
    several = isinstance(raw, list) and len(raw) > 1 and all(isinstance(v, (str, list)) for v in raw)
    prompt_values = [schema.parse_prompt(v, st.model.n_vocab) for v in (raw if several else [raw])]
    images = media.multimodal_data(st, body.pop("multimodal_data", None), "multimodal_data")
    body, legacy_top = c.legacy_logprobs_request(body)
    fields = schema.parse_fields(body)
    if body.get("suffix"):
        raise APIError(400, "'suffix' is not supported", param="suffix", code="unsupported_parameter")
    echo = schema.get_typed(body, "echo", "boolean", False)
    if echo and fields["stream"]:
        raise APIError(400, "'echo' is supported without stream only", param="echo", code="unsupported_parameter")
    if several and (fields["stream"] or images):
        raise APIError(400, "several prompts are supported without stream and multimodal_data only",
                       param="prompt", code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise invalid("'best_of' must be 1", "best_of")
    c.check_request_options(st, fields)
    prompts = []  # (token ids, text) per prompt
    for value in prompt_values:
        if images:
            prompts.append((media.text_prompt(st, value, images, "multimodal_data"), value))
        elif isinstance(value, str):
            prompts.append((st.model.tokenize(value, add_special=True, parse_special=True), value))
        else:
            prompts.append((value, st.model.detokenize(value)))
    scored = legacy_top if echo and legacy_top is not None else None  # echo scores the prompt's tokens
    jobs = [c.make_request(st, ids, fields, prompt_logprobs=scored) for ids, _ in prompts]
    handles = c.submit_all(st, [job for job, _ in jobs])
    max_tokens = jobs[0][1]
    cid, created = c.new_id("cmpl-"), c.now()
    if fields["stream"]:
        handle = handles[0]
        events = iter(handle)
        first = c.first_events(events, fields["return_progress"])
        return c.stream_response(_text_chunks(st, events, first, handle, fields, cid, created, legacy_top),
                                 handle)
    outs = [c.collect(handle, lambda: c.TokenLogprobs.for_request(st, fields)) for handle in handles]
    choices = []  # OpenAI's order: prompt by prompt, each prompt's n choices
    for out, (ids, text) in zip(outs, prompts):
        for choice in out.choices:
            choices.append({"index": len(choices), "text": (text if echo else "") + choice.text,
                            "finish_reason": choice.done["finish_reason"],
                            "logprobs": choice.logprobs if legacy_top is None else c.legacy_logprobs(
                                st, choice.logprobs["content"], out.prompt_logprobs if echo else None, ids)})
    texts = [text for _, text in prompts]
    return _response(st, c.merged(outs), fields, max_tokens, texts if several else texts[0], cid, created,
                     "text_completion", choices, verbose_ids=prompts[0][0] if verbose(st, body) else None)


def _text_chunks(st, events, first, handle, fields, cid, created, legacy_top=None):
    base = {"id": cid, "object": "text_completion", "created": created, "model": st.model_id,
            "system_fingerprint": c.system_fingerprint(st)}
    offsets = [0] * handle.request.n  # text_offset of each choice's next token (legacy logprobs)

    def chunk(index, text, finish=None, logprobs=None, **extra):
        if legacy_top is not None and logprobs is not None:
            logprobs = c.legacy_logprobs(st, logprobs["content"], None, [], offsets[index])
            offsets[index] += sum(len(t) for t in logprobs["tokens"])
        return sse.event(dict(base, choices=[{"index": index, "text": text, "logprobs": logprobs,
                                              "finish_reason": finish}], **extra))

    yield from _stream_tokens(st, events, first, handle, fields, base, chunk)
