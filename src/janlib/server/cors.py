"""CORS for browser apps on other origins (--cors-origin). With no origin configured the server sends no
CORS header at all, so browsers keep pages of other origins out (same origin only). The origin "localhost"
(llama-server's) stands for every origin on this machine: localhost, 127.0.0.1 or [::1], any scheme and port."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, request

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Api-Key"
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may reuse a preflight answer
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_local_origin(origin: str) -> bool:
    """An origin on this machine (http://localhost:8080, http://[::1]); not http://localhost.evil.com."""
    try:
        return urlsplit(origin).hostname in LOCAL_HOSTS
    except ValueError:  # a malformed origin, such as an unclosed [
        return False


def is_preflight() -> bool:
    """A browser's CORS preflight: OPTIONS naming the method it wants to send; it never carries a key."""
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def install(app: Flask, origins: list[str]) -> None:
    """Answer preflights and mark responses for the allowed origins; nothing at all when origins is empty."""
    if not origins:
        return
    allowed = set(origins)

    def allow_origin() -> str | None:
        """The Access-Control-Allow-Origin value for this request, None when its origin is not allowed."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if "*" in allowed:
            return "*"
        return origin if origin in allowed or ("localhost" in allowed and is_local_origin(origin)) else None

    @app.before_request
    def _preflight():
        value = allow_origin()
        if value is None or not is_preflight():
            return None  # a disallowed preflight gets Flask's plain OPTIONS answer, without CORS headers
        response = Response(status=200)  # llama-server's status; browsers take any 2xx
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        # Chrome asks before a public page may reach a loopback or private address
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    @app.after_request
    def _mark(response):
        value = allow_origin()
        if value is not None:
            response.headers["Access-Control-Allow-Origin"] = value
        response.vary.add("Origin")  # the answer depends on Origin: caches must keep one per origin
        return response
