"""The chat page at / : static files only (HTML, CSS, JavaScript written here, no CDN), talking to /v1 from
the browser. It loads without a key; the page asks for one when /v1 answers 401."""

from __future__ import annotations

from flask import Blueprint

STATIC_PREFIX = "/webui/"

bp = Blueprint("webui", __name__, static_folder="webui", static_url_path=STATIC_PREFIX.rstrip("/"))

# Defence in depth beside the page's own care (model text only ever becomes DOM text): no inline or foreign
# script, style or connection, so even a rendering bug could not run injected markup.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")


def is_page(path: str) -> bool:
    """The page and its files are public: only the API behind them needs a key."""
    return path == "/" or path.startswith(STATIC_PREFIX)


@bp.get("/")
def index():
    return bp.send_static_file("index.html")


@bp.after_request
def _page_headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
