"""Chat templates: the Jinja2 template a GGUF carries in `tokenizer.chat_template`, rendered the
way Hugging Face transformers renders it, inside Jinja2's immutable sandbox.

A template comes from the model file and is untrusted code: it runs in
`ImmutableSandboxedEnvironment`, any access to an unsafe attribute (``__class__``,
``__globals__``, ...) stops rendering, and every failure surfaces as `ChatTemplateError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateSyntaxError, Undefined
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from janlib.errors import JanlibError
from janlib.reasoning import without_thinking

__all__ = ["CHATML_TEMPLATE", "NAMED_TEMPLATES", "ChatTemplate", "ChatTemplateError"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The template used when a model has none (Gemma-3-270M, a base model, is one): ChatML,
because llama.cpp (llama-server, llama-cli) falls back to ChatML too, so a prompt gets the same
text here as there. For a base model any template is plain prompt text; ChatML's markers are at
least the most widespread ones a model may have seen."""


def _turns(open_: str, close: str, generation: str, trim: bool = True) -> str:
    """A template writing each message as open_ + content + close (Jinja expressions), then generation."""
    content = "message['content'] | trim" if trim else "message['content']"
    return (f"{{% for message in messages %}}{{{{ {open_} + {content} + {close} }}}}{{% endfor %}}"
            f"{{% if add_generation_prompt %}}{{{{ {generation} }}}}{{% endif %}}")


_ROLE = "message['role']"


NAMED_TEMPLATES = {
    # llama.cpp's built-in templates by the names --chat-template takes (src/llama-chat.cpp), the same text here
    "chatml": CHATML_TEMPLATE,
    "llama3": _turns(f"'<|start_header_id|>' + {_ROLE} + '<|end_header_id|>\\n\\n'", "'<|eot_id|>'",
                     "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'"),
    "command-r": _turns("'<|START_OF_TURN_TOKEN|><|' + {'system': 'SYSTEM', 'user': 'USER', 'assistant': 'CHATBOT'}"
                        f"[{_ROLE}] + '_TOKEN|>'", "'<|END_OF_TURN_TOKEN|>'",
                        "'<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'"),
    "phi3": _turns(f"'<|' + {_ROLE} + '|>\\n'", "'<|end|>\\n'", "'<|assistant|>\\n'", trim=False),
    "zephyr": _turns(f"'<|' + {_ROLE} + '|>\\n'", "'<|endoftext|>\\n'", "'<|assistant|>\\n'", trim=False),
    # no system role: system text goes before the next user turn's
    "gemma": ("{% set ns = namespace(system='') %}{% for message in messages %}"
              "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] | trim %}"
              "{% else %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
              "{{ '<start_of_turn>' + role + '\\n' }}"
              "{% if ns.system and role != 'model' %}{{ ns.system + '\\n\\n' }}{% set ns.system = '' %}{% endif %}"
              "{{ message['content'] | trim + '<end_of_turn>\\n' }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
}
"""A --chat-template value that is one of these names means that template; any other value is Jinja source."""


class ChatTemplateError(JanlibError, ValueError):
    """A chat template that does not compile or fails while rendering, or messages it cannot take."""


class _Sandbox(ImmutableSandboxedEnvironment):
    # Jinja's sandbox turns an unsafe attribute into an Undefined that fails only when used
    # further (and prints as ""); fail at the access itself.
    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    # Templates written for llama.cpp's engine add strings to variables the caller may not set
    # (firefunction-v2: `suffix + "\n" + functions`); llama.cpp reads a missing or null operand of a
    # string `+` as "", so the same template renders the same text here instead of failing.
    intercepted_binops = frozenset({"+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+":
            if isinstance(left, str) and (right is None or isinstance(right, Undefined)):
                return left
            if isinstance(right, str) and (left is None or isinstance(left, Undefined)):
                return right
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"chat template error: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def today() -> dict[str, str]:
    """Today's date under the names llama.cpp gives every template: Llama 3.x prints `date_string` in its
    system header (falling back to a fixed 2024 date when it is missing), firefunction-v2 prints `datetime`."""
    now = datetime.now()
    return {"date_string": now.strftime("%d %b %Y"), "datetime": now.strftime("%b %d %Y")}


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' tojson: plain JSON, without Jinja's HTML escaping of < > & '
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# trim_blocks/lstrip_blocks and loop controls as in transformers' apply_chat_template
_ENV = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
_ENV.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
_ENV.filters["tojson"] = _tojson


def _valid_id(value: Any, n_vocab: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_vocab else None


def _message_content(content: Any, index: int, separator: str = "\n") -> str:
    """A message's content as one string; OpenAI text parts are joined with newlines, as llama.cpp does."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ChatTemplateError(f"messages[{index}]: content parts must be {{'type': 'text', 'text': str}}, "
                                        f"got {part!r}")
            texts.append(part["text"])
        return separator.join(texts)
    raise ChatTemplateError(f"messages[{index}]: content must be a str or a list of text parts, "
                            f"got {type(content).__name__}")


def _checked_messages(messages: Any, developer_as: str) -> list[dict]:
    """Copies of the messages with string content, role "developer" renamed developer_as; a message
    without content needs tool_calls."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{index}] must be a dict, got {type(message).__name__}")
        if not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"messages[{index}] needs a 'role' string")
        message = dict(message)
        if message["role"] == "developer":
            message["role"] = developer_as
        if message.get("content") is not None:
            message["content"] = _message_content(message["content"], index)
        elif not message.get("tool_calls"):
            raise ChatTemplateError(f"messages[{index}] needs 'content' (or 'tool_calls')")
        checked.append(message)
    return checked


class ChatTemplate:
    """A compiled chat template; source None (or "") means the model has none and
    `CHATML_TEMPLATE` is used, with is_fallback True.

    Role "developer" (OpenAI's successor to system) reaches the template as it is only when the
    template names that role; others were trained before it existed and get it as "system"."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        self.is_fallback = not source
        self.source = CHATML_TEMPLATE if self.is_fallback else source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.knows_developer = "'developer'" in self.source or '"developer"' in self.source
        try:
            self._template = _ENV.from_string(self.source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template does not compile: line {e.lineno}: {e.message}") from e

    @classmethod
    def from_metadata(cls, metadata: dict, tokenizer=None) -> ChatTemplate:
        """The GGUF's `tokenizer.chat_template`, with the BOS/EOS texts of its vocabulary
        (taken from tokenizer when given, else from the metadata's token list)."""
        if tokenizer is not None:
            bos_id, eos_id, text_of = tokenizer.bos_id, tokenizer.eos_id, tokenizer.token_text
        else:
            tokens = metadata.get("tokenizer.ggml.tokens") or []
            bos_id = _valid_id(metadata.get("tokenizer.ggml.bos_token_id"), len(tokens))
            eos_id = _valid_id(metadata.get("tokenizer.ggml.eos_token_id"), len(tokens))
            text_of = tokens.__getitem__
        source = metadata.get("tokenizer.chat_template")
        return cls(source if isinstance(source, str) else None,
                   bos_token="" if bos_id is None else text_of(bos_id),
                   eos_token="" if eos_id is None else text_of(eos_id))

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True, tools: list | None = None,
               continue_final_message: bool = False, **extra: Any) -> str:
        """The prompt text for messages; extra keyword arguments become template variables. tools are
        passed as transformers passes them ([{"type": "function", "function": {...}}]).

        continue_final_message: the text ends inside the last message (prefill), which the model
        continues instead of starting a new turn; the message is rendered in full, its closing cut off.
        enable_thinking=False (a template variable) also closes a thinking block the generation prompt
        leaves open, so the model answers at once whether or not the template reads the variable."""
        checked = _checked_messages(messages, "developer" if self.knows_developer else "system")
        if continue_final_message:
            if checked and checked[-1].get("content") is not None:  # a continued message's parts: a blank line
                checked[-1]["content"] = _message_content(messages[-1]["content"], len(checked) - 1, "\n\n")
            return self._render_continued(checked, tools, extra)
        text = self._render(checked, add_generation_prompt, tools, extra)
        if add_generation_prompt and extra.get("enable_thinking") is False:
            text = without_thinking(text, self.source)
        return text

    def _render_continued(self, checked: list[dict], tools: list | None, extra: dict) -> str:
        if not checked:
            raise ChatTemplateError("continue_final_message needs a message to continue")
        final = checked[-1]
        if final.get("tool_calls"):
            raise ChatTemplateError("the final message has tool_calls: a call cannot be continued")
        content = final.get("content") or ""
        # a placeholder without spaces survives templates that trim content; what the message said (its
        # trailing spaces included: they are part of the prefill) goes where the placeholder was
        placeholder = "\ue000janlib-continue\ue000"
        text = self._render(checked[:-1] + [dict(final, content=placeholder)], False, tools, extra)
        at = text.rfind(placeholder)
        if at < 0:
            raise ChatTemplateError("the chat template does not write the final message's content, so it cannot "
                                    "be continued")
        return text[:at] + content

    def _render(self, checked: list[dict], add_generation_prompt: bool, tools: list | None, extra: dict) -> str:
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, **today(), **extra,
                     "messages": checked,
                     "add_generation_prompt": add_generation_prompt,
                     "tools": tools}
        try:
            return self._template.render(**variables)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"chat template blocked by the sandbox: {e}") from e
        except Exception as e:  # the template is foreign code: any failure is its error
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e
