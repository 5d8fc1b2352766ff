"""Qwen2: the llama decoder with q/k/v biases and half-split ("neox") RoPE."""

from janlib.models.base import QKV_BIASES, Architecture

ARCH = Architecture(name="qwen2", rope_layout="neox", ffn_activation="silu", required_tensors=QKV_BIASES)
