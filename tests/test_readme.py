"""The README's two commands: the second is what CI runs; the first, run verbatim as a new user would
(a clean clone of HEAD, a fresh virtual environment, an empty model cache, a regular non-editable
install), serves the default model until /v1/models answers.

The end-to-end test is the costly one of its kind (a full build and a model download): keep it the
only one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from janlib import registry

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Two commands"
PORT = 1337  # the command is verbatim, so the server takes its default port
START_TIMEOUT = 15 * 60  # install (a C build) plus the model download


def readme_commands() -> list[str]:
    """The sh blocks under the two-commands heading, in order."""
    text = (ROOT / "README.md").read_text("utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_has_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands)
    ci = (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
    assert commands[1] in ci


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _models(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def _fresh_venv_env(venv: Path, cache: Path) -> dict[str, str]:
    """The environment of a shell with the fresh venv activated and an empty model cache. pip's own
    configuration (its files and PIP_* variables) carries over, so pip reaches the usual index."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["JANLIB_CACHE"] = str(cache)
    # pip reads a configuration file in the interpreter's prefix; a venv has its own prefix.
    site_config = Path(sys.prefix) / "pip.conf"
    if site_config.is_file():
        shutil.copy(site_config, venv / "pip.conf")
    return env


@pytest.mark.slow
def test_first_command_serves_the_default_model_from_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    if _port_taken(PORT):
        pytest.skip(f"port {PORT} is taken, and the README's command serves there")
    command = readme_commands()[0]
    clone, venv, cache = tmp_path / "janlib", tmp_path / "venv", tmp_path / "cache"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    cache.mkdir()
    log_path = tmp_path / "command.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["sh", "-c", command], cwd=clone, env=_fresh_venv_env(venv, cache),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (models := _models(f"http://127.0.0.1:{PORT}/v1/models")) is None:
            if process.poll() is not None:
                pytest.fail(f"`{command}` exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"/v1/models did not answer within {START_TIMEOUT} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    entry = registry.REGISTRY[registry.DEFAULT_MODEL]
    assert [model["id"] for model in models["data"]] == [entry.filename]
    assert (cache / entry.filename).stat().st_size == entry.size  # fetched into the empty cache
    installed = list((venv / "lib").glob("python3*/site-packages/janlib/__init__.py"))
    assert installed, "janlib is not installed in the fresh venv (an editable install would not put it there)"
