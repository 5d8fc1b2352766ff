"""Tests for janlib.chat: real templates against plain Jinja2, the sandbox, errors, the fallback."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from janlib.chat import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError
from janlib.errors import JanlibError
from janlib.gguf import load_gguf
from janlib.tokenizer import Tokenizer

slow = pytest.mark.slow

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?\nAnd  you're  well?"},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}],
    [{"role": "user", "content": "{{ not a template }} <|im_end|> 你好 🎉"}],
]


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_path):
    return load_gguf(smollm2_path).metadata


@pytest.fixture(scope="module")
def gemma3_metadata(gemma3_path):
    return load_gguf(gemma3_path).metadata


def _reference_render(source: str, messages, add_generation_prompt: bool, bos_token: str, eos_token: str) -> str:
    """Plain Jinja2 with the settings transformers uses: the independent reference."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          bos_token=bos_token, eos_token=eos_token, tools=None)


@slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_smollm2_template_equals_plain_jinja(smollm2_metadata, conversation, add_generation_prompt):
    template = ChatTemplate.from_metadata(smollm2_metadata)
    messages = CONVERSATIONS[conversation]
    expected = _reference_render(smollm2_metadata["tokenizer.chat_template"], messages, add_generation_prompt,
                                 "<|im_start|>", "<|im_end|>")
    assert template.render(messages, add_generation_prompt=add_generation_prompt) == expected


@slow
def test_smollm2_template_literal(smollm2_metadata):
    template = ChatTemplate.from_metadata(smollm2_metadata, Tokenizer.from_metadata(smollm2_metadata))
    assert not template.is_fallback
    assert template.source == smollm2_metadata["tokenizer.chat_template"]
    assert (template.bos_token, template.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert template.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert template.render(CONVERSATIONS[1], add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n")


@slow
def test_gemma3_has_no_template_and_falls_back_to_chatml(gemma3_metadata):
    assert "tokenizer.chat_template" not in gemma3_metadata
    template = ChatTemplate.from_metadata(gemma3_metadata, Tokenizer.from_metadata(gemma3_metadata))
    assert template.is_fallback and template.source == CHATML_TEMPLATE
    assert (template.bos_token, template.eos_token) == ("<bos>", "<eos>")
    assert template.render(CONVERSATIONS[2]) == (
        "<|im_start|>system\nYou answer in French.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nBonjour !<|im_end|>\n"
        "<|im_start|>user\nHow are you?\nAnd  you're  well?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert template.render(CONVERSATIONS[0], add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_bos_and_eos_from_metadata_alone():
    metadata = {"tokenizer.ggml.tokens": ["<pad>", "<s>", "</s>"], "tokenizer.ggml.bos_token_id": 1,
                "tokenizer.ggml.eos_token_id": 2, "tokenizer.chat_template": "{{ bos_token }}|{{ eos_token }}"}
    assert ChatTemplate.from_metadata(metadata).render([]) == "<s>|</s>"
    del metadata["tokenizer.ggml.eos_token_id"]
    assert ChatTemplate.from_metadata(metadata).render([]) == "<s>|"


def test_fallback_for_a_missing_template():
    for source in (None, ""):
        template = ChatTemplate(source)
        assert template.is_fallback and template.source == CHATML_TEMPLATE
    assert ChatTemplate(None).render([{"role": "user", "content": "Hi"}]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_text_parts_are_joined():
    template = ChatTemplate("{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}")
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert template.render([{"role": "user", "content": parts}]) == "[user:first\nsecond]"
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]: content parts"):
        template.render([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


@pytest.mark.parametrize(("messages", "problem"), [
    ("Hi", "must be a list"),
    ({"role": "user", "content": "Hi"}, "must be a list"),
    (["Hi"], r"messages\[0\] must be a dict"),
    ([{"content": "Hi"}], r"messages\[0\] needs a 'role'"),
    ([{"role": 1, "content": "Hi"}], r"needs a 'role'"),
    ([{"role": "user", "content": "Hi"}, {"role": "user"}], r"messages\[1\] needs 'content'"),
    ([{"role": "user", "content": 42}], "content must be a str or a list of text parts"),
])
def test_bad_messages(messages, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        ChatTemplate(None).render(messages)


def test_tool_calls_without_content_and_variables_pass_through():
    template = ChatTemplate(
        "{% for m in messages %}{{ m.role }}{% if m.tool_calls %}:{{ m.tool_calls|tojson }}{% endif %}{% endfor %}"
        "|{{ tools|tojson }}|{{ custom }}|{{ add_generation_prompt }}|{{ strftime_now('%Y') | length }}")
    messages = [{"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": "<é>"}]}]
    rendered = template.render(messages, add_generation_prompt=False, tools=[{"name": "f"}], custom="x")
    # tojson is transformers' plain json.dumps: no HTML escaping, no ASCII escaping
    assert rendered == 'assistant:[{"name": "f", "arguments": "<é>"}]|[{"name": "f"}]|x|False|4'


def test_loop_controls_are_available():
    template = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}")
    assert template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ ''.__class__ }}",
    "{{ raise_exception.__globals__ }}",
    "{% set x = messages.append(1) %}",
    "{{ messages[0].update({'role': 'system'}) }}",
])
def test_sandbox_escapes_are_errors(source):
    with pytest.raises(ChatTemplateError, match="blocked by the sandbox: access to attribute .* is unsafe"):
        ChatTemplate(source).render([{"role": "user", "content": "Hi"}])


def test_broken_template_names_the_line():
    with pytest.raises(ChatTemplateError, match=r"does not compile: line 2"):
        ChatTemplate("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    with pytest.raises(ChatTemplateError, match="does not compile: line 1"):
        ChatTemplate("{% if messages %}unclosed")


def test_raise_exception_and_runtime_failures():
    template = ChatTemplate("{% if messages[0]['role'] != 'user' %}"
                            "{{ raise_exception('Conversation must start with user') }}{% endif %}ok")
    assert template.render([{"role": "user", "content": "Hi"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="Conversation must start with user"):
        template.render([{"role": "system", "content": "S"}])
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        ChatTemplate("{{ 1 // messages|length }}").render([])
    with pytest.raises(ChatTemplateError, match="Range too big"):
        ChatTemplate("{{ range(10**9)|list }}").render([])


def test_errors_are_janlib_value_errors():
    assert issubclass(ChatTemplateError, JanlibError) and issubclass(ChatTemplateError, ValueError)


@slow
def test_developer_role_is_system_for_smollm2(smollm2_metadata):
    # SmolLM2's template predates the role: a developer message must give the system message's exact text
    template = ChatTemplate.from_metadata(smollm2_metadata)
    assert not template.knows_developer
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    expected = _reference_render(smollm2_metadata["tokenizer.chat_template"], system, True, "<|im_start|>",
                                 "<|im_end|>")
    assert template.render(developer) == expected


def test_developer_role_reaches_templates_that_name_it():
    source = ("{% for m in messages %}{% if m['role'] == 'developer' %}[dev]{% else %}[{{ m['role'] }}]{% endif %}"
              "{{ m['content'] }}{% endfor %}")
    template = ChatTemplate(source)
    assert template.knows_developer
    messages = [{"role": "developer", "content": "a"}, {"role": "system", "content": "b"}]
    assert template.render(messages) == "[dev]a[system]b"
    assert ChatTemplate(None).render([{"role": "developer", "content": "a"}], add_generation_prompt=False) == (
        "<|im_start|>system\na<|im_end|>\n")


def test_todays_date_reaches_templates_as_llamacpp_passes_it():
    """Llama 3.x prints date_string (else a fixed 2024 date), firefunction-v2 datetime; a caller's value wins."""
    import datetime

    source = ("{% if not date_string is defined %}{% set date_string = '26 Jul 2024' %}{% endif %}"
              "{{ date_string }}|{{ datetime }}")
    today = datetime.date.today()
    expected = f"{today.strftime('%d %b %Y')}|{today.strftime('%b %d %Y')}"
    assert ChatTemplate(source).render([]) == expected
    assert ChatTemplate(source).render([], date_string="1 Jan 2000").startswith("1 Jan 2000|")


def test_string_plus_missing_or_null_is_the_string():
    """A template written for llama.cpp's engine (firefunction-v2 adds an unset `functions`) renders there."""
    template = ChatTemplate("{{ 'a' + functions + 'b' }}|{{ none_value + 'c' }}|{{ 1 + 2 }}")
    assert template.render([], none_value=None) == "ab|c|3"
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ 1 + functions }}").render([])


def test_named_templates_write_llamacpp_builtin_formats():
    """--chat-template NAME takes llama.cpp's built-in formats (src/llama-chat.cpp): content trimmed where it trims."""
    from janlib.chat import NAMED_TEMPLATES

    messages = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": " Hi there "}]
    assert ChatTemplate(NAMED_TEMPLATES["command-r"]).render(messages) == (
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    assert ChatTemplate(NAMED_TEMPLATES["llama3"]).render(messages, add_generation_prompt=False) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a test.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>")
    assert ChatTemplate(NAMED_TEMPLATES["gemma"]).render(messages) == (
        "<start_of_turn>user\nYou are a test.\n\nHi there<end_of_turn>\n<start_of_turn>model\n")
    assert ChatTemplate(NAMED_TEMPLATES["phi3"]).render(messages[1:]) == "<|user|>\n Hi there <|end|>\n<|assistant|>\n"


def test_a_continued_message_joins_its_parts_with_a_blank_line():
    """llama.cpp joins a prefilled assistant message's text parts with a blank line, other messages' with one newline."""
    template = ChatTemplate(CHATML_TEMPLATE)
    parts = [{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": parts}]
    assert template.render(messages, continue_final_message=True).endswith(
        "<|im_start|>user\nWh\nill<|im_end|>\n<|im_start|>assistant\nWh\n\nill")
