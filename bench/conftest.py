"""Benchmark fixtures and the end-of-run table of figures and ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # shared data builders

FIGURES: list[str] = []


@pytest.fixture
def report():
    """report(line): a figure to print in the summary at the end of the run."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("janlib figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
