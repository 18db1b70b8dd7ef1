"""Serving the web page's files: ``/`` (the page) and ``/static/<name>`` (its scripts and styles).

The files ship inside the package (``sysupd/web/static``) and are read once, when the service
starts; nothing is built. The page names each asset with its content hash (``/static/app.js?v=…``,
filled in here from ``{{asset:app.js}}`` markers), so an asset asked for with its current hash is
cached for a year and a new release is picked up at once: the page itself is ``no-cache`` (always
revalidated with its ``ETag``). Every response carries a strict Content-Security-Policy: only the
page's own scripts, styles and connections, no framing — so neither an injected string nor another
site can run code in it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

__all__ = ["PAGE_KEY", "SECURITY_HEADERS", "PageAssets", "handle_asset", "handle_page"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_MARKER = re.compile(rb"\{\{asset:([A-Za-z0-9._-]+)\}\}")
_PAGE = "index.html"
_FOREVER = "public, max-age=31536000, immutable"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    version: str
    """The first 16 hex digits of the SHA-256 of the body: its ETag and cache-busting tag."""


class PageAssets:
    """The page and its assets, in memory."""

    def __init__(self) -> None:
        folder = resources.files("sysupd.web") / "static"
        assets: dict[str, _Asset] = {}
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _TYPES and entry.name != _PAGE:
                assets[entry.name] = _asset(entry.read_bytes(), _TYPES[suffix])
        self._assets = assets
        page = (folder / _PAGE).read_bytes()

        def link(found: re.Match[bytes]) -> bytes:
            name = found.group(1).decode()
            if name not in assets:
                raise LookupError(f"{_PAGE} names a missing asset {name!r}")
            return f"/static/{name}?v={assets[name].version}".encode()

        self.page = _asset(_MARKER.sub(link, page), _TYPES[".html"])

    def get(self, name: str) -> _Asset | None:
        """The asset called ``name``, if there is one."""
        return self._assets.get(name)


PAGE_KEY: web.AppKey[PageAssets] = web.AppKey("page")
"""Where the HTTP listener's application keeps the page."""


async def handle_page(request: web.Request) -> web.StreamResponse:
    """``GET /``: the page (always revalidated)."""
    return _respond(request, request.app[PAGE_KEY].page, "no-cache")


async def handle_asset(request: web.Request) -> web.StreamResponse:
    """``GET /static/<name>``: an asset, cached for good when asked for by its current hash."""
    asset = request.app[PAGE_KEY].get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound(text="no such file\n", headers=SECURITY_HEADERS)
    current = request.query.get("v") == asset.version
    return _respond(request, asset, _FOREVER if current else "no-cache")


def _asset(body: bytes, content_type: str) -> _Asset:
    return _Asset(body, content_type, hashlib.sha256(body).hexdigest()[:16])


def _respond(request: web.Request, asset: _Asset, cache: str) -> web.Response:
    etag = f'"{asset.version}"'
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": etag}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})
