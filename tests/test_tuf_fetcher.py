"""The update server fetcher: origin lock, HTTP errors, time limits, resuming, streams, ngclient.

Each test starts real aiohttp servers on 127.0.0.1 on the test's loop and runs the (blocking)
fetcher in a worker thread with ``asyncio.to_thread``, the way the online channel runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)
from tuf.ngclient import Updater

from sysupd.errors import AcquireError
from sysupd.sources.tuf_fetcher import FetcherLimits, OriginFetcher, StreamReader
from tests.certs import write_self_signed
from tests.releases import make_repo

MIB = 1 << 20
DATA = random.Random(7).randbytes(3 * MIB)
BLOCK = 64 * 1024
FAST = FetcherLimits(socket_timeout_s=5, deadline_s=15, min_rate_window_s=5)

Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on a free port of 127.0.0.1 (TLS if given a context); returns the port."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> int:
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


class FileServer:
    """Serves ``data`` at /file (and redirects at /same, /away, /loop), recording requests.

    Knobs: ``ranges`` honours Range/If-Range and says ``Accept-Ranges``; ``etag`` sends one;
    ``drops`` answers are cut off after ``drop_after`` body bytes; ``stall_after`` bytes are sent
    and then nothing; ``pause_s`` between blocks of ``block`` bytes; ``changes`` serves other
    content under a new ETag from the second answer on; ``chunked`` sends no length;
    ``status`` answers every request with that status and no body.
    """

    def __init__(
        self,
        data: bytes = DATA,
        *,
        ranges: bool = True,
        etag: bool = True,
        drops: int = 0,
        drop_after: int = MIB,
        stall_after: int | None = None,
        pause_s: float = 0.0,
        block: int = BLOCK,
        changes: bool = False,
        chunked: bool = False,
        status: int | None = None,
        away: str = "",
    ) -> None:
        self.data = data
        self.ranges = ranges
        self.etag = etag
        self.drops = drops
        self.drop_after = drop_after
        self.stall_after = stall_after
        self.pause_s = pause_s
        self.block = block
        self.changes = changes
        self.chunked = chunked
        self.status = status
        self.away = away
        self.requests: list[tuple[str, str | None, str | None]] = []
        self.app = web.Application()
        self.app.router.add_get("/file", self.handle)
        self.app.router.add_get("/same", self.redirect)
        self.app.router.add_get("/loop", self.redirect)
        self.app.router.add_get("/away", self.redirect)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, None, None))
        location = {"/same": "/file?x=1", "/loop": "/loop", "/away": self.away}[request.path]
        raise web.HTTPFound(location)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        self.requests.append((request.path, headers.get("Range"), headers.get("If-Range")))
        if self.status is not None:
            return web.Response(status=self.status)
        data, etag = self.data, '"v1"'
        if self.changes and len(self.requests) > 1:
            data, etag = data[::-1], '"v2"'
        start = 0
        wanted = headers.get("If-Range") in (None, etag)
        if self.ranges and wanted and request.http_range.start is not None:
            start = request.http_range.start
        response = web.StreamResponse(status=206 if start else 200)
        if self.etag:
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


async def start_file(serve: Serve, server: FileServer) -> str:
    """Start ``server``; its origin."""
    return f"http://127.0.0.1:{await serve(server.app)}"


def read_all(fetcher: OriginFetcher, url: str) -> bytes:
    """The whole body, through ``fetch`` as ngclient calls it."""
    return b"".join(fetcher.fetch(url))


async def fetch(
    origin: str,
    url: str,
    limits: FetcherLimits = FAST,
    progress: list[tuple[str, int, int | None]] | None = None,
) -> bytes:
    """Fetch ``url`` in a worker thread with a fetcher for ``origin``."""
    report = None if progress is None else lambda *call: progress.append(call)
    with OriginFetcher(origin, limits=limits, progress=report) as fetcher:
        return await asyncio.to_thread(read_all, fetcher, url)


def closed_port() -> int:
    """A port on 127.0.0.1 with nobody listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- whole files and the origin lock --------------------------------------------------------------


async def test_a_good_fetch_is_byte_identical_with_progress(serve: Serve) -> None:
    server = FileServer()
    origin = await start_file(serve, server)
    progress: list[tuple[str, int, int | None]] = []
    assert await fetch(origin, f"{origin}/file", progress=progress) == DATA
    assert server.requests == [("/file", None, None)]
    assert progress[-1] == (f"{origin}/file", len(DATA), len(DATA))
    assert len(progress) <= 5  # once per MiB or second and at the end, not once per read
    assert [done for _, done, _ in progress] == sorted(done for _, done, _ in progress)


async def test_a_body_without_a_length_is_read_to_its_end(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(chunked=True))
    assert await fetch(origin, f"{origin}/file") == DATA


async def test_a_url_on_another_origin_is_refused_without_connecting(serve: Serve) -> None:
    server = FileServer()
    origin = await start_file(serve, server)
    port = int(origin.rsplit(":", 1)[1])
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        other.setblocking(False)
        other_port = other.getsockname()[1]
        refused = [
            (f"http://127.0.0.1:{other_port}/file", f"127.0.0.1:{other_port}"),
            (f"https://127.0.0.1:{port}/file", "https://127.0.0.1"),
            (f"http://localhost:{port}/file", f"localhost:{port}"),
            (f"http://user:pw@127.0.0.1:{port}/file", "user name or password"),
            (f"ftp://127.0.0.1:{port}/file", "only http and https"),
        ]
        for url, named in refused:
            with pytest.raises(DownloadError, match=re.escape(named)):
                await fetch(origin, url)
        with pytest.raises(BlockingIOError):
            other.accept()  # nobody connected to the other server
    assert server.requests == []


async def test_the_origin_may_carry_a_path_and_only_its_origin_counts(serve: Serve) -> None:
    origin = await start_file(serve, FileServer())
    with OriginFetcher(f"{origin}/repo/", limits=FAST) as fetcher:
        assert fetcher.origin == origin
    with pytest.raises(ValueError, match="http and https"):
        OriginFetcher("file:///srv/repo", limits=FAST)


async def test_a_redirect_on_the_origin_is_followed(serve: Serve) -> None:
    server = FileServer()
    origin = await start_file(serve, server)
    assert await fetch(origin, f"{origin}/same") == DATA
    assert [path for path, _, _ in server.requests] == ["/same", "/file"]


async def test_a_redirect_off_the_origin_is_refused(serve: Serve) -> None:
    other = FileServer()
    other_origin = await start_file(serve, other)
    server = FileServer(away=f"{other_origin}/file")
    origin = await start_file(serve, server)
    other_host = other_origin.removeprefix("http://")
    with pytest.raises(
        DownloadError, match=re.escape(f"redirect of /away to {other_host} was refused")
    ):
        await fetch(origin, f"{origin}/away")
    assert other.requests == []


async def test_endless_redirects_are_cut_off(serve: Serve) -> None:
    server = FileServer()
    origin = await start_file(serve, server)
    with pytest.raises(DownloadError, match="redirected /loop more than 3 times"):
        await fetch(origin, f"{origin}/loop")
    assert len(server.requests) == 4


@pytest.mark.parametrize("status", [403, 404, 500, 503])
async def test_an_http_error_is_a_download_http_error_with_its_status(
    serve: Serve, status: int
) -> None:
    origin = await start_file(serve, FileServer(status=status))
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(DownloadHTTPError, match=f"answered {status} .* for /file") as caught,
    ):
        await asyncio.to_thread(fetcher.download_bytes, f"{origin}/file", MIB)
    assert caught.value.status_code == status


async def test_a_refused_connection_is_a_download_error() -> None:
    origin = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(DownloadError, match=r"could not connect to 127\.0\.0\.1") as caught:
        await fetch(origin, f"{origin}/file")
    assert type(caught.value) is DownloadError


async def test_proxy_variables_in_the_environment_are_ignored(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = FileServer()
    origin = await start_file(serve, server)
    assert await fetch(origin, f"{origin}/file") == DATA
    assert server.requests == [("/file", None, None)]


# -- time limits ----------------------------------------------------------------------------------


async def test_a_server_that_stops_mid_body_is_a_slow_retrieval(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(stall_after=MIB))
    started = time.monotonic()
    with pytest.raises(SlowRetrievalError, match=r"nothing arrived for 0\.5 s"):
        await fetch(origin, f"{origin}/file", FetcherLimits(min_rate_window_s=0.5))
    assert time.monotonic() - started < 3


async def test_a_trickle_under_the_minimum_rate_is_a_slow_retrieval(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(block=1024, pause_s=0.05))
    limits = FetcherLimits(min_rate_bps=256 * 1024, min_rate_window_s=0.5)
    started = time.monotonic()
    with pytest.raises(SlowRetrievalError, match=r"stalled: less than 262144 bytes/s over 0\.5 s"):
        await fetch(origin, f"{origin}/file", limits)
    assert time.monotonic() - started < 3


async def test_the_total_deadline_ends_a_steady_download(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(pause_s=0.05))
    started = time.monotonic()
    with pytest.raises(SlowRetrievalError, match=r"did not finish within 0\.6 s"):
        await fetch(origin, f"{origin}/file", FetcherLimits(deadline_s=0.6))
    assert time.monotonic() - started < 1.5


async def test_a_slow_consumer_is_not_taken_for_a_slow_server(serve: Serve) -> None:
    data = DATA[: MIB // 2]
    origin = await start_file(serve, FileServer(data))
    limits = FetcherLimits(min_rate_bps=4 * MIB, min_rate_window_s=0.2)

    def slow_read(fetcher: OriginFetcher) -> bytes:
        parts: list[bytes] = []
        with fetcher.open_stream(f"{origin}/file", len(data)) as reader:
            while chunk := reader.read(BLOCK):
                parts.append(chunk)
                time.sleep(0.05)  # 1.3 MiB/s at most: the disk is slower than the network
        return b"".join(parts)

    with OriginFetcher(origin, limits=limits) as fetcher:
        assert await asyncio.to_thread(slow_read, fetcher) == data


async def test_a_silent_server_is_a_slow_retrieval() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts, then never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(SlowRetrievalError, match="did not answer"):
            await fetch(origin, f"{origin}/file", FetcherLimits(socket_timeout_s=0.3))
        for writer in accepted:
            writer.close()
            await writer.wait_closed()


# -- resuming -------------------------------------------------------------------------------------


async def test_a_dropped_connection_is_resumed_with_range(serve: Serve) -> None:
    server = FileServer(drops=1)
    origin = await start_file(serve, server)
    assert await fetch(origin, f"{origin}/file") == DATA
    assert len(server.requests) == 2
    assert server.requests[0] == ("/file", None, None)
    _, ranged, if_range = server.requests[1]
    assert ranged is not None
    assert ranged.startswith("bytes=")
    assert 0 < int(ranged.removeprefix("bytes=").rstrip("-")) < len(DATA)
    assert if_range == '"v1"'


async def test_a_redirected_download_resumes_at_the_final_url(serve: Serve) -> None:
    server = FileServer(drops=1)
    origin = await start_file(serve, server)
    assert await fetch(origin, f"{origin}/same") == DATA
    assert [path for path, _, _ in server.requests] == ["/same", "/file", "/file"]
    assert server.requests[2][1] is not None


async def test_a_server_without_range_support_is_resumed_by_skipping(serve: Serve) -> None:
    server = FileServer(drops=2, ranges=False)
    origin = await start_file(serve, server)
    assert await fetch(origin, f"{origin}/file") == DATA
    assert len(server.requests) == 3
    assert all(ranged is not None for _, ranged, _ in server.requests[1:])


@pytest.mark.parametrize("ranges", [True, False])
async def test_a_file_that_changed_between_attempts_is_refused(serve: Serve, ranges: bool) -> None:
    server = FileServer(drops=1, changes=True, ranges=ranges)
    origin = await start_file(serve, server)
    with pytest.raises(DownloadError, match="the file changed on the server"):
        await fetch(origin, f"{origin}/file")
    assert len(server.requests) == 2


async def test_a_drop_without_a_way_to_resume_fails(serve: Serve) -> None:
    server = FileServer(drops=1, ranges=False, etag=False)
    origin = await start_file(serve, server)
    with pytest.raises(DownloadError, match=r"broke after .* offers no way to resume"):
        await fetch(origin, f"{origin}/file")
    assert len(server.requests) == 1


async def test_resumes_are_limited(serve: Serve) -> None:
    server = FileServer(drops=5, drop_after=256 * 1024)
    origin = await start_file(serve, server)
    limits = FetcherLimits(resume_tries=2)
    with pytest.raises(DownloadError, match="gave up after 2 of 2 allowed resumes"):
        await fetch(origin, f"{origin}/file", limits)
    assert len(server.requests) == 3


# -- streams --------------------------------------------------------------------------------------


def drain(reader: StreamReader, size: int = BLOCK) -> bytes:
    """Everything ``reader`` hands out, read ``size`` bytes at a time."""
    parts: list[bytes] = []
    while chunk := reader.read(size):
        assert len(chunk) <= size
        parts.append(chunk)
    assert reader.read(size) == b""
    return b"".join(parts)


async def test_a_stream_reads_the_file_through_drops(serve: Serve) -> None:
    server = FileServer(drops=1)
    origin = await start_file(serve, server)
    with OriginFetcher(origin, limits=FAST) as fetcher:
        reader = await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", len(DATA))
        with reader:
            assert reader.size == len(DATA)
            assert await asyncio.to_thread(drain, reader, 10_000) == DATA
    assert len(server.requests) == 2


async def test_a_stream_refuses_a_file_announced_longer_than_its_signed_length(
    serve: Serve,
) -> None:
    origin = await start_file(serve, FileServer())
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(AcquireError, match="longer than its signed length of 1000 bytes"),
    ):
        await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", 1000)


async def test_a_stream_stops_a_body_running_past_its_signed_length(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(chunked=True))
    with OriginFetcher(origin, limits=FAST) as fetcher:
        reader = await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", MIB)
        with reader:
            assert reader.size is None
            with pytest.raises(AcquireError, match=f"longer than its signed length of {MIB}"):
                await asyncio.to_thread(drain, reader)
            with pytest.raises(AcquireError, match="longer than its signed length"):
                reader.read(BLOCK)  # failed stays failed


async def test_a_stream_names_an_http_error_plainly(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(status=404))
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(AcquireError, match=r"^the server answered 404 Not Found for /file$"),
    ):
        await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", MIB)


async def test_a_stream_failure_mid_body_is_an_acquire_error(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(stall_after=MIB))
    limits = FetcherLimits(min_rate_window_s=0.3)
    with OriginFetcher(origin, limits=limits) as fetcher:
        reader = await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", len(DATA))
        with reader, pytest.raises(AcquireError, match=r"nothing arrived for 0\.3 s"):
            await asyncio.to_thread(drain, reader)


async def test_a_closed_stream_reads_no_more(serve: Serve) -> None:
    origin = await start_file(serve, FileServer())
    with OriginFetcher(origin, limits=FAST) as fetcher:
        reader = await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", len(DATA))
        assert len(await asyncio.to_thread(reader.read, 100)) == 100
        reader.close()
        with pytest.raises(AcquireError, match="closed"):
            reader.read(100)


async def test_a_stream_of_32_mib_holds_only_a_chunk_in_memory(serve: Serve) -> None:
    block = random.Random(3).randbytes(BLOCK)
    blocks = 512
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = blocks * len(block)
        await response.prepare(request)
        for _ in range(blocks):
            await response.write(block)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    origin = f"http://127.0.0.1:{await serve(app)}"

    def stream(fetcher: OriginFetcher) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with fetcher.open_stream(f"{origin}/big", blocks * len(block)) as reader:
            buffer = bytearray(BLOCK)
            while count := reader.readinto(buffer):
                digest.update(memoryview(buffer)[:count])
                size += count
        return digest.hexdigest(), size

    with OriginFetcher(origin, limits=FAST) as fetcher:
        tracemalloc.start()
        try:
            digest, size = await asyncio.to_thread(stream, fetcher)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (digest, size) == (expected.hexdigest(), blocks * len(block))
    assert peak < 4 * MIB


# -- TLS ------------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for 127.0.0.1, and the certificate's file."""
    cert_path, key_path = write_self_signed(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


async def test_https_verifies_the_certificate(serve: Serve, tmp_path: Path) -> None:
    server_context, cert = self_signed(tmp_path)
    server = FileServer()
    origin = f"https://127.0.0.1:{await serve(server.app, server_context)}"
    with pytest.raises(DownloadError, match=r"TLS with 127\.0\.0\.1:.* failed"):
        await fetch(origin, f"{origin}/file")
    trusted = ssl.create_default_context(cafile=str(cert))
    with OriginFetcher(origin, limits=FAST, ssl_context=trusted) as fetcher:
        assert await asyncio.to_thread(read_all, fetcher, f"{origin}/file") == DATA
    assert len(server.requests) == 1
    careless = ssl.create_default_context()
    careless.check_hostname = False
    careless.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="require and verify certificates"):
        OriginFetcher(origin, limits=FAST, ssl_context=careless)


# -- with ngclient --------------------------------------------------------------------------------


async def test_ngclient_refreshes_and_finds_a_release_through_the_fetcher(
    serve: Serve, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    release = repo.release("1.0.0")
    app = web.Application()
    app.router.add_static("/repo/metadata/", repo.path / "metadata")
    app.router.add_static("/repo/targets/", repo.path / "targets")
    origin = f"http://127.0.0.1:{await serve(app)}"
    base = f"{origin}/repo"
    cache, downloads = tmp_path / "cache", tmp_path / "downloads"
    cache.mkdir()
    downloads.mkdir()
    root = (repo.path / "metadata" / "1.root.json").read_bytes()

    def update(fetcher: OriginFetcher) -> tuple[bool, bytes, bytes]:
        updater = Updater(
            metadata_dir=str(cache),
            metadata_base_url=f"{base}/metadata/",
            target_dir=str(downloads),
            target_base_url=f"{base}/targets/",
            fetcher=fetcher,
            bootstrap=root,
        )
        updater.refresh()  # probes 2.root.json: the 404 ends the probe
        info = updater.get_targetinfo(release.target)
        assert info is not None
        path = updater.download_target(info)
        directory, _, name = release.target.rpartition("/")
        url = f"{base}/targets/{directory}/{release.sha256}.{name}"
        with fetcher.open_stream(url, release.length) as reader:
            streamed = drain(reader)
        return info.length == release.length, Path(path).read_bytes(), streamed

    with OriginFetcher(f"{base}/", limits=FAST) as fetcher:
        same_length, downloaded, streamed = await asyncio.to_thread(update, fetcher)
    assert same_length
    assert hashlib.sha256(downloaded).hexdigest() == release.sha256
    assert streamed == downloaded


async def test_ngclient_sees_a_length_cap_as_a_download_length_mismatch(serve: Serve) -> None:
    origin = await start_file(serve, FileServer())
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(DownloadLengthMismatchError),
    ):
        await asyncio.to_thread(fetcher.download_bytes, f"{origin}/file", MIB)
