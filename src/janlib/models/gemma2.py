"""Gemma 2 (llama.cpp src/models/gemma2.cpp): embeddings scaled by sqrt(n_embd), RMSNorm after
attention and after the FFN as well as before, GELU-tanh gating, attention scores capped by
attn_logit_softcapping (cap * tanh(s / cap)) and the logits by final_logit_softcapping, and every
other layer (the even ones) sliding over attention.sliding_window (4096 when absent). Scores are
scaled by 1/sqrt(head_dim_k), except the 27B model (46 layers): 1/sqrt(n_embd / n_head)."""

import math

from janlib.models.base import Architecture, Metadata

LAYERS_27B = 46


def attention_scale(meta: Metadata, n_layer: int, n_embd: int, n_head: int, head_dim_k: int) -> float:
    return 1.0 / math.sqrt(n_embd / n_head if n_layer == LAYERS_27B else head_dim_k)


ARCH = Architecture(
    name="gemma2",
    rope_layout="neox",
    ffn_activation="gelu_tanh",
    required_tensors=("post_attention_norm", "post_ffw_norm"),
    scale_embeddings=True,
    sliding_window_period=2,
    default_sliding_window=4096,
    attn_softcap=True,
    attention_scale=attention_scale,
)
