"""The web dashboard: a static page and its script and styles, served from the package (no CDN).

`/` is the page for a browser, and Ollama's "Ollama is running" for any other client (what Ollama's clients
probe for). The page holds no data of its own: everything it shows comes from the API, with the same credentials
as any client (the admin token, or an API key for the playground), so it is open to load, like
`/health`. Its headers forbid framing and any script, style or connection that is not this queen's.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rbee.queen.errors import NotFound

OLLAMA_RUNNING = "Ollama is running"
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8", "icon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated by ETag: an upgraded queen serves its own page at once
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


@cache
def _asset(name: str) -> Asset:
    body = resources.files("rbee.queen").joinpath("web", name).read_bytes()
    return Asset(body, gzip.compress(body, 9, mtime=0), ASSETS[name], f'"{hashlib.sha256(body).hexdigest()[:16]}"')


def _serve(request: Request, name: str, vary: str = "accept-encoding") -> Response:
    if name not in ASSETS:
        raise NotFound(f"There is no dashboard file '{name}'.")
    asset = _asset(name)
    headers = {**SECURITY_HEADERS, "etag": asset.etag, "vary": vary}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "content-encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


async def index(request: Request) -> Response:
    """The dashboard, for a browser (it asks for text/html); "Ollama is running" for Ollama's clients, which
    probe `/` to find a server."""
    if "text/html" not in request.headers.get("accept", "").lower():
        return PlainTextResponse(OLLAMA_RUNNING, headers={"vary": "accept"})
    return _serve(request, "index.html", vary="accept, accept-encoding")


async def asset(request: Request) -> Response:
    """The dashboard's script, styles and icon."""
    return _serve(request, request.path_params["name"])


routes = [
    Route("/", index, methods=["GET"]),
    Route("/ui/{name}", asset, methods=["GET"]),
]
