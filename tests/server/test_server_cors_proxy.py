"""/cors-proxy (--ui-mcp-proxy) on the real server process, against a local HTTP server that records what reaches it:
only the x-llama-server-proxy-header-* headers travel (renamed), never the caller's own credentials; http(s) only;
bad URLs are a 400 naming url, upstream failures a 502; off (403) without the flag."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from server_util import API_KEY, start

from janlib.server.cors_proxy import MAX_RESPONSE_BYTES

KEYED = {"Authorization": f"Bearer {API_KEY}"}


class Recorder(BaseHTTPRequestHandler):
    """/big answers one byte over the proxy's limit, /cut less than its Content-Length, /missing a 404, /to-ftp,
    /to-echo and /to-other-host redirect; the rest echo 200, keeping the request's method, headers and body."""

    def do_GET(self):
        self.server.seen = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": b""}
        if self.path == "/big":
            self.answer(200, b"x" * (MAX_RESPONSE_BYTES + 1))
        elif self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only ten b")
        elif self.path == "/missing":
            self.answer(404, b'{"error": "no such thing"}')
        elif self.path in ("/to-ftp", "/to-echo", "/to-other-host"):
            target = {"/to-ftp": "ftp://127.0.0.1/x", "/to-echo": "/echo",
                      "/to-other-host": f"http://localhost:{self.server.server_port}/echo"}[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.answer(200, b'{"ok": true}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        self.answer(200, body)

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Mcp-Session-Id", "session-1")
        self.send_header("Set-Cookie", "upstream=secret")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def target():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def proxy_server():
    s = start("--api-key", API_KEY, "--ui-mcp-proxy", "--ctx-size", "256", "--threads", "1", "--log-level", "warning")
    yield s
    s.stop()


def proxy(server, url, method="GET", headers=None, **kwargs):
    return requests.request(method, server.base + "/cors-proxy", params={"url": url}, timeout=30,
                            headers={**KEYED, **(headers or {})}, **kwargs)


def lowered(headers):
    return {name.lower(): value for name, value in headers.items()}


@pytest.mark.slow
def test_only_the_explicit_proxy_headers_travel(proxy_server, target):
    r = proxy(proxy_server, f"http://127.0.0.1:{target.server_port}/capture?q=1", headers={
        "X-Api-Key": API_KEY, "Cookie": "session=secret", "Proxy-Authorization": "Basic secret",
        "x-llama-server-proxy-header-accept": "application/json",
        "X-Llama-Server-Proxy-Header-Authorization": "Bearer explicit",
        "x-llama-server-proxy-header-mcp-session-id": "session-1"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    seen = lowered(target.seen["headers"])
    assert target.seen["path"] == "/capture?q=1"
    assert seen["accept"] == "application/json" and seen["authorization"] == "Bearer explicit"
    assert seen["mcp-session-id"] == "session-1"
    for secret in ("x-api-key", "cookie", "proxy-authorization"):
        assert secret not in seen
    assert not any(name.startswith("x-llama-server-proxy-header") for name in seen)
    # the upstream's own headers come back, but not its cookies (they would land on this server's origin)
    assert r.headers["Content-Type"] == "application/json" and r.headers["Mcp-Session-Id"] == "session-1"
    assert "Set-Cookie" not in r.headers
    # an upstream page opened through the proxy cannot run as this server's origin
    assert r.headers["Content-Security-Policy"] == "sandbox" and r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.slow
def test_the_pages_credentials_stop_at_the_origin_it_named(proxy_server, target):
    explicit = {"x-llama-server-proxy-header-authorization": "Bearer explicit"}
    base = f"http://127.0.0.1:{target.server_port}"
    assert proxy(proxy_server, base + "/to-echo", headers=explicit).status_code == 200
    assert lowered(target.seen["headers"])["authorization"] == "Bearer explicit"  # same origin: kept
    assert proxy(proxy_server, base + "/to-other-host", headers=explicit).status_code == 200
    assert "authorization" not in lowered(target.seen["headers"])  # another host: dropped, as a browser does


@pytest.mark.slow
def test_only_this_servers_page_and_named_origins_may_use_it(proxy_server, target):
    url = f"http://127.0.0.1:{target.server_port}/echo"
    foreign = proxy(proxy_server, url, headers={"Origin": "https://elsewhere.example"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
    assert proxy(proxy_server, url, headers={"Origin": proxy_server.base}).status_code == 200


@pytest.mark.slow
def test_a_post_forwards_its_body_and_type(proxy_server, target):
    message = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    r = proxy(proxy_server, f"http://127.0.0.1:{target.server_port}/mcp", method="POST", data=message,
              headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.content == message
    assert target.seen["method"] == "POST" and target.seen["body"] == message
    assert lowered(target.seen["headers"])["content-type"] == "application/json"


@pytest.mark.slow
def test_upstream_errors_and_redirects(proxy_server, target):
    base = f"http://127.0.0.1:{target.server_port}"
    missing = proxy(proxy_server, base + "/missing")  # the upstream's own 404 is passed on as it is
    assert missing.status_code == 404 and missing.json() == {"error": "no such thing"}
    followed = proxy(proxy_server, base + "/to-echo")
    assert followed.status_code == 200 and target.seen["path"] == "/echo"
    for path in ("/big", "/cut", "/to-ftp"):
        r = proxy(proxy_server, base + path)
        assert r.status_code == 502, path
        assert r.json()["error"]["param"] == "url" and r.json()["error"]["type"] == "server_error"


@pytest.mark.slow
def test_a_refused_connection_is_a_502(proxy_server):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    r = proxy(proxy_server, f"http://127.0.0.1:{port}/")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


@pytest.mark.slow
@pytest.mark.parametrize("url", ["", "ftp://127.0.0.1/x", "file:///etc/passwd", "http://", "127.0.0.1:8080/x",
                                 "http://user:pw@127.0.0.1/", "http://127.0.0.1:99999/"])
def test_a_bad_url_is_a_400_naming_url(proxy_server, url):
    r = proxy(proxy_server, url)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "url" and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.slow
def test_the_proxy_needs_the_key(proxy_server, target):
    r = requests.get(proxy_server.base + "/cors-proxy", params={"url": f"http://127.0.0.1:{target.server_port}/"},
                     timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


@pytest.mark.slow
def test_off_without_the_flag(server, target):
    r = requests.get(server.base + "/cors-proxy", params={"url": f"http://127.0.0.1:{target.server_port}/"},
                     headers=KEYED, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["type"] == "feature_disabled"
