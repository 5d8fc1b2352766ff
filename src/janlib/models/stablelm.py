"""StableLM 2 (llama.cpp src/models/stablelm.cpp): LayerNorm with bias before attention, before the
FFN and at the end; half-split RoPE on the first rope.dimension_count dimensions of each head
(partial_rotary_factor); q/k/v biases where the file has them. Per-head q/k LayerNorms (the 12B
model) and the parallel-residual variant without ffn_norm are not supported."""

from janlib.models.base import NORM_BIASES, QKV_BIASES, Architecture

ARCH = Architecture(name="stablelm", rope_layout="neox", ffn_activation="silu", norm="layer",
                    optional_tensors=QKV_BIASES + NORM_BIASES)
