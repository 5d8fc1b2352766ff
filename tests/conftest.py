"""Shared fixtures: real models come through janlib's own fetch code, into the cache, once."""

from __future__ import annotations

import pytest

import janlib


@pytest.fixture(scope="session")
def smollm2_path():
    return janlib.fetch_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def gemma3_path():
    return janlib.fetch_model("gemma3-270m", progress=False)
