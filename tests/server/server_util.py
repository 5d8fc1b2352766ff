"""The server process for the tests: start it on a free port, wait for /health, stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "spec" / "jan-openapi.json"
API_KEY = "test-key-123"
MODEL_ID = "smollm2-test"
CTX = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    import janlib

    env = dict(os.environ)
    root = str(Path(janlib.__file__).resolve().parents[1])  # wherever the janlib under test lives
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("JANLIB_API_KEY", None)
    return env


class Server:
    def __init__(self, *args: str, port: int | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "janlib.server", "--port", str(self.port), *args]
        self.log = open(Path(tempfile.gettempdir()) / f"janlib-server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=env or _env())

    def wait_ready(self, timeout: float = 180) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if requests.get(self.base + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start(*args: str) -> Server:
    from janlib.fetch import fetch_model

    fetch_model("smollm2-135m-instruct", progress=False)  # cached once; the server then loads it from the cache
    return Server(*args).wait_ready()


def api_session(server: Server) -> requests.Session:
    """requests.Session that sends the API key, with .url(path) for the server's address."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    session.url = lambda path: server.base + path
    return session
