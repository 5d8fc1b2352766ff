"""Whole-tensor kernels over GGUF tensors: dequantize, matmul, and the CPU level they run at."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np

from janlib import _core
from janlib.errors import UnsupportedError
from janlib.gguf import GGML_TYPES, GGUFTensor

ISA_LEVELS = tuple(_core.isa_name(i) for i in range(_core.ISA_COUNT))


def _type_id(tensor: GGUFTensor) -> int:
    """The tensor's type id, or UnsupportedError naming a type this build has no kernels for."""
    try:
        _core.type_info(tensor.type_id)
    except UnsupportedError:
        info = GGML_TYPES.get(tensor.type_id)
        name = info.name if info else f"id {tensor.type_id}"
        raise UnsupportedError(f"tensor {tensor.name!r} has type {name}, which janlib does not support") from None
    return tensor.type_id


def _threads(n_threads: int | None) -> int:
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive int or None, got {n_threads!r}")
    return n_threads


def dequantize(tensor: GGUFTensor, n_threads: int | None = None) -> np.ndarray:
    """float32 array of tensor.shape with the tensor's values."""
    type_id = _type_id(tensor)
    out = np.empty(tensor.n_elements, dtype=np.float32)
    _core.dequantize(type_id, tensor.raw, out, _threads(n_threads))
    return out.reshape(tensor.shape)


def matmul(tensor: GGUFTensor, x: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """y = x @ W.T for W = tensor (rows, k) and x (n, k) or (k,): float32 (n, rows) or (rows,)."""
    type_id = _type_id(tensor)
    if len(tensor.shape) != 2:
        raise ValueError(f"matmul: tensor {tensor.name!r} has shape {tensor.shape}, expected (rows, k)")
    rows, k = tensor.shape
    x = np.asarray(x)
    vector = x.ndim == 1
    if x.ndim not in (1, 2) or x.shape[-1] != k:
        raise ValueError(f"matmul: x has shape {x.shape}, expected (n, {k}) or ({k},) for {tensor.name!r}")
    x2 = np.ascontiguousarray(x.reshape(1, k) if vector else x, dtype=np.float32)
    if x2.shape[0] == 0:
        return np.empty((0, rows), dtype=np.float32)
    y = np.empty((x2.shape[0], rows), dtype=np.float32)
    _core.matmul(type_id, tensor.raw, rows, x2, y, _threads(n_threads))
    return y[0] if vector else y


def cpu_features() -> dict:
    """What the CPU reports, the best level janlib can run there, and the level in use."""
    return {
        "flags": _core.cpu_flags().split(),
        "available": list(ISA_LEVELS[: _core.isa_best() + 1]),
        "best": ISA_LEVELS[_core.isa_best()],
        "active": ISA_LEVELS[_core.isa_active()],
        "physical_cores": _core.physical_cores(),
        "n_threads": _core.default_threads(),
    }


def set_isa(level: str) -> None:
    """Run every kernel at `level` ('scalar', 'avx2', 'avx512', 'amx'); an unavailable level is an error."""
    if level not in ISA_LEVELS:
        raise ValueError(f"unknown ISA level {level!r}; choose one of {', '.join(ISA_LEVELS)}")
    _core.isa_set(ISA_LEVELS.index(level))


@contextlib.contextmanager
def use_isa(level: str) -> Iterator[None]:
    """Temporarily run at `level` (for tests and benchmarks)."""
    previous = ISA_LEVELS[_core.isa_active()]
    set_isa(level)
    try:
        yield
    finally:
        set_isa(previous)


def set_n_threads(n_threads: int) -> None:
    """The default thread count for every later call (initially the physical core count)."""
    _core.set_default_threads(_threads(n_threads))


def _apply_environment() -> None:
    level = os.environ.get("JANLIB_ISA")
    if level:
        try:
            set_isa(level.strip().lower())
        except ValueError as exc:
            raise UnsupportedError(f"JANLIB_ISA={level}: {exc}") from None


_apply_environment()
