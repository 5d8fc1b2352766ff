"""CORS as llama-server answers (--cors-origins) and the X-Api-Key header, over plain HTTP on the real server
process. The expected headers are llama-server's (tools/server/server-http.cpp), but for Access-Control-Allow-Headers,
which names Authorization where llama-server says "*" (the Fetch standard's "*" never covers Authorization)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from server_util import API_KEY, _env, free_port, start

ALLOWED = "http://app.example:3000"
OTHER_ALLOWED = "https://chat.example"
STRANGER = "http://evil.example"


def preflight(server, origin, method="POST", headers="authorization, content-type"):
    """What a browser sends before a cross-origin POST with a key: no key of its own."""
    return requests.options(server.base + "/v1/chat/completions", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


def header_list(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


@pytest.fixture(scope="module")
def cors_server():
    s = start("--api-key", API_KEY, "--cors-origins", f"{ALLOWED},{OTHER_ALLOWED}",
              "--ctx-size", "256", "--threads", "1", "--log-level", "warning")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def any_origin_server():
    s = start("--api-key", API_KEY, "--cors-origin", "*", "--no-cors-credentials", "--ctx-size", "256",
              "--threads", "1", "--log-level", "warning")
    yield s
    s.stop()


@pytest.mark.slow
@pytest.mark.parametrize("origin", [ALLOWED, OTHER_ALLOWED])
def test_preflight_of_an_allowed_origin_needs_no_key(cors_server, origin):
    r = preflight(cors_server, origin)
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert {"authorization", "content-type", "x-api-key"} <= header_list(r.headers["Access-Control-Allow-Headers"])
    assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    assert "origin" in header_list(r.headers["Vary"])


@pytest.mark.slow
def test_preflight_of_another_origin_gets_no_cors_headers(cors_server):
    r = preflight(cors_server, STRANGER)
    assert r.status_code == 200
    assert not any(name.lower().startswith("access-control-") for name in r.headers)


@pytest.mark.slow
def test_cross_origin_requests_carry_the_origin_errors_included(cors_server):
    keyed = requests.get(cors_server.base + "/v1/models", timeout=10,
                         headers={"Origin": ALLOWED, "Authorization": f"Bearer {API_KEY}"})
    assert keyed.status_code == 200 and keyed.headers["Access-Control-Allow-Origin"] == ALLOWED
    # a browser app must be able to read the 401 to ask for a key
    missing = requests.get(cors_server.base + "/v1/models", timeout=10, headers={"Origin": ALLOWED})
    assert missing.status_code == 401 and missing.headers["Access-Control-Allow-Origin"] == ALLOWED
    stranger = requests.get(cors_server.base + "/v1/models", timeout=10,
                            headers={"Origin": STRANGER, "Authorization": f"Bearer {API_KEY}"})
    assert stranger.status_code == 200 and "Access-Control-Allow-Origin" not in stranger.headers


@pytest.mark.slow
def test_cross_origin_stream(cors_server):
    keyed = {"Authorization": f"Bearer {API_KEY}"}
    model = requests.get(cors_server.base + "/v1/models", timeout=10, headers=keyed).json()["data"][0]["id"]
    r = requests.post(cors_server.base + "/v1/chat/completions", timeout=60, headers={"Origin": OTHER_ALLOWED, **keyed},
                      json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                            "stream": True})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Access-Control-Allow-Origin"] == OTHER_ALLOWED
    assert r.text.rstrip().endswith("data: [DONE]")


@pytest.mark.slow
def test_star_without_credentials_is_a_literal_star(any_origin_server):
    r = preflight(any_origin_server, STRANGER, method="GET", headers="x-api-key")
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers
    r = requests.get(any_origin_server.base + "/v1/models", timeout=10,
                     headers={"Origin": STRANGER, "X-Api-Key": API_KEY})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.slow
@pytest.mark.parametrize("origin", [STRANGER, "web.mydomain.fr", "null"])
def test_every_origin_is_reflected_by_default(server, origin):
    """llama-server's default, * with credentials: whatever Origin the browser sends comes back, with credentials."""
    r = preflight(server, origin, headers="authorization, content-type, x-stainless-os")
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    # the deliberate difference: Authorization named (a "*" would not cover it), the SDK's own headers reflected
    assert header_list(r.headers["Access-Control-Allow-Headers"]) == \
        {"authorization", "content-type", "x-api-key", "x-stainless-os"}
    keyed = requests.get(server.base + "/v1/models", timeout=10,
                         headers={"Origin": origin, "Authorization": f"Bearer {API_KEY}"})
    assert keyed.status_code == 200 and keyed.headers["Access-Control-Allow-Origin"] == origin
    # the preflight carries no key, the request itself still needs one
    assert requests.get(server.base + "/v1/models", timeout=10, headers={"Origin": origin}).status_code == 401


@pytest.mark.slow
def test_a_request_without_origin_gets_no_cors_headers(server):
    r = requests.get(server.base + "/v1/models", timeout=10, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and not any(name.lower().startswith("access-control-") for name in r.headers)


@pytest.mark.slow
@pytest.mark.parametrize("headers, status", [
    ({"X-Api-Key": API_KEY}, 200),
    ({"x-api-key": API_KEY}, 200),  # header names are case-insensitive
    ({"X-Api-Key": API_KEY + "x"}, 401),
    ({"X-Api-Key": ""}, 401),
    ({"X-Api-Key": "wrong", "Authorization": f"Bearer {API_KEY}"}, 200),  # either header may carry it
    ({"X-Api-Key": API_KEY, "Authorization": "Bearer wrong"}, 200),
])
def test_x_api_key(server, headers, status):
    r = requests.get(server.base + "/v1/models", headers=headers, timeout=10)
    assert r.status_code == status
    if status == 401:
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"


@pytest.mark.parametrize("origin", ["http://app.example/", "app.example", "http://app.example/path", "localhost:80"])
def test_a_bad_origin_stops_the_start(origin):
    result = subprocess.run([sys.executable, "-m", "janlib.server", "--port", str(free_port()), "--cors-origin", origin],
                            capture_output=True, text=True, timeout=60, env=_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.startswith("janlib.server: error: --cors-origin") and repr(origin) in result.stderr


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost", True), ("http://localhost:8080", True), ("http://127.0.0.1:3000", True),
    ("http://[::1]", True), ("https://[::1]:3000", True),
    ("http://localhost.evil.com", False), ("http://notlocalhost", False), ("http://evil.com", False),
    ("http://[::1", False)])
def test_the_origin_localhost_stands_for_this_machine(origin, allowed):
    """llama-server's --cors-origins localhost: an origin on this machine is reflected, any other gets nothing."""
    from flask import Flask

    from janlib.server import cors
    from janlib.server.config import ServerConfig

    app = Flask(__name__)
    app.add_url_rule("/v1/models", view_func=lambda: "{}")
    cors.install(app, ServerConfig(cors_origins=["localhost"]))
    client = app.test_client()
    answers = [client.options("/v1/models", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}),
               client.get("/v1/models", headers={"Origin": origin})]
    for r in answers:
        assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)


def in_process_answers(config, origin):
    """A preflight and a GET from origin on a bare app with the server's CORS: what a browser would be told."""
    from flask import Flask

    from janlib.server import cors

    app = Flask(__name__)
    app.add_url_rule("/v1/models", view_func=lambda: "{}")
    cors.install(app, config)
    client = app.test_client()
    return [client.options("/v1/models", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}),
            client.get("/v1/models", headers={"Origin": origin})]


def test_no_origins_sends_no_cors_header():
    """--cors-origins "": same origin only, as janlib's former default."""
    from janlib.server.__main__ import parse_args

    config = parse_args(["--cors-origins", ""])
    assert config.cors_origins == []
    for r in in_process_answers(config, ALLOWED):
        assert not any(name.lower().startswith("access-control-") for name in r.headers.keys())


@pytest.mark.parametrize("argv, origin, allowed", [
    (["--tools", "all"], "http://localhost:8080", True), (["--tools", "all"], STRANGER, False),
    (["--tools", "all", "--cors-origins", "*"], STRANGER, True),  # an explicit list wins over the tools' default
    (["--cors-origins", f"localhost,{ALLOWED}"], ALLOWED, True),
    (["--cors-origins", f"localhost,{ALLOWED}"], "http://127.0.0.1:3000", True),
    (["--cors-origins", f"localhost,{ALLOWED}"], OTHER_ALLOWED, False)])
def test_tools_make_localhost_the_default(argv, origin, allowed):
    """llama-server's --tools: with no --cors-origins only this machine's pages may call the server."""
    from janlib.server.__main__ import parse_args

    for r in in_process_answers(parse_args(argv), origin):
        assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
