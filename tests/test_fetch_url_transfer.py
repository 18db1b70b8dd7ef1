"""Moving the bytes of a fetch URL: whole files, limits, stalls, and resuming after drops.

Each test starts a real aiohttp server on 127.0.0.1 whose knobs make it misbehave in one way, and
reads the download the way the update engine does: ``read`` until ``b""``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from sysupd.errors import AcquireError
from sysupd.sources.lan import FetchLimits, LanDownload, PinnedTarget, check_url

MIB = 1 << 20
DATA = random.Random(11).randbytes(3 * MIB)
LOOPBACK = ["127.0.0.0/8"]
BLOCK = 64 * 1024

Serve = Callable[[web.Application], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on a free port of 127.0.0.1; returns the port."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> int:
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


class FileServer:
    """Serves ``data`` at /file, with Range and If-Range unless told otherwise.

    Knobs: ``drops`` answers are cut off after ``drop_after`` bytes of body; ``stall_after``
    bytes are sent and then nothing; ``pause_s`` between blocks; ``etags`` hands out a new ETag
    (and new content) from the second answer on; ``chunked`` sends no length. Every request's
    Range and If-Range headers are recorded.
    """

    def __init__(
        self,
        data: bytes = DATA,
        *,
        ranges: bool = True,
        drops: int = 0,
        drop_after: int = MIB,
        stall_after: int | None = None,
        pause_s: float = 0.0,
        block: int = BLOCK,
        changes: bool = False,
        chunked: bool = False,
    ) -> None:
        self.data = data
        self.ranges = ranges
        self.drops = drops
        self.drop_after = drop_after
        self.stall_after = stall_after
        self.pause_s = pause_s
        self.block = block
        self.changes = changes
        self.chunked = chunked
        self.requests: list[tuple[str | None, str | None]] = []
        self.app = web.Application()
        self.app.router.add_get("/file", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.headers.get("Range"), request.headers.get("If-Range")))
        data, etag = self.data, '"v1"'
        if self.changes and len(self.requests) > 1:
            data, etag = data[::-1], '"v2"'
        start = 0
        wanted = request.headers.get("If-Range") in (None, etag)
        if self.ranges and wanted and request.http_range.start is not None:
            start = request.http_range.start
        response = web.StreamResponse(status=206 if start else 200)
        response.headers["ETag"] = etag
        if self.ranges:
            response.headers["Accept-Ranges"] = "bytes"
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(data) - start
        await response.prepare(request)
        sent, drop = 0, self.drops > 0
        self.drops -= drop
        for offset in range(start, len(data), self.block):
            if drop and sent >= self.drop_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if self.stall_after is not None and sent >= self.stall_after:
                await asyncio.sleep(60)  # cancelled when the client goes away
            await response.write(data[offset : offset + self.block])
            sent += self.block
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
        await response.write_eof()
        return response


async def open_file(serve: Serve, server: FileServer) -> PinnedTarget:
    """Start ``server`` and check the URL of its file."""
    port = await serve(server.app)
    return await check_url(f"http://127.0.0.1:{port}/file", LOOPBACK)


async def read_into(parts: list[bytes], download: LanDownload, size: int = BLOCK) -> None:
    """Append what ``download`` hands out to ``parts`` until its end."""
    while chunk := await download.read(size):
        assert len(chunk) <= size
        parts.append(chunk)


async def fetch(
    target: PinnedTarget, limits: FetchLimits, progress: list[tuple[int, int | None]] | None = None
) -> bytes:
    """Read the whole download in 64 KiB reads."""
    report = None if progress is None else lambda done, total: progress.append((done, total))
    parts: list[bytes] = []
    async with LanDownload(target, LOOPBACK, limits, progress=report) as download:
        await read_into(parts, download)
        assert await download.read(BLOCK) == b""
    return b"".join(parts)


async def test_a_good_download_is_byte_identical_with_progress(serve: Serve) -> None:
    server = FileServer()
    target = await open_file(serve, server)
    progress: list[tuple[int, int | None]] = []
    assert await fetch(target, FetchLimits(max_bytes=len(DATA)), progress) == DATA
    assert server.requests == [(None, None)]
    assert progress[-1] == (len(DATA), len(DATA))
    assert 3 <= len(progress) <= 8  # about once per MiB, not once per read
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


async def test_a_file_without_a_length_is_read_to_its_end(serve: Serve) -> None:
    target = await open_file(serve, FileServer(chunked=True))
    progress: list[tuple[int, int | None]] = []
    assert await fetch(target, FetchLimits(max_bytes=len(DATA)), progress) == DATA
    assert progress[-1] == (len(DATA), None)


async def test_an_error_status_is_named(serve: Serve) -> None:
    port = await serve(web.Application())
    target = await check_url(f"http://127.0.0.1:{port}/missing", LOOPBACK)
    with pytest.raises(AcquireError, match=r"^the server answered 404 Not Found$"):
        await fetch(target, FetchLimits(max_bytes=MIB))


async def test_a_refused_connection_is_named() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = await check_url(f"http://127.0.0.1:{port}/file", LOOPBACK)
    with pytest.raises(AcquireError, match=f"could not connect to 127.0.0.1:{port}"):
        await fetch(target, FetchLimits(max_bytes=MIB))


async def test_a_silent_tls_server_hits_the_connect_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts, then never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        target = await check_url(f"https://127.0.0.1:{port}/file", LOOPBACK)
        started = time.monotonic()
        with pytest.raises(AcquireError, match=r"could not connect to .* within 0.3 s"):
            await fetch(target, FetchLimits(max_bytes=MIB, connect_timeout_s=0.3))
        assert time.monotonic() - started < 2
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
    assert len(accepted) == 1


async def test_a_server_that_stops_mid_body_is_a_stall(serve: Serve) -> None:
    target = await open_file(serve, FileServer(stall_after=MIB))
    limits = FetchLimits(max_bytes=len(DATA), min_rate_window_s=0.3)
    started = time.monotonic()
    with pytest.raises(AcquireError, match=r"the transfer stalled: nothing arrived for 0\.3 s"):
        await fetch(target, limits)
    assert time.monotonic() - started < 2


async def test_a_trickle_below_the_minimum_rate_is_a_stall(serve: Serve) -> None:
    target = await open_file(serve, FileServer(block=100, pause_s=0.02))
    limits = FetchLimits(max_bytes=len(DATA), min_rate_bps=50_000, min_rate_window_s=0.4)
    started = time.monotonic()
    with pytest.raises(AcquireError, match=r"stalled: less than 50000 bytes/s over 0\.4 s"):
        await fetch(target, limits)
    assert time.monotonic() - started < 2


async def test_a_slow_consumer_is_not_taken_for_a_stall(serve: Serve) -> None:
    target = await open_file(serve, FileServer(data=DATA[: BLOCK * 4]))
    limits = FetchLimits(max_bytes=len(DATA), min_rate_bps=10 * MIB, min_rate_window_s=0.2)
    parts = []
    async with LanDownload(target, LOOPBACK, limits) as download:
        while chunk := await download.read(BLOCK):
            parts.append(chunk)
            await asyncio.sleep(0.1)  # a consumer slower than the rate the server must keep
    assert b"".join(parts) == DATA[: BLOCK * 4]


async def test_the_total_deadline(serve: Serve) -> None:
    target = await open_file(serve, FileServer(pause_s=0.02))
    started = time.monotonic()
    with pytest.raises(AcquireError, match=r"did not finish within 0\.4 s"):
        await fetch(target, FetchLimits(max_bytes=len(DATA), deadline_s=0.4))
    assert time.monotonic() - started < 2


async def test_an_announced_size_over_the_limit_is_refused_before_reading(serve: Serve) -> None:
    target = await open_file(serve, FileServer())
    with pytest.raises(AcquireError, match=f"file is {len(DATA)} bytes, more than the limit"):
        async with LanDownload(target, LOOPBACK, FetchLimits(max_bytes=MIB)):
            pass


async def test_more_bytes_than_the_limit_are_never_handed_out(serve: Serve) -> None:
    target = await open_file(serve, FileServer(chunked=True))
    parts: list[bytes] = []
    async with LanDownload(target, LOOPBACK, FetchLimits(max_bytes=MIB)) as download:
        with pytest.raises(AcquireError, match=f"sent more than the limit of {MIB} bytes"):
            await read_into(parts, download, BLOCK - 1)
    assert MIB - BLOCK < len(b"".join(parts)) <= MIB


async def test_a_drop_is_resumed_with_range(serve: Serve) -> None:
    server = FileServer(drops=1)
    target = await open_file(serve, server)
    assert await fetch(target, FetchLimits(max_bytes=len(DATA))) == DATA
    assert len(server.requests) == 2
    first, second = server.requests
    assert first == (None, None)
    assert second[0] is not None
    assert second[0].startswith("bytes=")
    assert second[1] == '"v1"'
    assert int(second[0][6:].rstrip("-")) >= MIB // 2


async def test_a_drop_from_a_server_without_ranges_skips_what_was_read(serve: Serve) -> None:
    server = FileServer(ranges=False, drops=2, drop_after=MIB)
    target = await open_file(serve, server)
    progress: list[tuple[int, int | None]] = []
    assert await fetch(target, FetchLimits(max_bytes=len(DATA)), progress) == DATA
    assert len(server.requests) == 3
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


async def test_more_drops_than_resume_tries_fail(serve: Serve) -> None:
    server = FileServer(drops=10, drop_after=256 * 1024)
    target = await open_file(serve, server)
    with pytest.raises(AcquireError, match="gave up after 2 of 2 allowed resumes"):
        await fetch(target, FetchLimits(max_bytes=len(DATA), resume_tries=2))
    assert len(server.requests) == 3


async def test_a_file_changed_during_the_download_is_not_spliced(serve: Serve) -> None:
    server = FileServer(drops=1, changes=True)
    target = await open_file(serve, server)
    with pytest.raises(AcquireError, match="the file changed on the server"):
        await fetch(target, FetchLimits(max_bytes=len(DATA)))
    assert len(server.requests) == 2


async def test_a_failed_download_stays_failed(serve: Serve) -> None:
    target = await open_file(serve, FileServer(drops=1))
    limits = FetchLimits(max_bytes=len(DATA), resume_tries=0)
    async with LanDownload(target, LOOPBACK, limits) as download:
        with pytest.raises(AcquireError, match="broke after"):
            await read_into([], download)
        with pytest.raises(AcquireError, match="broke after"):
            await download.read(BLOCK)
