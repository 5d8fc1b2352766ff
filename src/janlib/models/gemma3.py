"""Gemma 3: embeddings scaled by sqrt(n_embd), per-head q/k RMSNorm before RoPE, RMSNorm after
attention and after the FFN as well as before, GELU-tanh gating, and five sliding-window layers
for each global one. Facts from llama.cpp (src/llama-model.cpp, src/models/gemma3.cpp):

* the GGUF norm weights already include Gemma's +1, so they multiply as stored;
* sliding layers are those with il % 6 < 5 (the file may set attention.sliding_window_pattern),
  and rotate with base rope.freq_base_swa, 10000 when absent, unscaled; global layers use
  rope.freq_base and the file's RoPE scaling;
* a token at position p sees positions > p - sliding_window on sliding layers;
* scores are scaled by 1/sqrt(head_dim_k), except the 27B model (62 layers):
  1/sqrt(n_embd / n_head), its query_pre_attn_scalar;
* no final logit softcapping for sliding-window Gemma 3 (applied only if the file asks)."""

import math

from janlib.models.base import Architecture, Metadata

LAYERS_27B = 62


def attention_scale(meta: Metadata, n_layer: int, n_embd: int, n_head: int, head_dim_k: int) -> float:
    return 1.0 / math.sqrt(n_embd / n_head if n_layer == LAYERS_27B else head_dim_k)


ARCH = Architecture(
    name="gemma3",
    rope_layout="neox",
    ffn_activation="gelu_tanh",
    required_tensors=("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"),
    scale_embeddings=True,
    sliding_window_period=6,
    swa_rope_base=10000.0,
    attention_scale=attention_scale,
)
