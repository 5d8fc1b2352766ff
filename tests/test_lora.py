"""LoRA adapters (janlib.lora, csrc/lora.c) against a float64 reference with the adapters merged.

Adapters are written with gguf's GGUFWriter in llama.cpp's layout (general.type adapter,
adapter.lora.alpha, <weight>.lora_a (rank, k) and .lora_b (rows, rank)). The reference
(reference_forward.Reference) runs the tiny model with W + scale * (alpha / rank) * B A in place of
each adapted W — merged, where janlib applies the pair unmerged per row — so only float32
arithmetic separates them."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import janlib
from janlib.lora import parse_lora_arg
from janlib.models import load_runtime
from reference_forward import Reference
from test_forward import FLOAT_RTOL, PROMPT, TINY, assert_close, write_tiny_model

ATTENTION = ("attn_q", "attn_k", "attn_v", "attn_output")
EVERY = ATTENTION + ("ffn_gate", "ffn_up", "ffn_down")


def projection_shapes(hp) -> dict[str, tuple[int, int]]:
    """(rows, k) of each projection of a model (janlib.models.HParams)."""
    E, F = hp.n_embd, hp.n_ff
    Q, K, V = hp.n_head * hp.head_dim_k, hp.n_head_kv * hp.head_dim_k, hp.n_head_kv * hp.head_dim_v
    return {"attn_q": (Q, E), "attn_k": (K, E), "attn_v": (V, E), "attn_output": (E, hp.n_head * hp.head_dim_v),
            "ffn_gate": (F, E), "ffn_up": (F, E), "ffn_down": (E, F)}


def write_adapter(path: Path, model_path, *, arch: str | None = None, targets=ATTENTION, rank: int = 8,
                  alpha: float = 16.0, seed: int = 0, zero_b: bool = False, layers=None, dtype=np.float32,
                  metadata: dict | None = None, tensors: dict | None = None) -> Path:
    """A random LoRA adapter of the model at model_path on targets (arch: write another architecture's
    name); tensors replaces or adds raw (name: array) tensors."""
    hp = load_runtime(model_path, n_ctx=8).hparams
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch or hp.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    shapes = projection_shapes(hp)
    out = {}
    for il in range(hp.n_layer) if layers is None else layers:
        for target in targets:
            rows, k = shapes[target]
            a = rng.standard_normal((rank, k)) / np.sqrt(k)
            b = np.zeros((rows, rank)) if zero_b else rng.standard_normal((rows, rank)) * 0.3
            out[f"blk.{il}.{target}.weight.lora_a"] = a
            out[f"blk.{il}.{target}.weight.lora_b"] = b
    out.update(tensors or {})
    for name, array in out.items():
        writer.add_tensor(name, np.asarray(array).astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class MergedReference(Reference):
    """The reference forward with each adapted weight replaced by W + scale * (alpha / rank) * B A."""

    def __init__(self, path, adapters: list[tuple[Path, float]]) -> None:
        self.deltas: dict[str, np.ndarray] = {}
        super().__init__(path)
        for adapter_path, scale in adapters:
            reader = gguf.GGUFReader(str(adapter_path))
            alpha = float(reader.fields["adapter.lora.alpha"].contents())
            tensors = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
                       for t in reader.tensors}
            for name in tensors:
                if name.endswith(".lora_a"):
                    weight = name[:-len(".lora_a")]
                    a, b = tensors[name], tensors[weight + ".lora_b"]
                    delta = scale * (alpha / a.shape[0]) * (b @ a)
                    self.deltas[weight] = self.deltas.get(weight, 0.0) + delta

    def weight(self, name: str, rows=None) -> np.ndarray:
        w = super().weight(name, rows)
        if name in self.deltas:
            w = w + (self.deltas[name] if rows is None else self.deltas[name][rows])
        return w


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A float-weight tiny llama and two adapters of it: attention only (rank 8) and every projection (rank 4)."""
    root = tmp_path_factory.mktemp("lora")
    model = write_tiny_model(root / "llama.gguf", "llama", weights="float")
    attention = write_adapter(root / "attention.gguf", model, seed=1)
    every = write_adapter(root / "every.gguf", model, targets=EVERY, rank=4, alpha=2.0, seed=2)
    return model, attention, every


def runtime_with(model_path, adapters):
    runtime = load_runtime(model_path, kv_type="f32")
    loaded = tuple(janlib.lora.load_adapter(p, runtime, i) for i, p in enumerate(adapters))
    return runtime, loaded


@pytest.mark.parametrize("arch", sorted(TINY))
def test_adapter_matches_merged_reference(arch, tmp_path):
    model = write_tiny_model(tmp_path / f"{arch}.gguf", arch, weights="float")
    adapter = write_adapter(tmp_path / "adapter.gguf", model, targets=EVERY, seed=3)
    runtime, loaded = runtime_with(model, [adapter])
    got = runtime.eval(PROMPT, 0, "all", loaded, (0.7,))
    want = MergedReference(model, [(adapter, 0.7)]).logits(PROMPT)
    assert_close(got, want, FLOAT_RTOL)
    base = Reference(model).logits(PROMPT)
    assert np.abs(want - base).max() > 100 * FLOAT_RTOL * np.abs(base).max()  # the adapter does change the logits


def test_two_adapters_add_up(tiny_llama):
    model, attention, every = tiny_llama
    runtime, loaded = runtime_with(model, [attention, every])
    got = runtime.eval(PROMPT, 0, "all", loaded, (0.5, -1.5))
    assert_close(got, MergedReference(model, [(attention, 0.5), (every, -1.5)]).logits(PROMPT), FLOAT_RTOL)


def test_zero_b_and_zero_scale_equal_the_base_bit_for_bit(tiny_llama, tmp_path):
    model, attention, _ = tiny_llama
    zero = write_adapter(tmp_path / "zero.gguf", model, targets=EVERY, zero_b=True)
    runtime, loaded = runtime_with(model, [zero, attention])
    base = runtime.eval(PROMPT, 0, "all")
    assert np.array_equal(runtime.eval(PROMPT, 0, "all", loaded, (1.0, 0.0)), base)
    assert np.array_equal(runtime.eval(PROMPT, 0, "all", loaded, (3.0, 0.0)), base)
    assert np.array_equal(runtime.eval(PROMPT, 0, "all", loaded, (0.0, 0.0)), base)
    assert not np.array_equal(runtime.eval(PROMPT, 0, "all", loaded, (0.0, 1.0)), base)


def test_f16_adapter_tensors(tiny_llama, tmp_path):
    model, _, _ = tiny_llama
    adapter = write_adapter(tmp_path / "f16.gguf", model, dtype=np.float16, seed=5)
    runtime, loaded = runtime_with(model, [adapter])
    got = runtime.eval(PROMPT, 0, "all", loaded, (1.0,))
    assert_close(got, MergedReference(model, [(adapter, 1.0)]).logits(PROMPT), FLOAT_RTOL)


def test_no_alpha_means_scale_alone(tiny_llama, tmp_path):
    model, _, _ = tiny_llama
    adapter = write_adapter(tmp_path / "noalpha.gguf", model, alpha=0.0, seed=6)
    runtime, loaded = runtime_with(model, [adapter])
    got = runtime.eval(PROMPT, 0, "all", loaded, (0.25,))
    reference = MergedReference(model, [])
    reader = gguf.GGUFReader(str(adapter))
    t = {x.name: np.asarray(x.data, np.float64) for x in reader.tensors}
    for name in t:
        if name.endswith(".lora_a"):
            weight = name[:-len(".lora_a")]
            reference.deltas[weight] = 0.25 * (t[weight + ".lora_b"] @ t[name])
    assert_close(got, reference.logits(PROMPT), FLOAT_RTOL)


def test_mixed_batch_each_sequence_as_alone(tiny_llama):
    """Sequences with different adapters and scales share batches; each row equals its sequence alone."""
    model, attention, every = tiny_llama
    runtime, loaded = runtime_with(model, [attention, every])
    configs = [(0.0, 0.0), (1.0, 0.0), (0.3, 2.0), (0.0, -1.0)]
    prompts = [np.random.default_rng(10 + i).integers(0, 300, 5 + 2 * i) for i in range(len(configs))]
    alone = [runtime.eval(p, 0, "all", loaded, c) for p, c in zip(prompts, configs)]

    ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=4, kv_type="f32")
    adapters = list(loaded)
    # interleave the sequences' tokens, in two batches of uneven cuts
    order = [(s, i) for i in range(max(len(p) for p in prompts)) for s in range(4) if i < len(prompts[s])]
    rng = np.random.default_rng(0)
    rng.shuffle(order)
    order.sort(key=lambda e: e[1])  # each sequence's tokens stay in order
    got = [[None] * len(p) for p in prompts]
    for part in (order[:9], order[9:]):
        tokens = [prompts[s][i] for s, i in part]
        rows = ctx.decode(tokens, [i for _, i in part], [s for s, _ in part], np.ones(len(part), bool),
                          adapters=adapters, adapter_scales=np.array([configs[s] for s, _ in part]))
        for row, (s, i) in zip(rows, part):
            got[s][i] = row
    for s in range(4):
        assert np.array_equal(np.array(got[s]), alone[s]), f"sequence {s}"


def test_gemm_sized_batches_keep_rows_alone(tiny_llama):
    """More than 16 rows use an adapter (the GEMM path for quantized weights, many rows in the LoRA
    products): each row still equals its sequence alone."""
    model, attention, _ = tiny_llama
    runtime, loaded = runtime_with(model, [attention])
    prompt = np.random.default_rng(3).integers(0, 300, 40)
    alone = runtime.eval(prompt, 0, "all", loaded, (0.8,))
    ctx = janlib.BatchContext(runtime, n_ctx=64, n_seq_max=2, kv_type="f32", n_batch=24)
    n = prompt.size
    tokens = np.concatenate([prompt, prompt[:20]])
    seqs = np.array([0] * n + [1] * 20)
    scales = np.array([[0.8]] * n + [[0.0]] * 20)
    rows = ctx.decode(tokens, np.concatenate([np.arange(n), np.arange(20)]), seqs, np.ones(tokens.size, bool),
                      adapters=list(loaded), adapter_scales=scales)
    assert np.array_equal(rows[:n], alone)
    assert np.array_equal(rows[n:], runtime.eval(prompt[:20], 0, "all"))


@pytest.fixture(scope="module")
def smollm2_adapters(smollm2_path, tmp_path_factory):
    """Two random adapters of SmolLM2: rank 8 on attention, rank 4 on every projection."""
    root = tmp_path_factory.mktemp("smollm2_lora")
    return (write_adapter(root / "attention.gguf", smollm2_path, seed=1),
            write_adapter(root / "every.gguf", smollm2_path, targets=EVERY, rank=4, alpha=4.0, seed=2))


@pytest.mark.slow
def test_model_selection_per_call(smollm2_path, smollm2_adapters):
    attention, every = smollm2_adapters
    model = janlib.Model(smollm2_path, lora=[attention, (every, 0.0)])
    ids = model.tokenize("The capital of France is")
    assert [a.id for a in model.adapters] == [0, 1]
    assert model.lora_scales() == (1.0, 0.0)
    assert model.lora_scales({1: 0.5}) == (1.0, 0.5)
    assert model.lora_scales([{"id": 0, "scale": 0.0}]) == (0.0, 0.0)
    assert model.lora_scales({model.adapters[1]: 2.0}) == (1.0, 2.0)
    with_adapter = model.logits(ids)
    base = model.logits(ids, lora={0: 0.0})
    plain = janlib.Model(smollm2_path)
    assert np.array_equal(base, plain.logits(ids))  # scale 0: the base model, bit for bit
    assert not np.allclose(with_adapter, base, atol=1e-2)
    # a cached prefix evaluated under other scales is not reused
    generation = model.generate(ids, max_tokens=2)
    assert generation.n_cached_tokens == 0
    list(generation)
    assert model.generate(ids, max_tokens=1).n_cached_tokens == len(ids) - 1
    with pytest.raises(ValueError, match="no LoRA adapter has id 7"):
        model.logits(ids, lora={7: 1.0})
    with pytest.raises(ValueError, match="finite"):
        model.logits(ids, lora=[{"id": 0, "scale": float("nan")}])


@pytest.mark.slow
def test_engine_mixes_adapters_in_one_batch(smollm2_path, smollm2_adapters):
    """Requests with different adapters and scales run in the same steps; each gets what it gets alone."""
    model = janlib.Model(smollm2_path, lora=list(smollm2_adapters))
    ids = model.tokenize("Once upon a time")
    selections = [None, {0: 0.0, 1: 0.0}, {1: 0.0}, {0: 0.0, 1: 1.5}]
    alone = [[t.id for t in model.generate(ids, max_tokens=6, ignore_eos=True, lora=s)] for s in selections]
    assert len({tuple(a) for a in alone}) > 1  # the adapters change the greedy continuation
    engine = janlib.Engine(model, n_seq_max=4, n_ctx=128)
    try:
        handles = [engine.submit(janlib.Request(ids, max_tokens=6, ignore_eos=True, lora=s)) for s in selections]
        assert [h.result().choices[0].tokens for h in handles] == alone
        assert engine.metrics["n_tokens_max"] >= 2 * len(ids)  # prompts under different adapters shared a step
        # the same prompt under other scales does not reuse the cached cells
        again = engine.submit(janlib.Request(ids, max_tokens=1, lora={0: 0.5})).result()
        assert again.n_cached_tokens == 0
        with pytest.raises(ValueError, match="no LoRA adapter has id 2"):
            engine.submit(janlib.Request(ids, lora=[{"id": 2, "scale": 1.0}]))
    finally:
        engine.close()


@pytest.mark.parametrize("change, message", [
    (dict(arch="qwen2"), "for architecture 'qwen2', but the model is 'llama'"),
    (dict(tensors={"blk.0.attn_q.weight.lora_a": np.zeros((8, 64))}), r"blk.0.attn_q.weight.lora_a has shape \(8, 64\), the model needs \(8, 128\)"),
    (dict(tensors={"blk.1.attn_k.weight.lora_b": np.zeros((32, 8))}), r"blk.1.attn_k.weight.lora_b has shape \(32, 8\), the model needs \(64, 8\)"),
    (dict(tensors={"blk.0.attn_v.weight.lora_b": np.zeros((64, 4))}), "rank .* differs"),
    (dict(tensors={"blk.5.attn_q.weight.lora_a": np.zeros((8, 128)), "blk.5.attn_q.weight.lora_b": np.zeros((256, 8))}),
     "changes blk.5.attn_q.weight, but the model has 2 layers"),
    (dict(tensors={"token_embd.weight.lora_a": np.zeros((8, 128)), "token_embd.weight.lora_b": np.zeros((300, 8))}),
     "changes token_embd.weight: janlib applies LoRA to the layers' projections"),
    (dict(tensors={"blk.0.ffn_norm.weight.lora_a": np.zeros((8, 128))}), "ffn_norm.weight.lora_b is missing"),
])
def test_mismatched_adapter_is_named(tiny_llama, tmp_path, change, message):
    model_path, _, _ = tiny_llama
    kwargs = dict(change)
    path = write_adapter(tmp_path / "bad.gguf", model_path, **kwargs)
    runtime = load_runtime(model_path)
    with pytest.raises(ValueError, match=message):
        janlib.lora.load_adapter(path, runtime, 0)


def test_not_an_adapter(tiny_llama):
    model_path, _, _ = tiny_llama
    with pytest.raises(ValueError, match="is not a LoRA adapter"):
        janlib.lora.load_adapter(model_path, load_runtime(model_path), 0)


@pytest.mark.parametrize("arg, want", [("a.gguf", ("a.gguf", 1.0)), ("a.gguf:0.5", ("a.gguf", 0.5)),
                                       ("C:/x/a.gguf", ("C:/x/a.gguf", 1.0)), ("a.gguf:-2", ("a.gguf", -2.0))])
def test_parse_lora_arg(arg, want):
    assert parse_lora_arg(arg) == want
