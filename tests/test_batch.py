"""janlib.BatchContext: many sequences in one forward pass over a shared, paged KV cache.

Batch invariance is checked bit for bit against each sequence evaluated alone in a fresh context
(itself checked against the float64 reference, as in test_forward); the sequence operations
against sequences computed from scratch, and the context shift against the reference."""

from __future__ import annotations

import os

import numpy as np
import pytest

import janlib
from janlib import _core
from janlib.models import load_runtime
from reference_forward import Reference
from test_forward import FLOAT_RTOL, N_VOCAB, TINY, assert_close, assert_within_rounding, write_tiny_model

PAGE = _core.PAGE_SIZE


@pytest.fixture(scope="module", params=sorted(TINY))
def runtime(request, tmp_path_factory):
    """A quantized tiny model of each architecture (gemma3 has a sliding window of 4)."""
    path = write_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", request.param)
    runtime = load_runtime(path)
    runtime.path = path
    return runtime


def tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, N_VOCAB, n)


def alone(runtime, ids, n_threads=1) -> np.ndarray:
    """Logits of every position of ids, evaluated in one batch of a fresh one-sequence context."""
    ctx = janlib.BatchContext(runtime, n_ctx=256, n_seq_max=1)
    n = len(ids)
    return ctx.decode(ids, np.arange(n), np.zeros(n, int), np.ones(n, bool), n_threads=n_threads)


def run_schedule(ctx, seqs: dict[int, np.ndarray], steps, rng, n_threads=None) -> dict[int, np.ndarray]:
    """Feed each sequence's tokens from its cached length on, in the chunk sizes steps[i][seq],
    the rows of a batch shuffled across sequences; returns the logits of every fed position."""
    done = {s: ctx.seq_len(s) for s in seqs}
    got = {s: [] for s in seqs}
    for step in steps:
        labels = [s for s, size in step.items() for _ in range(size)]
        rng.shuffle(labels)
        rows = []
        for s in labels:  # a sequence's own tokens stay in position order
            rows.append((s, done[s]))
            done[s] += 1
        seq_ids = np.array([s for s, _ in rows])
        pos = np.array([p for _, p in rows])
        ids = np.array([seqs[s][p] for s, p in rows])
        out = ctx.decode(ids, pos, seq_ids, np.ones(len(rows), bool), n_threads=n_threads)
        for row, (s, _) in enumerate(rows):
            got[s].append(out[row])
    return {s: np.array(v) for s, v in got.items()}


@pytest.mark.parametrize("isa", janlib.cpu_features()["available"])
def test_mixed_batches_are_bit_identical_to_each_sequence_alone(runtime, isa):
    with janlib.use_isa(isa):
        check_mixed_batches(runtime)


def check_mixed_batches(runtime):
    rng = np.random.default_rng(5)
    seqs = {0: tokens(1, 45), 1: tokens(2, 7), 3: tokens(3, 70)}
    # prefill chunks beside single decode tokens, sequences joining and leaving, pages crossed mid-chunk
    steps = [{0: 20, 3: 30}, {0: 1, 3: 25, 1: 4}, {0: 1, 1: 1, 3: 1}, {0: 13, 1: 1, 3: 1}, {0: 10, 1: 1, 3: 13}]
    assert all(sum(step.get(s, 0) for step in steps) == len(seqs[s]) for s in seqs)
    ctx = janlib.BatchContext(runtime, n_ctx=128, n_seq_max=4)
    got = run_schedule(ctx, seqs, steps, rng, n_threads=2)
    for s, ids in seqs.items():
        assert ctx.seq_len(s) == len(ids)
        np.testing.assert_array_equal(got[s], alone(runtime, ids), err_msg=f"sequence {s}")
    # token by token alone is the same again: the split into batches does not matter either
    one_by_one = janlib.BatchContext(runtime, n_ctx=128, n_seq_max=1)
    steps = [one_by_one.decode([t], [p], [0], [True])[0] for p, t in enumerate(seqs[1])]
    np.testing.assert_array_equal(np.array(steps), got[1])


def test_alone_matches_the_float64_reference(runtime):
    ids = tokens(4, 40)
    path = runtime.path
    exact = Reference(path).logits(ids)
    emulated = Reference(path, quantize_activations=True, kv_float16=True).logits(ids)
    assert_within_rounding(alone(runtime, ids), exact, emulated)


def test_long_sequences_across_attention_blocks(runtime):
    """Attention walks the keys in blocks of 512 positions with an online softmax: a sequence over
    three blocks, prefilled in chunks that end mid-block beside another sequence, is bit-identical
    to its one-batch evaluation, which stays within rounding of the float64 reference."""
    n = 1100
    seqs = {0: tokens(20, n), 1: tokens(21, 10)}
    whole = janlib.BatchContext(runtime, n_ctx=n, n_seq_max=1, n_batch=n).decode(
        seqs[0], np.arange(n), np.zeros(n, int), np.ones(n, bool), n_threads=1)
    steps = [{0: 300, 1: 5}, {0: 1, 1: 1}, {0: 520, 1: 3}, {0: 279, 1: 1}]
    ctx = janlib.BatchContext(runtime, n_ctx=n, n_seq_max=2, n_batch=n)
    got = run_schedule(ctx, seqs, steps, np.random.default_rng(8), n_threads=2)
    np.testing.assert_array_equal(got[0], whole)
    path = runtime.path
    exact = Reference(path).logits(seqs[0])
    emulated = Reference(path, quantize_activations=True, kv_float16=True).logits(seqs[0])
    assert_within_rounding(whole, exact, emulated)


def test_only_wanted_rows_come_back_in_batch_order(runtime):
    ids = tokens(6, 40)
    ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=2, n_batch=16)  # three chunks
    want = np.zeros(40, bool)
    want[[3, 17, 39]] = True
    seq_ids = np.zeros(40, int)
    got = ctx.decode(ids, np.arange(40), seq_ids, want)
    np.testing.assert_array_equal(got, alone(runtime, ids)[want])
    assert ctx.decode([1], [40], [0], [False]).shape == (0, N_VOCAB)


@pytest.mark.parametrize("p0", [PAGE + 8, 2 * PAGE])
def test_copied_prefix_then_diverging_continuations(runtime, p0):
    prompt = tokens(7, p0)
    conts = [tokens(10 + i, 5 + i) for i in range(3)]
    ctx = janlib.BatchContext(runtime, n_ctx=128, n_seq_max=4)
    ctx.decode(prompt, np.arange(p0), np.zeros(p0, int), np.zeros(p0, bool))
    free = ctx.n_free_cells
    for dst in (1, 2):
        ctx.seq_cp(0, dst)
    assert ctx.n_free_cells == free  # shared, not copied
    assert [ctx.seq_len(s) for s in range(3)] == [p0] * 3
    got = run_schedule(ctx, {s: np.concatenate([prompt, conts[s]]) for s in range(3)},
                       [{0: 2, 1: 1, 2: 3}, {0: 3, 1: 5, 2: 4}], np.random.default_rng(0))
    for s in range(3):
        full = np.concatenate([prompt, conts[s]])
        np.testing.assert_array_equal(got[s], alone(runtime, full)[p0:], err_msg=f"sequence {s}")
    for s in range(3):
        ctx.seq_rm(s)
    assert ctx.n_free_cells == ctx.n_cells


def test_copy_into_a_sequence_that_holds_the_start_of_a_page(runtime):
    """dst computed the first 20 positions itself, then takes src's [20, 40): mid-page, so copied."""
    prompt, cont = tokens(8, 40), tokens(9, 6)
    ctx = janlib.BatchContext(runtime, n_ctx=128, n_seq_max=2, swa_full=True)  # cut below gemma3's window
    ctx.decode(prompt, np.arange(40), np.zeros(40, int), np.zeros(40, bool))
    ctx.decode(prompt[:20], np.arange(20), np.ones(20, int), np.zeros(20, bool))
    ctx.seq_cp(0, 1, 20, 40)
    assert ctx.seq_len(1) == 40
    got = ctx.decode(cont, np.arange(40, 46), np.ones(6, int), np.ones(6, bool))
    np.testing.assert_array_equal(got, alone(runtime, np.concatenate([prompt, cont]))[40:])
    ctx.seq_rm(1, 10)
    with pytest.raises(ValueError, match="fewer than p0"):
        ctx.seq_cp(0, 1, 20, 40)
    assert ctx.seq_len(1) == 10


def test_seq_rm_forgets_a_suffix_and_frees_its_pages(runtime):
    first, other = tokens(11, 2 * PAGE + 5), tokens(12, 9)
    ctx = janlib.BatchContext(runtime, n_ctx=128, n_seq_max=2, swa_full=True)  # cut below gemma3's window
    n = len(first)
    ctx.decode(first, np.arange(n), np.zeros(n, int), np.zeros(n, bool))
    assert ctx.n_free_cells == ctx.n_cells - 3 * PAGE
    ctx.seq_rm(0, 25)
    assert ctx.seq_len(0) == 25 and ctx.n_free_cells == ctx.n_cells - PAGE
    got = ctx.decode(other, np.arange(25, 34), np.zeros(9, int), np.ones(9, bool))
    np.testing.assert_array_equal(got, alone(runtime, np.concatenate([first[:25], other]))[25:])
    with pytest.raises(ValueError, match="suffix"):
        ctx.seq_rm(0, 5, 10)
    assert ctx.seq_len(0) == 34
    ctx.seq_rm(0, 40)  # beyond the end: nothing to forget
    assert ctx.seq_len(0) == 34
    ctx.seq_rm(0)
    assert ctx.seq_len(0) == 0 and ctx.n_free_cells == ctx.n_cells


@pytest.mark.parametrize("arch", sorted(TINY))
def test_seq_shift_against_the_reference(arch, tmp_path):
    """As test_forward's shift test, across pages, beside a sequence that shares the prefix pages."""
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, weights="float")
    prompt = tokens(13, 45)
    n, n_keep, d, token = len(prompt), 4, 2 * PAGE - 30, prompt[1]
    ctx = janlib.BatchContext(load_runtime(path), n_ctx=128, n_seq_max=2, kv_type="f32")
    ctx.decode(prompt, np.arange(n), np.zeros(n, int), np.zeros(n, bool))
    ctx.seq_cp(0, 1)
    before = ctx.decode([token], [n], [1], [True])
    ctx.seq_shift(0, n_keep, d)
    assert ctx.seq_len(0) == n - d
    got = ctx.decode([token], [n - d], [0], [True])
    expected = Reference(path).logits_after_shift(list(prompt), token, n_keep, d)
    assert_close(got, expected, FLOAT_RTOL)
    # the sequence that shared the pages still sees the unshifted prompt
    ctx.seq_rm(1, n)
    np.testing.assert_array_equal(ctx.decode([token], [n], [1], [True]), before)
    with pytest.raises(ValueError, match="shift"):
        ctx.seq_shift(0, 0, n)


def test_a_full_cache_raises_and_changes_nothing(runtime):
    ctx = janlib.BatchContext(runtime, n_ctx=128, n_seq_max=2, n_cells=2 * PAGE)
    assert ctx.n_cells == 2 * PAGE
    ids = tokens(14, PAGE + 3)
    ctx.decode(ids, np.arange(len(ids)), np.zeros(len(ids), int), np.zeros(len(ids), bool))
    assert ctx.n_free_cells == 0
    with pytest.raises(janlib.KVCacheFull, match="full"):
        ctx.decode([1, 2], [len(ids), 0], [0, 1], [True, True])
    assert ctx.seq_len(0) == len(ids) and ctx.seq_len(1) == 0 and ctx.n_free_cells == 0
    ctx.decode(ids[:2], [len(ids), len(ids) + 1], [0, 0], [False, False])  # room left in the last page
    ctx.seq_cp(0, 1)  # sharing needs no free page
    with pytest.raises(janlib.KVCacheFull):
        ctx.decode([3], [len(ids) + 2], [1], [True])  # writing into the shared page must copy it
    assert issubclass(janlib.KVCacheFull, RuntimeError)
    ctx.seq_rm(0)
    ctx.seq_rm(1)
    assert ctx.n_free_cells == ctx.n_cells
    np.testing.assert_array_equal(ctx.decode(ids, np.arange(len(ids)), np.ones(len(ids), int), np.ones(len(ids), bool)),
                                  alone(runtime, ids))


def test_bad_batches_are_clear_errors_and_change_nothing(runtime):
    ctx = janlib.BatchContext(runtime, n_ctx=16, n_seq_max=2)
    ctx.decode([1, 2, 3], [0, 1, 2], [0, 0, 0], [False, False, True])
    cases = [
        (([4], [2], [0], [True]), "should be 3"),          # overwrites without seq_rm
        (([4, 5], [3, 5], [0, 0], [True, True]), "should be 4"),  # a gap
        (([4], [0], [2], [True]), "n_seq_max"),
        (([4], [0], [-1], [True]), "n_seq_max"),
        (([N_VOCAB], [3], [0], [True]), "vocabulary"),
        (([4], [3], [0], [1]), "bools"),
        (([4, 5], [3], [0], [True]), "positions has 1"),
        (([], [], [], []), "no tokens"),
        ((list(range(14)), list(range(3, 17)), [0] * 14, [True] * 14), "n_ctx = 16"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            ctx.decode(*args)
    assert ctx.seq_len(0) == 3 and ctx.seq_len(1) == 0
    with pytest.raises(ValueError, match="sequence id"):
        ctx.seq_len(2)
    with pytest.raises(ValueError, match="n_seq_max"):
        janlib.BatchContext(runtime, n_seq_max=0)
    with pytest.raises(ValueError, match="kv_type"):
        janlib.BatchContext(runtime, kv_type="q4")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
@pytest.mark.skipif(bool(os.environ.get("JANLIB_SANITIZER")), reason="a sanitizer's allocator commits what it hands out")
def test_unused_cells_take_no_memory(runtime):
    before = resident_bytes()
    ctx = janlib.BatchContext(runtime, n_ctx=4096, n_seq_max=64)  # 262144 cells: 128-900 MB reserved
    ids = tokens(15, 10)
    ctx.decode(ids, np.arange(10), np.zeros(10, int), np.ones(10, bool))
    assert ctx.n_cells == 262144
    assert resident_bytes() - before < 8 << 20


@pytest.mark.slow
def test_real_model_batched_decode_is_bit_identical_to_each_alone():
    model = janlib.Model("smollm2-135m-instruct", n_ctx=256, n_threads=2)
    prompts = [model.tokenize(text) for text in
               ["Once upon a time", "The capital of France is", "def fibonacci(n):", "1, 2, 3, 5, 8,"]]
    ctx = model.create_context(n_ctx=256, n_seq_max=4)
    rows = [(s, p, t) for s, ids in enumerate(prompts) for p, t in enumerate(ids)]
    want = [p == len(prompts[s]) - 1 for s, p, _ in rows]
    logits = ctx.decode([t for *_, t in rows], [p for _, p, _ in rows], [s for s, *_ in rows], want)
    streams = [list(ids) for ids in prompts]
    history = [[row] for row in logits]
    for _ in range(8):
        nxt = [int(np.argmax(h[-1])) for h in history]
        for s in range(4):
            streams[s].append(nxt[s])
        out = ctx.decode(nxt, [len(s) - 1 for s in streams], [0, 1, 2, 3], [True] * 4)
        for s in range(4):
            history[s].append(out[s])
    for s in range(4):
        single = model.create_context(n_ctx=256, n_seq_max=1)
        n = len(prompts[s])
        first = single.decode(prompts[s], np.arange(n), np.zeros(n, int), np.arange(n) == n - 1)
        steps = [single.decode([t], [p], [0], [True])[0] for p, t in enumerate(streams[s][n:], start=n)]
        np.testing.assert_array_equal(np.array(history[s]), np.concatenate([first, steps]), err_msg=f"stream {s}")
