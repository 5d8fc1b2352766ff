"""Granite 3 (llama.cpp src/models/granite.cpp): the llama decoder with four multipliers from the
file: embedding_scale on the token embeddings, residual_scale on each block's output before it is
added, attention.scale as the score scale, and the logits divided by logit_scale (the generic
hyperparameters read all four)."""

from janlib.models.base import FFN_BIASES, QKV_BIASES, Architecture

ARCH = Architecture(name="granite", rope_layout="adjacent", ffn_activation="silu",
                    optional_tensors=QKV_BIASES + ("attn_output_bias",) + FFN_BIASES)
