"""Every vocabulary llama.cpp tests (``models/ggml-vocab-*.gguf`` with ``.inp``/``.out``) gives
llama.cpp's ids exactly, run as its test-tokenizer-0 runs them: add_special and parse_special off.

The vocabularies (75 MB together) are not committed: they come from the llama-cpp-python source
distribution, which vendors llama.cpp. `pip download` fetches it once into janlib's cache (under
``test-data/``) and only the vocabulary files are kept; without a package index the tests skip
and say why. Extra pip arguments come from ``JANLIB_PIP_ARGS``, as for model downloads.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from janlib.fetch import PIP_ARGS_ENV, default_cache_dir
from janlib.gguf import load_gguf
from janlib.tokenizer import Tokenizer

SDIST = "llama-cpp-python==0.3.36"
# every ggml-vocab-*.gguf of that release that has .inp/.out test files
VOCABULARIES = [
    "bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
    "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder",
]
_SEPARATOR = "\n__ggml_vocab_test__\n"

pytestmark = pytest.mark.slow  # a 75 MB download on first use


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """The folder with llama.cpp's ggml-vocab-* files, fetched and unpacked on first use."""
    found = _fetch_vocab_dir()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@functools.cache  # a failed download is not retried for every test
def _fetch_vocab_dir() -> Path | str:
    """The unpacked folder, or why it could not be fetched."""
    target = default_cache_dir() / "test-data" / f"{SDIST.replace('==', '-')}-vocab"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                   "--dest", scratch, "--quiet", *shlex.split(os.environ.get(PIP_ARGS_ENV, ""))]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-3:])
            return (f"llama.cpp's vocabulary tests come from the {SDIST} source distribution, "
                    f"and pip download could not fetch it:\n{tail}")
        (archive,) = Path(scratch).glob("*.tar.gz")
        unpacked = Path(scratch) / "vocab"
        unpacked.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar:
                name = Path(member.name).name
                if "/vendor/llama.cpp/models/" in member.name and name.startswith("ggml-vocab-") and member.isfile():
                    (unpacked / name).write_bytes(tar.extractfile(member).read())
        try:
            os.replace(unpacked, target)
        except OSError:  # another test process unpacked it first
            if not target.is_dir():
                raise
    return target


def read_cases(vocab_file: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs, split as test-tokenizer-0.cpp splits the .inp and .out files."""
    raw = vocab_file.with_name(vocab_file.name + ".inp").read_bytes().decode()
    texts = raw.split(_SEPARATOR)
    if raw.endswith(_SEPARATOR):  # the C++ reader stops at the end without an empty last text
        texts.pop()
    lines = vocab_file.with_name(vocab_file.name + ".out").read_text().split("\n")
    if lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines), vocab_file
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


def test_list_is_complete(vocab_dir):
    tested = sorted(p.name.removeprefix("ggml-vocab-").removesuffix(".gguf.inp") for p in vocab_dir.glob("*.inp"))
    assert tested == sorted(VOCABULARIES)


@pytest.mark.parametrize("name", VOCABULARIES)
def test_ids_equal_llama_cpp(vocab_dir, name):
    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    tokenizer = Tokenizer.from_metadata(load_gguf(path).metadata)
    cases = read_cases(path)
    assert len(cases) >= 40
    mismatches = [(text, expected, got) for text, expected in cases
                  if (got := tokenizer.encode(text, add_special=False, parse_special=False)) != expected]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} texts differ, first: {mismatches[0]}"


def test_bert_adds_cls_and_sep(vocab_dir):
    tokenizer = Tokenizer.from_metadata(load_gguf(vocab_dir / "ggml-vocab-bert-bge.gguf").metadata)
    # [CLS] hello , world ! [SEP]: lower-cased, punctuation split off
    assert tokenizer.encode("Hello, World!") == [101, 7592, 1010, 2088, 999, 102]
    assert tokenizer.encode("Hello, World!", add_special=False) == [7592, 1010, 2088, 999]
