"""BERT encoders (llama.cpp src/models/bert.cpp; all-MiniLM, bge, e5 ...): token, token-type (type 0)
and absolute position embeddings summed and LayerNormed; per layer, biased q/k/v/output projections,
attention over the whole sequence (not causal), then post-norms: x = norm(x + attention(x)),
x = norm(x + ffn(x)) with a plain GELU FFN, exact erf GELU as transformers' BERT computes it. No RoPE,
no output head: the model gives embeddings, pooled as the file's pooling_type says."""

from janlib.models.base import POST_LAYER_NORMS, QKV_BIASES, Architecture

ARCH = Architecture(name="bert", rope_layout="neox", ffn_activation="gelu_erf", norm="layer", pre_norms=False,
                    ffn="plain", encoder=True, nope_layer_step=1,  # every layer without RoPE: positions are absolute
                    required_tensors=QKV_BIASES + ("attn_output_bias", "ffn_up_bias", "ffn_down_bias") + POST_LAYER_NORMS)
