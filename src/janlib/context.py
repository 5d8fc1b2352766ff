"""Many sequences over one model: a KV cache they share, and one forward pass per batch of their
tokens (the C side is csrc/model.c, csrc/kv_cache.c).

    ctx = model.create_context(n_ctx=2048, n_seq_max=4)
    logits = ctx.decode(tokens, positions, seq_ids, want_logits)

The cache is made of pages of `page_size` cells; a sequence holds its positions [0, seq_len) in
its own table of pages. Copying a prefix to another sequence (seq_cp) shares whole pages, and a
page is copied only when one of the sequences holding it writes into it, so `n` choices and
equal prompts evaluate and store the prompt once. Memory is committed as pages are first used.

Batch invariance: the logits row of a token depends only on its own sequence's tokens and
positions: it is bit-identical whatever else is in the batch, however the sequence's tokens
were split into batches, at any thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from janlib import _core
from janlib.errors import KVCacheFull
from janlib.lora import batch_adapters

__all__ = ["BatchContext", "KVCacheFull", "TOKEN_EMBD"]

TOKEN_EMBD = _core.TOKEN_EMBD  # a row whose input is the next row of decode's embd, not a token's embedding


def check_kv_types(kv_type: str, kv_type_v: str | None) -> tuple[str, str]:
    """The K and V cache types (kv_type_v None: the same as kv_type), each one of KV_TYPES."""
    kv_type_v = kv_type if kv_type_v is None else kv_type_v
    for name, value in (("kv_type", kv_type), ("kv_type_v", kv_type_v)):
        if value not in _core.KV_TYPES:
            raise ValueError(f"{name} must be one of {', '.join(_core.KV_TYPES)}, got {value!r}")
    return kv_type, kv_type_v


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _int_array(name: str, values, n: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of ints, got {array.dtype} of shape {array.shape}")
    if n is not None and array.size != n:
        raise ValueError(f"{name} has {array.size} entries, tokens has {n}")
    return array


class BatchContext:
    """A KV cache of n_cells cells shared by sequences 0 .. n_seq_max - 1, each holding at most
    n_ctx positions, over a model's weights (shared by every context of the model).

    Create it with Model.create_context. n_cells defaults to n_ctx * n_seq_max and is rounded up
    to whole pages; kv_type is the K cache's type, "f16", "f32", "q8_0" or "q4_0", and kv_type_v
    the V cache's (None: kv_type); batches longer than n_batch tokens run in chunks.
    Sliding-window layers keep only the pages their window can still see, so a sequence can be
    cut back (seq_rm) or copied (seq_cp) only to 0 or to at least seq_pos_min(seq)[1] positions;
    swa_full keeps every position in every layer (llama.cpp's --swa-full).
    Calls from several threads are serialized."""

    def __init__(self, runtime, n_ctx: int = 2048, n_seq_max: int = 4, n_cells: int | None = None,
                 kv_type: str = "f16", n_batch: int = 512, n_threads: int | None = None,
                 kv_type_v: str | None = None, swa_full: bool = False) -> None:
        n_ctx = _positive_int("n_ctx", n_ctx)
        n_seq_max = _positive_int("n_seq_max", n_seq_max)
        n_cells = n_ctx * n_seq_max if n_cells is None else _positive_int("n_cells", n_cells)
        n_batch = _positive_int("n_batch", n_batch)
        kv_type, kv_type_v = check_kv_types(kv_type, kv_type_v)
        self.n_threads = None if n_threads is None else _positive_int("n_threads", n_threads)
        self.n_vocab = runtime.n_vocab
        self.n_embd = runtime.hparams.n_embd
        self._runtime = runtime  # the mapping the weights' pointers point into
        self.n_batch = n_batch
        self._ctx = _core.Context(runtime.forward_model, n_ctx, n_seq_max, n_cells, kv_type, n_batch, kv_type_v,
                                  bool(swa_full))

    @property
    def n_ctx(self) -> int:
        """The most positions one sequence may hold."""
        return self._ctx.n_ctx

    @property
    def n_seq_max(self) -> int:
        """Sequence ids are 0 .. n_seq_max - 1."""
        return self._ctx.n_seq_max

    @property
    def n_cells(self) -> int:
        """Cells in the cache, all sequences together (whole pages)."""
        return self._ctx.n_cells

    @property
    def n_free_cells(self) -> int:
        """Cells in free pages. A sequence of L positions takes ceil(L / page_size) pages; its last
        page's unused cells are its own."""
        return self._ctx.n_free_cells

    @property
    def page_size(self) -> int:
        return _core.PAGE_SIZE

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV pages in use, all sequences together (the memory they commit)."""
        return self._ctx.kv_bytes

    def seq_pos_min(self, seq: int) -> tuple[int, int]:
        """(pos_min, cut_min): the smallest position every layer of seq still holds (its
        sliding-window layers give back what no later query sees), and the shortest length other
        than 0 it can be cut back to (seq_rm) or copied up to (seq_cp); (0, 0) while it holds all."""
        return self._ctx.seq_pos_min(self._seq("seq", seq))

    def seq_len(self, seq: int) -> int:
        """The sequence holds positions [0, seq_len)."""
        return self._ctx.seq_len(self._seq("seq", seq))

    def decode(self, tokens: Sequence[int] | np.ndarray, positions: Sequence[int] | np.ndarray,
               seq_ids: Sequence[int] | np.ndarray, want_logits: Sequence[bool] | np.ndarray,
               n_threads: int | None = None, adapters: Sequence = (),
               adapter_scales: np.ndarray | None = None, embeddings: bool = False, embd: np.ndarray | None = None,
               non_causal_blocks: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Run a batch and return float32 logits (n_wanted, n_vocab) for the rows with want_logits,
        in batch order; with embeddings, their final hidden states (n_wanted, n_embd) instead (after
        the output norm where the model has one; an encoder gives only these).

        tokens (n,), positions (n,), seq_ids (n,), want_logits (n,) bools. A sequence's tokens are
        at consecutive positions starting at seq_len(seq) (they are appended; seq_rm first to
        overwrite); tokens of different sequences may interleave. The GIL is released while it
        runs. Raises KVCacheFull when the free cells do not suffice and ValueError for a bad
        token, position or sequence id; nothing is changed then.

        LoRA: row i adds adapter j (a janlib.lora.LoraAdapter of this model) scaled by
        adapter_scales[i, j] (n, len(adapters)); a row with scale 0 for every adapter is the base
        model's, bit for bit. A row's logits depend on its own sequence's tokens and scales alone.

        Embedding rows (an image's embeddings): a row whose token is TOKEN_EMBD takes the next row of
        embd (k, n_embd) float32 as its input, as given: no token lookup and no input scaling (gemma's
        sqrt(n_embd) applies to token rows only, as in llama.cpp). non_causal_blocks (n,) ints: a
        run of consecutive rows with the same nonzero label is a block whose rows attend to each
        other both ways (gemma3 decodes an image so, as llama.cpp's mtmd); a block's rows are of one
        sequence, at most n_batch of them (a chunk ends early rather than split a block)."""
        token_ids = _int_array("tokens", tokens)
        n = token_ids.size
        if n == 0:
            raise ValueError("decode: no tokens")
        pos = _int_array("positions", positions, n)
        seqs = _int_array("seq_ids", seq_ids, n)
        want = np.asarray(want_logits)
        if want.shape != (n,) or want.dtype != np.bool_:
            raise ValueError(f"want_logits must be {n} bools, got {want.dtype} of shape {want.shape}")
        # range checks before the narrowing casts below, so no value wraps into range
        bad = ((token_ids < 0) & (token_ids != TOKEN_EMBD)) | (token_ids >= self.n_vocab)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"decode: token {int(token_ids[i])} at row {i} is outside the vocabulary [0, {self.n_vocab})")
        bad = (seqs < 0) | (seqs >= self.n_seq_max)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"decode: sequence id {int(seqs[i])} at row {i} is outside [0, n_seq_max = {self.n_seq_max})")
        row_scales = None
        if len(adapters):
            row_scales = np.asarray(adapter_scales, dtype=np.float32) if adapter_scales is not None else None
            if row_scales is None or row_scales.shape != (n, len(adapters)):
                raise ValueError(f"adapter_scales must have shape ({n}, {len(adapters)}), got "
                                 f"{None if row_scales is None else row_scales.shape}")
            if not np.all(np.isfinite(row_scales)):
                raise ValueError("adapter_scales must be finite")
        loras, scales = batch_adapters(adapters, row_scales)
        n_embd_rows = int(np.count_nonzero(token_ids == TOKEN_EMBD))
        if n_embd_rows or embd is not None:
            embd = np.ascontiguousarray(embd if embd is not None else np.empty((0, self.n_embd)), dtype=np.float32)
            if embd.shape != (n_embd_rows, self.n_embd):
                raise ValueError(f"embd must have shape ({n_embd_rows}, {self.n_embd}) for the {n_embd_rows} rows "
                                 f"whose token is TOKEN_EMBD, got {embd.shape}")
            if not np.all(np.isfinite(embd)):
                raise ValueError("embd must be finite")
        if non_causal_blocks is not None:
            non_causal_blocks = np.ascontiguousarray(_int_array("non_causal_blocks", non_causal_blocks, n), dtype=np.int32)
        threads = self.n_threads if n_threads is None else _positive_int("n_threads", n_threads)
        out = np.empty((int(np.count_nonzero(want)), self.n_embd if embeddings else self.n_vocab), dtype=np.float32)
        args = (np.ascontiguousarray(token_ids, dtype=np.int32), np.ascontiguousarray(pos, dtype=np.int64),
                np.ascontiguousarray(seqs, dtype=np.int32), want.view(np.uint8), out, threads or 0, loras, scales, embd,
                non_causal_blocks)
        (self._ctx.decode_embeddings if embeddings else self._ctx.decode)(*args)
        return out

    def seq_rm(self, seq: int, p0: int = 0, p1: int = -1) -> None:
        """Forget positions [p0, p1) of seq (p1 = -1: to its end); only a suffix may be removed."""
        self._ctx.seq_rm(self._seq("seq", seq), self._position("p0", p0), self._end("p1", p1))

    def seq_cp(self, src: int, dst: int, p0: int = 0, p1: int = -1) -> None:
        """dst, cut to p0 first, gets src's cached positions [p0, p1) (p1 = -1: src's end) without
        recomputing them: whole pages are shared, and copied only when either writes into one.
        dst must hold at least p0 positions."""
        self._ctx.seq_cp(self._seq("src", src), self._seq("dst", dst), self._position("p0", p0), self._end("p1", p1))

    def seq_shift(self, seq: int, n_keep: int, n_discard: int) -> None:
        """Context shift: drop positions [n_keep, n_keep + n_discard) of seq and move the later
        ones down by n_discard (their keys are rotated back by as many positions). A ValueError
        when seq_can_shift is False."""
        self._ctx.seq_shift(self._seq("seq", seq), self._position("n_keep", n_keep), _positive_int("n_discard", n_discard))

    def seq_can_shift(self, seq: int, n_keep: int, n_discard: int) -> bool:
        """Whether seq_shift(seq, n_keep, n_discard) can run: False when the sliding-window layers
        gave back kept positions the new length's window sees (recompute the kept tokens instead)."""
        return self._ctx.seq_can_shift(self._seq("seq", seq), self._position("n_keep", n_keep),
                                       _positive_int("n_discard", n_discard))

    def _seq(self, name: str, seq) -> int:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= seq < self.n_seq_max:
            raise ValueError(f"{name} must be a sequence id in [0, n_seq_max = {self.n_seq_max}), got {seq!r}")
        return int(seq)

    @staticmethod
    def _position(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        return int(value)

    @staticmethod
    def _end(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < -1:
            raise ValueError(f"{name} must be a non-negative int or -1 (the end), got {value!r}")
        return int(value)
