"""Images on the text side: forward-pass rows given as embeddings instead of token ids, and
non-causal image blocks (gemma3).

* Embedding rows: rows whose embeddings are token_embd[token] as gguf-py dequantizes it, times the
  input scale the architecture applies to token rows (gemma: sqrt(n_embd); granite: its file's
  embedding_scale), give the logits of the tokens themselves bit for bit, for every tiny architecture and
  SmolLM2: the embedding path neither looks a row up nor scales it.
* Non-causal blocks: against the float64 reference with the block's rows attending to each
  other both ways (and the sliding window still bounding what a row sees from below).
* Batch invariance holds with embedding rows and blocks mixed among other sequences' tokens."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import gguf
import numpy as np
import pytest

import janlib
import janlib.errors
import janlib.media
from janlib.context import TOKEN_EMBD
from janlib.models import load_runtime
from reference_forward import Reference
from test_forward import FLOAT_RTOL, N_VOCAB, TINY, assert_close, write_tiny_model

ARCH_FIXTURES = sorted((Path(__file__).parent / "fixtures" / "archs").glob("*.gguf"))


def token_inputs(path, tokens) -> np.ndarray:
    """(n, n_embd) float32: what the model's input is for tokens, computed from the file alone."""
    reader = gguf.GGUFReader(str(path))
    fields = {f.name: f.contents() for f in reader.fields.values()}
    arch = fields["general.architecture"]
    table = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = gguf.quants.dequantize(np.asarray(table.data[np.asarray(tokens)]), table.tensor_type).astype(np.float32)
    n_embd = int(fields[f"{arch}.embedding_length"])
    scale = math.sqrt(n_embd) if arch.startswith("gemma") else fields.get(f"{arch}.embedding_scale", 1.0)
    return rows * np.float32(scale)


def decode_all(runtime, ids, embd=None, blocks=None, kv_type="f16") -> np.ndarray:
    """Logits of every row of ids, one batch in a fresh one-sequence context."""
    ctx = janlib.BatchContext(runtime, n_ctx=256, n_seq_max=1, kv_type=kv_type)
    n = len(ids)
    return ctx.decode(ids, np.arange(n), np.zeros(n, int), np.ones(n, bool), embd=embd, non_causal_blocks=blocks)


def check_embedding_rows_equal_tokens(path, n_vocab: int, n_tokens: int = 20) -> None:
    runtime = load_runtime(path, n_ctx=256)
    ids = np.random.default_rng(3).integers(0, n_vocab, n_tokens)
    as_embd = np.zeros(n_tokens, bool)
    as_embd[4:11] = True  # a block of embedding rows between token rows, and the last row
    as_embd[-1] = True
    mixed = np.where(as_embd, TOKEN_EMBD, ids)
    got = decode_all(runtime, mixed, embd=token_inputs(path, ids[as_embd]))
    np.testing.assert_array_equal(got, decode_all(runtime, ids))


@pytest.mark.parametrize("path", ARCH_FIXTURES, ids=lambda p: p.stem)
def test_embedding_rows_equal_their_tokens_fixtures(path):
    n_vocab = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight").shape[1]
    check_embedding_rows_equal_tokens(path, int(n_vocab))


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
    """A quantized tiny model of each architecture (gemma3: sqrt(n_embd) input scale, window 4)."""
    return write_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", request.param)


def test_embedding_rows_equal_their_tokens_tiny(tiny):
    check_embedding_rows_equal_tokens(tiny, N_VOCAB)


@pytest.mark.slow
def test_embedding_rows_equal_their_tokens_smollm2():
    path = janlib.fetch_model("smollm2-135m-instruct")
    check_embedding_rows_equal_tokens(path, 49152, n_tokens=12)


def non_causal_reference(path, ids, *blocks: slice) -> np.ndarray:
    """float64 logits with the rows of each block attending to each other both ways."""
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    visible = np.tril(np.ones((n, n), dtype=bool))
    for block in blocks:
        visible[block, block] = True
    return Reference(path).logits(ids, key_pos=np.tile(pos, (n, 1)), visible=visible, pos=pos)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_non_causal_block_matches_reference(arch, tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", arch, weights="float")
    runtime = load_runtime(path, n_ctx=256)
    ids = np.random.default_rng(4).integers(0, N_VOCAB, 16)
    block = slice(3, 10)  # 7 rows: longer than gemma3's window of 4
    labels = np.zeros(16, np.int32)
    labels[block] = 1
    got = decode_all(runtime, ids, blocks=labels, kv_type="f32")
    assert_close(got, non_causal_reference(path, ids, block), FLOAT_RTOL)
    # the block's rows as embeddings: the same logits
    as_embd = np.where(labels == 1, TOKEN_EMBD, ids)
    assert_close(decode_all(runtime, as_embd, embd=token_inputs(path, ids[block]), blocks=labels, kv_type="f32"), got,
                 FLOAT_RTOL)
    # two adjacent blocks are two blocks
    labels[7:10] = 2
    split = decode_all(runtime, ids, blocks=labels, kv_type="f32")
    assert not np.allclose(split[3:7], got[3:7])
    assert_close(split, non_causal_reference(path, ids, slice(3, 7), slice(7, 10)), FLOAT_RTOL)


def test_mixed_batches_with_embedding_rows_are_bit_identical(tiny):
    """Sequence 0 holds an image block of embedding rows (non-causal); it is prefilled in three
    steps beside other sequences' tokens, the rows shuffled except the block's, which stay
    together (crossing the end of the first chunk of 16 rows)."""
    runtime = load_runtime(tiny, n_ctx=256)
    rng = np.random.default_rng(6)
    n0, block = 30, slice(9, 21)
    tokens0 = rng.integers(0, N_VOCAB, n0)
    tokens0[block] = TOKEN_EMBD
    image = rng.standard_normal((block.stop - block.start, runtime.hparams.n_embd)).astype(np.float32)
    labels0 = np.zeros(n0, np.int32)
    labels0[block] = 7
    seqs = {0: tokens0, 1: rng.integers(0, N_VOCAB, 25), 2: rng.integers(0, N_VOCAB, 18)}
    alone0 = decode_all(runtime, tokens0, embd=image, blocks=labels0)
    assert not np.array_equal(alone0[block], decode_all(runtime, tokens0, embd=image)[block])  # the block matters

    ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=3, n_batch=16)
    got = {s: [] for s in seqs}
    done = {s: 0 for s in seqs}
    # (rows per sequence, where the block's rows go: None = shuffled with the rest)
    for step, block_at in [({0: 9, 1: 5, 2: 3}, None), ({0: 12, 1: 6, 2: 1}, 6), ({0: 9, 1: 14, 2: 14}, None)]:
        labels = [s for s, size in step.items() if block_at is None or s != 0 for _ in range(size)]
        rng.shuffle(labels)
        if block_at is not None:
            labels[block_at:block_at] = [0] * step[0]
        rows = []
        for s in labels:  # a sequence's own rows stay in position order
            rows.append((s, done[s]))
            done[s] += 1
        ids = np.array([seqs[s][p] for s, p in rows])
        labels = np.array([labels0[p] if s == 0 else 0 for s, p in rows])
        embd = image[[p - block.start for s, p in rows if s == 0 and block.start <= p < block.stop]]
        out = ctx.decode(ids, np.array([p for _, p in rows]), np.array([s for s, _ in rows]), np.ones(len(rows), bool),
                         n_threads=2, embd=embd if len(embd) else None, non_causal_blocks=labels)
        for row, (s, _) in enumerate(rows):
            got[s].append(out[row])
    np.testing.assert_array_equal(np.array(got[0]), alone0)
    for s in (1, 2):
        np.testing.assert_array_equal(np.array(got[s]), decode_all(runtime, seqs[s]), err_msg=f"sequence {s}")


def test_bad_embedding_batches_are_refused(tiny):
    runtime = load_runtime(tiny, n_ctx=256)
    E = runtime.hparams.n_embd
    ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=2, n_batch=8)
    ids = np.array([1, TOKEN_EMBD, TOKEN_EMBD, 2])
    n = np.arange(4), np.zeros(4, int), np.ones(4, bool)
    with pytest.raises(ValueError, match=r"embd must have shape \(2, "):
        ctx.decode(ids, *n, embd=np.zeros((3, E), np.float32))
    with pytest.raises(ValueError, match=r"embd must have shape \(2, "):
        ctx.decode(ids, *n)
    with pytest.raises(ValueError, match="embd must be finite"):
        ctx.decode(ids, *n, embd=np.full((2, E), np.nan, np.float32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ctx.decode(np.array([1, -2]), np.arange(2), np.zeros(2, int), np.ones(2, bool))
    with pytest.raises(ValueError, match="non_causal_blocks has 3 entries"):
        ctx.decode(ids, *n, embd=np.zeros((2, E), np.float32), non_causal_blocks=[0, 1, 1])
    # a block across sequences, a block longer than n_batch: refused, nothing changed
    with pytest.raises(ValueError, match="spans sequences 0 and 1"):
        ctx.decode(np.array([1, 2]), np.zeros(2, int), np.array([0, 1]), np.ones(2, bool), non_causal_blocks=[1, 1])
    with pytest.raises(ValueError, match="longer than n_batch = 8"):
        ctx.decode(np.arange(12), np.arange(12), np.zeros(12, int), np.ones(12, bool),
                   non_causal_blocks=[0] * 3 + [1] * 9)
    assert ctx.seq_len(0) == 0 and ctx.seq_len(1) == 0


def test_a_chunk_ends_early_rather_than_split_a_block(tiny):
    """n_batch 8: the block of rows 6..13 would cross the first chunk's end; it starts the second chunk
    instead, and the logits equal one unchunked pass."""
    runtime = load_runtime(tiny, n_ctx=256)
    ids = np.random.default_rng(8).integers(0, N_VOCAB, 20)
    labels = np.zeros(20, np.int32)
    labels[6:14] = 1
    chunked = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=1, n_batch=8)
    got = chunked.decode(ids, np.arange(20), np.zeros(20, int), np.ones(20, bool), non_causal_blocks=labels)
    np.testing.assert_array_equal(got, decode_all(runtime, ids, blocks=labels))
    chunked.seq_rm(0)
    want_last = np.arange(20) == 19
    last = chunked.decode(ids, np.arange(20), np.zeros(20, int), want_last, non_causal_blocks=labels)
    np.testing.assert_array_equal(last, got[-1:])


# ---- the library: Model.media_prompt, Model(mmproj=...), Engine ---------------------------------------

VLM = Path(__file__).parent / "fixtures" / "vlm"
VLM_CASES = sorted(p.stem for p in VLM.glob("*.npz"))
IMAGES = {"landscape": "landscape.png", "portrait": "portrait.jpg"}
PROMPT_TEXT = "hello world, <__media__> what is this?"  # the fixtures' PREFIX, the image, SUFFIX (no BOS)


@pytest.fixture(scope="module", params=VLM_CASES)
def vlm(request):
    case = request.param
    model = janlib.Model(str(VLM / f"{case}.gguf"), mmproj=str(VLM / f"{case}-mmproj.gguf"), kv_type="f32")
    with np.load(VLM / f"{case}.npz") as f:
        ref = {k: f[k] for k in f.files}
    return case, model, ref


def image_bytes(name: str) -> bytes:
    return (VLM / IMAGES[name]).read_bytes()


def test_vlm_fixtures_exist():
    assert {"gemma3", "idefics3"} <= set(VLM_CASES)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_prompt_logits_match_transformers(vlm, image):
    """The text GGUF and the mmproj through Model(mmproj=...): llama.cpp's prompt layout (the fixture's
    tokens, the image rows where transformers put its image tokens) and transformers' last-position
    logits, within float tolerance."""
    case, model, ref = vlm
    prompt = model.media_prompt(PROMPT_TEXT, [image_bytes(image)], add_special=False)
    tokens, is_image = ref[f"{image}-tokens"], ref[f"{image}-is_image"]
    assert len(prompt) == len(tokens)
    np.testing.assert_array_equal(np.array(prompt.tokens) < 0, is_image)
    np.testing.assert_array_equal(np.array(prompt.tokens)[~is_image], tokens[~is_image])
    want = ref[f"{image}-logits"]
    tolerance = 1e-5 * np.abs(want).max() + 2e-5
    got = model.logits(prompt)
    assert np.abs(got - want).max() <= tolerance, f"{case}/{image}: max |diff| {np.abs(got - want).max():.3g}"
    if model.projector.non_causal:  # the bidirectional image block matters: causal rows miss the reference
        ctx = model.create_context(n_ctx=64, n_seq_max=1, kv_type="f32")
        ids, embd, _, _ = prompt.rows(0, len(prompt), 0)
        causal = ctx.decode(ids, np.arange(len(ids)), np.zeros(len(ids), int), np.arange(len(ids)) == len(ids) - 1,
                            embd=embd)[0]
        assert np.abs(causal - want).max() > 10 * tolerance


def test_media_prompt_errors(vlm):
    _, model, _ = vlm
    with pytest.raises(ValueError, match="1 <__media__> markers but 2 images"):
        model.media_prompt(PROMPT_TEXT, [image_bytes("landscape")] * 2)
    with pytest.raises(janlib.errors.InvalidMediaError, match=r"^multimodal_data\[0\]: "):
        model.media_prompt(PROMPT_TEXT, [b"not an image"], fields=["multimodal_data[0]"])
    with pytest.raises(janlib.errors.InvalidMediaError, match=r"^images\[0\]: an image must be bytes"):
        model.media_prompt(PROMPT_TEXT, ["a string"])
    text_only = janlib.Model(str(VLM / "gemma3.gguf"))
    with pytest.raises(ValueError, match="no multimodal projector"):
        text_only.media_prompt(PROMPT_TEXT, [image_bytes("landscape")])


def test_the_same_image_is_neither_encoded_nor_evaluated_again(vlm):
    """Turn two repeats turn one's image: its embeddings come from the cache (the projector is not
    called) and Model.generate reuses its cells (the cached prefix reaches past the image)."""
    _, model, _ = vlm
    landscape = image_bytes("landscape")
    model._media_cache = janlib.media.EmbeddingCache()  # what earlier tests encoded is forgotten
    first = model.media_prompt(PROMPT_TEXT, [landscape])
    calls = []
    encode = model.projector.embed_image
    model.projector.embed_image = lambda *args: calls.append(args) or encode(*args)
    try:
        answer = "".join(t.text for t in model.generate(first, max_tokens=4))
        second = model.media_prompt(PROMPT_TEXT + answer + " and this: <__media__>?",
                                    [landscape, image_bytes("portrait")])
        assert len(calls) == 1  # the portrait only
        generation = model.generate(second, max_tokens=4)
        list(generation)
    finally:
        del model.projector.embed_image
    assert generation.n_cached_tokens > first.images[-1].stop
    # the reused cells give what a fresh evaluation gives
    np.testing.assert_array_equal(model.logits(second), janlib.Model(model.path, mmproj=model.projector.path,
                                                                     kv_type="f32").logits(second))


def test_engine_with_images_equals_model(vlm):
    """Engine requests with images (n_batch 6: prompt chunks that would end inside an image block wait for
    it or take it whole) give Model.generate's greedy tokens; the next turn reuses the image's cells."""
    case, model, _ = vlm
    engine = janlib.Engine(model, n_seq_max=2, n_ctx=256, n_batch=6 if case == "gemma3" else 16, max_gap_ms=None,
                           kv_type="f32")
    try:
        prompts = [model.media_prompt(PROMPT_TEXT, [image_bytes(name)]) for name in sorted(IMAGES)]
        results = engine.generate(prompts, max_tokens=6)
        for prompt, result in zip(prompts, results):
            assert result.choices[0].tokens == [t.id for t in model.generate(prompt, max_tokens=6) if t.id is not None]
        follow_up = model.media_prompt(PROMPT_TEXT + results[0].text + " again <__media__>",
                                       [image_bytes(sorted(IMAGES)[0])] * 2)
        again = engine.submit(janlib.Request(follow_up, max_tokens=4)).result()
        assert again.n_cached_tokens >= len(prompts[0])
        assert again.choices[0].tokens == [t.id for t in model.generate(follow_up, max_tokens=4) if t.id is not None]
    finally:
        engine.close()


def test_engine_refuses_what_it_cannot_run_with_images(vlm):
    case, model, _ = vlm
    prompt = model.media_prompt(PROMPT_TEXT, [image_bytes("landscape")])
    engine = janlib.Engine(model, n_seq_max=1, n_ctx=256, n_batch=2)
    try:
        with pytest.raises(ValueError, match="prompt_logprobs"):
            engine.submit(janlib.Request(prompt, prompt_logprobs=1))
        if model.projector.non_causal:
            with pytest.raises(ValueError, match="n_batch"):
                engine.submit(janlib.Request(prompt))
    finally:
        engine.close()
    with pytest.raises(ValueError, match="mmproj"):
        janlib.Engine(model, mmproj=model.projector.path)


def test_chat_with_an_image_url_part(vlm):
    """OpenAI image_url parts with data: URIs become markers where the image goes in the template."""
    _, model, _ = vlm
    url = "data:image/png;base64," + base64.b64encode(image_bytes("landscape")).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    marked, images, fields = janlib.media.image_parts_to_markers(messages)
    assert marked[0]["content"][1] == {"type": "text", "text": "<__media__>"}
    assert images == [image_bytes("landscape")] and fields == ["messages[0].content[1].image_url"]
    _, prompt = model.chat_prompt(marked, images, fields)
    assert isinstance(prompt, janlib.MediaPrompt) and len(prompt.images) >= 1
    want = "".join(t.text for t in model.generate(prompt, max_tokens=4))
    assert model.chat(messages, max_tokens=4) == want
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]
    with pytest.raises(janlib.errors.InvalidMediaError,
                       match=r"^messages\[0\]\.content\[0\]\.image_url: not valid base64"):
        model.chat(bad)
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]
    with pytest.raises(janlib.errors.InvalidMediaError, match="only data: URIs"):
        model.chat(remote)


def test_an_image_block_goes_whole_past_the_step_budget(vlm):
    """n_batch 4 with another sequence generating: a step has 3 rows left for the prompt, fewer than gemma3's
    4-row image block, which then goes whole (5 rows: the C context ends its first chunk before the block)."""
    case, model, _ = vlm
    if not model.projector.non_causal:
        pytest.skip("the block rule is for non-causal images")
    engine = janlib.Engine(model, n_seq_max=2, n_ctx=256, n_batch=4, max_gap_ms=None, kv_type="f32")
    steps = []  # each step's chunk sizes
    decode = engine._decode
    engine._decode = lambda entries: steps.append([len(chunk) for _, chunk in entries]) or decode(entries)
    prompt = model.media_prompt(PROMPT_TEXT, [image_bytes("portrait")])
    try:
        running = engine.submit(janlib.Request(model.tokenize("hello world, what is this?"), max_tokens=200,
                                               ignore_eos=True))
        result = engine.submit(janlib.Request(prompt, max_tokens=6)).result()
        running.cancel()
    finally:
        engine.close()
    assert any(sum(step) > 4 for step in steps), steps  # only the block goes past the budget
    assert result.choices[0].tokens == [t.id for t in model.generate(prompt, max_tokens=6) if t.id is not None]
