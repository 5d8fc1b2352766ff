"""Embeddings: inputs packed as whole sequences into batches, one forward pass per batch (an encoder
attends over all of its own sequence, a decoder causally), each sequence's final hidden states
pooled and normalized as llama.cpp does.

    vectors = model.embed(["first text", "second text"])   # (2, n_embd), unit length

Pooling (llama.cpp's --pooling): "mean" of a sequence's rows, "cls" its first row, "last" its last
row, "none" every row. The default is the file's `{arch}.pooling_type`, or "last" for a model whose
file names none (a decoder: its last token is the only one that saw the whole input)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from janlib import _core
from janlib.context import BatchContext
from janlib.errors import UnsupportedError

POOLINGS = ("none", "mean", "cls", "last")
DEFAULT_SEQ_MAX = 16  # inputs per forward pass, at most


def normalize(vectors: np.ndarray, norm: int = 2) -> np.ndarray:
    """Each row scaled as llama.cpp's embd_normalize says: -1 none, 0 max absolute value to 32760
    (int16 range), 1 taxicab, 2 euclidean, p > 2 the p-norm. A zero row stays zero."""
    if isinstance(norm, bool) or not isinstance(norm, (int, np.integer)) or norm < -1:
        raise ValueError(f"normalize must be an int >= -1 (-1 none, 0 max absolute, 1 taxicab, 2 euclidean, "
                         f"p > 2 p-norm), got {norm!r}")
    if norm == -1:
        return vectors
    wide = vectors.astype(np.float64)
    if norm == 0:
        scale = np.abs(wide).max(axis=-1, keepdims=True) / 32760.0
    elif norm == 2:
        scale = np.sqrt((wide * wide).sum(axis=-1, keepdims=True))
    else:
        scale = (np.abs(wide) ** norm).sum(axis=-1, keepdims=True) ** (1.0 / norm)
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    return (wide * inverse).astype(np.float32)


class Embedder:
    """The embeddings of one model's runtime, over a context of its own (created on first use).

    Calls from several threads are serialized."""

    def __init__(self, runtime, n_seq_max: int = DEFAULT_SEQ_MAX) -> None:
        self._runtime = runtime
        self.hparams = runtime.hparams
        self.n_embd = runtime.hparams.n_embd
        # a whole input fits one batch (an encoder's tokens must all be in the pass that reads them)
        self.n_batch = runtime.n_ctx
        self.n_seq_max = n_seq_max
        self.default_pooling = "last" if runtime.hparams.pooling_type == "none" else runtime.hparams.pooling_type
        if self.default_pooling not in POOLINGS:
            raise UnsupportedError(f"pooling_type {self.default_pooling!r} (a reranker) is not supported for embeddings")
        self._ctx: BatchContext | None = None
        self._lock = threading.Lock()

    def check_pooling(self, pooling: str | None) -> str:
        if pooling is None:
            return self.default_pooling
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} or None (the model's), got {pooling!r}")
        return pooling

    def check_tokens(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Each input as an int array, non-empty, in the vocabulary, no longer than one batch."""
        arrays = []
        for i, ids in enumerate(inputs):
            array = np.asarray(ids)
            if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"input {i} must be a non-empty list of token ids")
            bad = (array < 0) | (array >= self._runtime.n_vocab)
            if bad.any():
                raise ValueError(f"input {i}: token {int(array[np.argmax(bad)])} is outside the vocabulary "
                                 f"[0, {self._runtime.n_vocab})")
            if array.size > self.n_batch:
                raise ValueError(f"input {i} has {array.size} tokens, more than the {self.n_batch} the model's "
                                 f"context takes")
            arrays.append(array.astype(np.int32))
        return arrays

    def embed(self, inputs: Sequence[Sequence[int]], pooling: str | None = None,
              normalize_with: int = 2) -> np.ndarray | list[np.ndarray]:
        """Token lists -> (n_inputs, n_embd) float32 pooled and normalized vectors; with pooling
        "none", a list of (n_tokens, n_embd) arrays, unnormalized (as llama.cpp gives them)."""
        pooling = self.check_pooling(pooling)
        arrays = self.check_tokens(inputs)
        if not arrays:
            raise ValueError("no inputs to embed")
        normalize(np.zeros((1, 1), np.float32), normalize_with)  # the argument checked before any work
        results: list[np.ndarray] = []
        with self._lock:
            for batch in self._batches(arrays):
                results.extend(self._run(batch, pooling))
        if pooling == "none":
            return results
        return normalize(np.stack(results), normalize_with)

    def _batches(self, arrays: list[np.ndarray]):
        """Consecutive inputs, as many as fit n_batch tokens and n_seq_max sequences."""
        batch: list[np.ndarray] = []
        n_tokens = 0
        for array in arrays:
            if batch and (n_tokens + array.size > self.n_batch or len(batch) == self.n_seq_max):
                yield batch
                batch, n_tokens = [], 0
            batch.append(array)
            n_tokens += array.size
        yield batch

    def _context(self) -> BatchContext:
        if self._ctx is None:
            # each sequence's last page may be partly empty
            self._ctx = BatchContext(self._runtime, n_ctx=self.n_batch, n_seq_max=self.n_seq_max,
                                     n_cells=self.n_batch + self.n_seq_max * _core.PAGE_SIZE, kv_type="f32",
                                     n_batch=self.n_batch, n_threads=self._runtime.n_threads)
        return self._ctx

    def _run(self, batch: list[np.ndarray], pooling: str) -> list[np.ndarray]:
        """One forward pass over the batch's inputs, as sequences 0 .. len(batch) - 1."""
        lengths = np.array([a.size for a in batch])
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        tokens = np.concatenate(batch)
        seq_ids = np.repeat(np.arange(len(batch), dtype=np.int32), lengths)
        positions = np.arange(tokens.size) - np.repeat(starts, lengths)
        want = np.zeros(tokens.size, dtype=bool)
        if pooling in ("mean", "none"):
            want[:] = True
        elif pooling == "cls":
            want[starts] = True
        else:
            want[starts + lengths - 1] = True
        ctx = self._context()
        try:
            rows = ctx.decode(tokens, positions, seq_ids, want, embeddings=True)
        finally:
            for seq in range(len(batch)):
                ctx.seq_rm(seq)
        if pooling == "mean":
            return list(np.add.reduceat(rows, starts, axis=0) / lengths[:, None])
        if pooling == "none":
            return np.split(rows, starts[1:])
        return list(rows)


def as_token_lists(inputs, tokenize) -> tuple[list, bool]:
    """A text, a token list, or a list of texts and token lists -> (token lists, whether one input
    was given); texts go through tokenize(text)."""
    if isinstance(inputs, str):
        return [tokenize(inputs)], True
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError("input must be a string, a list of token ids, or a non-empty list of strings or token lists")
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in inputs):
        return [list(inputs)], True
    lists = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            lists.append(tokenize(item))
        elif (isinstance(item, (list, tuple, np.ndarray)) and
              all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in item)):
            lists.append(list(item))
        else:
            raise ValueError(f"input {i} must be a string or a list of token ids")
    return lists, False
