"""Reasoning markers: which pair a chat template uses to wrap the model's thinking, and whether its
rendered prompt already opened that block (DeepSeek-R1's and Qwen3's templates end the generation
prompt with ``<think>``, so the output starts inside the thinking and only closes it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REASONING_FORMATS", "ReasoningMarkers", "markers_for"]

REASONING_FORMATS = ("none", "deepseek", "auto")
"""none: thinking stays in the content; deepseek (auto is its alias, llama.cpp's default name): it goes
to reasoning_content."""


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
