"""StarCoder2 (llama.cpp src/models/starcoder2.cpp): LayerNorm with bias, biases on every
projection, half-split RoPE, and a plain (ungated) GELU-tanh MLP: down(gelu(up(x)))."""

from janlib.models.base import FFN_BIASES, NORM_BIASES, QKV_BIASES, Architecture

ARCH = Architecture(name="starcoder2", rope_layout="neox", ffn_activation="gelu_tanh", norm="layer", ffn="plain",
                    optional_tensors=QKV_BIASES + ("attn_output_bias",) + FFN_BIASES + NORM_BIASES)
