"""The update server's chunk store client (``ServerChunks``) against loopback servers that
misbehave on purpose: every refusal names the host and the chunk, nothing past the signed length
is read, a stall or a dead server costs bounded time, redirects are not followed, TLS is checked,
and a pinned address is the only one connected to while the URL's host names the server."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from sysupd.delta.fetch import MissingChunk
from sysupd.errors import AcquireError
from sysupd.sources.chunkstore import ServerChunks
from sysupd.sources.http import FetchLimits
from tests.fetching import Serve, closed_port, self_signed

PATH = "chunks/ab/ab01.zst"
BODY = bytes(range(256)) * 64  # 16 KiB
FAST = FetchLimits(min_rate_window_s=0.5, connect_timeout_s=2, resume_tries=1)


class Store:
    """Serves ``BODY`` at ``/targets/chunks/ab/ab01.zst``, or misbehaves as told; records the
    Host header of every request."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.mode = "ok"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/targets/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hosts.append(request.headers.get("Host", ""))
        if request.match_info["path"] != PATH or self.mode == "missing":
            raise web.HTTPNotFound()
        if self.mode == "error":
            raise web.HTTPServiceUnavailable()
        if self.mode == "redirect":
            raise web.HTTPFound("/targets/elsewhere")
        response = web.StreamResponse()
        if self.mode == "announced-long":
            response.content_length = 10 * len(BODY)
        await response.prepare(request)
        if self.mode == "endless":
            while True:
                await response.write(BODY)
        if self.mode == "stall":
            await response.write(BODY[:100])
            await asyncio.sleep(30)
        await response.write(BODY)
        return response


@pytest.fixture
def store() -> Store:
    return Store()


async def _get(chunks: ServerChunks, max_bytes: int = len(BODY), deadline_s: float = 10) -> bytes:
    async with chunks.open(2) as get:
        return await get(PATH, max_bytes, deadline_s)


async def test_a_chunk_comes_whole_and_plain(serve: Serve, store: Store) -> None:
    port = await serve(store.app())
    assert await _get(ServerChunks(f"http://127.0.0.1:{port}/targets/", FAST)) == BODY


@pytest.mark.parametrize(
    ("mode", "error", "named"),
    [
        ("missing", MissingChunk, r"127\.0\.0\.1:\d+ has no chunk chunks/ab/ab01\.zst \(HTTP 404"),
        ("error", AcquireError, r"answered HTTP 503 for chunk chunks/ab/ab01\.zst"),
        ("redirect", AcquireError, r"HTTP 302 for chunk .* \(redirects are not followed\)"),
        ("announced-long", AcquireError, r"is 163840 bytes, more than its signed length"),
        ("endless", AcquireError, r"longer than its signed length \(16384\)"),
        ("stall", AcquireError, r"stalled: nothing arrived for 0\.5 s"),
    ],
)
async def test_each_way_a_store_goes_wrong_is_refused_by_name(
    serve: Serve, store: Store, mode: str, error: type[Exception], named: str
) -> None:
    store.mode = mode
    port = await serve(store.app())
    chunks = ServerChunks(f"http://127.0.0.1:{port}/targets/", FAST)
    with pytest.raises(error, match=named):
        await asyncio.wait_for(_get(chunks), timeout=10)
    assert len(store.hosts) == 1  # a redirect is not followed, nothing is asked twice


async def test_the_deadline_bounds_a_slow_chunk(serve: Serve, store: Store) -> None:
    store.mode = "stall"
    port = await serve(store.app())
    chunks = ServerChunks(f"http://127.0.0.1:{port}/targets/", FetchLimits(min_rate_window_s=30))
    with pytest.raises(AcquireError, match=r"did not arrive from .* within the time limit"):
        await asyncio.wait_for(_get(chunks, deadline_s=0.3), timeout=10)


async def test_a_dead_server_is_named() -> None:
    port = closed_port()
    chunks = ServerChunks(f"http://127.0.0.1:{port}/targets/", FAST)
    with pytest.raises(AcquireError, match=rf"could not connect to 127\.0\.0\.1:{port}"):
        await _get(chunks)


async def test_a_pinned_address_is_connected_to_and_the_host_still_names_the_server(
    serve: Serve, store: Store
) -> None:
    port = await serve(store.app())
    chunks = ServerChunks(f"http://updates.example:{port}/targets/", FAST, address="127.0.0.1")
    assert await _get(chunks) == BODY
    assert store.hosts == [f"updates.example:{port}"]


async def test_tls_is_checked_against_the_given_trust(
    tmp_path: Path, serve: Serve, store: Store
) -> None:
    server_context, cert = self_signed(tmp_path)
    port = await serve(store.app(), ssl_context=server_context)
    url = f"https://127.0.0.1:{port}/targets/"
    trusting = ssl.create_default_context(cafile=str(cert))
    assert await _get(ServerChunks(url, FAST, ssl_context=trusting)) == BODY
    with pytest.raises(AcquireError, match=re.escape("the certificate of 127.0.0.1 is not")):
        await _get(ServerChunks(url, FAST))  # the system's trust store does not know it
    careless = ssl.create_default_context()
    careless.check_hostname = False
    careless.verify_mode = ssl.CERT_NONE
    with pytest.raises(AcquireError, match="must require certificates"):
        await _get(ServerChunks(url, FAST, ssl_context=careless))
