"""LoRA adapters in llama.cpp's GGUF form, applied unmerged (the C side is csrc/lora.c).

    model = janlib.Model("smollm2-135m-instruct", lora=["style.gguf"])        # or model.load_lora(path, scale)
    model.generate(ids, lora={0: 0.5})                                       # this call's scales
    engine.submit(janlib.Request("Hi", lora=[{"id": 0, "scale": 0.0}]))     # per request, batched together

An adapter file has general.type "adapter", adapter.type "lora", adapter.lora.alpha and a pair of
tensors `<weight>.lora_a` (rank, k) and `<weight>.lora_b` (rows, rank) per projection it changes.
A projection y = W x becomes y = W x + scale * (alpha / rank) * B (A x) (alpha 0: no alpha / rank
factor, as llama.cpp). Each adapter has a default scale; a selection (`lora=`) overrides the scales of
the adapters it names, by id or adapter, and the others keep their default. Since the base weights
are never changed, every sequence of a batch may use its own adapters and scales."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

from janlib import _core
from janlib.errors import UnsupportedError
from janlib.gguf import GGUFFile, load_gguf
from janlib.kernels import dequantize

__all__ = ["LoraAdapter", "LoraSelection", "load_adapter", "parse_lora_arg", "resolve_scales"]

# A selection: {id or adapter: scale}, or the API's [{"id": N, "scale": S}, ...]; None: the defaults
LoraSelection = Union[Mapping, Sequence[Mapping], None]

# a fused attn_qkv's pair is split into these targets: its B by rows, its A shared
_QKV = ("attn_q", "attn_k", "attn_v")


class LoraAdapter:
    """A loaded adapter of one model. id: its index in the model's adapters; scale: its default
    scale (what a selection does not name gets); alpha, rank (the largest of its pairs), targets
    (the adapted weights' names), task_name and prompt_prefix (from the file, or "")."""

    def __init__(self, path: str, id: int, scale: float, alpha: float, targets: tuple[str, ...], rank: int,
                 task_name: str, prompt_prefix: str, core: _core.Lora) -> None:
        self.path = path
        self.id = id
        self.scale = scale
        self.alpha = alpha
        self.targets = targets
        self.rank = rank
        self.task_name = task_name
        self.prompt_prefix = prompt_prefix
        self._core = core

    def __repr__(self) -> str:
        return f"LoraAdapter(id={self.id}, path={self.path!r}, scale={self.scale}, alpha={self.alpha}, rank={self.rank})"


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or \
            not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def load_adapter(path: str | os.PathLike[str], runtime, id: int, scale: float = 1.0) -> LoraAdapter:
    """Read a llama.cpp LoRA GGUF and check it against runtime's model (architecture, layers, every
    shape); ValueError / UnsupportedError name what does not match."""
    scale = _finite("the LoRA scale", scale)
    path = os.fspath(path)
    with load_gguf(path) as gguf_file:
        return _read(gguf_file, path, runtime, id, scale)


def _read(f: GGUFFile, path: str, runtime, id: int, scale: float) -> LoraAdapter:
    meta, hp = f.metadata, runtime.hparams
    where = f"LoRA adapter {path!r}"
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise ValueError(f"{where} is not a LoRA adapter: general.type is {meta.get('general.type')!r} and "
                         f"adapter.type {meta.get('adapter.type')!r} (expected 'adapter' and 'lora')")
    arch = meta.get("general.architecture")
    if arch != hp.arch:
        raise ValueError(f"{where} is for architecture {arch!r}, but the model is {hp.arch!r}")
    if "adapter.alora.invocation_tokens" in meta:
        raise UnsupportedError(f"{where} is an activated LoRA (adapter.alora.invocation_tokens), which janlib does not run")
    alpha = _finite(f"{where}: adapter.lora.alpha", meta.get("adapter.lora.alpha", 0.0))
    halves: dict[str, dict[str, np.ndarray]] = {}
    for name, tensor in f.tensors.items():
        base, dot, half = name.rpartition(".")
        if not dot or half not in ("lora_a", "lora_b"):
            raise ValueError(f"{where}: tensor {name!r} is neither a .lora_a nor a .lora_b")
        if len(tensor.ne) != 2:
            raise ValueError(f"{where}: {name} has shape {tensor.shape}, expected a matrix")
        halves.setdefault(base, {})[half] = np.ascontiguousarray(dequantize(tensor), dtype=np.float32)
    if not halves:
        raise ValueError(f"{where} has no lora_a / lora_b tensors")
    pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    rank = 0
    for base, pair in sorted(halves.items()):
        for half in ("lora_a", "lora_b"):
            if half not in pair:
                raise ValueError(f"{where}: {base}.{half} is missing (its partner is there)")
        a, b = pair["lora_a"], pair["lora_b"]
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"{where}: {base}.lora_a has shape {a.shape} and {base}.lora_b {b.shape}: the rank "
                             f"(lora_a's rows, lora_b's columns) differs (hint: lora_a may not be transposed)")
        rank = max(rank, a.shape[0])
        for key, value in _targets(base, a, b, hp, where).items():
            pairs[key] = value
    core = _core.Lora(runtime.forward_model, pairs, alpha, hp.n_layer)
    return LoraAdapter(path, id, scale, alpha, tuple(sorted(halves)), rank,
                       str(meta.get("adapter.lora.task_name", "")), str(meta.get("adapter.lora.prompt_prefix", "")),
                       core)


def _targets(base: str, a: np.ndarray, b: np.ndarray, hp, where: str) -> dict:
    """(layer, target) -> (A, B) for the weight named base; a fused weight's B is split by rows."""
    parts = base.split(".")
    if len(parts) != 4 or parts[0] != "blk" or not parts[1].isdigit() or parts[3] != "weight":
        raise UnsupportedError(f"{where} changes {base}: janlib applies LoRA to the layers' projections "
                               f"(blk.N.{{{', '.join(_core.LORA_TARGETS)}}}.weight) only")
    layer, name = int(parts[1]), parts[2]
    if layer >= hp.n_layer:
        raise ValueError(f"{where} changes {base}, but the model has {hp.n_layer} layers")
    if name == "attn_qkv":
        sizes = (hp.n_head * hp.head_dim_k, hp.n_head_kv * hp.head_dim_k, hp.n_head_kv * hp.head_dim_v)
        if b.shape[0] != sum(sizes):
            raise ValueError(f"{where}: {base}.lora_b has {b.shape[0]} rows, the model's attn_qkv has {sum(sizes)}")
        bounds = np.cumsum((0,) + sizes)
        return {(layer, t): (a, np.ascontiguousarray(b[bounds[i]:bounds[i + 1]]))
                for i, t in enumerate(_QKV)}
    if name not in _core.LORA_TARGETS:
        raise UnsupportedError(f"{where} changes {base}: janlib applies LoRA to "
                               f"{', '.join(_core.LORA_TARGETS)} and attn_qkv only")
    return {(layer, name): (a, b)}


def parse_lora_arg(value: str) -> tuple[str, float]:
    """llama.cpp's `--lora FILE[:SCALE]` (the scale after the last colon, when it is a number)."""
    path, sep, tail = value.rpartition(":")
    if sep and path:
        try:
            return path, _finite("the LoRA scale", float(tail))
        except ValueError:
            pass
    return value, 1.0


def resolve_scales(adapters: Sequence[LoraAdapter], selection: LoraSelection) -> tuple[float, ...]:
    """Each adapter's scale under selection: the named ones as given, the others their default.
    ValueError names an unknown id, a bad entry or a scale that is not a finite number."""
    scales = [a.scale for a in adapters]
    if selection is None:
        return tuple(scales)
    if isinstance(selection, Mapping):
        items = [(f"lora[{key!r}]", key, value) for key, value in selection.items()]
    elif isinstance(selection, (list, tuple)):
        items = []
        for i, entry in enumerate(selection):
            if not isinstance(entry, Mapping) or "id" not in entry or "scale" not in entry:
                raise ValueError(f"lora[{i}] must be an object with an id and a scale, got {entry!r}")
            items.append((f"lora[{i}]", entry["id"], entry["scale"]))
    else:
        raise ValueError(f"lora must be a mapping of adapter ids to scales or a list of {{id, scale}}, got {selection!r}")
    for where, key, value in items:
        index = key.id if isinstance(key, LoraAdapter) else key
        if isinstance(key, LoraAdapter) and (index >= len(adapters) or adapters[index] is not key):
            raise ValueError(f"{where}: the adapter {key.path!r} belongs to another model")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(adapters):
            loaded = f"ids 0..{len(adapters) - 1}" if adapters else "none"
            raise ValueError(f"{where}: no LoRA adapter has id {index!r} (loaded: {loaded})")
        scales[int(index)] = _finite(f"{where}.scale", value)
    return tuple(scales)


def batch_adapters(adapters: Sequence[LoraAdapter], row_scales: np.ndarray) -> tuple[tuple, np.ndarray | None]:
    """The C batch's adapter list and (n_rows, n_used) scales from every adapter's scale per row
    (n_rows, len(adapters)): adapters no row uses are left out, so an all-zero batch costs nothing."""
    if row_scales is None or not len(adapters):
        return (), None
    used = np.flatnonzero(np.any(row_scales != 0.0, axis=0))
    if used.size == 0:
        return (), None
    return (tuple(adapters[j]._core for j in used),
            np.ascontiguousarray(row_scales[:, used], dtype=np.float32))
