"""GET and POST /cors-proxy?url=...: llama-server's proxy through which a browser page (its chat page's MCP client)
reaches servers that send no CORS headers of their own. Off unless --ui-mcp-proxy (then 403, as llama-server),
and behind the API key like every other route.

Only the headers the page names explicitly travel upstream: x-llama-server-proxy-header-NAME becomes NAME. The
request's own Authorization, X-Api-Key, Cookie and Proxy-Authorization are the caller's credentials for this
server and never leave it. The answer is read whole, at most MAX_RESPONSE_BYTES within TIMEOUT_S, so a slow or
endless upstream cannot hold a thread or the memory for long."""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from flask import Blueprint, Response, request

from . import cors
from .errors import APIError, invalid
from .state import state

bp = Blueprint("cors_proxy", __name__)
log = logging.getLogger("janlib.server")

HEADER_PREFIX = "x-llama-server-proxy-header-"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
TIMEOUT_S = 60.0
SCHEMES = ("http", "https")
# hop-by-hop headers (RFC 9110 7.6.1) and those urllib computes itself; accept-encoding too, so that the answer
# comes back uncompressed and its size is what the limit counts
NOT_FORWARDED = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding"}
# the only upstream answer headers passed back: the answer arrives on this server's origin, so anything more
# (Set-Cookie, Clear-Site-Data, Refresh, a CSP, CORS) would act on this origin's pages as if it were ours
RETURNED = {"content-type", "cache-control", "etag", "last-modified", "mcp-session-id"}
# an upstream page opened through the proxy must not run as this origin (its storage, a service worker)
SANDBOXED = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
CREDENTIALS = ("authorization", "cookie")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (as llama-server does) but only to http(s): urllib alone would follow one to ftp. The
    page's Authorization and Cookie go no further than the origin it named, as a browser's own fetch."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            raise urllib.error.URLError(f"a redirect to {newurl!r}, which is not http(s)")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        old_origin, new_origin = urlsplit(req.full_url), urlsplit(newurl)
        if new is not None and (old_origin.scheme, old_origin.netloc) != (new_origin.scheme, new_origin.netloc):
            for name in list(new.headers):
                if name.lower() in CREDENTIALS:
                    del new.headers[name]
        return new


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def target_url() -> str:
    """The url query parameter: an absolute http(s) URL with a host and no credentials in it."""
    url = request.args.get("url", "")
    if not url:
        raise invalid("the query parameter 'url' is required: the http(s) URL to fetch", "url", code="missing_value")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError as error:
        raise invalid(f"'url' is not a valid URL: {error}", "url") from None
    if parts.scheme.lower() not in SCHEMES:
        raise invalid(f"'url' must be an http or https URL, got the scheme {parts.scheme or 'none'!r}", "url")
    if not host:
        raise invalid("'url' has no host", "url")
    if parts.username is not None or parts.password is not None:
        raise invalid("'url' must not hold credentials (user:password@): send them as proxy headers", "url")
    return url


def forwarded_headers() -> dict[str, str]:
    """The x-llama-server-proxy-header-* headers under their own names; nothing else of the request's."""
    headers = {}
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered.startswith(HEADER_PREFIX):
            upstream_name = lowered[len(HEADER_PREFIX):]
            if upstream_name and upstream_name not in NOT_FORWARDED:
                headers[upstream_name] = value
    return headers


def read_bounded(response, url: str, deadline: float) -> bytes:
    """The whole answer body, refused past MAX_RESPONSE_BYTES or the deadline."""
    chunks, size = [], 0
    while chunk := response.read1(64 * 1024):  # returns after one socket read, so the deadline is checked
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise upstream_error(url, f"its answer is larger than {MAX_RESPONSE_BYTES} bytes")
        if time.monotonic() > deadline:
            raise upstream_error(url, f"its answer took longer than {TIMEOUT_S:.0f} s")
        chunks.append(chunk)
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) != size:  # http.client ends a cut-off body quietly when read in parts
        raise upstream_error(url, f"its answer ended after {size} of {length} bytes")
    return b"".join(chunks)


def upstream_error(url: str, reason: str) -> APIError:
    return APIError(502, f"the proxy could not fetch {url}: {reason}", param="url", code="upstream_error",
                    type="server_error")


@bp.record_once
def _warn_when_on(setup):
    if setup.app.extensions["janlib"].config.cors_proxy:
        log.warning("--ui-mcp-proxy: /cors-proxy fetches any http(s) URL, this machine's network included, for "
                    "whoever may call the API (experimental; do not enable where untrusted users or pages reach it)")


@bp.route("/cors-proxy", methods=["GET", "POST"])
def cors_proxy():
    if not state().config.cors_proxy:
        raise APIError(403, "this feature is disabled: start the server with --ui-mcp-proxy", code="feature_disabled",
                       type="feature_disabled")
    config = state().config
    origin = request.headers.get("Origin")
    if origin is not None and origin != request.host_url.rstrip("/") and not cors.names_origin(config, origin):
        # "*" lets every page call the API; a proxy into this machine's network is only for the ones named
        raise APIError(403, f"/cors-proxy serves this server's own page and the origins named in --cors-origins, "
                       f"not {origin!r}", code="origin_not_allowed", type="permission_error")
    url = target_url()
    headers = forwarded_headers()
    body = None
    if request.method == "POST":
        body = request.get_data()
        if "content-type" not in headers and request.content_type:
            headers["content-type"] = request.content_type  # the body's own type, unless the page names another
    upstream = urllib.request.Request(url, data=body, headers=headers, method=request.method)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        try:
            response = _opener.open(upstream, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as error:  # an upstream 4xx/5xx is an answer to pass on, not a proxy failure
            response = error
        with response:
            status, answer_headers, data = response.status, response.headers, read_bounded(response, url, deadline)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        # refused, unknown host, timeout, a bad redirect, a malformed or cut-off answer
        raise upstream_error(url, str(getattr(error, "reason", None) or error) or type(error).__name__) from None
    returned = [(name, value) for name, value in answer_headers.items()
                if name.lower() in RETURNED and "\r" not in value and "\n" not in value]  # no folded values
    has_type = any(name.lower() == "content-type" for name, _ in returned)
    return Response(data, status=status, headers=returned + list(SANDBOXED.items()),
                    mimetype=None if has_type else "application/octet-stream")
