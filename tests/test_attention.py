"""The attend kernel (float KV caches): each ISA level's kernel against the scalar reference bit for
bit, the reference against a float64 softmax attention, and a query's result independent of the
queries that share its call, at awkward shapes: 1 to 16 queries, head dimensions that are not
multiples of 16, spans that start and end mid-page, sliding windows, non-causal blocks, a softcap."""

from __future__ import annotations

import numpy as np
import pytest

import janlib
from janlib import _core
from janlib.gguf import GGML_TYPE_BY_NAME

ISA_IDS = {_core.isa_name(i): i for i in range(_core.ISA_COUNT)}
KERNEL_ISAS = [isa for isa in janlib.cpu_features()["available"] if isa == "avx512"]
TYPES = {"f16": GGML_TYPE_BY_NAME["F16"].type_id, "f32": GGML_TYPE_BY_NAME["F32"].type_id}
PAGE = _core.PAGE_SIZE


def attend(isa: str, kv_type: str, q, k, v, first, last, scale, softcap=0.0) -> np.ndarray:
    out = np.zeros((len(q), v.shape[1]), np.float32)
    _core.attend_check(ISA_IDS[isa], TYPES[kv_type], q, k, v, np.asarray(first, np.int64), np.asarray(last, np.int64),
                       scale, softcap, out)
    return out


def float64_attention(kv_type, q, k, v, first, last, scale, softcap=0.0) -> np.ndarray:
    if kv_type == "f16":  # the cache rounds K and V
        k, v = k.astype(np.float16), v.astype(np.float16)
    k, v = k.astype(np.float64), v.astype(np.float64)
    out = []
    for c in range(len(q)):
        s = k[first[c]:last[c] + 1] @ q[c].astype(np.float64) * scale
        if softcap:
            s = softcap * np.tanh(s / softcap)
        w = np.exp(s - s.max())
        out.append(w @ v[first[c]:last[c] + 1] / w.sum())
    return np.array(out)


def case(seed: int, nq: int, dk: int, dv: int, n_pos: int, pattern: str):
    """Queries of one item and the cache they read. pattern: causal rows of a chunk ending at
    n_pos - 1, a sliding window over them, a non-causal block (every row sees the block's end), or
    spans drawn at random."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, dk)).astype(np.float32)
    k = rng.standard_normal((n_pos, dk)).astype(np.float32)
    v = rng.standard_normal((n_pos, dv)).astype(np.float32)
    rows = max(1, nq // 3)  # a KV group of 3 heads: query c is row c // 3
    pos = np.array([n_pos - rows + min(c // 3, rows - 1) for c in range(nq)])
    pos = np.maximum(pos, 0)
    if pattern == "causal":
        first, last = np.zeros(nq, int), pos
    elif pattern == "window":
        first, last = np.maximum(pos - 37 + 1, 0), pos
    elif pattern == "block":
        first, last = np.zeros(nq, int), np.full(nq, n_pos - 1)
    else:
        last = rng.integers(0, n_pos, nq)
        first = np.array([rng.integers(0, l + 1) for l in last])
    return q, k, v, first, last


SHAPES = [(1, 64, 64, 1, "causal"), (3, 64, 64, 2048 - 5, "causal"), (15, 64, 64, 700, "causal"),
          (16, 64, 64, 33, "causal"), (5, 4, 4, 31, "random"), (7, 12, 20, 97, "window"), (9, 80, 96, 300, "window"),
          (13, 128, 128, 65, "block"), (16, 64, 64, 1100, "random"), (2, 8, 12, 513, "block"),
          (11, 36, 8, 160, "random")]


@pytest.mark.parametrize("isa", KERNEL_ISAS)
@pytest.mark.parametrize("kv_type", sorted(TYPES))
@pytest.mark.parametrize("softcap", [0.0, 2.5])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_simd_kernel_matches_the_reference_bit_for_bit(isa, kv_type, softcap, shape):
    q, k, v, first, last = case(sum(shape[:4]), *shape)
    scale = 1.0 / np.sqrt(shape[1])
    np.testing.assert_array_equal(attend(isa, kv_type, q, k, v, first, last, scale, softcap),
                                  attend("scalar", kv_type, q, k, v, first, last, scale, softcap))


@pytest.mark.parametrize("kv_type", sorted(TYPES))
@pytest.mark.parametrize("softcap", [0.0, 2.5])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_reference_matches_float64_attention(kv_type, softcap, shape):
    q, k, v, first, last = case(sum(shape[:4]) + 1, *shape)
    scale = 1.0 / np.sqrt(shape[1])
    got = attend("scalar", kv_type, q, k, v, first, last, scale, softcap)
    want = float64_attention(kv_type, q, k, v, first, last, scale, softcap)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.sqrt(shape[1]) * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("isa", ["scalar"] + KERNEL_ISAS)
def test_a_query_does_not_depend_on_the_queries_beside_it(isa):
    """Alone, in a full item, in any lane: the same bits."""
    q, k, v, first, last = case(3, 16, 64, 64, 900, "random")
    together = attend(isa, "f16", q, k, v, first, last, 0.125)
    order = np.random.default_rng(4).permutation(16)
    shuffled = attend(isa, "f16", q[order], k, v, first[order], last[order], 0.125)
    np.testing.assert_array_equal(shuffled, together[order])
    for c in (0, 5, 15):
        np.testing.assert_array_equal(attend(isa, "f16", q[c:c + 1], k, v, first[c:c + 1], last[c:c + 1], 0.125)[0],
                                      together[c])


def test_large_scores_stay_finite():
    """Scores far apart: the online softmax's rescale underflows to 0 without NaN."""
    q, k, v, first, last = case(5, 4, 64, 64, 3 * PAGE, "causal")
    k[: PAGE] *= -30.0
    k[2 * PAGE:] *= 30.0
    for isa in ["scalar"] + KERNEL_ISAS:
        out = attend(isa, "f32", q, k, v, first, last, 1.0)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, float64_attention("f32", q, k, v, first, last, 1.0), atol=1e-4)


def test_bad_arguments_are_clear_errors():
    q, k, v, first, last = case(6, 4, 64, 64, 40, "causal")
    with pytest.raises(ValueError, match="nq"):
        attend("scalar", "f32", np.zeros((17, 64), np.float32), k, v, np.zeros(17), np.zeros(17), 1.0)
    with pytest.raises(ValueError, match="dk"):
        attend("scalar", "f32", q[:, :6].copy(), k[:, :6].copy(), v, first, last, 1.0)
    with pytest.raises(ValueError, match="sees"):
        attend("scalar", "f32", q, k, v, first, last + 40, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        attend("scalar", "f32", q, k[:10], v, first, last, 1.0)
    if "avx2" in janlib.cpu_features()["available"]:  # AVX2 keeps the dot products
        with pytest.raises(janlib.UnsupportedError, match="no attend"):
            attend("avx2", "f32", q, k, v, first, last, 1.0)
