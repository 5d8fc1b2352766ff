"""Qwen3: the Qwen2 decoder without q/k/v biases (used if a file has them) and with per-head q/k
RMSNorm before RoPE (llama.cpp src/models/qwen3.cpp)."""

from janlib.models.base import QKV_BIASES, Architecture

ARCH = Architecture(name="qwen3", rope_layout="neox", ffn_activation="silu",
                    required_tensors=("attn_q_norm", "attn_k_norm"), optional_tensors=QKV_BIASES)
