"""What every architecture shares: reading hyperparameters from GGUF metadata and finding the
weights by their GGUF names. An architecture module only states how it differs (`Architecture`).

Key names and defaults follow llama.cpp (`src/llama-arch.cpp`, `src/llama-model.cpp`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from janlib.errors import UnsupportedError
from janlib.gguf import GGUFFile, GGUFTensor

# Per-layer tensors: field name -> GGUF name after "blk.N.". The first group every architecture
# needs (a fused attn_qkv stands for the three); the rest an architecture lists as required or
# optional. Norms and the FFN are found by the generic rules in Architecture.find_weights.
CORE_LAYER_TENSORS = {
    "attn_q": "attn_q.weight",
    "attn_k": "attn_k.weight",
    "attn_v": "attn_v.weight",
    "attn_output": "attn_output.weight",
}
EXTRA_LAYER_TENSORS = {
    "attn_q_bias": "attn_q.bias",
    "attn_k_bias": "attn_k.bias",
    "attn_v_bias": "attn_v.bias",
    "attn_q_norm": "attn_q_norm.weight",
    "attn_k_norm": "attn_k_norm.weight",
    "attn_output_bias": "attn_output.bias",
    "post_attention_norm": "post_attention_norm.weight",
    "post_ffw_norm": "post_ffw_norm.weight",
    "attn_norm_bias": "attn_norm.bias",
    "ffn_norm_bias": "ffn_norm.bias",
    "ffn_gate_bias": "ffn_gate.bias",
    "ffn_up_bias": "ffn_up.bias",
    "ffn_down_bias": "ffn_down.bias",
    "attn_output_norm": "attn_output_norm.weight",
    "attn_output_norm_bias": "attn_output_norm.bias",
    "layer_output_norm": "layer_output_norm.weight",
    "layer_output_norm_bias": "layer_output_norm.bias",
}
NORM_TENSORS = {"attn_norm": "attn_norm.weight", "ffn_norm": "ffn_norm.weight"}
DENSE_FFN_TENSORS = {"ffn_gate": "ffn_gate.weight", "ffn_up": "ffn_up.weight", "ffn_down": "ffn_down.weight"}
EXPERT_TENSORS = {
    "ffn_gate_inp": "ffn_gate_inp.weight",
    "ffn_gate_exps": "ffn_gate_exps.weight",
    "ffn_up_exps": "ffn_up_exps.weight",
    "ffn_down_exps": "ffn_down_exps.weight",
}
QKV_BIASES = ("attn_q_bias", "attn_k_bias", "attn_v_bias")
FFN_BIASES = ("ffn_gate_bias", "ffn_up_bias", "ffn_down_bias")
NORM_BIASES = ("attn_norm_bias", "ffn_norm_bias")
# bert's post-norms of the residual stream, after the attention and after the FFN
POST_LAYER_NORMS = ("attn_output_norm", "attn_output_norm_bias", "layer_output_norm", "layer_output_norm_bias")
POOLING_TYPES = ("none", "mean", "cls", "last", "rank")  # llama.cpp's pooling_type numbers 0..4
# Global tensors read by the generic rules, not by the layers
GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight", "rope_freqs.weight",
                  "rope_factors_long.weight", "rope_factors_short.weight", "token_types.weight", "position_embd.weight",
                  "token_embd_norm.weight", "token_embd_norm.bias")


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
    norm_type: str  # "rms" | "layer" (attn_norm, ffn_norm, output_norm)
    rope_layout: str  # "adjacent" | "neox"
    n_rot: int  # RoPE turns the first n_rot dimensions of each head
    rope_base: tuple[float, ...]
    rope_freq_scale: tuple[float, ...]
    rope_freq_factors: bool  # rope_freqs.weight divides each pair's frequency (llama3)
    rope_scaling: str  # "none" | "linear" | "yarn" | "longrope"
    # The RoPE tables janlib runs: per layer the frequencies of the n_rot / 2 pairs (None: no RoPE
    # on the layer), the long-context ones (longrope, for contexts past rope_n_ctx_orig; else None)
    # and the factor cos and sin are multiplied by.
    rope_inv_freq: tuple[np.ndarray | None, ...]
    rope_inv_freq_long: tuple[np.ndarray | None, ...]
    rope_attn_factor: tuple[float, ...]
    rope_n_ctx_orig: int
    sliding_window: tuple[int, ...]  # 0: the layer attends to every earlier position
    ffn_activation: str  # "silu" | "gelu_tanh"
    embedding_scale: float
    residual_scale: float
    attention_scale: float
    attn_logit_softcap: float  # 0: none
    logit_scale: float  # logits are multiplied by it
    final_logit_softcap: float  # 0: none
    tied_output: bool  # no output.weight: logits use token_embd
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    expert_weights_norm: bool = False
    expert_weights_scale: float = 1.0
    non_causal: bool = False  # an encoder: every token attends to its whole sequence
    pooling_type: str = "none"  # of POOLING_TYPES: how the file's embeddings pool their tokens


@dataclass(frozen=True)
class LayerWeights:
    attn_q: GGUFTensor
    attn_k: GGUFTensor
    attn_v: GGUFTensor
    attn_output: GGUFTensor
    attn_norm: GGUFTensor | None = None
    ffn_norm: GGUFTensor | None = None
    ffn_gate: GGUFTensor | None = None
    ffn_up: GGUFTensor | None = None
    ffn_down: GGUFTensor | None = None
    attn_q_bias: GGUFTensor | None = None
    attn_k_bias: GGUFTensor | None = None
    attn_v_bias: GGUFTensor | None = None
    attn_q_norm: GGUFTensor | None = None
    attn_k_norm: GGUFTensor | None = None
    attn_output_bias: GGUFTensor | None = None
    post_attention_norm: GGUFTensor | None = None
    post_ffw_norm: GGUFTensor | None = None
    attn_norm_bias: GGUFTensor | None = None
    ffn_norm_bias: GGUFTensor | None = None
    ffn_gate_bias: GGUFTensor | None = None
    ffn_up_bias: GGUFTensor | None = None
    ffn_down_bias: GGUFTensor | None = None
    ffn_gate_inp: GGUFTensor | None = None
    ffn_gate_exps: GGUFTensor | None = None
    ffn_up_exps: GGUFTensor | None = None
    ffn_down_exps: GGUFTensor | None = None
    attn_output_norm: GGUFTensor | None = None
    attn_output_norm_bias: GGUFTensor | None = None
    layer_output_norm: GGUFTensor | None = None
    layer_output_norm_bias: GGUFTensor | None = None


@dataclass(frozen=True)
class ModelWeights:
    token_embd: GGUFTensor
    output_norm: GGUFTensor | None  # None: an encoder, whose last layer gives the hidden state
    output: GGUFTensor | None  # token_embd itself when tied; None: an encoder (embeddings only)
    rope_freqs: GGUFTensor | None
    layers: tuple[LayerWeights, ...]
    output_norm_bias: GGUFTensor | None = None
    rope_factors_long: GGUFTensor | None = None
    rope_factors_short: GGUFTensor | None = None
    token_types: GGUFTensor | None = None
    position_embd: GGUFTensor | None = None
    token_embd_norm: GGUFTensor | None = None
    token_embd_norm_bias: GGUFTensor | None = None


def row_view(t: GGUFTensor, first: int, rows: int, name: str) -> GGUFTensor:
    """Rows [first, first + rows) of a matrix (or elements of a vector) as a tensor of their own:
    how a fused tensor (attn_qkv, a gate_up ffn_up) is split without copying."""
    if len(t.ne) == 1:
        row_bytes, ne = t.nbytes // t.ne[0], (rows,)
    else:
        row_bytes, ne = t.nbytes // t.ne[1], (t.ne[0], rows)
    return replace(t, name=name, ne=ne, offset=t.offset + first * row_bytes, nbytes=rows * row_bytes,
                   n_elements=rows * (1 if len(t.ne) == 1 else t.ne[0]))


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


def pooling_type(meta: Metadata) -> str:
    value = int(meta.get("pooling_type", 0))
    if not 0 <= value < len(POOLING_TYPES):
        raise UnsupportedError(f"{meta.arch}.pooling_type {value} is not supported (janlib knows {POOLING_TYPES})")
    return POOLING_TYPES[value]


ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


def rope_scaling(meta: Metadata) -> tuple[str, float]:
    """The file's RoPE scaling kind and factor (llama.cpp: type defaults to linear, the factor to none)."""
    kind = meta.get("rope.scaling.type", "linear")
    factor = float(meta.get("rope.scaling.factor", 0.0) or meta.get("rope.scale_linear", 0.0) or 0.0)
    if kind not in ROPE_SCALING_TYPES:
        raise UnsupportedError(f"{meta.arch}.rope.scaling.type {kind!r} is not supported "
                               f"(janlib runs {', '.join(ROPE_SCALING_TYPES)})")
    if kind in ("linear", "yarn") and factor in (0.0, 1.0):
        return "none", 1.0
    return kind, factor or 1.0


def rope_freq_scale(meta: Metadata) -> float:
    """Positions are multiplied by this (linear and YaRN interpolation; 1 otherwise)."""
    kind, factor = rope_scaling(meta)
    return 1.0 / factor if kind in ("linear", "yarn") else 1.0


def yarn_inv_freq(inv_freq: np.ndarray, meta: Metadata, n_rot: int, base: float, factor: float,
                  n_ctx_orig: int) -> tuple[np.ndarray, float]:
    """YaRN as ggml's rope computes it: pair i turns at theta_i * (s (1 - mix_i) + mix_i), s = 1 / factor,
    mix_i the ramp between the correction dimensions of beta_fast and beta_slow; cos and sin are
    multiplied by 1 + 0.1 ln(factor) (the net of llama.cpp's yarn_attn_factor and ggml's mscale)."""
    beta_fast = float(meta.get("rope.scaling.yarn_beta_fast", 32.0))
    beta_slow = float(meta.get("rope.scaling.yarn_beta_slow", 1.0))
    ext_factor = float(meta.get("rope.scaling.yarn_ext_factor", 1.0))

    def corr_dim(n_rotations: float) -> float:
        return n_rot * math.log(n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
    ramp = 1.0 - np.clip((np.arange(n_rot // 2) - low) / max(0.001, high - low), 0.0, 1.0)
    mix = ramp * ext_factor
    scale = 1.0 / factor
    return inv_freq * (scale * (1.0 - mix) + mix), 1.0 + 0.1 * math.log(factor)


@dataclass(frozen=True)
class Architecture:
    """How one architecture departs from the plain llama-style decoder.

    sliding_window_period: with a sliding window in the file, every period-th layer (the last of
    each group) attends globally and the others slide, unless the file's
    `attention.sliding_window_pattern` says otherwise (a period, or one flag per layer); 0 means
    every layer slides when the file gives a window (Mistral style), None that the architecture
    ignores any window in the file (as llama.cpp does for phi3).
    default_sliding_window: the window when the file has none (gemma2: 4096); 0: no sliding layers.
    swa_rope_base: the sliding layers' RoPE base when `rope.freq_base_swa` is absent; those layers
    then also skip the file's RoPE scaling (llama.cpp's rope_freq_scale_train_swa = 1). None: the
    sliding layers rotate like the global ones.
    nope_layer_step: every step-th layer (il + 1 divisible by it) has no RoPE (smollm3); 0: none.
    pre_norms: attn_norm and ffn_norm exist (olmo2 has only post-norms).
    ffn: "gated" (ffn_gate, ffn_up), "fused" (ffn_up holds the gate rows then the up rows: phi3) or
    "plain" (no gate: down(act(up(x))), starcoder2). Experts replace it where ffn_gate_inp is present.
    expert_weights_norm: the routing weights are renormalized over the chosen experts unless the
    file's `expert_weights_norm` says otherwise (llama.cpp always does for llama/mixtral and qwen3moe)."""

    name: str
    rope_layout: str
    ffn_activation: str
    required_tensors: tuple[str, ...] = ()  # of EXTRA_LAYER_TENSORS
    optional_tensors: tuple[str, ...] = ()  # of EXTRA_LAYER_TENSORS, used when present
    norm: str = "rms"
    pre_norms: bool = True
    ffn: str = "gated"
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(n_embd)
    sliding_window_period: int | None = 0
    default_sliding_window: int = 0
    swa_rope_base: float | None = None
    nope_layer_step: int = 0
    experts: bool = False
    expert_weights_norm: bool = True
    encoder: bool = False  # no output head (embeddings only); token_types, position_embd, token_embd_norm used
    attn_softcap: bool = False  # the file's attn_logit_softcapping caps the scores (gemma2)
    attention_scale: Callable[[Metadata, int, int, int, int], float] = field(default=default_attention_scale)

    def describe(self, gguf: GGUFFile) -> tuple[HParams, ModelWeights]:
        meta = Metadata(gguf, self.name)
        n_layer = int(meta.require("block_count"))
        n_head = meta.uniform_int("attention.head_count")
        n_embd = int(meta.require("embedding_length"))
        dims = (n_head, meta.uniform_int("attention.head_count_kv", n_head),
                int(meta.get("attention.key_length", n_embd // n_head)),
                int(meta.get("attention.value_length", n_embd // n_head)))
        weights = self.find_weights(gguf, n_layer, dims)
        return self.read_hparams(meta, weights), weights

    def find_weights(self, gguf: GGUFFile, n_layer: int, dims: tuple[int, int, int, int]) -> ModelWeights:
        n_head, n_head_kv, head_dim_k, head_dim_v = dims
        used: set[str] = set()

        def tensor(name: str, required: bool = True, max_dims: int = 2) -> GGUFTensor | None:
            t = gguf.tensors.get(name)
            if t is None and required:
                raise ValueError(f"{self.name} model: tensor {name!r} is missing from {gguf.path!r}")
            if t is not None and len(t.ne) > max_dims:
                raise ValueError(f"{self.name} model: tensor {name!r} has shape {t.shape}, expected at most {max_dims} dimensions")
            if t is not None:
                used.add(name)
            return t

        layers = []
        for il in range(n_layer):
            blk = f"blk.{il}."
            found: dict[str, GGUFTensor | None] = {}
            qkv = tensor(blk + "attn_qkv.weight", required=False)
            if qkv is not None:  # fused: the q rows, then k, then v
                sizes = {"attn_q": n_head * head_dim_k, "attn_k": n_head_kv * head_dim_k, "attn_v": n_head_kv * head_dim_v}
                qkv_bias = tensor(blk + "attn_qkv.bias", required=False)
                first = 0
                for f, rows in sizes.items():
                    found[f] = row_view(qkv, first, rows, blk + f + ".weight")
                    if qkv_bias is not None:
                        found[f + "_bias"] = row_view(qkv_bias, first, rows, blk + f + ".bias")
                    first += rows
                if first != qkv.shape[0]:
                    raise ValueError(f"{self.name} model: {qkv.name} has {qkv.shape[0]} rows, expected {first}")
                found["attn_output"] = tensor(blk + "attn_output.weight")
            else:
                found.update({f: tensor(blk + name) for f, name in CORE_LAYER_TENSORS.items()})
            for f, name in NORM_TENSORS.items():
                found[f] = tensor(blk + name, self.pre_norms)
            for f in self.required_tensors + self.optional_tensors:
                if found.get(f) is None:
                    found[f] = tensor(blk + EXTRA_LAYER_TENSORS[f], f in self.required_tensors)
            if self.experts and (blk + "ffn_gate_inp.weight") in gguf.tensors:
                found.update({f: tensor(blk + name, max_dims=3) for f, name in EXPERT_TENSORS.items()})
            elif self.ffn == "fused":
                up = tensor(blk + "ffn_up.weight")
                n_ff = up.shape[0] // 2
                found["ffn_gate"] = row_view(up, 0, n_ff, blk + "ffn_gate.weight")
                found["ffn_up"] = row_view(up, n_ff, n_ff, blk + "ffn_up.weight")
                found["ffn_down"] = tensor(blk + "ffn_down.weight")
            else:
                found.update({f: tensor(blk + name) for f, name in DENSE_FFN_TENSORS.items()
                              if f != "ffn_gate" or self.ffn == "gated"})
            layers.append(LayerWeights(**found))
        token_embd = tensor("token_embd.weight")
        encoder_inputs = {}
        if self.encoder:
            encoder_inputs = dict(token_types=tensor("token_types.weight", required=False),
                                  position_embd=tensor("position_embd.weight", required=False),
                                  token_embd_norm=tensor("token_embd_norm.weight", required=False),
                                  token_embd_norm_bias=tensor("token_embd_norm.bias", required=False))
        weights = ModelWeights(
            token_embd=token_embd,
            output_norm=None if self.encoder else tensor("output_norm.weight"),
            output=None if self.encoder else tensor("output.weight", required=False) or token_embd,
            rope_freqs=tensor("rope_freqs.weight", required=False),
            layers=tuple(layers),
            output_norm_bias=tensor("output_norm.bias", required=False) if self.norm == "layer" else None,
            rope_factors_long=tensor("rope_factors_long.weight", required=False),
            rope_factors_short=tensor("rope_factors_short.weight", required=False),
            **encoder_inputs,
        )
        unused = sorted(name for name in gguf.tensors if name not in used)
        if unused:
            more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
            raise UnsupportedError(f"{self.name} model: janlib does not support the tensor(s) "
                                   f"{', '.join(unused[:3])}{more} that this file has")
        return weights

    def sliding_layers(self, meta: Metadata, n_layer: int) -> list[bool]:
        if self.sliding_window_period is None or not self.window(meta):
            return [False] * n_layer
        pattern = meta.get("attention.sliding_window_pattern", self.sliding_window_period)
        if isinstance(pattern, list):  # one flag per layer
            if len(pattern) != n_layer:
                raise ValueError(f"{self.name}.attention.sliding_window_pattern has {len(pattern)} entries for {n_layer} layers")
            return [bool(p) for p in pattern]
        period = int(pattern)
        return [period == 0 or il % period < period - 1 for il in range(n_layer)]

    def window(self, meta: Metadata) -> int:
        return int(meta.get("attention.sliding_window", self.default_sliding_window) or 0)

    def rope_tables(self, meta: Metadata, weights: ModelWeights, n_rot: int, sliding: list[bool]):
        """Per layer: RoPE frequencies, long-context frequencies, attention factor; and n_ctx_orig."""
        n_layer = len(sliding)
        base = float(meta.get("rope.freq_base", 10000.0))
        kind, factor = rope_scaling(meta)
        n_ctx_orig = int(meta.get("rope.scaling.original_context_length", 0) or meta.require("context_length"))
        plain = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
        inv, inv_long = plain, None
        mscale = float(meta.get("rope.scaling.attn_factor", 1.0))  # llama.cpp multiplies any RoPE by it
        if kind == "linear":
            inv = plain / factor
        elif kind == "yarn":
            inv, yarn_mscale = yarn_inv_freq(plain, meta, n_rot, base, factor, n_ctx_orig)
            mscale *= yarn_mscale
        if weights.rope_freqs is not None:  # llama3: per-pair divisors
            inv = inv / self.factors(weights.rope_freqs, n_rot)
        elif weights.rope_factors_long is not None and weights.rope_factors_short is not None:  # longrope
            inv, inv_long = (inv / self.factors(weights.rope_factors_short, n_rot),
                             inv / self.factors(weights.rope_factors_long, n_rot))
        elif kind == "longrope":
            raise ValueError(f"{self.name} model: longrope RoPE scaling needs rope_factors_long and rope_factors_short")
        swa_base = None if self.swa_rope_base is None else float(meta.get("rope.freq_base_swa", self.swa_rope_base))
        tables, long_tables, factors = [], [], []
        for il in range(n_layer):
            if self.nope_layer_step and (il + 1) % self.nope_layer_step == 0:
                tables.append(None), long_tables.append(None), factors.append(1.0)
            elif sliding[il] and swa_base is not None:  # unscaled, its own base
                tables.append(swa_base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot))
                long_tables.append(None), factors.append(1.0)
            else:
                tables.append(inv), long_tables.append(inv_long), factors.append(mscale)
        return tuple(tables), tuple(long_tables), tuple(factors), n_ctx_orig

    def factors(self, t: GGUFTensor, n_rot: int) -> np.ndarray:
        if t.qtype != "F32" or t.ne != (n_rot // 2,):
            raise ValueError(f"{self.name} model: {t.name} must be F32 of shape ({n_rot // 2},), got {t.qtype} {t.shape}")
        return t.raw.view(np.float32).astype(np.float64)

    def read_hparams(self, meta: Metadata, weights: ModelWeights) -> HParams:
        n_layer = int(meta.require("block_count"))
        n_embd = int(meta.require("embedding_length"))
        n_head = meta.uniform_int("attention.head_count")
        n_head_kv = meta.uniform_int("attention.head_count_kv", n_head)
        head_dim_k = int(meta.get("attention.key_length", n_embd // n_head))
        head_dim_v = int(meta.get("attention.value_length", n_embd // n_head))
        n_rot = int(meta.get("rope.dimension_count", head_dim_k))
        if n_rot > head_dim_k or n_rot < 2 or n_rot % 2:
            raise UnsupportedError(f"{self.name}: RoPE on {n_rot} of {head_dim_k} head dimensions is not supported")
        base = float(meta.get("rope.freq_base", 10000.0))
        kind, _ = rope_scaling(meta)
        scale = rope_freq_scale(meta)
        sliding = self.sliding_layers(meta, n_layer)
        window = self.window(meta)
        swa_base, swa_scale = (base, scale) if self.swa_rope_base is None else (
            float(meta.get("rope.freq_base_swa", self.swa_rope_base)), 1.0)
        tables, long_tables, attn_factors, n_ctx_orig = self.rope_tables(meta, weights, n_rot, sliding)
        eps_key = "attention.layer_norm_epsilon" if self.norm == "layer" else "attention.layer_norm_rms_epsilon"
        experts = [w for w in weights.layers if w.ffn_gate_inp is not None]
        n_expert = int(meta.get("expert_count", 0) or 0)
        n_expert_used = int(meta.get("expert_used_count", 0) or 0)
        if experts and not 0 < n_expert_used <= n_expert:
            raise ValueError(f"{self.name} model: expert_count {n_expert} and expert_used_count {n_expert_used} do not fit")
        gating = int(meta.get("expert_gating_func", 1) or 1)
        if experts and gating != 1:
            raise UnsupportedError(f"{self.name}.expert_gating_func {gating} is not supported (janlib routes by softmax)")
        dense = [w.ffn_up for w in weights.layers if w.ffn_up is not None]
        return HParams(
            arch=self.name,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            n_ff=dense[0].shape[0] if dense else 1,
            n_vocab=weights.token_embd.shape[0],
            context_length=int(meta.require("context_length")),
            norm_eps=float(meta.require(eps_key)),
            norm_type=self.norm,
            rope_layout=self.rope_layout,
            n_rot=n_rot,
            rope_base=tuple(swa_base if s else base for s in sliding),
            rope_freq_scale=tuple(swa_scale if s else scale for s in sliding),
            rope_freq_factors=weights.rope_freqs is not None,
            rope_scaling=kind,
            rope_inv_freq=tables,
            rope_inv_freq_long=long_tables,
            rope_attn_factor=attn_factors,
            rope_n_ctx_orig=n_ctx_orig,
            sliding_window=tuple(window if s else 0 for s in sliding),
            ffn_activation=self.ffn_activation,
            embedding_scale=math.sqrt(n_embd) if self.scale_embeddings else float(meta.get("embedding_scale", 1.0) or 1.0),
            residual_scale=float(meta.get("residual_scale", 1.0) or 1.0),
            attention_scale=self.attention_scale(meta, n_layer, n_embd, n_head, head_dim_k),
            attn_logit_softcap=float(meta.get("attn_logit_softcapping", 0.0) or 0.0) if self.attn_softcap else 0.0,
            logit_scale=1.0 / float(meta.get("logit_scale", 1.0) or 1.0),
            final_logit_softcap=float(meta.get("final_logit_softcapping", 0.0) or 0.0),
            tied_output=weights.output is weights.token_embd,
            n_expert=n_expert if experts else 0,
            n_expert_used=n_expert_used if experts else 0,
            n_ff_exp=experts[0].ffn_up_exps.ne[1] if experts else 0,
            expert_weights_norm=bool(meta.get("expert_weights_norm", self.expert_weights_norm)),
            expert_weights_scale=float(meta.get("expert_weights_scale", 0.0) or 1.0),
            non_causal=not bool(meta.get("attention.causal", True)),
            pooling_type=pooling_type(meta),
        )
