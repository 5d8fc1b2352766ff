"""Tool calls and reasoning in the library: format detection on real templates, rendering as transformers
passes tools, parsing each family's calls (whole and streamed in pieces), prefill, and constrained calls
on the real model that always parse and validate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from janlib.chat import ChatTemplate, ChatTemplateError
from janlib.tools import (FORMATS, AssistantParser, LazyConstraint, detect_format, normalize_tools, parse_calls,
                          prepare_chat, tool_grammar)
from janlib.reasoning import THINK

TEMPLATES = Path(__file__).parent / "templates"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
]
LLAMA3_LIKE = ("<|start_header_id|>system<|end_header_id|>{% if tools %}Respond with "
               '{"name": function name, "parameters": dictionary}{% endif %}')


def template(name: str) -> str:
    return (TEMPLATES / name).read_text("utf-8")


class TemplateOnly:
    """What prepare_chat needs from a Model to render (no weights: constrain=False)."""

    def __init__(self, source: str):
        self.template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")

    def chat_prompt(self, messages, **options):
        prompt = self.template.render(messages, **options)
        return prompt, []


@pytest.mark.parametrize("name, expected", [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
    ("Qwen-Qwen3-0.6B.jinja", "hermes"),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "generic"),
])
def test_format_is_recognized_from_real_templates(name, expected):
    assert detect_format(template(name)).name == expected


def test_format_of_other_templates():
    assert detect_format(LLAMA3_LIKE).name == "llama3"
    assert detect_format("{{ '[TOOL_CALLS]' + name + '[ARGS]' }}").name == "mistral_args"
    # <tool_call> with XML arguments inside (Qwen3-Coder, GLM) is not the Hermes JSON format
    assert detect_format("<tool_call>\n<function={{ name }}>").name == "generic"
    assert detect_format("{{ messages }}").name == "generic"


def test_qwen_template_gets_tools_calls_and_results_as_transformers_passes_them():
    setup = prepare_chat(TemplateOnly(template("Qwen-Qwen2.5-7B-Instruct.jinja")), CONVERSATION, tools=[WEATHER],
                         constrain=False)
    prompt = setup.prompt
    # Qwen2.5's own tool section, each tool as {"type": "function", "function": {...}}
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in prompt
    # the call in Qwen's format, its arguments an object (not the JSON string OpenAI sends)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><|im_end|>') in prompt
    assert "<|im_start|>user\n<tool_response>\n22 C, sunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert setup.tool_format.name == "hermes"


def test_template_without_tools_gets_the_generic_description_and_rewritten_history():
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    setup = prepare_chat(TemplateOnly(chatml), CONVERSATION, tools=[WEATHER], constrain=False)
    prompt = setup.prompt
    assert setup.tool_format.name == "generic"
    assert prompt.startswith("<|im_start|>system\nYou can call these tools")
    assert json.dumps(normalize_tools([WEATHER])[0]) in prompt
    assert '<|im_start|>assistant\n{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}' in prompt
    # the result as a user turn (the template knows no tool role)
    assert ('<|im_start|>user\n{"tool_response": {"name": "get_weather", "tool_call_id": "call_1", '
            '"content": "22 C, sunny"}}') in prompt


def test_tool_choice_none_renders_no_tools_and_parses_no_calls():
    setup = prepare_chat(TemplateOnly(template("Qwen-Qwen2.5-7B-Instruct.jinja")), CONVERSATION[:1],
                         tools=[WEATHER], tool_choice="none", constrain=False)
    assert "<tools>" not in setup.prompt and setup.tool_format is None


def test_unknown_named_function_is_an_error():
    with pytest.raises(ChatTemplateError, match="not among the tools"):
        prepare_chat(TemplateOnly(template("Qwen-Qwen2.5-7B-Instruct.jinja")), CONVERSATION[:1], tools=[WEATHER],
                     tool_choice="get_time", constrain=False)


def test_prefill_continues_the_final_assistant_message():
    chatml = template("Qwen-Qwen2.5-7B-Instruct.jinja")
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "One, two, "}]
    continued = ChatTemplate(chatml).render(messages, add_generation_prompt=False, continue_final_message=True)
    # the text the model continues: everything up to the message's own text, trailing space kept
    assert continued.endswith("<|im_start|>assistant\nOne, two, ")
    closed = ChatTemplate(chatml).render(messages, add_generation_prompt=False)
    assert closed.endswith("One, two, <|im_end|>\n")
    with pytest.raises(ChatTemplateError, match="cannot be continued"):
        ChatTemplate(chatml).render(CONVERSATION[:2], continue_final_message=True)


def test_template_kwargs_reach_the_template():
    qwen3 = TemplateOnly(template("Qwen-Qwen3-0.6B.jinja"))
    messages = [{"role": "user", "content": "Hi"}]
    thinking_off = prepare_chat(qwen3, messages, template_kwargs={"enable_thinking": False}, constrain=False)
    assert thinking_off.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not thinking_off.in_reasoning
    default = prepare_chat(qwen3, messages, constrain=False)
    assert default.prompt.endswith("<|im_start|>assistant\n")


def test_a_template_that_opens_the_thinking_starts_the_output_in_it():
    r1 = TemplateOnly(template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"))
    messages = [{"role": "user", "content": "Hi"}]
    assert not prepare_chat(r1, messages, constrain=False).in_reasoning  # closed at once without enable_thinking
    setup = prepare_chat(r1, messages, template_kwargs={"enable_thinking": True}, constrain=False)
    assert setup.prompt.endswith("<think>\n") and setup.in_reasoning
    parser = setup.parser()
    delta = parser.feed("Let me think.\n</think>\n\nHello!")
    assert delta == {"reasoning_content": "Let me think.\n", "content": "Hello!"}


# ---------------------------------------------------------------- parsing

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
OUTPUTS = [  # (format, model output, expected content, expected calls as (name, arguments))
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me check.", [("get_weather", {"city": "Paris"})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
     '{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>', None,
     [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "UTC"})]),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [("get_weather", {"city": "Paris"})]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]', None,
     [("get_weather", {"city": "Paris"})]),
    ("mistral_args", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', None, [("get_weather", {"city": "Paris"})]),
    ("generic", '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}', None,
     [("get_weather", {"city": "Paris"})]),
    ("generic", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}', None,
     [("get_weather", {"city": "Paris"})]),
    ("generic", '{"response": "It is sunny."}', "It is sunny.", []),
    ("generic", "Plain words, no JSON.", "Plain words, no JSON.", []),
    ("hermes", "The weather is fine <b>today</b>.", "The weather is fine <b>today</b>.", []),
    ("hermes", '<tool_call>\n{"name": "get_weather", "argu', '<tool_call>\n{"name": "get_weather", "argu', []),
]


def _whole(fmt, text, reasoning=None):
    parser = AssistantParser(FORMATS[fmt] if fmt else None, reasoning)
    delta = parser.feed(text)
    tail, calls = parser.finish()
    for key, value in tail.items():
        delta[key] = delta.get(key, "") + value
    return delta, calls


@pytest.mark.parametrize("fmt, text, content, calls", OUTPUTS)
def test_calls_of_each_format_parse(fmt, text, content, calls):
    delta, parsed = _whole(fmt, text)
    assert delta.get("content") == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in parsed)


@pytest.mark.parametrize("fmt, text, content, calls", OUTPUTS + [
    (None, "<think>hmm</think>\n\nYes.", None, None), ("hermes", "<think>a <tool_call> b</think>ok", None, None)])
def test_streamed_in_any_pieces_equals_whole(fmt, text, content, calls):
    rng = random.Random(7)
    whole, whole_calls = _whole(fmt, text, THINK)
    for _ in range(20):
        parser = AssistantParser(FORMATS[fmt] if fmt else None, THINK)
        got: dict[str, str] = {}
        pos = 0
        while pos < len(text):
            step = rng.randint(1, 6)
            for key, value in parser.feed(text[pos:pos + step]).items():
                got[key] = got.get(key, "") + value
            pos += step
        tail, streamed_calls = parser.finish()
        for key, value in tail.items():
            got[key] = got.get(key, "") + value
        assert got == whole
        strip = lambda cs: [c["function"] for c in cs]  # noqa: E731 (ids are fresh per parse)
        assert strip(streamed_calls) == strip(whole_calls)


def test_reasoning_goes_to_reasoning_content_unless_format_none():
    delta, _ = _whole(None, "<think>\nsteps\n</think>\n\nThe answer.", THINK)
    assert delta == {"reasoning_content": "\nsteps\n", "content": "The answer."}
    delta, _ = _whole(None, "<think>\nsteps\n</think>\n\nThe answer.", None)
    assert delta == {"content": "<think>\nsteps\n</think>\n\nThe answer."}
    delta, _ = _whole(None, "I <think> in the middle", THINK)
    assert delta == {"content": "I <think> in the middle"}


def test_parse_calls_refuses_what_is_not_a_call():
    assert parse_calls(FORMATS["generic"], '{"other": 1}') is None
    assert parse_calls(FORMATS["llama3"], '{"name": 3}') is None


# ---------------------------------------------------------------- constrained on the real model

@pytest.fixture(scope="module")
def model():
    from janlib.model import Model
    return Model("smollm2-135m-instruct", n_ctx=1024, n_threads=2)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral", "mistral_args", "generic"])
def test_required_calls_always_parse_and_validate(model, fmt):
    """Sampled (temperature 1, the server's other defaults), the constrained output is a valid call each time."""
    jsonschema = pytest.importorskip("jsonschema")
    from janlib.sampling import SamplingParams
    from janlib.structured import Constraint

    tools = normalize_tools([WEATHER, TIME])
    grammar = tool_grammar(FORMATS[fmt], tools, parallel=False, tokenizer=model.tokenizer)
    _, ids = model.chat_prompt([{"role": "user", "content": "What is the weather in Paris, and the time?"}])
    by_name = {t["name"]: t["parameters"] for t in tools}
    for seed in range(4):
        sampling = SamplingParams(temperature=1.0, seed=seed)
        text = "".join(t.text for t in model.generate(ids, max_tokens=120, sampling=sampling,
                                                      constraint=Constraint(grammar, model, "tools")))
        delta, calls = _whole(fmt, text)
        assert len(calls) == 1 and not delta, text
        function = calls[0]["function"]
        jsonschema.validate(json.loads(function["arguments"]), {**by_name[function["name"]],
                                                                "additionalProperties": False})


@pytest.mark.slow
def test_lazy_constraint_is_free_until_the_marker_then_finishes_a_valid_call(model):
    tools = normalize_tools([WEATHER])
    hermes = FORMATS["hermes"]
    lazy = LazyConstraint(tool_grammar(hermes, tools, False, model.tokenizer), model, hermes)
    for token in model.tokenize("Sure, checking. ", add_special=False):
        assert lazy.allowed_mask() is None  # free text
        lazy.accept(token)
    for token in model.tokenize("<tool_call>\n", add_special=False):
        lazy.accept(token)
    assert lazy.triggered
    mask = lazy.allowed_mask()
    allowed = {model.tokenizer.token_text(i) for i in mask.nonzero()[0][:50]}
    assert allowed and all('{"name": "get_weather"'.startswith(text) for text in allowed)


@pytest.mark.slow
def test_lazy_json_opening_is_masked_from_the_first_token(model):
    """Generic format: text may start freely, but a first token opening a JSON object must fit the call."""
    tools = normalize_tools([WEATHER])
    generic = FORMATS["generic"]
    lazy = LazyConstraint(tool_grammar(generic, tools, False, model.tokenizer, with_response=True), model, generic)
    mask = lazy.allowed_mask()
    brace_quote = model.tokenize("{'", add_special=False)
    hello = model.tokenize("Hello", add_special=False)
    assert mask[hello[0]] and (len(brace_quote) > 1 or not mask[brace_quote[0]])
    lazy.accept(hello[0])
    assert lazy.allowed_mask() is None  # the output began as text: free from now on
