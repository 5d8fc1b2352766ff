"""OLMo 2 (llama.cpp src/models/olmo2.cpp): no norms before attention or the FFN; RMSNorm of the
whole query and key rows (not per head) before RoPE, and RMSNorm of the attention and FFN outputs
before they are added; half-split RoPE."""

from janlib.models.base import Architecture

ARCH = Architecture(name="olmo2", rope_layout="neox", ffn_activation="silu", pre_norms=False,
                    required_tensors=("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"),
                    sliding_window_period=4)
