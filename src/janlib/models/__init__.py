"""The forward pass of the supported architectures: GGUF metadata and tensor names in, a
Runtime that evaluates tokens over a KV cache out (the work is one C call per eval)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from janlib import _core
from janlib.context import check_kv_types
from janlib.errors import UnsupportedError
from janlib.gguf import GGUFFile, load_gguf
from janlib.lora import batch_adapters
from janlib.models import (bert, gemma2, gemma3, granite, llama, nomic_bert, olmo2, phi3, qwen2, qwen3, qwen3moe,
                           smollm3, stablelm, starcoder2)
from janlib.models.base import Architecture, HParams

__all__ = ["ARCHITECTURES", "Architecture", "HParams", "Runtime", "load_runtime"]

ARCHITECTURES: dict[str, Architecture] = {
    m.ARCH.name: m.ARCH
    for m in (llama, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3, granite, olmo2, smollm3, stablelm, starcoder2, bert,
              nomic_bert)
}

DEFAULT_MAX_CTX = 4096
DEFAULT_BATCH = 512  # tokens per internal chunk: the C context's scratch is sized for this many rows


def _check_threads(n_threads: int | None) -> int | None:
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads must be a positive int or None, got {n_threads!r}")
    return n_threads


class Runtime:
    """One model and the KV cache of one sequence of n_ctx positions (janlib.BatchContext serves
    many over the same model). Not for concurrent use from several threads (calls are serialized)."""

    def __init__(self, gguf_file: GGUFFile, arch: Architecture, n_ctx: int | None, kv_type: str,
                 n_threads: int | None, n_batch: int = DEFAULT_BATCH, kv_type_v: str | None = None) -> None:
        kv_type, kv_type_v = check_kv_types(kv_type, kv_type_v)
        self.gguf = gguf_file  # the mapping the C pointers point into
        self.hparams, weights = arch.describe(gguf_file)
        if n_ctx is None:
            n_ctx = min(self.hparams.context_length, DEFAULT_MAX_CTX)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        if isinstance(n_batch, bool) or not isinstance(n_batch, int) or n_batch < 1:
            raise ValueError(f"n_batch must be a positive int, got {n_batch!r}")
        self.forward_model = _core.ForwardModel(self.hparams, weights)
        self._ctx = _core.Context(self.forward_model, n_ctx, 1, n_ctx, kv_type, n_batch, kv_type_v)
        self.kv_type, self.kv_type_v = kv_type, kv_type_v
        self.n_threads = n_threads

    @property
    def n_threads(self) -> int | None:
        """Threads per eval; None: janlib's default (janlib.set_n_threads)."""
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value: int | None) -> None:
        self._n_threads = _check_threads(value)

    @property
    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    @property
    def n_past(self) -> int:
        """The cache holds positions [0, n_past)."""
        return self._ctx.seq_len(0)

    def eval(self, tokens: Sequence[int] | np.ndarray, pos0: int,
             logits: str | Sequence[int] | np.ndarray = "last", adapters: tuple = (),
             adapter_scales: Sequence[float] = (), embd: np.ndarray | None = None,
             non_causal_blocks: np.ndarray | None = None) -> np.ndarray:
        """Run tokens at positions pos0, pos0 + 1, ... (pos0 <= n_past; an earlier pos0 overwrites
        the cache from there) and return float32 logits (n_outputs, n_vocab) for the rows `logits`
        names: "last", "all", or strictly increasing row indices into tokens. Every row adds LoRA
        adapter j (a janlib.lora.LoraAdapter of this model) scaled by adapter_scales[j]. Rows whose token is
        TOKEN_EMBD take embd's rows instead (see BatchContext.decode, as non_causal_blocks)."""
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"tokens must be a non-empty 1-D sequence of ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got dtype {ids.dtype}")
        bad = ((ids < 0) & ((ids != _core.TOKEN_EMBD) | (embd is None))) | (ids >= self.n_vocab)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"token {int(ids[i])} at row {i} is outside the vocabulary [0, {self.n_vocab})")
        if isinstance(pos0, bool) or not isinstance(pos0, (int, np.integer)):
            raise ValueError(f"pos0 must be an int, got {pos0!r}")
        rows = self._output_rows(logits, ids.size)
        pos0, n_past = int(pos0), self.n_past
        if not 0 <= pos0 <= n_past:
            raise ValueError(f"eval: pos0 {pos0} must be in [0, n_past = {n_past}]: the cache holds positions [0, {n_past})")
        if pos0 + ids.size > self.n_ctx:
            raise ValueError(f"eval: positions {pos0}..{pos0 + ids.size - 1} do not fit the context of "
                             f"n_ctx = {self.n_ctx} positions")
        want = np.zeros(ids.size, dtype=np.uint8)
        want[rows] = 1
        out = np.empty((rows.size, self.n_vocab), dtype=np.float32)
        row_scales = np.tile(np.asarray(adapter_scales, np.float32), (ids.size, 1)) if len(adapters) else None
        loras, scales = batch_adapters(adapters, row_scales)
        self._ctx.seq_rm(0, pos0, -1)
        self._ctx.decode(np.ascontiguousarray(ids, dtype=np.int32), np.arange(pos0, pos0 + ids.size, dtype=np.int64),
                         np.zeros(ids.size, dtype=np.int32), want, out, self._n_threads or 0, loras, scales, embd,
                         non_causal_blocks)
        return out

    @staticmethod
    def _output_rows(logits: str | Sequence[int] | np.ndarray, n: int) -> np.ndarray:
        if isinstance(logits, str):
            if logits == "last":
                return np.array([n - 1], dtype=np.int64)
            if logits == "all":
                return np.arange(n, dtype=np.int64)
            raise ValueError(f"logits must be 'last', 'all' or row indices, got {logits!r}")
        rows = np.asarray(logits)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"logits row indices must be a 1-D sequence of ints, got {logits!r}")
        rows = rows.astype(np.int64)
        if rows.size and (rows[0] < 0 or rows[-1] >= n or np.any(np.diff(rows) <= 0)):
            raise ValueError(f"logits rows must be strictly increasing in [0, {n}), got {rows.tolist()}")
        return rows

    def seq_rm(self, from_pos: int) -> None:
        """Forget cached positions >= from_pos (0 clears the cache, else from_pos >= cut_min()), to
        reuse a prompt's prefix."""
        self._ctx.seq_rm(0, int(from_pos), -1)

    def shift(self, n_keep: int, n_discard: int) -> None:
        """Drop cached positions [n_keep, n_keep + n_discard); later ones move down (context shift)."""
        self._ctx.seq_shift(0, int(n_keep), int(n_discard))

    def cut_min(self) -> int:
        """The shortest cached length other than 0 seq_rm can cut back to (sliding-window layers
        give back the positions no later query sees)."""
        return self._ctx.seq_pos_min(0)[1]

    def can_shift(self, n_keep: int, n_discard: int) -> bool:
        """Whether shift(n_keep, n_discard) can run (else the kept tokens must be recomputed)."""
        return self._ctx.seq_can_shift(0, int(n_keep), int(n_discard))


def load_runtime(gguf_file: GGUFFile | str | os.PathLike[str], n_ctx: int | None = None, kv_type: str = "f16",
                 n_threads: int | None = None, n_batch: int = DEFAULT_BATCH, kv_type_v: str | None = None) -> Runtime:
    """A Runtime for a GGUF file (or its path). n_ctx defaults to min(the model's context length,
    4096); kv_type is the K cache's type ("f16", "f32", "q8_0" or "q4_0") and kv_type_v the V
    cache's (None: kv_type); evals longer than n_batch tokens run in chunks of n_batch."""
    if not isinstance(gguf_file, GGUFFile):
        gguf_file = load_gguf(gguf_file)
    arch = gguf_file.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedError(
            f"architecture {arch!r} is not supported; janlib runs {', '.join(sorted(ARCHITECTURES))}")
    return Runtime(gguf_file, ARCHITECTURES[arch], n_ctx, kv_type, _check_threads(n_threads), n_batch, kv_type_v)
