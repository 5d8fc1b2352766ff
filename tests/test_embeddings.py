"""Embeddings (janlib.Model.embed) against sentence-transformers on the same weights: the reference
vectors in tests/fixtures/embeddings_*.npy come from tests/fixtures/make_embedding_refs.py.

nomic-embed-text-v1.5 comes through the registry; all-MiniLM-L6-v2 too, converted by janlib on download:
tests/test_minilm.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import janlib

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_embedding_refs import TEXTS  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def nomic():
    return janlib.Model("nomic-embed-text-v1.5")


@pytest.mark.slow
def test_nomic_matches_sentence_transformers(nomic):
    assert nomic.is_encoder and nomic.n_embd == 768
    vectors = nomic.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 768) and vectors.dtype == np.float32
    assert cosines(vectors, np.load(FIXTURES / "embeddings_nomic.npy")).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_batch_equals_each_input_alone(nomic):
    """All inputs go through one forward pass; each one's vector is bit-identical to it alone."""
    together = nomic.embed(TEXTS)
    alone = np.stack([nomic.embed(text) for text in TEXTS])
    assert np.array_equal(together, alone)


@pytest.mark.slow
def test_pooling_and_normalization(nomic):
    ids = nomic.tokenize(TEXTS[0])
    tokens = nomic.embed(ids, pooling="none")  # one input: its (n_tokens, n_embd) rows
    assert tokens.shape == (len(ids), 768)
    assert [r.shape for r in nomic.embed([ids, ids[:2]], pooling="none")] == [(len(ids), 768), (2, 768)]
    mean = tokens.mean(0)
    np.testing.assert_allclose(nomic.embed(ids, normalize=-1), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nomic.embed(ids), mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nomic.embed(ids, pooling="cls", normalize=-1), tokens[0], rtol=1e-6)
    np.testing.assert_allclose(nomic.embed(ids, pooling="last", normalize=-1), tokens[-1], rtol=1e-6)
    taxicab = nomic.embed(ids, normalize=1)
    np.testing.assert_allclose(np.abs(taxicab).sum(), 1.0, rtol=1e-5)
    assert np.abs(nomic.embed(ids, normalize=0)).max() == pytest.approx(32760, rel=1e-6)
    # token lists and texts mix in one call
    mixed = nomic.embed([TEXTS[1], ids])
    np.testing.assert_array_equal(mixed[1], nomic.embed(TEXTS[0]))


@pytest.mark.slow
def test_bad_inputs_are_named(nomic):
    with pytest.raises(ValueError, match="input 1 must be a non-empty list of token ids"):
        nomic.embed([[1, 2], []])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        nomic.embed([[1, 10**6]])
    with pytest.raises(ValueError, match="more than the 2048"):
        nomic.embed([[1] * 2049])
    with pytest.raises(ValueError, match="pooling must be one of"):
        nomic.embed("x", pooling="max")
    with pytest.raises(ValueError, match="normalize must be an int"):
        nomic.embed("x", normalize=-2)
    with pytest.raises(ValueError, match="input 0 must be a string or a list of token ids"):
        nomic.embed([3.5, "x"])
    with pytest.raises(ValueError, match="no output head"):
        nomic.logits(nomic.tokenize("x"))


@pytest.mark.slow
def test_decoder_embeddings_pool_its_final_hidden_state():
    """A decoder's embedding is its normed final hidden state: last-token pooling by default."""
    model = janlib.Model("smollm2-135m-instruct")
    ids = model.tokenize("The capital of France is")
    rows = model.embed(ids, pooling="none")
    np.testing.assert_array_equal(model.embed(ids, normalize=-1), rows[-1])
    together = model.embed([ids, ids[:3]], pooling="mean")
    np.testing.assert_array_equal(together[1], model.embed(ids[:3], pooling="mean"))
