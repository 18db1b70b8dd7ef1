"""Moving the bytes of a URL, the same for a LAN ``fetch_url`` and for the update server.

Each test starts a real aiohttp server on 127.0.0.1 whose knobs make it misbehave in one way and
runs twice: through ``open_download`` (errors are ``AcquireError``) and through
``OriginFetcher.fetch`` as ngclient calls it (errors are python-tuf's, of the type named). The
rules themselves are tabled in test_transfer_rules.py; this shows the one stack applies them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from tuf.api.exceptions import (
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)

from sysupd.errors import AcquireError
from sysupd.sources.lan import FetchLimits
from tests.fetching import (
    BLOCK,
    DATA,
    MIB,
    Client,
    FileServer,
    LanClient,
    OriginClient,
    ProgressLog,
    Serve,
    closed_port,
    drain,
    self_signed,
)

FAST = FetchLimits(deadline_s=15, min_rate_window_s=5, connect_timeout_s=5, max_redirects=3)


@pytest.fixture(params=["lan", "origin"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """Each way the service fetches."""
    way = LanClient() if request.param == "lan" else OriginClient()
    yield way
    way.close()


async def start(serve: Serve, server: FileServer) -> str:
    """Start ``server``; the URL of its file."""
    return f"http://127.0.0.1:{await serve(server.app)}/file"


# -- whole files ----------------------------------------------------------------------------------


async def test_a_good_download_is_byte_identical_with_progress(
    serve: Serve, client: Client
) -> None:
    server = FileServer()
    progress: ProgressLog = []
    assert await client.fetch(await start(serve, server), FAST, progress=progress) == DATA
    assert server.requests == [("/file", None, None)]
    assert progress[-1] == (len(DATA), len(DATA))
    assert len(progress) <= 8  # about once per MiB or second and at the end, not once per read
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


async def test_a_file_without_a_length_is_read_to_its_end(serve: Serve, client: Client) -> None:
    progress: ProgressLog = []
    url = await start(serve, FileServer(chunked=True))
    assert await client.fetch(url, FAST, progress=progress) == DATA
    assert progress[-1] == (len(DATA), None)


async def test_proxy_variables_in_the_environment_are_ignored(
    serve: Serve, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = FileServer()
    assert await client.fetch(await start(serve, server), FAST) == DATA
    assert server.requests == [("/file", None, None)]


# -- answers refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404, 500, 503])
async def test_an_error_status_is_named(serve: Serve, client: Client, status: int) -> None:
    url = await start(serve, FileServer(status=status))
    named = client.for_("/file")
    with client.fails(rf"^the server answered {status} [A-Z][^/]*{named}$", DownloadHTTPError):
        await client.fetch(url, FAST)


async def test_content_coding_is_never_undone(serve: Serve, client: Client) -> None:
    """The update server's coded answer is refused; a LAN server's is handed out as sent (the
    engine verifies the bytes, so a coded bundle fails there, named)."""
    url = await start(serve, FileServer(coding="gzip"))
    if not client.strict:
        assert await client.fetch(url, FAST) == DATA
        return
    with client.fails("the server sent /file with content coding gzip"):
        await client.fetch(url, FAST)


async def test_an_announced_size_over_the_limit_is_refused_before_reading(
    serve: Serve, client: Client
) -> None:
    parts: list[bytes] = []
    url = await start(serve, FileServer())
    with client.fails(
        f"{client.subject('/file')} is {len(DATA)} bytes, more than the limit of {MIB}",
        DownloadLengthMismatchError,
    ):
        await client.fetch(url, replace(FAST, max_bytes=MIB), parts=parts)
    assert parts == []


async def test_more_bytes_than_the_limit_are_never_handed_out(serve: Serve, client: Client) -> None:
    parts: list[bytes] = []
    url = await start(serve, FileServer(chunked=True))
    with client.fails(
        f"{client.subject('/file')} is longer than the limit of {MIB} bytes",
        DownloadLengthMismatchError,
    ):
        await client.fetch(url, replace(FAST, max_bytes=MIB), parts=parts)
    assert MIB - BLOCK < len(b"".join(parts)) <= MIB


# -- redirects ------------------------------------------------------------------------------------


async def test_a_redirect_is_followed(serve: Serve, client: Client) -> None:
    server = FileServer()
    port = await serve(server.app)
    assert await client.fetch(f"http://127.0.0.1:{port}/same", FAST) == DATA
    assert server.paths == ["/same", "/file"]
    download = await client.open(f"http://127.0.0.1:{port}/same", FAST)
    with download:
        assert download.url == f"http://127.0.0.1:{port}/file?x=1"
        assert (download.host, download.address) == ("127.0.0.1", "127.0.0.1")


async def test_endless_redirects_are_cut_off(serve: Serve, client: Client) -> None:
    server = FileServer()
    port = await serve(server.app)
    with client.fails(f"the server redirected{client.of('/loop')[3:]} more than 3 times"):
        await client.fetch(f"http://127.0.0.1:{port}/loop", FAST)
    assert len(server.requests) == 4


async def test_a_redirect_without_a_location_is_refused(serve: Serve, client: Client) -> None:
    port = await serve(FileServer().app)
    with client.fails(f"the server answered 302 Found{client.for_('/nowhere')} without a Location"):
        await client.fetch(f"http://127.0.0.1:{port}/nowhere", FAST)


# -- connections and time limits ------------------------------------------------------------------


async def test_a_refused_connection_is_named(client: Client) -> None:
    port = closed_port()
    with client.fails(rf"could not connect to 127\.0\.0\.1:{port}: "):
        await client.fetch(f"http://127.0.0.1:{port}/file", FAST)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_silent_server_is_given_up(client: Client, scheme: str) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts, then never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with client.fails(
            rf"127\.0\.0\.1:{port} did not answer the request{client.for_('/file')} in time",
            SlowRetrievalError,
        ):
            await client.fetch(
                f"{scheme}://127.0.0.1:{port}/file",
                replace(FAST, connect_timeout_s=0.3, min_rate_window_s=0.3),
            )
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
    assert len(accepted) == 1


async def test_a_server_that_stops_mid_body_is_a_stall(serve: Serve, client: Client) -> None:
    url = await start(serve, FileServer(stall_after=MIB))
    with client.fails(
        rf"the transfer{client.of('/file')} stalled: nothing arrived for 0\.3 s",
        SlowRetrievalError,
    ):
        await client.fetch(url, replace(FAST, min_rate_window_s=0.3))


async def test_a_trickle_below_the_minimum_rate_is_a_stall(serve: Serve, client: Client) -> None:
    url = await start(serve, FileServer(block=100, pause_s=0.02))
    with client.fails(r"stalled: less than 50000 bytes/s over 0\.4 s", SlowRetrievalError):
        await client.fetch(url, replace(FAST, min_rate_bps=50_000, min_rate_window_s=0.4))


async def test_a_slow_consumer_is_not_taken_for_a_stall(serve: Serve, client: Client) -> None:
    data = DATA[: BLOCK * 4]
    url = await start(serve, FileServer(data))
    slow = replace(FAST, min_rate_bps=10 * MIB, min_rate_window_s=0.2)
    assert await client.fetch(url, slow, pause_s=0.1) == data  # slower than the server must be


async def test_the_total_deadline(serve: Serve, client: Client) -> None:
    url = await start(serve, FileServer(pause_s=0.02))
    with client.fails(
        rf"the download{client.of('/file')} did not finish within 0\.4 s", SlowRetrievalError
    ):
        await client.fetch(url, replace(FAST, deadline_s=0.4))


async def test_an_untrusted_certificate_is_refused(
    serve: Serve, client: Client, tmp_path: Path
) -> None:
    server_context, cert = self_signed(tmp_path)
    server = FileServer()
    url = f"https://127.0.0.1:{await serve(server.app, ssl_context=server_context)}/file"
    with client.fails(r"the certificate of 127\.0\.0\.1 is not trusted: .*self.signed"):
        await client.fetch(url, FAST)
    trusted = ssl.create_default_context(cafile=str(cert))
    assert await client.fetch(url, FAST, ssl_context=trusted) == DATA
    assert len(server.requests) == 1
    careless = ssl.create_default_context()
    careless.check_hostname = False
    careless.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="require and verify certificates"):
        await client.fetch(url, FAST, ssl_context=careless)


# -- resuming -------------------------------------------------------------------------------------


async def test_a_drop_is_resumed_with_range_and_if_range(serve: Serve, client: Client) -> None:
    server = FileServer(drops=1)
    assert await client.fetch(await start(serve, server), FAST) == DATA
    assert len(server.requests) == 2
    assert server.requests[0] == ("/file", None, None)
    _, ranged, if_range = server.requests[1]
    assert ranged is not None
    assert ranged.startswith("bytes=")
    assert MIB // 2 <= int(ranged.removeprefix("bytes=").rstrip("-")) < len(DATA)
    assert if_range == '"v1"'


async def test_a_redirected_download_resumes_at_the_final_url(serve: Serve, client: Client) -> None:
    server = FileServer(drops=1)
    port = await serve(server.app)
    assert await client.fetch(f"http://127.0.0.1:{port}/same", FAST) == DATA
    assert server.paths == ["/same", "/file", "/file"]
    assert server.requests[2][1] is not None


async def test_a_server_ignoring_range_is_resumed_by_skipping(serve: Serve, client: Client) -> None:
    server = FileServer(ranges=False, drops=2)
    progress: ProgressLog = []
    assert await client.fetch(await start(serve, server), FAST, progress=progress) == DATA
    assert len(server.requests) == 3
    assert all(ranged is not None for _, ranged, _ in server.requests[1:])
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


@pytest.mark.parametrize("ranges", [True, False])
async def test_a_file_changed_during_the_download_is_not_spliced(
    serve: Serve, client: Client, ranges: bool
) -> None:
    server = FileServer(drops=1, changes=True, ranges=ranges)
    with client.fails(f"the file changed on the server during the download{client.of('/file')}$"):
        await client.fetch(await start(serve, server), FAST)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("content_range", "reason"),
    [
        ("bytes 0-100/3145728", "the server resumed{} at byte 0 instead of byte"),
        ("bytes=5-", "the server's partial answer{} has no usable range"),
    ],
)
async def test_a_partial_answer_that_does_not_fit_is_refused(
    serve: Serve, client: Client, content_range: str, reason: str
) -> None:
    server = FileServer(drops=1, content_range=content_range)
    named = client.of("/file")[3:] if "resumed" in reason else client.for_("/file")
    with client.fails(reason.format(named)):
        await client.fetch(await start(serve, server), FAST)
    assert len(server.requests) == 2


async def test_more_drops_than_resume_tries_fail(serve: Serve, client: Client) -> None:
    server = FileServer(drops=10, drop_after=256 * 1024)
    with client.fails(
        rf"broke after .* bytes{client.of('/file')}: .*gave up after 2 of 2 allowed resumes"
    ):
        await client.fetch(await start(serve, server), replace(FAST, resume_tries=2))
    assert len(server.requests) == 3


async def test_a_drop_without_a_way_to_resume(serve: Serve, client: Client) -> None:
    """The update server's rules give up; a LAN download asks again anyway (the whole file, as
    the server ignores ranges, is the same size, so the bytes handed out are skipped: the engine
    verifies every byte, so a different file is caught there)."""
    server = FileServer(drops=1, ranges=False, etag=False)
    if not client.strict:
        assert await client.fetch(await start(serve, server), FAST) == DATA
        assert len(server.requests) == 2
        return
    with client.fails(r"(broke|ended) after .* of /file.*; the server offers no way to resume"):
        await client.fetch(await start(serve, server), FAST)
    assert len(server.requests) == 1


# -- the download as a stream ---------------------------------------------------------------------


async def test_a_download_reads_the_file_through_drops(serve: Serve, client: Client) -> None:
    server = FileServer(drops=1)
    download = await client.open(await start(serve, server), FAST)
    with download:
        assert download.size == len(DATA)
        assert await asyncio.to_thread(drain, download, 10_000) == DATA
    assert len(server.requests) == 2


async def test_a_failed_download_stays_failed(serve: Serve, client: Client) -> None:
    url = await start(serve, FileServer(drops=1))
    download = await client.open(url, replace(FAST, resume_tries=0))
    with download:
        with pytest.raises(AcquireError, match="broke after"):
            await asyncio.to_thread(drain, download)
        with pytest.raises(AcquireError, match="broke after"):
            download.read(BLOCK)
        with pytest.raises(AcquireError, match="broke after"):
            download.readinto(bytearray(BLOCK))


async def test_a_closed_download_reads_no_more(serve: Serve, client: Client) -> None:
    download = await client.open(await start(serve, FileServer()), FAST)
    assert len(await asyncio.to_thread(download.read, 100)) == 100
    download.close()
    with pytest.raises(AcquireError, match="closed"):
        download.read(100)


async def test_a_download_of_32_mib_holds_only_a_chunk_in_memory(
    serve: Serve, client: Client
) -> None:
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
    download = await client.open(f"http://127.0.0.1:{await serve(app)}/big", FAST)

    def stream() -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        buffer = bytearray(BLOCK)
        while count := download.readinto(buffer):
            digest.update(memoryview(buffer)[:count])
            size += count
        return digest.hexdigest(), size

    tracemalloc.start()
    try:
        with download:
            digest, size = await asyncio.to_thread(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (digest, size) == (expected.hexdigest(), blocks * len(block))
    assert peak < 4 * MIB
