"""The chat page at / : static files only (HTML, CSS, JavaScript written here, no CDN), talking to /v1 from
the browser. It loads without a key; the page asks for one when /v1 answers 401.

It is an installable web app, served as llama-server serves its own: /manifest.webmanifest, a service worker
at /sw.js (at the root, so that its scope covers the page) and /_app/version.json (SvelteKit's convention,
which llama.cpp's web UI polls to notice a new server build)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from flask import Blueprint, Response, jsonify

from janlib import __version__

STATIC_PREFIX = "/webui/"
MANIFEST = "/manifest.webmanifest"
SERVICE_WORKER = "/sw.js"
VERSION = "/_app/version.json"
APP_PATHS = frozenset((MANIFEST, SERVICE_WORKER, VERSION))
WEBUI_FOLDER = Path(__file__).resolve().parent / "webui"

bp = Blueprint("webui", __name__, static_folder="webui", static_url_path=STATIC_PREFIX.rstrip("/"))

# Defence in depth beside the page's own care (model text only ever becomes DOM text): no inline or foreign
# script, style or connection, so even a rendering bug could not run injected markup.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")


def is_page(path: str) -> bool:
    """The page and its files are public: only the API behind them needs a key."""
    return path == "/" or path.startswith(STATIC_PREFIX) or path in APP_PATHS


@bp.get("/")
def index():
    return bp.send_static_file("index.html")


@bp.get(MANIFEST)
def manifest():
    response = bp.send_static_file("manifest.webmanifest")
    response.mimetype = "application/manifest+json"
    return response


@functools.cache
def service_worker_source() -> str:
    """webui/sw.js behind the build it caches for: this server's version and the page's files (relative to
    the worker's scope, as the page's own links are, so that the page also works under a path prefix)."""
    files = ["./", MANIFEST.lstrip("/")] + sorted(
        STATIC_PREFIX.lstrip("/") + path.name for path in WEBUI_FOLDER.iterdir()
        if path.is_file() and path.name not in ("index.html", "manifest.webmanifest", "sw.js"))  # at the root
    build = json.dumps({"version": __version__, "files": files})
    return f"const BUILD = {build};\n" + (WEBUI_FOLDER / "sw.js").read_text("utf-8")


@bp.get(SERVICE_WORKER)
def service_worker():
    # no-cache: the browser asks again on each update check, so an upgraded server's worker is found at once
    return Response(service_worker_source(), mimetype="text/javascript", headers={"Cache-Control": "no-cache"})


@bp.get(VERSION)
def version():
    response = jsonify(version=__version__)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.after_request
def _page_headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
