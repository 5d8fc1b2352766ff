"""Nomic BERT encoders (llama.cpp src/models/bert.cpp, nomic-bert branch; nomic-embed-text): BERT's
post-norm layout with a fused qkv projection without biases, half-split RoPE instead of position
embeddings, and a SwiGLU FFN. Token-type embeddings (type 0) are added, then LayerNormed."""

from janlib.models.base import POST_LAYER_NORMS, Architecture

ARCH = Architecture(name="nomic-bert", rope_layout="neox", ffn_activation="silu", norm="layer", pre_norms=False,
                    encoder=True, required_tensors=POST_LAYER_NORMS)
