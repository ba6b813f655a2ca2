"""The page at `GET /`: a view of the data-out API for a person (the live tape, longs vs shorts
per minute, the largest liquidations, coverage with its gaps), served by the collector itself.

Everything it loads is in `collector/out/static/` and ships in the wheel (pyproject
package-data): our `index.html`, `page.js` and `page.css`, and uPlot's built files from its npm
package with its licence (`static/vendor/`, see `static/vendor/README.md`). No CDN, no build step.

`/` answers `no-cache` (revalidated every time, with an ETag); the assets are named in it with
`?v=<hash of their bytes>`, and a request with the current hash is cached for a year
(`immutable`), any other (an older page, a hand-typed URL) revalidates. The page only reads
`/v1` from its own origin; with `[http] api_token_file` it asks for the token (see page.js).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

_ASSETS = (
    "page.js",
    "page.css",
    "vendor/uPlot.iife.min.js",
    "vendor/uPlot.min.css",
    "vendor/uPlot.LICENSE",
)
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".LICENSE": "text/plain",
}
_REF = re.compile(r"\{\{asset:([\w./-]+)\}\}")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# Only our own origin: scripts and styles from /static, data from /v1. uPlot sets element.style
# from script (CSSOM), which style-src does not restrict.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: its bytes, content type (with charset), and the hash in its URL."""

    body: bytes
    content_type: str
    version: str

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _read(name: str) -> bytes:
    return resources.files("collector.out").joinpath("static", name).read_bytes()


def _asset(name: str, body: bytes) -> Asset:
    suffix = "." + name.rsplit(".", 1)[-1]
    kind = _TYPES[suffix]
    return Asset(body, f"{kind}; charset=utf-8", hashlib.sha256(body).hexdigest()[:16])


def load_assets() -> tuple[Asset, dict[str, Asset]]:
    """The page (its asset references resolved to versioned URLs) and the assets by name."""
    assets = {name: _asset(name, _read(name)) for name in _ASSETS}

    def url(match: re.Match[str]) -> str:
        name = match[1]
        return f"/static/{name}?v={assets[name].version}"

    html = _REF.sub(url, _read("index.html").decode("utf-8")).encode("utf-8")
    return _asset("index.html", html), assets


def _answer(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {
        "Cache-Control": cache_control,
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def add_routes(app: web.Application) -> None:
    """Add `GET /` and `GET /static/{name}` to `app` (the assets are read once, here)."""
    page, assets = load_assets()

    async def index(request: web.Request) -> web.Response:
        response = _answer(request, page, _REVALIDATE)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    async def static(request: web.Request) -> web.Response:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound(text="no such file")
        current = request.query.get("v") == asset.version
        return _answer(request, asset, _IMMUTABLE if current else _REVALIDATE)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name:.+}", static)
