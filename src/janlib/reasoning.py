"""Reasoning markers: which pair a chat template uses to wrap the model's thinking, and whether its
rendered prompt already opened that block (DeepSeek-R1's and Qwen3's templates end the generation
prompt with ``<think>``, so the output starts inside the thinking and only closes it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REASONING_FORMATS", "REASONING_MODES", "ReasoningMarkers", "markers_for", "thinking_variables",
           "without_thinking"]

REASONING_FORMATS = ("none", "deepseek", "auto")
"""none: thinking stays in the content; deepseek (auto is its alias, llama.cpp's default name): it goes
to reasoning_content."""

REASONING_MODES = ("on", "off", "auto")
"""llama-server's --reasoning, the templates' enable_thinking switch: on and auto (its default) set it true,
so a template that offers thinking thinks (a template that does not read the variable is unaffected); off
sets it false and also closes a thinking block the template opens regardless (see without_thinking)."""


@dataclass(frozen=True)
class ReasoningMarkers:
    open: str
    close: str

    def opened_by(self, prompt: str) -> bool:
        """True when prompt ends inside an unclosed thinking block."""
        return prompt.rstrip().endswith(self.open)


# Families whose templates name their own markers; every other template gets <think> (DeepSeek, Qwen3,
# SmolLM3, GLM, Granite, ... all use it).
_KNOWN = (
    ReasoningMarkers("<|START_THINKING|>", "<|END_THINKING|>"),  # Command R7B
    ReasoningMarkers("[THINK]", "[/THINK]"),  # Magistral, Ministral reasoning
    ReasoningMarkers("<seed:think>", "</seed:think>"),  # Seed-OSS
)
THINK = ReasoningMarkers("<think>", "</think>")


def markers_for(template_source: str) -> ReasoningMarkers:
    for markers in _KNOWN:
        if markers.close in template_source:
            return markers
    return THINK


def thinking_variables(mode: str) -> dict:
    """The template variables of a reasoning mode (REASONING_MODES), as llama-server passes them."""
    return {"enable_thinking": mode != "off"}


def without_thinking(prompt: str, template_source: str) -> str:
    """prompt (ending with the generation prompt) so that the model answers without thinking, as
    llama.cpp does for enable_thinking false: a block the template opened (DeepSeek-R1's and QwQ's always
    do) is closed; a template with markers of its own that left none (Command R7B) gets an empty block.
    Templates that honour enable_thinking themselves (Qwen3) already end closed and stay as they are."""
    markers = markers_for(template_source)
    if markers.opened_by(prompt):
        return prompt + markers.close
    if markers is not THINK and not prompt.rstrip().endswith(markers.close):
        return prompt + markers.open + markers.close
    return prompt
