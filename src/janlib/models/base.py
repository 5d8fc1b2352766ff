"""What every architecture shares: reading hyperparameters from GGUF metadata and finding the
weights by their GGUF names. An architecture module only states how it differs (`Architecture`).

Key names and defaults follow llama.cpp (`src/llama-arch.cpp`, `src/llama-model.cpp`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from janlib.errors import UnsupportedError
from janlib.gguf import GGUFFile, GGUFTensor

# Per-layer tensors: field name -> GGUF name after "blk.N.". The first group every architecture
# needs; the rest an architecture lists as required or optional.
CORE_LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight",
    "attn_q": "attn_q.weight",
    "attn_k": "attn_k.weight",
    "attn_v": "attn_v.weight",
    "attn_output": "attn_output.weight",
    "ffn_norm": "ffn_norm.weight",
    "ffn_gate": "ffn_gate.weight",
    "ffn_up": "ffn_up.weight",
    "ffn_down": "ffn_down.weight",
}
EXTRA_LAYER_TENSORS = {
    "attn_q_bias": "attn_q.bias",
    "attn_k_bias": "attn_k.bias",
    "attn_v_bias": "attn_v.bias",
    "attn_q_norm": "attn_q_norm.weight",
    "attn_k_norm": "attn_k_norm.weight",
    "post_attention_norm": "post_attention_norm.weight",
    "post_ffw_norm": "post_ffw_norm.weight",
}
QKV_BIASES = ("attn_q_bias", "attn_k_bias", "attn_v_bias")


@dataclass(frozen=True)
class HParams:
    """Hyperparameters as read from the file; per-layer values are tuples of n_layer."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    context_length: int
    norm_eps: float
    rope_layout: str  # "adjacent" | "neox"
    rope_base: tuple[float, ...]
    rope_freq_scale: tuple[float, ...]
    rope_freq_factors: bool  # rope_freqs.weight divides each pair's frequency (llama3)
    sliding_window: tuple[int, ...]  # 0: the layer attends to every earlier position
    ffn_activation: str  # "silu" | "gelu_tanh"
    embedding_scale: float
    attention_scale: float
    final_logit_softcap: float  # 0: none
    tied_output: bool  # no output.weight: logits use token_embd


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: GGUFTensor
    attn_q: GGUFTensor
    attn_k: GGUFTensor
    attn_v: GGUFTensor
    attn_output: GGUFTensor
    ffn_norm: GGUFTensor
    ffn_gate: GGUFTensor
    ffn_up: GGUFTensor
    ffn_down: GGUFTensor
    attn_q_bias: GGUFTensor | None = None
    attn_k_bias: GGUFTensor | None = None
    attn_v_bias: GGUFTensor | None = None
    attn_q_norm: GGUFTensor | None = None
    attn_k_norm: GGUFTensor | None = None
    post_attention_norm: GGUFTensor | None = None
    post_ffw_norm: GGUFTensor | None = None


@dataclass(frozen=True)
class ModelWeights:
    token_embd: GGUFTensor
    output_norm: GGUFTensor
    output: GGUFTensor  # token_embd itself when tied
    rope_freqs: GGUFTensor | None
    layers: tuple[LayerWeights, ...]


class Metadata:
    """`{arch}.` keys of a GGUF file with llama.cpp's defaults; missing required keys name themselves."""

    def __init__(self, gguf: GGUFFile, arch: str) -> None:
        self.values = gguf.metadata
        self.arch = arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(f"{self.arch}.{key}", default)

    def require(self, key: str) -> Any:
        full = f"{self.arch}.{key}"
        if full not in self.values:
            raise ValueError(f"GGUF metadata lacks {full!r}, which a {self.arch} model needs")
        return self.values[full]

    def uniform_int(self, key: str, default: Any = None) -> int:
        """An int that may be stored per layer; janlib needs the same value on every layer."""
        value = self.require(key) if default is None else self.get(key, default)
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise UnsupportedError(f"{self.arch}.{key} differs between layers ({value}); janlib needs one value")
            value = value[0]
        return int(value)


def default_attention_scale(meta: Metadata, n_layer: int, n_embd: int, n_head: int, head_dim_k: int) -> float:
    return float(meta.get("attention.scale", 0.0)) or 1.0 / math.sqrt(head_dim_k)


def rope_freq_scale(meta: Metadata) -> float:
    """Linear RoPE scaling divides positions by the factor; other kinds are not implemented."""
    kind = meta.get("rope.scaling.type", "linear")
    factor = float(meta.get("rope.scaling.factor", 0.0) or meta.get("rope.scale_linear", 0.0))
    if kind == "none" or factor == 0.0:
        return 1.0
    if kind != "linear":
        raise UnsupportedError(f"{meta.arch}.rope.scaling.type {kind!r} is not supported (only none and linear)")
    return 1.0 / factor


@dataclass(frozen=True)
class Architecture:
    """How one architecture departs from the plain llama-style decoder.

    sliding_window_period: with a sliding window in the file, every period-th layer (the last of
    each group) attends globally and the others slide, unless the file's
    `attention.sliding_window_pattern` says otherwise; 0 means the architecture has no sliding layers.
    swa_rope_base: the sliding layers' RoPE base when `rope.freq_base_swa` is absent; those layers
    then also skip the file's RoPE scaling (llama.cpp's rope_freq_scale_train_swa = 1). None: the
    sliding layers rotate like the global ones."""

    name: str
    rope_layout: str
    ffn_activation: str
    required_tensors: tuple[str, ...] = ()  # of EXTRA_LAYER_TENSORS
    optional_tensors: tuple[str, ...] = ()  # of EXTRA_LAYER_TENSORS, used when present
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(n_embd)
    sliding_window_period: int = 0
    swa_rope_base: float | None = None
    attention_scale: Callable[[Metadata, int, int, int, int], float] = field(default=default_attention_scale)

    def describe(self, gguf: GGUFFile) -> tuple[HParams, ModelWeights]:
        meta = Metadata(gguf, self.name)
        weights = self.find_weights(gguf, int(meta.require("block_count")))
        return self.read_hparams(meta, weights), weights

    def find_weights(self, gguf: GGUFFile, n_layer: int) -> ModelWeights:
        def tensor(name: str, required: bool = True) -> GGUFTensor | None:
            t = gguf.tensors.get(name)
            if t is None and required:
                raise ValueError(f"{self.name} model: tensor {name!r} is missing from {gguf.path!r}")
            if t is not None and len(t.ne) > 2:
                raise ValueError(f"{self.name} model: tensor {name!r} has shape {t.shape}, expected at most 2 dimensions")
            return t

        layers = []
        for il in range(n_layer):
            found = {f: tensor(f"blk.{il}.{name}") for f, name in CORE_LAYER_TENSORS.items()}
            for f in self.required_tensors + self.optional_tensors:
                found[f] = tensor(f"blk.{il}.{EXTRA_LAYER_TENSORS[f]}", f in self.required_tensors)
            layers.append(LayerWeights(**found))
        token_embd = tensor("token_embd.weight")
        return ModelWeights(
            token_embd=token_embd,
            output_norm=tensor("output_norm.weight"),
            output=tensor("output.weight", required=False) or token_embd,
            rope_freqs=tensor("rope_freqs.weight", required=False),
            layers=tuple(layers),
        )

    def sliding_layers(self, meta: Metadata, n_layer: int) -> list[bool]:
        if not self.sliding_window_period or not meta.get("attention.sliding_window", 0):
            return [False] * n_layer
        pattern = meta.get("attention.sliding_window_pattern", self.sliding_window_period)
        if isinstance(pattern, list):  # one flag per layer
            if len(pattern) != n_layer:
                raise ValueError(f"{self.name}.attention.sliding_window_pattern has {len(pattern)} entries for {n_layer} layers")
            return [bool(p) for p in pattern]
        period = int(pattern)
        return [period == 0 or il % period < period - 1 for il in range(n_layer)]

    def read_hparams(self, meta: Metadata, weights: ModelWeights) -> HParams:
        n_layer = int(meta.require("block_count"))
        n_embd = int(meta.require("embedding_length"))
        n_head = meta.uniform_int("attention.head_count")
        n_head_kv = meta.uniform_int("attention.head_count_kv", n_head)
        head_dim_k = int(meta.get("attention.key_length", n_embd // n_head))
        head_dim_v = int(meta.get("attention.value_length", n_embd // n_head))
        n_rot = int(meta.get("rope.dimension_count", head_dim_k))
        if n_rot != head_dim_k:
            raise UnsupportedError(f"{self.name}: RoPE on {n_rot} of {head_dim_k} head dimensions is not supported")
        base = float(meta.get("rope.freq_base", 10000.0))
        scale = rope_freq_scale(meta)
        sliding = self.sliding_layers(meta, n_layer)
        window = int(meta.get("attention.sliding_window", 0) or 0)
        swa_base, swa_scale = (base, scale) if self.swa_rope_base is None else (
            float(meta.get("rope.freq_base_swa", self.swa_rope_base)), 1.0)
        return HParams(
            arch=self.name,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            n_ff=meta.uniform_int("feed_forward_length"),
            n_vocab=weights.token_embd.shape[0],
            context_length=int(meta.require("context_length")),
            norm_eps=float(meta.require("attention.layer_norm_rms_epsilon")),
            rope_layout=self.rope_layout,
            rope_base=tuple(swa_base if s else base for s in sliding),
            rope_freq_scale=tuple(swa_scale if s else scale for s in sliding),
            rope_freq_factors=weights.rope_freqs is not None,
            sliding_window=tuple(window if s else 0 for s in sliding),
            ffn_activation=self.ffn_activation,
            embedding_scale=math.sqrt(n_embd) if self.scale_embeddings else 1.0,
            attention_scale=self.attention_scale(meta, n_layer, n_embd, n_head, head_dim_k),
            final_logit_softcap=float(meta.get("final_logit_softcapping", 0.0) or 0.0),
            tied_output=weights.output is weights.token_embd,
        )
