"""The MoE matmuls read only the routed experts' weights.

On the tiny qwen3moe fixture (2 layers, 4 experts, 2 used per token), an independent float64 numpy
forward pass over one-token sequences picks each layer's experts. For a one-token sequence attention
is exactly the output projection of V (one position: softmax weight 1, RoPE at position 0 changes
nothing), so the reference needs no attention kernel; its logits are checked against janlib's first.
Then every expert the router does not pick for the batch is overwritten with NaN in a copy of the file:
janlib's logits stay bit-identical, while NaN in any one routed expert changes them (the poison would
show wherever it is read, even with a zero weight, since 0 * NaN is NaN; after Q8_0 weights the NaN
hidden state quantizes to zeros for the next matmul, so there the logits change rather than turn NaN)."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

import janlib
from janlib.models import load_runtime

FIXTURES = Path(__file__).parent / "fixtures" / "archs"
EXPERT_TENSORS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
BATCH = 3  # one-token sequences sharing one routing, decoded together: the grouped-by-expert path
MIN_ROUTER_MARGIN = 0.05  # between the last chosen and the best unchosen expert's probability
F16_NAN = np.float16(np.nan).view(np.uint16)


class Reference:
    """float64 forward pass of qwen3moe over one-token sequences, from the file's dequantized weights."""

    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(str(path))
        self.tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
                        for t in reader.tensors}
        field = {f.name: f.contents() for f in reader.fields.values()}
        self.n_layer = field["qwen3moe.block_count"]
        self.n_used = field["qwen3moe.expert_used_count"]
        self.n_head = field["qwen3moe.attention.head_count"]
        self.n_head_kv = field["qwen3moe.attention.head_count_kv"]
        self.eps = field["qwen3moe.attention.layer_norm_rms_epsilon"]

    def rms_norm(self, x: np.ndarray, weight: str) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.tensors[weight]

    def run(self, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Logits (n, n_vocab), and per layer each token's chosen experts (n, n_used) and the
        margin of its router probabilities between the last chosen and the best unchosen."""
        t = self.tensors
        x = t["token_embd.weight"][tokens]
        chosen, margins = [], []
        for il in range(self.n_layer):
            blk = f"blk.{il}."
            v = self.rms_norm(x, blk + "attn_norm.weight") @ t[blk + "attn_v.weight"].T  # (n, n_head_kv * head_dim)
            heads = np.split(v, self.n_head_kv, axis=1)
            per_q_head = [heads[h * self.n_head_kv // self.n_head] for h in range(self.n_head)]  # GQA
            x = x + np.concatenate(per_q_head, axis=1) @ t[blk + "attn_output.weight"].T
            h = self.rms_norm(x, blk + "ffn_norm.weight")
            router = h @ t[blk + "ffn_gate_inp.weight"].T
            probs = np.exp(router - router.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            order = np.argsort(-probs, axis=1, kind="stable")
            top = order[:, :self.n_used]
            ranked = np.take_along_axis(probs, order, axis=1)
            chosen.append(top)
            margins.append(ranked[:, self.n_used - 1] - ranked[:, self.n_used])
            weights = np.take_along_axis(probs, top, axis=1)
            weights /= weights.sum(1, keepdims=True)  # qwen3moe renormalizes the chosen weights
            moe = np.zeros_like(x)
            for row in range(len(tokens)):
                for expert, weight in zip(top[row], weights[row]):
                    gate = t[blk + "ffn_gate_exps.weight"][expert] @ h[row]
                    up = t[blk + "ffn_up_exps.weight"][expert] @ h[row]
                    act = gate / (1 + np.exp(-gate)) * up
                    moe[row] += weight * (t[blk + "ffn_down_exps.weight"][expert] @ act)
            x = x + moe
        output = t.get("output.weight", t["token_embd.weight"])
        return self.rms_norm(x, "output_norm.weight") @ output.T, chosen, margins


def batch_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """One decode of len(tokens) one-token sequences, each at position 0."""
    context = janlib.BatchContext(load_runtime(path), n_ctx=32, n_seq_max=len(tokens), kv_type="f32")
    n = len(tokens)
    return context.decode(tokens, np.zeros(n, int), np.arange(n), np.ones(n, bool), n_threads=2)


def poisoned_copy(source: Path, target: Path, experts_by_layer: dict[int, list[int]]) -> Path:
    """A copy of source with every weight of the listed experts NaN: F16 values, or Q8_0 block scales."""
    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(str(target), "r+")
    for tensor in reader.tensors:
        layer, _, rest = tensor.name.removeprefix("blk.").partition(".")
        if rest.removesuffix(".weight") not in EXPERT_TENSORS:
            continue
        for expert in experts_by_layer.get(int(layer), []):
            data = tensor.data[expert]  # a writable view of the file: (rows, values or block bytes)
            if tensor.tensor_type == gguf.GGMLQuantizationType.F16:
                data.view(np.uint16)[...] = F16_NAN
            else:
                assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
                blocks = data.reshape(-1, 34)  # f16 scale, then 32 int8 values
                blocks[:, :2] = np.frombuffer(F16_NAN.tobytes(), np.uint8)
    reader.data.flush()
    return target


@pytest.mark.parametrize("suffix, logits_rtol", [("", 1e-5), ("-q8_0", 0.05)])  # of the largest |logit|
def test_unrouted_experts_are_never_read(tmp_path, suffix, logits_rtol):
    path = FIXTURES / f"qwen3moe{suffix}.gguf"
    reference = Reference(path)
    vocab = np.arange(reference.tensors["token_embd.weight"].shape[0])
    ref_logits, chosen, margins = reference.run(vocab)
    # tokens whose every layer picks the same experts, each clearly (no near-tie the rounding could flip)
    clear = np.all([m >= MIN_ROUTER_MARGIN for m in margins], axis=0)
    routes = np.concatenate([np.sort(c, axis=1) for c in chosen], axis=1)
    candidates = [tuple(r) for r in routes[clear]]
    route = max(set(candidates), key=lambda r: (candidates.count(r), r))
    tokens = [int(tok) for tok in vocab[clear][[c == route for c in candidates]][:BATCH]]
    assert len(tokens) == BATCH, "too few tokens share one clear routing"

    original = batch_logits(path, tokens)
    assert np.abs(original - ref_logits[tokens]).max() <= logits_rtol * np.abs(ref_logits).max()

    n_expert = reference.tensors["blk.0.ffn_gate_exps.weight"].shape[0]
    routed = {il: set(route[il * reference.n_used:(il + 1) * reference.n_used]) for il in range(reference.n_layer)}
    unrouted = {il: [e for e in range(n_expert) if e not in used] for il, used in routed.items()}
    assert all(unrouted.values())
    poisoned = batch_logits(poisoned_copy(path, tmp_path / "unrouted-nan.gguf", unrouted), tokens)
    assert np.array_equal(poisoned, original)

    # the poison does reach the logits wherever an expert is read
    for il, used in routed.items():
        for expert in used:
            hit = batch_logits(poisoned_copy(path, tmp_path / f"nan-{il}-{expert}.gguf", {il: [expert]}), tokens)
            assert not np.array_equal(hit, original), f"layer {il} expert {expert} is routed but its NaN did not show"
