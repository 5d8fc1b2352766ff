"""Architectures against transformers: tiny random models built with transformers, converted by
llama.cpp's converter (tests/fixtures/make_arch_fixtures.py regenerates them; running the tests
needs neither torch nor transformers).

* F16 weights, f32 KV cache: janlib's logits are within 1e-3 of transformers' float32 logits (the
  file holds exactly the weights transformers ran), on every prompt position.
* Q8_0 weights: the quantization moves the logits; the bound is a fraction of their range.
* Greedy continuations equal transformers' at every step where its top-2 margin is at least 0.5.
* A mixed batch gives each sequence's logits bit for bit as it alone would, at another thread
  count (one MoE, whose tokens are grouped by expert, and one dense architecture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import janlib
from janlib.errors import UnsupportedError
from janlib.models import load_runtime

FIXTURES = Path(__file__).parent / "fixtures" / "archs"
CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))
QUANTIZED = sorted(p.stem.removesuffix("-q8_0") for p in FIXTURES.glob("*-q8_0.gguf"))
F16_ATOL = 1e-3
Q8_RTOL = 0.05  # of the largest |logit|: Q8_0 weights times Q8_0 activations
MARGIN = 0.5


def reference(case: str) -> dict:
    with np.load(FIXTURES / f"{case}.npz") as f:
        return {k: f[k] for k in f.files}


def model_file(case: str, suffix: str = "") -> Path:
    return FIXTURES / f"{case.removesuffix('-short')}{suffix}.gguf"


def greedy_agrees(runtime, ref: dict) -> None:
    """Decode transformers' greedy continuation token by token; janlib's argmax must match at
    every step where transformers' top-2 margin is at least MARGIN (and is fed its token either way)."""
    tokens = list(ref["tokens"])
    logits = runtime.eval(tokens, 0, "last")[0]
    for step, (want, margin) in enumerate(zip(ref["greedy"], ref["greedy_margin"])):
        if margin >= MARGIN:
            assert int(np.argmax(logits)) == want, f"greedy step {step}: janlib {np.argmax(logits)}, transformers {want}"
        tokens.append(int(want))
        logits = runtime.eval([int(want)], len(tokens) - 1, "last")[0]


def test_fixtures_exist():
    assert len(CASES) >= 14 and QUANTIZED


@pytest.mark.parametrize("case", CASES)
def test_f16_logits_match_transformers(case):
    ref = reference(case)
    runtime = load_runtime(model_file(case), n_ctx=int(ref["n_ctx"]), kv_type="f32")
    got = runtime.eval(ref["tokens"], 0, "all")
    err = np.abs(got - ref["logits"]).max()
    assert err <= F16_ATOL, f"{case}: max |janlib - transformers| = {err:.2e} (logits up to {np.abs(ref['logits']).max():.2f})"
    greedy_agrees(runtime, ref)


@pytest.mark.parametrize("case", QUANTIZED)
def test_q8_0_logits_near_transformers(case):
    ref = reference(case)
    runtime = load_runtime(model_file(case, "-q8_0"), n_ctx=int(ref["n_ctx"]), kv_type="f32")
    got = runtime.eval(ref["tokens"], 0, "all")
    scale = np.abs(ref["logits"]).max()
    assert np.abs(got - ref["logits"]).max() <= Q8_RTOL * scale
    greedy_agrees(runtime, ref)


def test_longrope_factors_follow_the_context_length():
    """n_ctx past the original context picks the long factors, as llama.cpp does: the short
    reference then no longer matches (the factors differ by up to 9x)."""
    ref = reference("phi3-longrope-short")
    long_ctx = load_runtime(model_file("phi3-longrope"), n_ctx=64, kv_type="f32")
    assert np.abs(long_ctx.eval(ref["tokens"], 0, "all") - ref["logits"]).max() > 100 * F16_ATOL


@pytest.mark.parametrize("case", ["qwen3moe", "gemma2"])
def test_mixed_batch_is_bit_identical_to_each_sequence_alone(case):
    runtime = load_runtime(model_file(case))
    rng = np.random.default_rng(3)
    seqs = {0: rng.integers(0, runtime.n_vocab, 30), 1: rng.integers(0, runtime.n_vocab, 9),
            2: rng.integers(0, runtime.n_vocab, 17)}
    alone = {}
    for s, ids in seqs.items():
        ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=1)
        alone[s] = ctx.decode(ids, np.arange(len(ids)), np.zeros(len(ids), int), np.ones(len(ids), bool), n_threads=1)
    # two batches: chunks of all three sequences, their rows shuffled together
    ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=3)
    got = {s: [] for s in seqs}
    done = {s: 0 for s in seqs}
    for sizes in ({0: 12, 1: 9, 2: 5}, {0: 18, 2: 12}):
        labels = rng.permutation([s for s, n in sizes.items() for _ in range(n)])
        rows = []
        for s in labels:  # rows of all sequences interleaved; each sequence's own in position order
            rows.append((int(s), done[s]))
            done[s] += 1
        out = ctx.decode([seqs[s][p] for s, p in rows], [p for _, p in rows], [s for s, _ in rows],
                         np.ones(len(rows), bool), n_threads=2)
        for row, (s, _) in enumerate(rows):
            got[s].append(out[row])
    for s in seqs:
        np.testing.assert_array_equal(np.array(got[s]), alone[s], err_msg=f"{case} sequence {s}")


def test_unknown_tensors_are_named(tmp_path):
    """A file with a tensor janlib would ignore (here shared experts) is refused, naming it."""
    import gguf

    reader = gguf.GGUFReader(str(model_file("qwen3moe")))
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "qwen3moe")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=tuple(int(n) for n in reversed(t.shape)),
                          raw_dtype=t.tensor_type)
    writer.add_tensor("blk.0.ffn_up_shexp.weight", np.zeros((32, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedError, match="blk.0.ffn_up_shexp.weight"):
        load_runtime(tmp_path / "m.gguf")
