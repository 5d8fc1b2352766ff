"""The vision tower's speed: one image tile through a SmolVLM-256M-sized projector (SigLIP-base: 12 blocks of
width 768, 12 heads, FFN 3072; 512x512 tiles of 16x16 patches = 1024 patches; F16 weights, random), at 2
threads. Reported as the time per tile and the arithmetic rate of its matmuls and attention."""

from __future__ import annotations

import time

import numpy as np
import pytest

from janlib.vision import load_projector
from test_vision import write_mmproj

THREADS, ROUNDS = 2, 5
SIZES = dict(n_layer=12, n_embd=768, n_head=12, n_ff=3072, image_size=512, patch_size=16, scale=4, n_embd_text=576)


@pytest.fixture(scope="module")
def smolvlm_sized_projector(tmp_path_factory):
    path = write_mmproj(tmp_path_factory.mktemp("vision_bench") / "mmproj.gguf", dtype=np.float16, **SIZES)
    projector = load_projector(path, n_threads=THREADS)
    yield projector
    projector.close()


def tower_flops(n: int) -> float:
    """Multiply-adds times 2 of one tile's tower: its projections, FFN and attention (scores and values)."""
    e, f, p = SIZES["n_embd"], SIZES["n_ff"], 3 * SIZES["patch_size"] ** 2
    per_layer = 2 * n * (4 * e * e + 2 * e * f) + 2 * 2 * n * n * e
    return SIZES["n_layer"] * per_layer + 2 * n * p * e


def test_vision_tower_one_tile(benchmark, smolvlm_sized_projector, report):
    projector = smolvlm_sized_projector
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, 512, 512)).astype(np.float32)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        features = projector.encode(pixels)
        best = min(best, time.perf_counter() - start)
    assert features.shape == (1, 64, SIZES["n_embd_text"])
    n = (SIZES["image_size"] // SIZES["patch_size"]) ** 2
    report(f"vision tower, SmolVLM-256M size (F16, {n} patches), {THREADS} threads: {best * 1000:.0f} ms per tile "
           f"({tower_flops(n) / best / 1e9:.1f} GFLOP/s)")
    benchmark.pedantic(projector.encode, args=(pixels,), rounds=1, iterations=1)
