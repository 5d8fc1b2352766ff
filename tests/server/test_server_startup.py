"""Start-up: one clear line and a non-zero exit for a missing file, a bad GGUF, a port in use, a
non-loopback host without a key."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from server_util import _env, free_port


def run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "janlib.server", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or _env(), stdin=subprocess.DEVNULL)


def _one_line_error(result):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("janlib.server: error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_non_loopback_without_key_refuses(tmp_path):
    line = _one_line_error(run("--host", "0.0.0.0", "--port", str(free_port())))
    assert "API key" in line


def test_missing_model_file(tmp_path):
    line = _one_line_error(run("--model", str(tmp_path / "missing.gguf"), "--port", str(free_port())))
    assert "missing.gguf" in line


def test_bad_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    _one_line_error(run("--model", str(bad), "--port", str(free_port())))


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        line = _one_line_error(run("--port", str(s.getsockname()[1])))
    assert "cannot listen" in line


@pytest.mark.parametrize("args", [["--parallel", "0"], ["--port", "70000"], ["--ctx-size", "-1"]])  # 0 is the model's own size, as in llama-server
def test_bad_settings(args):
    _one_line_error(run(*args))


def test_env_key_is_used(monkeypatch):
    from janlib.server.config import keys_from_env

    assert keys_from_env({"JANLIB_API_KEY": "a, b"}) == ["a", "b"]
    result = run("--host", "0.0.0.0", "--port", "70000", env=dict(_env(), JANLIB_API_KEY="k"))
    assert "API key" not in result.stderr  # the key was taken: it fails on the port instead
