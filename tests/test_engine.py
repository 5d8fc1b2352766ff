"""janlib.Engine: the scheduler on a small fake context that keeps the multi-sequence contract (fast,
deterministic: its logits are a function of the sequence's own tokens only), then the real model."""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import pytest

import janlib
from janlib import KVCacheFull
from janlib.engine import Engine, EngineClosed, EngineDead, QueueFull, Request, RequestCancelled, RequestFailed
from janlib.sampling import SamplingParams


class FakeContext:
    """The BatchContext contract in Python. A row's logits depend only on its sequence's tokens
    (as the C side guarantees); every batch is recorded for the assertions. window > 0: the
    cache gives back the positions a query at the sequence's length no longer sees (a sliding
    window, one-position pages), so cuts and copies below the window are refused."""

    def __init__(self, n_vocab: int, n_ctx: int = 256, n_seq_max: int = 4, n_cells: int | None = None,
                 delay_s: float = 0.0, window: int = 0):
        self.n_vocab, self.n_ctx, self.n_seq_max = n_vocab, n_ctx, n_seq_max
        self.n_cells = n_cells or n_ctx * n_seq_max
        self.seqs: list[list[int]] = [[] for _ in range(n_seq_max)]
        self.batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (tokens, seq_ids, want)
        self.copies: list[tuple[int, int, int]] = []  # (src, dst, n)
        self.delay_s = delay_s
        self.fail_with: BaseException | None = None
        self.window = window
        self.gone = [0] * n_seq_max  # positions [0, gone) were given back

    @property
    def n_free_cells(self) -> int:
        return self.n_cells - sum(map(len, self.seqs))

    def seq_len(self, seq: int) -> int:
        return len(self.seqs[seq])

    def _window_start(self, n: int) -> int:
        return max(0, n - self.window + 1) if self.window else 0

    def seq_pos_min(self, seq: int) -> tuple[int, int]:
        gone = self.gone[seq]
        return gone, gone + self.window - 1 if gone else 0

    def seq_rm(self, seq: int, p0: int = 0, p1: int = -1) -> None:
        assert p1 == -1, "only a suffix may be removed"
        assert p0 == 0 or p0 >= len(self.seqs[seq]) or p0 >= self.seq_pos_min(seq)[1], "cut below the window"
        del self.seqs[seq][p0:]
        if p0 == 0:
            self.gone[seq] = 0

    def seq_cp(self, src: int, dst: int, p0: int = 0, p1: int = -1) -> None:
        assert len(self.seqs[dst]) == p0
        end = len(self.seqs[src]) if p1 == -1 else p1
        assert end <= len(self.seqs[src])
        assert end == len(self.seqs[src]) or end >= self.seq_pos_min(src)[1], "copy below the window"
        self.seqs[dst] += self.seqs[src][p0:end]
        self.gone[dst] = max(self.gone[src], self._window_start(end)) if self.gone[src] else 0
        self.copies.append((src, dst, end - p0))

    def seq_can_shift(self, seq: int, n_keep: int, n_discard: int) -> bool:
        lo = self._window_start(len(self.seqs[seq]) - n_discard)
        return n_keep <= lo or self.gone[seq] <= lo

    def seq_shift(self, seq: int, n_keep: int, n_discard: int) -> None:
        assert self.seq_can_shift(seq, n_keep, n_discard)
        del self.seqs[seq][n_keep:n_keep + n_discard]
        self.gone[seq] = self._window_start(len(self.seqs[seq]))

    def logits_after(self, tokens: list[int]) -> np.ndarray:
        rng = np.random.default_rng([len(tokens), *tokens[-8:]])
        return (rng.standard_normal(self.n_vocab) * 3).astype(np.float32)

    def decode(self, tokens, positions, seq_ids, want_logits, n_threads=None):
        if self.fail_with is not None:
            raise self.fail_with
        if len(tokens) > self.n_free_cells:
            raise KVCacheFull(f"{len(tokens)} cells wanted, {self.n_free_cells} free")
        rows = []
        for token, pos, seq, want in zip(tokens.tolist(), positions.tolist(), seq_ids.tolist(), want_logits.tolist()):
            assert pos == len(self.seqs[seq]), (seq, pos, len(self.seqs[seq]))
            assert pos < self.n_ctx
            self.seqs[seq].append(token)
            if want:
                rows.append(self.logits_after(self.seqs[seq]))
        for seq in set(seq_ids.tolist()):
            self.gone[seq] = max(self.gone[seq], self._window_start(len(self.seqs[seq])))
        self.batches.append((tokens.copy(), seq_ids.copy(), want_logits.copy()))
        time.sleep(self.delay_s)
        return np.array(rows, np.float32).reshape(len(rows), self.n_vocab)


@pytest.fixture(scope="module")
def model(smollm2_path):
    return janlib.Model(smollm2_path, n_ctx=256)


@pytest.fixture
def make_engine(model):
    engines = []

    def make(n_seq_max=4, n_batch=32, n_ctx=256, **kw):
        ctx_kw = {k: kw.pop(k) for k in ("n_cells", "delay_s", "window") if k in kw}
        ctx = FakeContext(model.n_vocab, n_ctx=n_ctx, n_seq_max=n_seq_max, **ctx_kw)
        engine = Engine(model, n_batch=n_batch, context=ctx, **kw)
        engines.append(engine)
        return engine, ctx

    yield make
    for engine in engines:
        engine.close()


SEEDED = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=1234, n_probs=3)


def ids(n: int, start: int = 100) -> list[int]:
    return list(range(start, start + n))


def events(handle):
    return list(handle)


def test_each_step_decodes_every_running_stream_while_a_long_prompt_is_chunked(make_engine):
    engine, ctx = make_engine(n_batch=16, delay_s=0.002)
    streams = [engine.submit(Request(ids(5, 200 + 10 * i), max_tokens=60, ignore_eos=True)) for i in range(3)]
    readers = [iter(h) for h in streams]
    for r in readers:
        next(e for e in r if e.kind == "token")
    long = engine.submit(Request(ids(100, 1000), max_tokens=4, ignore_eos=True))
    assert long.result().finish_reason == "length"
    prefill = [seqs for tokens, seqs, _ in ctx.batches if (seqs == 3).sum() > 1]
    assert len(prefill) >= 100 // 16  # the prompt went in chunks within the budget
    for seqs in prefill:
        assert len(seqs) <= 16
        assert {0, 1, 2} <= set(seqs.tolist())  # and no running stream missed a step
    for r in readers:
        assert [e.kind for e in r][-1] == "done"


def test_prompt_chunks_stay_within_the_budget_and_report_progress(make_engine):
    engine, ctx = make_engine(n_batch=8)
    handle = engine.submit(Request(ids(30), max_tokens=2, ignore_eos=True))
    progress = [e.info for e in handle if e.kind == "progress"]
    assert [p["processed"] for p in progress] == [0, 8, 16, 24, 30]  # 0: admitted, nothing evaluated yet
    assert all(p["total"] == 30 and p["cache"] == 0 for p in progress)
    assert all(len(tokens) <= 8 for tokens, _, _ in ctx.batches)


def test_requests_are_served_first_come_first_served(make_engine):
    engine, ctx = make_engine(n_seq_max=1)
    order = []
    handles = [engine.submit(Request(ids(4, 300 + 10 * i), max_tokens=3, ignore_eos=True)) for i in range(4)]

    def read(i, h):
        h.result()
        order.append(i)

    threads = [threading.Thread(target=read, args=(i, h)) for i, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts = [int(seqs[0]) for _, seqs, _ in ctx.batches]
    assert starts == [0] * len(starts)
    first_tokens = [int(tokens[0]) for tokens, _, want in ctx.batches if len(tokens) == 4]
    assert first_tokens == [300, 310, 320, 330]


def test_id_slot_pins_a_request_to_its_sequence_and_waits_for_it(make_engine):
    engine, ctx = make_engine(n_seq_max=2, delay_s=0.002)
    busy = engine.submit(Request(ids(4), max_tokens=30, ignore_eos=True, id_slot=1))
    pinned = engine.submit(Request(ids(4, 500), max_tokens=2, ignore_eos=True, id_slot=1))
    free = engine.submit(Request(ids(4, 600), max_tokens=2, ignore_eos=True))
    assert next(e for e in free if e.kind == "start").info["slot"] == 0
    assert next(e for e in busy if e.kind == "start").info["slot"] == 1
    # the pinned request ran on 1 although 0 was idle the whole time after `free` ended
    assert next(e for e in pinned if e.kind == "start").info["slot"] == 1
    with pytest.raises(ValueError, match="id_slot"):
        engine.submit(Request(ids(4), id_slot=2))


def test_cancel_frees_the_sequence_for_the_next_request(make_engine):
    engine, ctx = make_engine(n_seq_max=1, delay_s=0.002)
    long = engine.submit(Request(ids(4), max_tokens=10_000, ignore_eos=True))
    waiting = engine.submit(Request(ids(4, 700), max_tokens=2, ignore_eos=True))
    never = engine.submit(Request(ids(4, 800), max_tokens=2, ignore_eos=True))
    never.cancel()
    stream = iter(long)
    assert next(e for e in stream if e.kind == "token")
    long.cancel()
    assert [e.kind for e in stream][-1] == "cancelled"
    assert waiting.result().choices[0].finish_reason == "length"
    with pytest.raises(RequestCancelled):
        never.result()
    assert sum(len(t) for t, s, _ in ctx.batches if int(s[0]) == 0) < 10_000
    assert engine.metrics["cancelled_total"] == 2


def test_a_gone_consumer_cancels_through_its_probe(make_engine):
    engine, _ = make_engine(delay_s=0.002)
    gone = threading.Event()
    handle = engine.submit(Request(ids(4), max_tokens=10_000, ignore_eos=True, disconnected=gone.is_set))
    stream = iter(handle)
    next(e for e in stream if e.kind == "token")
    gone.set()
    assert [e.kind for e in stream][-1] == "cancelled"


def test_prompt_cache_reuses_the_longest_common_prefix(make_engine):
    engine, ctx = make_engine(n_seq_max=2)
    system = ids(40, 2000)
    first = engine.submit(Request(system + [5, 6, 7], max_tokens=2, ignore_eos=True)).result()
    assert first.n_cached_tokens == 0
    again = engine.submit(Request(system + [8, 9], max_tokens=2, ignore_eos=True)).result()
    assert again.n_cached_tokens == 40
    same = engine.submit(Request(system + [8, 9], max_tokens=2, ignore_eos=True, cache_prompt=False)).result()
    assert same.n_cached_tokens == 0
    # the same prompt twice: everything but its last token comes from the cache
    twice = engine.submit(Request(system + [8, 9], max_tokens=2, ignore_eos=True)).result()
    assert twice.n_cached_tokens == 41


def test_a_prefix_computed_by_another_sequence_is_copied_not_recomputed(make_engine):
    engine, ctx = make_engine(n_seq_max=2)
    system = ids(50, 3000)
    engine.submit(Request(system + [1], max_tokens=1, ignore_eos=True, id_slot=0)).result()
    evaluated = sum(len(t) for t, _, _ in ctx.batches)
    other = engine.submit(Request(system + [2, 3], max_tokens=1, ignore_eos=True, id_slot=1)).result()
    assert other.n_cached_tokens == 50
    assert ctx.copies[-1] == (0, 1, 50)
    assert sum(len(t) for t, _, _ in ctx.batches) - evaluated == 2  # only the new tokens ran
    # the copy is the same as computing it: the same greedy answer as on a cold cache
    cold, _ = make_engine(n_seq_max=1)
    assert cold.submit(Request(system + [2, 3], max_tokens=1, ignore_eos=True)).result().text == other.text


def test_a_short_shared_prefix_takes_an_empty_sequence_not_another_conversations(make_engine):
    """Two conversations that share only a system prompt, one after the other, keep a sequence each: the
    second copies the shared prefix into the empty one, so the first's next turn still finds its cells."""
    engine, ctx = make_engine(n_seq_max=2)
    system = ids(10, 2000)
    first = system + ids(40, 3000)
    engine.submit(Request(first, max_tokens=2, ignore_eos=True)).result()
    other = engine.submit(Request(system + ids(40, 5000), max_tokens=2, ignore_eos=True)).result()
    assert other.n_cached_tokens == 10
    again = engine.submit(Request(first + [7, 8], max_tokens=1, ignore_eos=True)).result()
    assert again.n_cached_tokens >= len(first)


def test_n_choices_evaluate_the_prompt_once_and_choice_0_repeats_n_1(make_engine):
    engine, ctx = make_engine(n_seq_max=4, n_batch=64)
    prompt = ids(40, 4000)
    both = engine.submit(Request(prompt, max_tokens=12, ignore_eos=True, n=3, sampling=SEEDED)).result()
    assert sum(len(t) for t, _, _ in ctx.batches if len(t) > 3) == 40  # the prompt ran once
    assert [c.finish_reason for c in both.choices] == ["length"] * 3
    assert len({tuple(c.tokens) for c in both.choices}) == 3  # seeds s, s+1, s+2 differ
    alone, _ = make_engine(n_seq_max=1)
    single = alone.submit(Request(prompt, max_tokens=12, ignore_eos=True, sampling=SEEDED)).result()
    assert single.choices[0].tokens == both.choices[0].tokens
    seeded_1 = alone.submit(Request(prompt, max_tokens=12, ignore_eos=True,
                                    sampling=SamplingParams(**{**SEEDED.__dict__, "seed": 1235}))).result()
    assert seeded_1.choices[0].tokens == both.choices[1].tokens
    with pytest.raises(ValueError, match="n = 5"):
        engine.submit(Request(prompt, n=5))


def _run_alone(make_engine, prompt, max_tokens):
    engine, _ = make_engine(n_seq_max=1)
    out = engine.submit(Request(prompt, max_tokens=max_tokens, sampling=SEEDED, ignore_eos=True)).result()
    return out.choices[0]


def test_seeded_answers_do_not_depend_on_what_runs_beside_them(make_engine):
    rng = random.Random(7)
    prompts = [ids(rng.randint(3, 40), 100 * i) for i in range(1, 9)]
    expected = [_run_alone(make_engine, p, 20) for p in prompts]
    engine, _ = make_engine(n_seq_max=3, n_batch=rng.choice([5, 16]), delay_s=0.001)
    handles = []
    for p in prompts:
        handles.append(engine.submit(Request(p, max_tokens=20, sampling=SEEDED, ignore_eos=True)))
        time.sleep(rng.uniform(0, 0.02))
    for h, want in zip(handles, expected):
        got = h.result().choices[0]
        assert got.tokens == want.tokens
        assert all(np.array_equal(a.probs, b.probs) and np.array_equal(a.ids, b.ids)
                   for a, b in zip(got.probs, want.probs))


def test_a_request_that_raises_fails_alone(make_engine, model):
    engine, _ = make_engine(n_seq_max=2, delay_s=0.001)

    class Broken:
        def allowed_mask(self):
            raise RuntimeError("mask exploded")

    ok = engine.submit(Request(ids(5), max_tokens=20, ignore_eos=True))
    bad = engine.submit(Request(ids(5, 900), max_tokens=20, constraint=Broken()))
    with pytest.raises(RequestFailed, match="mask exploded"):
        bad.result()
    assert ok.result().choices[0].finish_reason == "length"
    assert engine.healthy and engine.metrics["failed_total"] == 1
    assert engine.submit(Request(ids(3), max_tokens=2)).result()


def test_a_dead_engine_thread_fails_every_request_at_once(make_engine):
    engine, ctx = make_engine(n_seq_max=1, delay_s=0.001)
    running = engine.submit(Request(ids(5), max_tokens=1000, ignore_eos=True))
    waiting = engine.submit(Request(ids(5, 400), max_tokens=5))
    next(e for e in running if e.kind == "token")
    ctx.fail_with = SystemExit("boom")  # escapes the per-request guard
    for h in (running, waiting):
        with pytest.raises(EngineDead, match="boom"):
            h.result()
    assert not engine.healthy
    with pytest.raises(EngineDead):
        engine.submit(Request(ids(3)))


def test_a_full_cache_evicts_idle_sequences(make_engine):
    engine, ctx = make_engine(n_seq_max=2, n_cells=80)
    engine.submit(Request(ids(60), max_tokens=2, ignore_eos=True, id_slot=0)).result()
    out = engine.submit(Request(ids(60, 5000), max_tokens=2, ignore_eos=True, id_slot=1)).result()
    assert out.choices[0].finish_reason == "length"
    assert ctx.seqs[0] == []  # slot 0's idle cache made room


def test_queue_full_and_close_with_a_deadline(make_engine):
    engine, _ = make_engine(n_seq_max=1, queue_size=1, delay_s=0.002)
    running = engine.submit(Request(ids(4), max_tokens=100_000, ignore_eos=True))
    engine.submit(Request(ids(4, 300), max_tokens=100_000, ignore_eos=True))
    with pytest.raises(QueueFull):
        engine.submit(Request(ids(4, 500), max_tokens=2))
    next(e for e in running if e.kind == "token")
    engine.close(timeout=0.05)
    assert running.result().choices[0].finish_reason == "length"
    with pytest.raises(EngineClosed):
        engine.submit(Request(ids(3)))


def test_context_shift_keeps_generating_past_n_ctx(make_engine):
    engine, ctx = make_engine(n_seq_max=1, n_ctx=32)
    out = engine.submit(Request(ids(10), max_tokens=60, ignore_eos=True, context_shift=True, n_keep=4)).result()
    assert len(out.choices[0].tokens) == 60 and out.choices[0].info["truncated"]
    assert ctx.seqs[0][:4] == ids(4)
    ended = engine.submit(Request(ids(10), max_tokens=60, ignore_eos=True)).result()
    assert ended.choices[0].finish_reason == "length" and len(ended.choices[0].tokens) == 32 - 10 + 1


# ---------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def real_model(smollm2_path):
    return janlib.Model(smollm2_path, n_ctx=512, n_threads=2)


@pytest.mark.slow
def test_real_greedy_answers_match_model_generate(real_model):
    prompts = [real_model.chat_prompt([{"role": "user", "content": q}])[1]
               for q in ("What is the capital of France?", "Name three colours.", "Say hello.")]
    expected = []
    for p in prompts:
        real_model.reset()
        expected.append([t.id for t in real_model.generate(p, max_tokens=24) if t.id is not None])
    engine = Engine(real_model, n_seq_max=3, n_ctx=512, n_threads=2)
    try:
        results = engine.generate(prompts, max_tokens=24)
    finally:
        engine.close()
    assert [r.choices[0].tokens for r in results] == expected


@pytest.mark.slow
def test_real_seeded_requests_are_bit_identical_alone_and_beside_others(real_model):
    rng = random.Random(11)
    words = "sea sky tree stone river cloud bird light song road".split()
    prompts = [real_model.tokenize(" ".join(rng.choice(words) for _ in range(rng.randint(2, 60))))
               for _ in range(6)]
    params = [SamplingParams(temperature=0.9, seed=rng.randrange(1 << 32), n_probs=4) for _ in prompts]
    engine = Engine(real_model, n_seq_max=4, n_ctx=512, n_threads=2, n_batch=16)
    try:
        alone = [engine.submit(Request(p, max_tokens=16, sampling=s, ignore_eos=True, cache_prompt=False)).result()
                 for p, s in zip(prompts, params)]
        handles = []
        for p, s in zip(prompts, params):  # joining at random steps while others run and leave
            handles.append(engine.submit(Request(p, max_tokens=16, sampling=s, ignore_eos=True, cache_prompt=False)))
            time.sleep(rng.uniform(0, 0.15))
        beside = [h.result() for h in handles]
    finally:
        engine.close()
    for a, b in zip(alone, beside):
        assert a.choices[0].tokens == b.choices[0].tokens
        for x, y in zip(a.choices[0].probs, b.choices[0].probs):
            assert np.array_equal(x.ids, y.ids) and np.array_equal(x.probs, y.probs) and x.token_prob == y.token_prob


@pytest.mark.slow
def test_real_n_choices_each_keep_their_own_constraint(real_model):
    engine = Engine(real_model, n_seq_max=3, n_ctx=512, n_threads=2)
    schema = {"type": "object", "properties": {"animal": {"enum": ["cat", "dog", "owl"]}}, "required": ["animal"]}
    try:
        out = engine.submit(Request(real_model.chat_prompt([{"role": "user", "content": "Pick an animal."}])[1],
                                    max_tokens=40, n=3, json_schema=schema,
                                    sampling=SamplingParams(temperature=1.5, seed=3))).result()
    finally:
        engine.close()
    assert [c.finish_reason for c in out.choices] == ["stop"] * 3
    assert all(json.loads(c.text)["animal"] in ("cat", "dog", "owl") for c in out.choices)


def test_equal_prompts_arriving_together_are_evaluated_once(make_engine):
    engine, ctx = make_engine(n_seq_max=3, n_batch=16)
    system = ids(60, 6000)
    handles = [engine.submit(Request(system + [7 + i], max_tokens=3, ignore_eos=True)) for i in range(3)]
    results = [h.result() for h in handles]
    assert sum(len(t) for t, _, _ in ctx.batches) - 3 * 2 == 60 + 3  # the shared 60 once, each own token
    assert [r.n_cached_tokens for r in results] == [0, 60, 60]
    cold, _ = make_engine(n_seq_max=1)
    for i, r in enumerate(results):
        alone = cold.submit(Request(system + [7 + i], max_tokens=3, ignore_eos=True, cache_prompt=False)).result()
        assert r.choices[0].tokens == alone.choices[0].tokens


def test_prompt_chunks_beside_running_streams_are_sized_to_the_gap_target(make_engine, model):
    class Timed(FakeContext):
        def decode(self, tokens, *args, **kw):  # 0.5 ms a token: about 2,000 tokens/s
            out = super().decode(tokens, *args, **kw)
            time.sleep(0.0005 * len(tokens))
            return out

    ctx = Timed(model.n_vocab, n_ctx=512, n_seq_max=2)
    engine = Engine(model, n_batch=256, context=ctx, max_gap_ms=40)
    try:
        engine.submit(Request(ids(300), max_tokens=1, id_slot=0)).result()  # measures the throughput
        alone_chunks = [len(t) for t, _, _ in ctx.batches]
        stream = iter(engine.submit(Request(ids(4, 9000), max_tokens=200, ignore_eos=True, id_slot=0)))
        next(e for e in stream if e.kind == "token")
        engine.submit(Request(ids(300, 5000), max_tokens=1, id_slot=1)).result()
        beside = [len(t) for t, seqs, _ in ctx.batches if (seqs == 1).any() and (seqs == 0).any()]
    finally:
        engine.close()
    assert alone_chunks[0] == 256  # nothing generating: whole batches
    assert beside and max(beside) <= 2000 * 0.040 * 1.2  # about 40 ms of work a step
    assert min(beside[:-1]) >= 16


def test_step_times_fit_sizes_chunks_to_the_target_as_their_positions_grow():
    from janlib.engine import _StepTimes

    times = _StepTimes()
    assert times.max_chunk(3, 300, 0, 0.2) is None  # no prompt chunk timed yet
    cost = lambda rows, attended: 0.005 + 0.0008 * rows + 0.003 * attended / 1024  # noqa: E731
    for start in range(0, 1536, 128):  # a long prompt alone, then three decode rows
        times.add(128, 128 * start + 128 * 129 // 2, cost(128, 128 * start + 128 * 129 // 2))
    for pos in range(100, 116):
        times.add(3, 3 * pos, cost(3, 3 * pos))
    t0, per_row, per_attended = times.fit()
    assert t0 == pytest.approx(cost(3, 3 * 108), rel=0.01) and per_attended == pytest.approx(0.003, rel=0.05)
    step = lambda c, start: cost(3 + c, 330 + c * start + c * (c + 1) // 2)  # noqa: E731
    for start in (0, 700, 1400):
        c = times.max_chunk(3, 330, start, 0.2)
        assert c > 16 and step(c, start) <= 0.2 * 1.02 < step(int(c * 1.15) + 1, start)  # near the target
    assert times.max_chunk(3, 330, 0, 0.001) == 0  # the decode rows alone overrun: no room

    slow_decode = _StepTimes()  # decode at a long context costs more than the chunks timed
    for _ in range(8):
        slow_decode.add(3, 60000, 0.30)
    for start in range(0, 256, 64):
        slow_decode.add(64, 64 * start, 0.12)
    assert slow_decode.max_chunk(3, 60000, 512, 0.4) < 256  # still bounded, by a plain rate


def test_prompt_chunks_shrink_as_their_attention_grows(make_engine, model):
    cost = lambda positions: 0.0001 * len(positions) + 2e-7 * float(np.sum(positions + 1))  # noqa: E731

    class Timed(FakeContext):
        """0.1 ms a token plus 0.2 us a position attended to; keeps each batch's sequences and positions."""
        steps: list[tuple[np.ndarray, np.ndarray]] = []

        def decode(self, tokens, positions, seq_ids, *args, **kw):
            out = super().decode(tokens, positions, seq_ids, *args, **kw)
            self.steps.append((np.asarray(seq_ids), np.asarray(positions)))
            time.sleep(cost(np.asarray(positions)))
            return out

    ctx = Timed(model.n_vocab, n_ctx=1024, n_seq_max=2)
    engine = Engine(model, n_batch=256, context=ctx, max_gap_ms=40)
    try:
        engine.submit(Request(ids(700), max_tokens=1, id_slot=0, cache_prompt=False)).result()  # timed steps
        stream = iter(engine.submit(Request(ids(4, 9000), max_tokens=400, ignore_eos=True, id_slot=0)))
        next(e for e in stream if e.kind == "token")
        engine.submit(Request(ids(700, 5000), max_tokens=1, id_slot=1)).result()
    finally:
        engine.close()
    beside = [positions for seqs, positions in ctx.steps if (seqs == 1).any() and (seqs == 0).any()]
    assert max(cost(p) for p in beside) <= 0.040 * 1.25  # each step about the 40 ms target, late chunks included
    assert len(beside[-2]) < len(beside[0])  # the chunks near position 700 are shorter than the first
