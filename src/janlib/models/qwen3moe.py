"""Qwen3-MoE (Qwen3-30B-A3B): Qwen3 attention, and in every layer a mixture of experts in place of
the FFN: softmax over the router logits, the expert_used_count best experts, their weights
renormalized to sum to 1 (llama.cpp src/models/qwen3moe.cpp passes norm_w = true)."""

from janlib.models.base import QKV_BIASES, Architecture

ARCH = Architecture(name="qwen3moe", rope_layout="neox", ffn_activation="silu",
                    required_tensors=("attn_q_norm", "attn_k_norm"), optional_tensors=QKV_BIASES, experts=True)
