"""Tool calls, tool results, prefill and reasoning through /v1/chat/completions, with the real openai SDK and
langchain-openai against the real server: SmolLM2's template knows no tools (the generic format), and a
copy of SmolLM2 carrying Qwen2.5's template speaks the Hermes format (<tool_call>)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_util import API_KEY, MODEL_ID, Server

pytestmark = pytest.mark.slow
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                   "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def check_call(call, tools=(WEATHER, TIME)):
    """A valid OpenAI tool call whose arguments validate against its tool's schema."""
    assert call.type == "function" and call.id
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)


def assemble(stream):
    """The message a stream of chat chunks adds up to, as a client assembles it."""
    content, reasoning, calls, finish = None, None, {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.content is not None:
            content = (content or "") + delta.content
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            reasoning = (reasoning or "") + extra["reasoning_content"]
        for part in delta.tool_calls or ():
            entry = calls.setdefault(part.index, {"id": None, "name": None, "arguments": ""})
            if part.id:
                assert entry["id"] is None, "id comes once, in the call's first delta"
                entry["id"], entry["name"] = part.id, part.function.name
            entry["arguments"] += part.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, reasoning, [calls[i] for i in sorted(calls)], finish


# ---------------------------------------------------------------- generic format (SmolLM2's own template)

def test_required_returns_a_valid_call_every_time(client):
    for seed in range(4):
        response = client.chat.completions.create(model=MODEL_ID, messages=ASK, tools=[WEATHER, TIME],
                                                  tool_choice="required", max_tokens=80, seed=seed, temperature=1.0)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0])


def test_named_function_is_the_one_called(client):
    response = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER, TIME], max_tokens=60, seed=3,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    check_call(call)


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_stream_assembles_to_the_non_stream_answer(client, choice):
    kwargs = dict(model=MODEL_ID, messages=ASK, tools=[WEATHER], tool_choice=choice, max_tokens=60, seed=11,
                  temperature=0.7)
    whole = client.chat.completions.create(**kwargs).choices[0]
    content, _reasoning, calls, finish = assemble(client.chat.completions.create(stream=True, **kwargs))
    assert content == whole.message.content
    assert finish == whole.finish_reason
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or ()]


def test_auto_answers_with_text_or_a_valid_call(client):
    response = client.chat.completions.create(model=MODEL_ID, messages=ASK, tools=[WEATHER], max_tokens=60, n=2,
                                              seed=5, temperature=1.0)
    for choice in response.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                check_call(call)
        else:
            assert isinstance(choice.message.content, str)


def test_agent_loop_call_then_result_then_answer(client):
    first = client.chat.completions.create(model=MODEL_ID, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=60, seed=1).choices[0].message
    (call,) = first.tool_calls
    history = ASK + [first.model_dump(exclude_none=True),  # content null, as OpenAI returns it
                     {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"}]
    answer = client.chat.completions.create(model=MODEL_ID, messages=history, tools=[WEATHER], tool_choice="none",
                                            max_tokens=40, seed=1, extra_body={"return_tokens": False})
    message = answer.choices[0].message
    assert message.tool_calls is None and message.content
    prompt = answer.model_extra["prompt"]
    assert '"tool_call": {"name": "get_weather"' in prompt and "22 degrees and sunny" in prompt


def test_langchain_agent_round(server):
    """langchain-openai, as its users bind tools: a call, the tool's result, then the model's answer."""
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"22 degrees and sunny in {city}"

    llm = ChatOpenAI(base_url=server.base + "/v1", api_key=API_KEY, model=MODEL_ID, max_tokens=60, seed=2,
                     max_retries=0)
    messages = [HumanMessage("What is the weather in Paris?")]
    reply = llm.bind_tools([get_weather], tool_choice="any").invoke(messages)
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    messages += [reply, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls


def test_legacy_functions_answer_with_function_call(api):
    body = {"model": MODEL_ID, "messages": ASK, "functions": [WEATHER["function"]],
            "function_call": {"name": "get_weather"}, "max_tokens": 60}
    choice = api.post(api.url("/v1/chat/completions"), json=body).json()["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "get_weather"
    json.loads(choice["message"]["function_call"]["arguments"])


def test_tool_choice_without_tools_is_ignored(client):
    response = client.chat.completions.create(model=MODEL_ID, messages=ASK, tool_choice="auto", max_tokens=4)
    assert response.choices[0].message.tool_calls is None


@pytest.mark.parametrize("extra, param", [
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
    ({"tools": [WEATHER], "grammar": "root ::= \"x\""}, "grammar"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "nonsense"}}}}}]}, "tools"),
    ({"messages": [{"role": "tool", "content": "22"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant"}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}]},
     "messages[0].tool_calls[0].function"),
    ({"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
    ({"reasoning_format": "loud"}, "reasoning_format"),
    ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
])
def test_bad_tool_fields_name_the_field(api, extra, param):
    body = {"model": MODEL_ID, "messages": ASK, "max_tokens": 4, **extra}
    response = api.post(api.url("/v1/chat/completions"), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert api.get(api.url("/health")).status_code == 200


# ---------------------------------------------------------------- prefill and reasoning

def _completion(api, prompt, n):
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": n, "temperature": 0}
    return api.post(api.url("/v1/completions"), json=body).json()["choices"][0]["text"]


def test_final_assistant_message_is_continued(api):
    """Independent reference: SmolLM2's ChatML written by hand, continued by /v1/completions."""
    messages = [{"role": "user", "content": "Name three colors."}, {"role": "assistant", "content": "Red, green"}]
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": 8, "temperature": 0}
    chat = api.post(api.url("/v1/chat/completions"), json=body).json()
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\nRed, green")
    assert chat["prompt"] == prompt
    assert chat["choices"][0]["message"]["content"] == _completion(api, prompt, 8)
    closed = api.post(api.url("/v1/chat/completions"), json=dict(body, add_generation_prompt=True)).json()
    assert closed["prompt"].endswith("Red, green<|im_end|>\n<|im_start|>assistant\n")


def test_reasoning_goes_to_reasoning_content(client):
    """A prefilled <think> opens the thinking: the continuation is reasoning until </think>."""
    messages = ASK + [{"role": "assistant", "content": "<think>"}]
    kwargs = dict(model=MODEL_ID, messages=messages, max_tokens=12, seed=4, temperature=0)
    message = client.chat.completions.create(**kwargs).choices[0].message
    reasoning = message.model_extra.get("reasoning_content")
    assert reasoning and (message.content or "") == ""
    _content, streamed, _calls, _finish = assemble(client.chat.completions.create(stream=True, **kwargs))
    assert streamed == reasoning
    plain = client.chat.completions.create(extra_body={"reasoning_format": "none"}, **kwargs).choices[0].message
    assert plain.content == reasoning and "reasoning_content" not in (plain.model_extra or {})


# ---------------------------------------------------------------- Hermes format (Qwen2.5's template)

def with_chat_template(source: Path, target: Path, template: str) -> None:
    """A copy of a GGUF whose tokenizer.chat_template is template (same weights, read by the gguf package)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(source)
    field = reader.fields["tokenizer.chat_template"]
    start = field.offset
    end = start + sum(part.nbytes for part in field.parts)
    last = reader.tensors[-1].field
    infos_end = last.offset + sum(part.nbytes for part in last.parts)
    key = b"tokenizer.chat_template"
    value = template.encode()
    new_field = (len(key).to_bytes(8, "little") + key + (8).to_bytes(4, "little")  # type 8: string
                 + len(value).to_bytes(8, "little") + value)
    raw = source.read_bytes()
    head = raw[:start] + new_field + raw[end:infos_end]
    alignment = reader.alignment if hasattr(reader, "alignment") else 32
    target.write_bytes(head + bytes(-len(head) % alignment) + raw[reader.data_offset:])


@pytest.fixture(scope="module")
def hermes(tmp_path_factory):
    from janlib.fetch import fetch_model
    from janlib.model import Model

    path = tmp_path_factory.mktemp("hermes") / "smollm2-qwen-template.gguf"
    with_chat_template(Path(fetch_model("smollm2-135m-instruct", progress=False)), path,
                       (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text("utf-8"))
    assert "<tool_call>" in Model(str(path), n_ctx=64).chat_template
    server = Server("--model", str(path), "--alias", "hermes", "--ctx-size", "1024", "--threads", "1",
                    "--log-level", "warning").wait_ready()
    openai = pytest.importorskip("openai")
    yield openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0, timeout=120)
    server.stop()


def test_hermes_required_call_is_written_in_tool_call_tags(hermes):
    kwargs = dict(model="hermes", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=60,
                  seed=2, temperature=0)  # greedy: this checks the format, not sampling
    response = hermes.chat.completions.create(**kwargs)
    assert "<tools>" in response.model_extra["prompt"]  # Qwen's own tool section, not the generic one
    (call,) = response.choices[0].message.tool_calls
    check_call(call)
    content, _reasoning, calls, finish = assemble(hermes.chat.completions.create(stream=True, **kwargs))
    assert content is None and finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls] == [(call.function.name, call.function.arguments)]


def test_hermes_agent_loop(hermes):
    first = hermes.chat.completions.create(model="hermes", messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=60, temperature=0).choices[0].message
    (call,) = first.tool_calls
    history = ASK + [first.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"}]
    answer = hermes.chat.completions.create(model="hermes", messages=history, tools=[WEATHER], max_tokens=40, temperature=0)
    prompt = answer.model_extra["prompt"]
    assert "<tool_call>\n{\"name\": \"get_weather\"" in prompt
    assert "<tool_response>\n22 degrees and sunny\n</tool_response>" in prompt
    choice = answer.choices[0]
    for later in choice.message.tool_calls or ():
        check_call(later)
    assert choice.message.tool_calls or choice.message.content
