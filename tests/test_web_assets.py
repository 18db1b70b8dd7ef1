"""The web page and its files at ``/`` of the HTTP listener: types, caching, security headers."""

from __future__ import annotations

import re

import aiohttp

from sysupd.api.service import Service


def _base(service: Service) -> str:
    return f"http://127.0.0.1:{service.http_port}"


async def test_the_page_is_html_revalidated_and_locked_down(
    service: Service, http: aiohttp.ClientSession
) -> None:
    async with http.get(_base(service) + "/") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
        assert reply.headers["Cache-Control"] == "no-cache"
        csp = reply.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        etag = reply.headers["ETag"]
        page = await reply.text()
    assert "{{asset:" not in page
    async with http.get(_base(service) + "/", headers={"If-None-Match": etag}) as reply:
        assert reply.status == 304
        assert await reply.read() == b""


async def test_assets_named_by_their_hash_are_cached_for_good(
    service: Service, http: aiohttp.ClientSession
) -> None:
    async with http.get(_base(service) + "/") as reply:
        page = await reply.text()
    links = dict(re.findall(r'"/static/([a-z.]+)\?v=([0-9a-f]{16})"', page))
    assert {"app.js", "style.css"} <= set(links)
    types = {"app.js": "text/javascript", "style.css": "text/css"}
    for name, kind in types.items():
        async with http.get(f"{_base(service)}/static/{name}?v={links[name]}") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith(kind)
            assert reply.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert reply.headers["ETag"] == f'"{links[name]}"'
        # Asked for with no or an old hash, it is revalidated instead: never a stale script.
        async with http.get(f"{_base(service)}/static/{name}?v=0000") as reply:
            assert reply.status == 200
            assert reply.headers["Cache-Control"] == "no-cache"


async def test_unknown_files_and_paths_are_404(
    service: Service, http: aiohttp.ClientSession
) -> None:
    for path in ("/static/nope.js", "/static/..%2Fassets.py", "/static/index.html", "/x"):
        async with http.get(_base(service) + path) as reply:
            assert reply.status == 404, path


async def test_the_page_is_not_on_the_websocket_listener(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """The WebSocket listener's ``/`` is the contract's WebSocket path, not the page."""
    async with http.get(f"http://127.0.0.1:{service.ws_port}/") as reply:
        assert reply.status != 200 or "text/html" not in reply.headers.get("Content-Type", "")
