"""Phi-3 / Phi-3.5 / Phi-4-mini (llama.cpp src/models/phi3.cpp): half-split RoPE, possibly on part of
each head (rope.dimension_count); q, k and v fused in attn_qkv and gate and up in ffn_up (gate rows
first), split here into views of the file. With longrope scaling the file carries
rope_factors_short/long: the short factors serve contexts up to rope.scaling.original_context_length,
the long ones longer contexts, as llama.cpp chooses them, and cos and sin are multiplied by
rope.scaling.attn_factor. llama.cpp ignores the file's sliding window for phi3, and so does janlib."""

from janlib.models.base import QKV_BIASES, Architecture

ARCH = Architecture(name="phi3", rope_layout="neox", ffn_activation="silu", optional_tensors=QKV_BIASES,
                    ffn="fused", sliding_window_period=None)
