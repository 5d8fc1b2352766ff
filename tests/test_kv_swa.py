"""Sliding-window layers keep only their window: their KV pages go back to the pool once no later
query of the sequence can see them (csrc/kv_cache.c).

The ring buffer is checked against the full cache (swa_full, itself checked against the float64
reference in test_batch and against transformers in test_archs): logits bit-identical over
sequences many windows long, in prefill chunks, mixed batches and after the sequence operations;
the pages in use counted exactly; cuts and copies below what the windows still hold refused with
nothing changed; the Engine recomputing where it cannot reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import janlib
from janlib import KVCacheFull, _core
from janlib.engine import Engine, Request
from janlib.models import load_runtime
from reference_forward import Reference
from test_engine import ids, make_engine, model  # noqa: F401 (fixtures: the engine over a fake context)
from test_forward import N_VOCAB, assert_within_rounding, write_tiny_model

PAGE = _core.PAGE_SIZE
VOCAB = min(N_VOCAB, 288)  # the converted fixtures' vocabulary
ARCHS = Path(__file__).parent / "fixtures" / "archs"
# name -> how to get the model: tiny gemma3 (six windowed layers, one global) with a window inside
# a page and one across three; llama.cpp-converted gemma2 (alternating) and mistral (every layer windowed)
CASES = {"gemma3-w4": 4, "gemma3-w70": 70, "gemma2": None, "mistral-swa": None}


@pytest.fixture(scope="module", params=sorted(CASES))
def runtime(request, tmp_path_factory):
    name = request.param
    if name.startswith("gemma3"):
        path = write_tiny_model(tmp_path_factory.mktemp(name) / "m.gguf", "gemma3",
                                metadata={"attention.sliding_window": CASES[name]})
    else:
        path = ARCHS / f"{name}.gguf"
    runtime = load_runtime(path)
    runtime.path = path
    return runtime


def window_of(runtime) -> int:
    return max(runtime.hparams.sliding_window)


def tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n)


def pair(runtime, **kw):
    """The same context twice: windows recycled, and every position kept (swa_full)."""
    return janlib.BatchContext(runtime, **kw), janlib.BatchContext(runtime, swa_full=True, **kw)


def both(ring, full, fn):
    """fn(ctx) on both contexts; their results must be bit-identical."""
    got, want = fn(ring), fn(full)
    np.testing.assert_array_equal(got, want)
    return got


def feed(ctx, seq: int, ids_: np.ndarray) -> np.ndarray:
    n0 = ctx.seq_len(seq)
    n = len(ids_)
    return ctx.decode(ids_, np.arange(n0, n0 + n), np.full(n, seq), np.ones(n, bool))


def page_bytes(runtime) -> tuple[int, int]:
    """Bytes of one page of the full-attention layers and of the windowed layers (f16 K and V)."""
    hp = runtime.hparams
    per_layer = PAGE * hp.n_head_kv * (hp.head_dim_k + hp.head_dim_v) * 2
    windowed = sum(w > 0 for w in hp.sliding_window)
    return (hp.n_layer - windowed) * per_layer, windowed * per_layer


def test_logits_equal_the_full_cache_over_many_windows(runtime):
    """Three sequences, two of them several windows long, in prefill chunks that the context
    splits further (n_batch 24), beside single decode tokens, the rows shuffled."""
    rng = np.random.default_rng(3)
    seqs = {0: tokens(1, 230), 1: tokens(2, 20), 2: tokens(3, 150)}
    steps = [{0: 60, 1: 5}, {0: 1, 1: 1, 2: 50}, {0: 90, 2: 1}, {0: 1, 1: 14, 2: 70},
             {0: 1, 2: 1}, {0: 77, 2: 28}]
    assert all(sum(step.get(s, 0) for step in steps) == len(seqs[s]) for s in seqs)
    ring, full = pair(runtime, n_ctx=256, n_seq_max=3, n_batch=24)
    done = dict.fromkeys(seqs, 0)
    for step in steps:
        labels = [s for s, size in step.items() for _ in range(size)]
        rng.shuffle(labels)
        pos = []
        for s in labels:
            pos.append(done[s])
            done[s] += 1
        batch = (np.array([seqs[s][p] for s, p in zip(labels, pos)]), np.array(pos), np.array(labels),
                 np.ones(len(labels), bool))
        both(ring, full, lambda ctx: ctx.decode(*batch, n_threads=2))
    assert ring.kv_bytes < full.kv_bytes


@pytest.mark.parametrize("window", [4, 70])
def test_within_rounding_of_the_float64_reference(tmp_path, window):
    """The reference knows gemma3 (the converted architectures are held to transformers in test_archs)."""
    path = write_tiny_model(tmp_path / "m.gguf", "gemma3", metadata={"attention.sliding_window": window})
    ids_ = tokens(4, 3 * window + 40)
    ctx = janlib.BatchContext(load_runtime(path), n_ctx=len(ids_), n_seq_max=1, n_batch=16)
    got = np.concatenate([feed(ctx, 0, chunk) for chunk in np.array_split(ids_, 5)])
    exact = Reference(path).logits(ids_)
    emulated = Reference(path, quantize_activations=True, kv_float16=True).logits(ids_)
    assert_within_rounding(got, exact, emulated)


def test_pages_in_use_are_the_window_and_the_full_layers(runtime):
    """After each decode a sequence holds its full-attention pages and, in the windowed layers,
    only the pages from the one holding position len - window + 1 on, and one page more (the
    slack that lets a sequence be cut back a few positions)."""
    window = window_of(runtime)
    full_page, window_page = page_bytes(runtime)
    ctx = janlib.BatchContext(runtime, n_ctx=400, n_seq_max=1, n_batch=32)
    ids_ = tokens(5, 400)
    feed(ctx, 0, ids_[:1])
    for n in [37, 64, 65, 130, 200, 201, 202, 333, 400]:
        feed(ctx, 0, ids_[ctx.seq_len(0):n])
        first = max(0, n - window + 1 - PAGE) // PAGE
        held = -(-n // PAGE) - first
        assert ctx.kv_bytes == -(-n // PAGE) * full_page + held * window_page, n
        assert held <= -(-(window - 1) // PAGE) + 2
        assert first == 0 or ctx.seq_pos_min(0)[1] <= n - PAGE  # the slack: a page's worth can be cut
        assert ctx.seq_pos_min(0) == (first * PAGE, first * PAGE + window - 1 if first else 0)
    assert janlib.BatchContext(runtime, n_ctx=400, n_seq_max=1, swa_full=True).seq_pos_min(0) == (0, 0)


def test_a_windowed_only_model_runs_far_past_its_cells():
    """Every mistral-swa layer is windowed: 300 positions in one batch through 4 pages of cells
    (pages go back after each chunk), where keeping every position cannot start."""
    runtime = load_runtime(ARCHS / "mistral-swa.gguf")
    ids_ = tokens(6, 300)
    ring = janlib.BatchContext(runtime, n_ctx=300, n_seq_max=1, n_cells=4 * PAGE, n_batch=16)
    got = feed(ring, 0, ids_)
    full = janlib.BatchContext(runtime, n_ctx=300, n_seq_max=1, swa_full=True)
    np.testing.assert_array_equal(got, feed(full, 0, ids_))
    with pytest.raises(KVCacheFull):
        feed(janlib.BatchContext(runtime, n_ctx=300, n_seq_max=1, n_cells=4 * PAGE, swa_full=True), 0, ids_)


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_quantized_caches_equal_their_full_cache(tmp_path, kv_type):
    path = write_tiny_model(tmp_path / "m.gguf", "gemma3", metadata={"attention.sliding_window": 40})
    runtime = load_runtime(path)
    ring, full = pair(runtime, n_ctx=256, n_seq_max=2, kv_type=kv_type, n_batch=20)
    prompt = tokens(7, 180)
    both(ring, full, lambda ctx: feed(ctx, 0, prompt))
    for ctx in (ring, full):
        ctx.seq_cp(0, 1)
    for step in range(3):
        both(ring, full, lambda ctx: feed(ctx, step % 2, tokens(8 + step, 5)))


def test_cuts_and_copies_below_the_window_are_refused_and_change_nothing(runtime):
    ring, full = pair(runtime, n_ctx=256, n_seq_max=3, n_batch=32)
    prompt = tokens(9, 200)
    both(ring, full, lambda ctx: feed(ctx, 0, prompt))
    pos_min, cut_min = ring.seq_pos_min(0)
    assert 0 < pos_min < cut_min <= 200 and pos_min % PAGE == 0
    free = ring.n_free_cells
    with pytest.raises(ValueError, match="recompute"):
        ring.seq_rm(0, cut_min - 1)
    with pytest.raises(ValueError, match="recompute"):
        ring.seq_cp(0, 1, 0, cut_min - 1)
    assert ring.seq_len(0) == 200 and ring.seq_len(1) == 0 and ring.n_free_cells == free
    # what the windows still hold can be cut to and copied: the same logits as the full cache
    for ctx in (ring, full):
        ctx.seq_cp(0, 1, 0, cut_min)
        ctx.seq_cp(0, 2)
        ctx.seq_rm(0, cut_min + 3)
    for seq, seed in [(0, 10), (1, 11), (2, 12)]:
        both(ring, full, lambda ctx: feed(ctx, seq, tokens(seed, 40)))
    ring.seq_rm(0)  # all of it: always possible
    assert ring.seq_pos_min(0) == (0, 0)
    both(ring, full, lambda ctx: (ctx.seq_rm(0), feed(ctx, 0, prompt[:50]))[1])


def test_copy_into_a_sequence_that_holds_the_start(runtime):
    """dst computed the first 20 positions itself, then takes src's [20, 200)."""
    ring, full = pair(runtime, n_ctx=256, n_seq_max=2, n_batch=64)
    prompt = tokens(13, 200)
    for ctx in (ring, full):
        feed(ctx, 0, prompt)
        feed(ctx, 1, prompt[:20])
        ctx.seq_cp(0, 1, 20, 200)
    both(ring, full, lambda ctx: feed(ctx, 1, tokens(14, 9)))


def test_context_shift_equals_the_full_cache_or_is_refused(runtime):
    window = window_of(runtime)
    ring, full = pair(runtime, n_ctx=256, n_seq_max=2, n_batch=64)
    prompt = tokens(15, 240)
    for ctx in (ring, full):
        feed(ctx, 0, prompt)
        ctx.seq_cp(0, 1)
        ctx.seq_shift(0, 4, 100)
    both(ring, full, lambda ctx: feed(ctx, 0, tokens(16, 20)))
    both(ring, full, lambda ctx: feed(ctx, 1, tokens(17, 3)))  # the sharer still sees the unshifted prompt
    # keeping most of the sequence while dropping nearly all the rest: the new length's window
    # reaches kept positions the windowed layers gave back
    n_keep, n_discard = 120, 240 + 3 - 120 - 4
    assert full.seq_can_shift(1, n_keep, n_discard)
    if window > 8:
        assert not ring.seq_can_shift(1, n_keep, n_discard)
        free = ring.n_free_cells
        with pytest.raises(ValueError, match="recompute"):
            ring.seq_shift(1, n_keep, n_discard)
        assert ring.seq_len(1) == 243 and ring.n_free_cells == free
        both(ring, full, lambda ctx: feed(ctx, 1, tokens(18, 2)))


# ---------------------------------------------------------------- the Engine over a windowed cache

def test_engine_recomputes_a_prefix_the_windows_gave_back(make_engine):  # noqa: F811
    engine, ctx = make_engine(n_seq_max=1, window=16)
    system = ids(100, 2000)
    assert engine.submit(Request(system, max_tokens=1, ignore_eos=True)).result().n_cached_tokens == 0
    # 50 tokens in common lie below what the windows hold: evaluated again, nothing cut below them
    short = engine.submit(Request(system[:50] + [7, 8], max_tokens=1, ignore_eos=True)).result()
    assert short.n_cached_tokens == 0
    engine.submit(Request(system, max_tokens=1, ignore_eos=True)).result()
    # the whole cached prompt and more: reused
    longer = engine.submit(Request(system + [9, 10], max_tokens=1, ignore_eos=True)).result()
    assert longer.n_cached_tokens == 100
    # the answer is the one a cold cache gives
    cold, _ = make_engine(n_seq_max=1)
    assert cold.submit(Request(system[:50] + [7, 8], max_tokens=1, ignore_eos=True)).result().text == short.text


def test_engine_context_shift_recomputes_when_the_window_lost_kept_tokens(make_engine):  # noqa: F811
    """n_keep -1 keeps the whole prompt: after the shift the window reaches into it, given back
    long ago, so the kept tokens are evaluated again: the same tokens as a cache that shifts."""
    request = Request(ids(40), max_tokens=80, ignore_eos=True, context_shift=True, n_keep=-1)
    windowed, wctx = make_engine(n_seq_max=1, n_ctx=64, window=16)
    whole, _ = make_engine(n_seq_max=1, n_ctx=64)
    got = windowed.submit(request).result().choices[0]
    want = whole.submit(request).result().choices[0]
    assert got.info["truncated"] and got.tokens == want.tokens and len(got.tokens) == 80
    assert wctx.seqs[0][:40] == ids(40)
    assert any(len(t) > 40 for t, _, _ in wctx.batches)  # the kept tokens and the rest, evaluated again


@pytest.mark.slow
def test_gemma3_engine_reuses_and_recomputes_as_a_cold_cache_answers(gemma3_path):
    """Gemma-3-270M (a 512-position window on 15 of 18 layers): after a 700-token prompt, a longer
    one reuses all of it and one sharing only its first 300 tokens is evaluated again; greedy
    answers equal Model.generate's from a cold cache."""
    model = janlib.Model(gemma3_path, n_ctx=1024, n_threads=2)
    engine = Engine(model, n_seq_max=1, n_ctx=1024, n_threads=2)
    try:
        prompt = [int(t) for t in np.random.default_rng(19).integers(1000, 20000, 700)]
        requests = [prompt, prompt + [2000, 3000, 4000], prompt[:300] + [5000, 6000]]
        results = [engine.submit(Request(ids_, max_tokens=4, ignore_eos=True)).result() for ids_ in requests]
        assert [r.n_cached_tokens for r in results] == [0, 700, 0]
        for ids_, result in zip(requests, results):
            model.reset()
            assert result.choices[0].tokens == [t.id for t in model.generate(ids_, max_tokens=4, ignore_eos=True) if t.id is not None]
    finally:
        engine.close()
