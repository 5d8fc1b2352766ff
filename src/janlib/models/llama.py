"""Llama (and SmolLM2, Llama 3 with its rope_freqs factors, Mistral, and Mixtral, whose experts the
GGUF stores under the llama architecture): the plain pre-norm decoder.

GGUF conversion permutes the q and k rows so that RoPE rotates adjacent pairs; optional q/k/v
biases are used when a file has them, as llama.cpp's llama graph does. Experts route as llama.cpp
routes them (softmax, top expert_used_count, weights renormalized)."""

from janlib.models.base import QKV_BIASES, Architecture

ARCH = Architecture(name="llama", rope_layout="adjacent", ffn_activation="silu", optional_tensors=QKV_BIASES,
                    experts=True)
