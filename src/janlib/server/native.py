"""llama-server's native API, so that its clients (SillyTavern, llama.vim, llama.vscode, scripts) can talk to
janlib: POST /completion (alias /completions), /infill, /apply-template, POST /props and the /slots actions
(the embedding endpoints are server/embeddings.py). Requests become janlib.Requests exactly as the OpenAI endpoints' do
(server/completion.py); only the prompt forms and the response shape are llama.cpp's."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from janlib.chat import ChatTemplateError
from janlib.engine import EngineError
from janlib.media import MediaPrompt
from janlib.reasoning import thinking_variables

from . import completion as c
from . import media, schema, sse
from .errors import APIError, invalid
from .state import ServerState, state

bp = Blueprint("native", __name__)

PROMPT_STRING_KEY = "prompt_string"  # llama.cpp's {"prompt_string": ..., "multimodal_data": [...]} prompt
NATIVE_KEPT: tuple[str, ...] = ()  # response_fields: llama.cpp's native answer keeps only the fields asked for


def not_supported(message: str) -> APIError:
    """llama-server's 501 for a feature this server does not offer."""
    return APIError(501, message, code="not_supported", type="not_supported_error")


# ---------------------------------------------------------------------------------------------- prompts
def _subprompt(st: ServerState, value: Any, param: str) -> list[int] | MediaPrompt:
    """One prompt: text, token ids, text and ids mixed (only the first text gets BOS), or {prompt_string}
    (with multimodal_data: the images for its <__media__> markers)."""
    model = st.model
    if isinstance(value, str):
        return model.tokenize(value, add_special=True, parse_special=True)
    if isinstance(value, dict):
        images = media.multimodal_data(st, value.get("multimodal_data"), f"{param}.multimodal_data")
        text = value.get(PROMPT_STRING_KEY)
        if not isinstance(text, str):
            raise invalid(f"'{param}.{PROMPT_STRING_KEY}' must be a string", f"{param}.{PROMPT_STRING_KEY}",
                          "invalid_type")
        if images:
            return media.text_prompt(st, text, images, f"{param}.multimodal_data")
        return model.tokenize(text, add_special=True, parse_special=True)
    if isinstance(value, list):
        ids: list[int] = []
        for i, part in enumerate(value):
            if isinstance(part, str):
                ids += model.tokenize(part, add_special=i == 0, parse_special=True)
            else:
                ids += schema.check_token_ids([part], model.n_vocab, f"{param}[{i}]")
        return ids
    raise invalid(f"'{param}' must be a string, token ids, a mix of both or an object with "
                  f"{PROMPT_STRING_KEY}, got {schema._json_type(value)}", param, "invalid_type")


def parse_prompts(st: ServerState, value: Any) -> list[list[int]]:
    """llama.cpp's prompt forms: an array without numbers holds several prompts; anything else is one."""
    if value is schema._MISSING or value is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(value, list) and value and not any(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value):
        return [_subprompt(st, v, f"prompt[{i}]") for i, v in enumerate(value)]
    return [_subprompt(st, value, "prompt")]


def normalize_logit_bias(st: ServerState, value: Any) -> dict | None:
    """llama.cpp's logit_bias forms → the OpenAI object {"token id": bias}: [[id or text, bias | false], ...]
    or {"id or text": ...}; a text biases each of its tokens."""
    if value is None:
        return None
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for i, pair in enumerate(value):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise invalid(f"'logit_bias[{i}]' must be a [token, bias] pair", f"logit_bias[{i}]", "invalid_type")
            pairs.append(tuple(pair))
    else:
        raise invalid(f"'logit_bias' must be an object or an array of [token, bias] pairs, got "
                      f"{schema._json_type(value)}", "logit_bias", "invalid_type")
    out: dict[str, Any] = {}
    for key, bias in pairs:
        if isinstance(key, str) and not key.lstrip("-").isdigit():
            for token in st.model.tokenize(key, add_special=False, parse_special=False):
                out[str(token)] = bias
        elif isinstance(key, (str, int)) and not isinstance(key, bool):
            out[str(int(key))] = bias
        else:
            raise invalid(f"'logit_bias' keys must be token ids or texts, got {schema._json_type(key)}",
                          "logit_bias", "invalid_type")
    return out


# ------------------------------------------------------------------------------------------- /completion
def _native_fields(st: ServerState, body: dict) -> dict:
    if "logit_bias" in body:
        body = dict(body, logit_bias=normalize_logit_bias(st, body["logit_bias"]))
    fields = schema.parse_fields(body)
    c.check_request_options(st, fields)
    return fields


@bp.post("/completion")
@bp.post("/completions")
def completion():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    images = media.multimodal_data(st, body.pop("multimodal_data", None), "multimodal_data")
    fields = _native_fields(st, body)
    if images:  # the images of a text prompt's markers, as in {prompt_string, multimodal_data}
        prompts = [media.text_prompt(st, body.get("prompt"), images, "multimodal_data")]
    else:
        prompts = parse_prompts(st, body.get("prompt", schema._MISSING))
    return run_native(st, prompts, fields)


def run_native(st: ServerState, prompts: list[list[int]], fields: dict) -> Response:
    """Submit every prompt at once (the engine runs them side by side) and answer in llama.cpp's shape:
    one object, or a list with one per prompt and choice."""
    jobs = [c.make_request(st, ids, fields) for ids in prompts]
    handles = c.submit_all(st, [job for job, _ in jobs])
    max_tokens = jobs[0][1]
    if fields["stream"]:
        return _stream(st, handles, fields, max_tokens)
    results = []
    for base, (handle, ids) in enumerate(zip(handles, prompts)):
        out = c.collect(handle, lambda: c.TokenLogprobs.for_request(st, fields))
        for i, choice in enumerate(out.choices):
            result = final_result(st, fields, max_tokens, ids, out.start, choice.done, choice.text,
                                  choice.tokens, base * handle.request.n + i)
            if choice.logprobs is not None:
                result["completion_probabilities"] = choice.logprobs["content"]
            results.append(c.select_fields(result, fields["response_fields"], NATIVE_KEPT))
    return jsonify(results[0] if len(results) == 1 else results)


def _stop_type(done: dict) -> str:
    if done.get("stop_word"):
        return "word"
    return "eos" if done["finish_reason"] == "stop" else "limit"


def final_result(st: ServerState, fields: dict, max_tokens: int, ids: list[int], start: dict, done: dict,
                 text: str, tokens: list[int], index: int) -> dict:
    """llama.cpp's closing object of one generation (its last stream event has the same fields)."""
    settings = c.generation_settings(st, fields, max_tokens)
    settings.setdefault("top_n_sigma", -1.0)
    settings.setdefault("adaptive_target", -1.0)  # llama.cpp's adaptive-p sampler, off (janlib has none)
    settings.setdefault("adaptive_decay", 0.9)
    return {
        "index": index, "content": text, "tokens": tokens if fields["return_tokens"] else [],
        "id_slot": done.get("slot", start.get("slot", -1)), "stop": True, "model": st.model_id,
        "tokens_predicted": done["n_predicted"], "tokens_evaluated": start.get("n_prompt", len(ids)),
        "generation_settings": settings, "prompt": media.prompt_text(st, ids), "has_new_line": "\n" in text,
        "truncated": bool(done["context_full"]), "stop_type": _stop_type(done),
        "stopping_word": done.get("stop_word") or "", "tokens_cached": start.get("n_prompt", 0) + done["n_predicted"],
        "timings": c.timings(start, done, done["n_predicted"]),
    }


def _stream(st: ServerState, handles: list, fields: dict, max_tokens: int) -> Response:
    """llama.cpp's native stream: one event per released token ({content, tokens, stop: false, ...}), then
    the closing object with stop: true; no [DONE]. Several prompts stream one after another."""
    firsts = [c.first_events(iter(h), fields["return_progress"]) for h in handles]

    def events():
        for base, (handle, first) in enumerate(zip(handles, firsts)):
            yield from _stream_one(st, handle, first, fields, max_tokens, base * handle.request.n)

    return c.stream_response(events(), *handles)


def _stream_one(st, handle, first, fields, max_tokens, base):
    n = handle.request.n
    probs = [c.TokenLogprobs.for_request(st, fields) for _ in range(n)]
    texts, tokens = [[] for _ in range(n)], [[] for _ in range(n)]
    start: dict = {}
    n_done = 0
    for event in itertools.chain(first, iter(handle)):
        if event.kind == "progress":
            if fields["return_progress"]:
                yield sse.event({"index": base, "content": "", "tokens": [], "stop": False, "id_slot": -1,
                                 "prompt_progress": event.info, "timings": c.timings(
                                     {"prompt_ms": event.info["time_ms"], "n_prompt": event.info["processed"],
                                      "n_cached": event.info["cache"]}, None, 0)})
        elif event.kind == "start":
            start = event.info
        elif event.kind == "token":
            i, token = event.index, event.token
            texts[i].append(token.text)
            if token.id is not None:
                tokens[i].append(token.id)
            entries = probs[i].feed(token) if probs[i] is not None else None
            if not token.text and token.id is None:
                continue
            chunk = {"index": base + i, "content": token.text, "tokens": [] if token.id is None else [token.id],
                     "stop": False, "id_slot": start.get("slot", -1), "tokens_predicted": len(tokens[i]),
                     "tokens_evaluated": start.get("n_prompt", 0)}
            if fields["timings_per_token"]:
                chunk["timings"] = c.timings(start, None, len(tokens[i]))
            if entries:
                chunk["completion_probabilities"] = entries
            yield sse.event(chunk)
        elif event.kind == "done":
            i = event.index
            result = final_result(st, fields, max_tokens, handle.prompt, start, event.info, "", tokens[i], base + i)
            result["content"] = ""  # the text went out token by token
            result["has_new_line"] = "\n" in "".join(texts[i])
            yield sse.event(c.select_fields(result, fields["response_fields"], NATIVE_KEPT))
            n_done += 1
            if n_done == n:
                return
        else:
            try:
                c.raise_for(event)
            except APIError as error:
                yield sse.event(error.body())
            return


# ---------------------------------------------------------------------------------------------- /infill
FIM_KEYS = {  # GGUF metadata keys, then the token texts llama.cpp looks for when a GGUF lacks them
    "pre": (("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
            ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "▁<PRE>", "<|code_prefix|>")),
    "suf": (("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
            ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "▁<SUF>", "<|code_suffix|>")),
    "mid": (("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
            ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "▁<MID>", "<|code_middle|>")),
    "rep": (("tokenizer.ggml.fim_rep_token_id",), ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                                    "<reponame>")),
    "sep": (("tokenizer.ggml.fim_sep_token_id",), ("<|file_sep|>", "<file_sep>")),
}
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"  # between input_extra chunks when the model has no file separator


def fim_tokens(st: ServerState) -> dict[str, int | None]:
    """The model's fill-in-the-middle token ids (None where it has none), found once."""
    cached = st.extras.get("fim")
    if cached is not None:
        return cached
    metadata = st.model.metadata
    vocabulary = metadata.get("tokenizer.ggml.tokens") or []
    n_vocab = st.model.n_vocab
    found: dict[str, int | None] = {}
    for name, (keys, texts) in FIM_KEYS.items():
        token = next((metadata[k] for k in keys if isinstance(metadata.get(k), int) and 0 <= metadata[k] < n_vocab),
                     None)
        for text in texts if token is None else ():
            try:
                token = vocabulary.index(text)
                break
            except ValueError:
                continue
        found[name] = token
    st.extras["fim"] = found
    return found


def _input_extra(value: Any) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"'input_extra' must be an array of {{filename, text}} objects, got {schema._json_type(value)}",
                      "input_extra", "invalid_type")
    for i, chunk in enumerate(value):
        p = f"input_extra[{i}]"
        if not isinstance(chunk, dict):
            raise invalid(f"'{p}' must be an object with filename and text", p, "invalid_type")
        if not isinstance(chunk.get("text"), str):
            raise invalid(f"'{p}.text' is required and must be a string", f"{p}.text", "invalid_type")
        if "filename" in chunk and not isinstance(chunk["filename"], str):
            raise invalid(f"'{p}.filename' must be a string", f"{p}.filename", "invalid_type")
    return value


def infill_prompt(st: ServerState, prefix: str, suffix: str, prompt: str, extra: list[dict],
                  n_predict: int) -> list[int]:
    """llama.cpp's FIM layout: [repo name, file chunks] [BOS] PRE prefix+prompt SUF suffix MID. The prefix keeps
    its last 3/4 of a batch, the suffix what is left of the batch's last quarter, the chunks the rest of
    the context (their most recent part)."""
    fim = fim_tokens(st)
    missing = [name for name in ("pre", "suf", "mid") if fim[name] is None]
    if missing:
        raise APIError(400, "this model has no fill-in-the-middle tokens (its GGUF names no FIM prefix, suffix "
                       "and middle token): /infill needs a code model such as Qwen2.5-Coder",
                       param="input_prefix", code="unsupported_model")
    model, engine = st.model, st.engine

    def text(s: str) -> list[int]:
        return model.tokenize(s, add_special=False, parse_special=False)

    extra_tokens: list[int] = []
    if fim["rep"] is not None:
        extra_tokens += [fim["rep"]] + text("myproject\n")
    for chunk in extra:
        if fim["sep"] is not None:
            extra_tokens += [fim["sep"]] + text(chunk.get("filename") or "tmp")
        else:
            extra_tokens += text(SNIPPET_SEPARATOR)
        extra_tokens += text(chunk["text"])
    if fim["sep"] is not None:
        extra_tokens += [fim["sep"]] + text("filename\n")
    tokens_prefix, tokens_suffix, tokens_prompt = text(prefix), text(suffix), text(prompt)
    n_batch = engine.n_batch
    n_prefix = min(len(tokens_prefix), 3 * (n_batch // 4))
    n_suffix = min(len(tokens_suffix), max(0, n_batch // 4 - (2 + len(tokens_prompt))))
    n_extra = min(max(0, engine.n_ctx - n_batch - 2 * max(n_predict, 0)), len(extra_tokens))
    ids = [fim["pre"]] + tokens_prefix[len(tokens_prefix) - n_prefix:] + tokens_prompt
    if model.tokenizer.add_bos and model.tokenizer.bos_id is not None:
        ids = [model.tokenizer.bos_id] + ids
    ids += [fim["suf"]] + tokens_suffix[:n_suffix] + [fim["mid"]]
    return extra_tokens[len(extra_tokens) - n_extra:] + ids


@bp.post("/infill")
def infill():
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    fields = _native_fields(st, body)
    parts = {name: schema.get_typed(body, name, "string", "") for name in ("input_prefix", "input_suffix", "prompt")}
    extra = _input_extra(body.get("input_extra"))
    limit, _ = schema.effective_max_tokens(fields)
    ids = infill_prompt(st, parts["input_prefix"], parts["input_suffix"], parts["prompt"], extra,
                        limit if limit >= 0 else st.config.n_predict)
    return run_native(st, [ids], fields)


# ------------------------------------------------------------------------------------ /apply-template
@bp.post("/apply-template")
def apply_template():
    """The chat prompt the messages render to, without generating: {"prompt": text}."""
    st = state()
    body = schema.parse_json_body(request.get_data(cache=False))
    messages = schema.parse_messages(body.get("messages", schema._MISSING))
    add_generation_prompt = schema.get_typed(body, "add_generation_prompt", "boolean", True)
    tools = schema.get_typed(body, "tools", "array", None) or None
    try:
        prompt = st.model.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                          **thinking_variables(st.config.reasoning))
    except ChatTemplateError as error:
        raise invalid(f"the messages cannot be rendered with the model's chat template: {error}",
                      "messages") from None
    return jsonify({"prompt": prompt})


# ------------------------------------------------------------------------------------------------ /props
@bp.post("/props")
def change_props():
    """With --props: the request defaults given here ({"temperature": 0.5, ...}, or the same under
    default_generation_settings.params) apply to every later request that leaves them out."""
    st = state()
    if not st.config.props:
        raise not_supported("changing the server's properties is off: start it with --props")
    body = schema.parse_json_body(request.get_data(cache=False))
    given = body.get("default_generation_settings", {}).get("params", body) \
        if isinstance(body.get("default_generation_settings"), dict) else body
    changes = {}
    for name, value in given.items():
        spec = schema.FIELDS.get(name)
        if spec is None or name in ("model", "user", "stream", "n"):
            raise invalid(f"'{name}' is not a request default this server can change", name)
        if value is not None:
            changes[name] = schema.check_value(name, value, spec)
    st.defaults.update(changes)
    return jsonify({"success": True})


# ------------------------------------------------------------------------------------------------ /slots
_FILENAME = re.compile(r"[A-Za-z0-9._-]{1,255}")
SLOT_FORMAT = "janlib-slot"


def _slot_id(st: ServerState, id_slot: str) -> int:
    if not id_slot.isdigit() or int(id_slot) >= st.engine.n_seq_max:
        raise invalid(f"no slot {id_slot!r}: this server has slots 0..{st.engine.n_seq_max - 1}", "id_slot")
    return int(id_slot)


def _slot_file(st: ServerState) -> str:
    if not st.config.slot_save_path:
        raise not_supported("saving and restoring slots is off: start the server with --slot-save-path DIR")
    body = schema.parse_json_body(request.get_data(cache=False))
    name = body.get("filename")
    if not isinstance(name, str) or not _FILENAME.fullmatch(name) or name in (".", ".."):
        raise invalid("'filename' must be a plain file name (letters, digits, '.', '_', '-'; no path)", "filename")
    return os.path.join(st.config.slot_save_path, name)


@bp.post("/slots/<id_slot>")
def slot_action(id_slot: str):
    """?action=save|restore|erase. A slot file holds the slot's cached tokens (and the model they belong to);
    restoring evaluates them into the slot again, so later prompts sharing that prefix reuse it."""
    st = state()
    action = request.args.get("action")
    slot = _slot_id(st, id_slot)
    t0 = time.perf_counter()
    if action == "erase":
        try:
            n = st.engine.erase_slot(slot)
        except EngineError as error:
            raise APIError(409, f"slot {slot} cannot be erased while it generates: {error}", param="id_slot",
                           code="slot_busy") from None
        return jsonify({"id_slot": slot, "n_erased": n})
    if action == "save":
        path = _slot_file(st)
        tokens = st.engine.slot_tokens(slot)
        if any(t < 0 for t in tokens):  # an image's positions hold a hash, not tokens a restore could evaluate
            raise invalid(f"slot {slot} holds an image, which a slot file cannot store (it keeps token ids)", "id_slot")
        data = json.dumps({"format": SLOT_FORMAT, "model": os.path.basename(st.model_path), "tokens": tokens})
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)
        return jsonify({"id_slot": slot, "filename": os.path.basename(path), "n_saved": len(tokens),
                        "n_written": len(data), "timings": {"save_ms": (time.perf_counter() - t0) * 1000}})
    if action == "restore":
        path = _slot_file(st)
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except FileNotFoundError:
            raise APIError(404, f"no slot file {os.path.basename(path)!r}", param="filename",
                           code="not_found") from None
        except (OSError, ValueError) as error:
            raise invalid(f"'{os.path.basename(path)}' is not a janlib slot file: {error}", "filename") from None
        if not isinstance(saved, dict) or saved.get("format") != SLOT_FORMAT:
            raise invalid(f"'{os.path.basename(path)}' is not a janlib slot file", "filename")
        if saved.get("model") != os.path.basename(st.model_path):
            raise invalid(f"'{os.path.basename(path)}' holds a slot of {saved.get('model')!r}, not of the model "
                          f"served here", "filename")
        tokens = schema.check_token_ids(saved.get("tokens"), st.model.n_vocab, "tokens")
        if len(tokens) >= st.engine.n_ctx:
            raise invalid(f"the slot file holds {len(tokens)} tokens; a slot holds {st.engine.n_ctx}", "filename")
        if tokens:
            job = c.Request(tokens, max_tokens=0, id_slot=slot, cache_prompt=True)
            c.collect(c.submit(st, job), lambda: None)
        return jsonify({"id_slot": slot, "filename": os.path.basename(path), "n_restored": len(tokens),
                        "n_read": os.path.getsize(path),
                        "timings": {"restore_ms": (time.perf_counter() - t0) * 1000}})
    raise invalid(f"'action' must be save, restore or erase, got {action!r}", "action")


@bp.post("/rerank")
@bp.post("/reranking")
@bp.post("/v1/rerank")
@bp.post("/v1/reranking")
def rerank():
    raise not_supported("reranking is not supported by this model: janlib serves decoder models for "
                        "generation only")
