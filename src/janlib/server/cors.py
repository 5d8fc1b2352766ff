"""CORS for browser apps on other origins, as llama-server answers (tools/server/server-http.cpp), but for the
headers allowed, an origin list (each origin reflected when it is the request's; llama-server sends the list) and
private-network preflights (allowed only to origins named in the list).

--cors-origins (comma-separated) says which pages may call the API from a browser:
- "*", the default: every origin. With credentials allowed (the default; --no-cors-credentials turns it off) the
  request's Origin is reflected with Access-Control-Allow-Credentials: true, as a browser refuses a literal "*" on
  a credentialed request; without, Access-Control-Allow-Origin is "*".
- "localhost": every origin on this machine (localhost, 127.0.0.1 or [::1], any scheme and port); the default
  with --tools, so that no page of another site can drive the built-in tools.
- origins such as https://app.example:8080, each reflected when it is the request's.
- none (--cors-origins ""): no CORS header at all, so browsers keep pages of other origins out.

A preflight is answered at once with 200 and without a key (browsers send none in it): the allowed origin,
credentials, the methods "GET, POST, DELETE, OPTIONS" and the headers. The API key still guards every
other request.

The deliberate difference is Access-Control-Allow-Headers: llama-server answers "*", which under the Fetch
standard never covers Authorization and is only a header name on a credentialed request, so a page sending its
API key would be refused. janlib names Authorization, Content-Type and X-Api-Key, and the headers the preflight
asks for (Access-Control-Request-Headers): what "*" means for other headers, Authorization included."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from flask import Flask, Response, request

from .config import ServerConfig

log = logging.getLogger("janlib.server")

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Api-Key")
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may reuse a preflight answer
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 5.6.2)


def is_local_origin(origin: str) -> bool:
    """An origin on this machine (http://localhost:8080, http://[::1]); not http://localhost.evil.com."""
    try:
        return urlsplit(origin).hostname in LOCAL_HOSTS
    except ValueError:  # a malformed origin, such as an unclosed [
        return False


def names_origin(config: ServerConfig, origin: str) -> bool:
    """The origin is listed by name in --cors-origins (or as a local one under "localhost"), not only let in by
    "*": what /cors-proxy and a private-network preflight require."""
    return origin in config.cors_origins or ("localhost" in config.cors_origins and is_local_origin(origin))


def is_preflight() -> bool:
    """A browser's CORS preflight: OPTIONS naming the method it wants to send; it never carries a key."""
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def allow_headers() -> str:
    """janlib's headers, then those the preflight asks for that are header names, each once."""
    requested = request.headers.get("Access-Control-Request-Headers", "").split(",")
    names = {name.lower(): name for name in (h.strip() for h in requested) if HEADER_NAME_RE.fullmatch(name)}
    for name in ALLOW_HEADERS:
        names.pop(name.lower(), None)
    return ", ".join((*ALLOW_HEADERS, *names.values()))


def install(app: Flask, config: ServerConfig) -> None:
    """Answer preflights and mark responses for the allowed origins; nothing at all when none is allowed."""
    if not config.cors_origins:
        return
    allowed = set(config.cors_origins)
    any_origin = "*" in allowed
    reflect_any = any_origin and config.cors_credentials
    if any_origin and not config.api_keys:
        log.warning("no API key and CORS allows every origin: any web page open in a browser on this machine can "
                    "use this server (pass --api-key, or --cors-origins localhost)")

    def allow_origin() -> str | None:
        """The Access-Control-Allow-Origin value for this request, None when its origin is not allowed."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if reflect_any:
            return origin
        if any_origin:
            return "*"
        return origin if names_origin(config, origin) else None

    @app.before_request
    def _preflight():
        if not is_preflight():
            return None
        response = Response(status=200)  # llama-server's status for every preflight; browsers take any 2xx
        if allow_origin() is None:
            return response  # no CORS header: the browser keeps this origin out
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = allow_headers()
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        response.vary.add("Access-Control-Request-Headers")
        # Chrome asks before a public page may reach a loopback or private address: only a named origin may
        if (request.headers.get("Access-Control-Request-Private-Network") == "true" and
                names_origin(config, request.headers["Origin"])):
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    @app.after_request
    def _mark(response):
        value = allow_origin()
        if value is not None:
            response.headers["Access-Control-Allow-Origin"] = value
            if value != "*" and config.cors_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        response.vary.add("Origin")  # the answer depends on Origin: caches must keep one per origin
        return response
