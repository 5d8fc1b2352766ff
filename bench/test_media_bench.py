"""Images on the text side, gemma3-270m at 2 threads: what an image block of 256 embedding rows costs to
prefill beside 256 token rows (the embedding path skips only the lookup, so the two should be alike; the
block's rows attend to each other both ways, as gemma3's images), and what the next turn of a chat with
that image pays when the engine reuses the image's cells."""

from __future__ import annotations

import time

import numpy as np
import pytest

import janlib
from janlib.context import TOKEN_EMBD
from janlib.media import ImageBlock, MediaPrompt

THREADS, ROUNDS, IMAGE_ROWS, PREFIX = 2, 3, 256, 32


@pytest.fixture(scope="module")
def gemma():
    return janlib.Model(janlib.fetch_model("gemma3-270m"), n_ctx=2048, n_threads=THREADS)


def image_rows(model, n: int) -> np.ndarray:
    """(n, n_embd) float32 inputs of the size a projector gives: scaled token embeddings."""
    table = model._file.tensors["token_embd.weight"]
    rows = janlib.dequantize(table)[1000:1000 + n]
    return np.ascontiguousarray(rows * np.float32(np.sqrt(model.n_embd)), dtype=np.float32)


def best_prefill(ctx, ids, embd=None, blocks=None) -> float:
    n = len(ids)
    best = float("inf")
    for _ in range(ROUNDS):
        ctx.seq_rm(0)
        start = time.perf_counter()
        ctx.decode(ids, np.arange(n), np.zeros(n, int), np.arange(n) == n - 1, embd=embd, non_causal_blocks=blocks)
        best = min(best, time.perf_counter() - start)
    return best


def test_image_block_prefill_beside_tokens(benchmark, gemma, report):
    ctx = gemma.create_context(n_ctx=1024, n_seq_max=1, n_batch=512)
    prefix = np.random.default_rng(0).integers(100, 20000, PREFIX)
    tokens = np.concatenate([prefix, np.random.default_rng(1).integers(100, 20000, IMAGE_ROWS)])
    image = np.concatenate([prefix, np.full(IMAGE_ROWS, TOKEN_EMBD)])
    labels = np.r_[np.zeros(PREFIX, np.int32), np.ones(IMAGE_ROWS, np.int32)]
    embd = image_rows(gemma, IMAGE_ROWS)
    t_tokens = best_prefill(ctx, tokens)
    t_causal = best_prefill(ctx, image, embd)
    t_image = best_prefill(ctx, image, embd, labels)
    n = PREFIX + IMAGE_ROWS
    report(f"gemma3-270m prefill of {PREFIX} tokens + {IMAGE_ROWS} rows, {THREADS} threads: token rows "
           f"{n / t_tokens:.0f} t/s, embedding rows {n / t_causal:.0f} t/s, as a non-causal block "
           f"{n / t_image:.0f} t/s (its rows see the whole block: more attention)")
    benchmark.pedantic(best_prefill, args=(ctx, image, embd, labels), rounds=1, iterations=1)


def test_next_turn_reuses_the_image(gemma, report):
    tokenize = gemma.tokenize
    head, tail = tokenize("<start_of_turn>user\nDescribe "), tokenize(" please.<end_of_turn>\n<start_of_turn>model\n",
                                                                      add_special=False, parse_special=True)
    key = -12345
    block = ImageBlock(len(head), image_rows(gemma, IMAGE_ROWS), key, True)
    first = MediaPrompt(head + [key] * IMAGE_ROWS + tail, [block])
    engine = janlib.Engine(gemma, n_seq_max=1, n_ctx=1024, n_threads=THREADS, n_batch=512)
    try:
        one = engine.submit(janlib.Request(first, max_tokens=8)).result()
        more = tokenize(one.text + "<end_of_turn>\n<start_of_turn>user\nAnd the colours?<end_of_turn>\n"
                        "<start_of_turn>model\n", add_special=False, parse_special=True)
        second = MediaPrompt(first.tokens + more, [block])
        two = engine.submit(janlib.Request(second, max_tokens=8)).result()
    finally:
        engine.close()
    assert two.n_cached_tokens >= len(first)
    report(f"gemma3-270m chat with a {IMAGE_ROWS}-row image, {THREADS} threads: turn 1 prompt {len(first)} positions "
           f"in {one.prompt_ms:.0f} ms; turn 2 prompt {len(second)} positions, {two.n_cached_tokens} reused, "
           f"in {two.prompt_ms:.0f} ms")
