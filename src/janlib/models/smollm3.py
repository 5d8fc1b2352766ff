"""SmolLM3 (llama.cpp src/models/smollm3.cpp): the llama decoder in which every fourth layer
((il + 1) % 4 == 0) has no RoPE at all (NoPE)."""

from janlib.models.base import FFN_BIASES, QKV_BIASES, Architecture

ARCH = Architecture(name="smollm3", rope_layout="adjacent", ffn_activation="silu",
                    optional_tensors=QKV_BIASES + ("attn_output_bias",) + FFN_BIASES, nope_layer_step=4)
