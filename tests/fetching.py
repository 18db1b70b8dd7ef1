"""Loopback servers that misbehave on purpose, and the two ways the service fetches from them.

``FileServer`` serves one file with knobs for each way a server can go wrong. ``LanClient`` and
``OriginClient`` fetch a URL the way the service does for a LAN ``fetch_url`` (``open_download``,
errors are ``AcquireError``) and for the update server (``OriginFetcher.fetch`` as ngclient calls
it, errors are python-tuf's ``DownloadError`` family), so one test can hold both to one rule.
"""

from __future__ import annotations

import abc
import asyncio
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

import pytest
from aiohttp import web
from tuf.api.exceptions import DownloadError

from sysupd.errors import AcquireError
from sysupd.sources.lan import Download, FetchLimits, check_url, open_download
from sysupd.sources.tuf_fetcher import OriginFetcher
from tests.certs import write_self_signed

__all__ = [
    "BLOCK",
    "DATA",
    "LOOPBACK",
    "MIB",
    "Ask",
    "Client",
    "FileServer",
    "LanClient",
    "OriginClient",
    "ProgressLog",
    "Serve",
    "app_servers",
    "closed_port",
    "drain",
    "self_signed",
]

MIB = 1 << 20
DATA = random.Random(7).randbytes(3 * MIB)
BLOCK = 64 * 1024
LOOPBACK = ("127.0.0.0/8",)

ProgressLog = list[tuple[int, int | None]]


class Serve(Protocol):
    async def __call__(
        self, app: web.Application, host: str = ..., ssl_context: ssl.SSLContext | None = ...
    ) -> int: ...


@asynccontextmanager
async def app_servers() -> AsyncIterator[Serve]:
    """Start aiohttp apps on a free port of ``host`` (TLS with a context); returns the port."""
    runners: list[web.AppRunner] = []

    async def start(
        app: web.Application, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
    ) -> int:
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()
        port: int = runner.addresses[0][1]
        return port

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


class FileServer:
    """Serves ``data`` at /file (and redirects at /same, /loop, /away, /nowhere), recording
    every request's path, Range and If-Range.

    Knobs: ``ranges`` honours Range/If-Range and says ``Accept-Ranges``; ``etag`` sends one;
    ``drops`` answers are cut off after ``drop_after`` body bytes; ``stall_after`` bytes are sent
    and then nothing; ``pause_s`` between blocks of ``block`` bytes; ``changes`` serves other
    content under a new ETag from the second answer on; ``chunked`` sends no length; ``status``
    answers every request with that status and no body; ``coding`` sends that Content-Encoding;
    ``content_range`` replaces the Content-Range of partial answers; ``away`` is where /away
    points.
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
        coding: str | None = None,
        content_range: str | None = None,
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
        self.coding = coding
        self.content_range = content_range
        self.away = away
        self.requests: list[tuple[str, str | None, str | None]] = []
        self.app = web.Application()
        self.app.router.add_get("/file", self.handle)
        for path in ("/same", "/loop", "/away", "/nowhere"):
            self.app.router.add_get(path, self.redirect)

    @property
    def paths(self) -> list[str]:
        """The paths asked for, in order."""
        return [path for path, _, _ in self.requests]

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, None, None))
        if request.path == "/nowhere":
            return web.Response(status=302)
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
        if self.coding:
            response.headers["Content-Encoding"] = self.coding
        if start:
            whole = f"bytes {start}-{len(data) - 1}/{len(data)}"
            response.headers["Content-Range"] = self.content_range or whole
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(data) - start
        await response.prepare(request)
        await self._send_body(request, response, data[start:])
        return response

    async def _send_body(
        self, request: web.Request, response: web.StreamResponse, body: bytes
    ) -> None:
        sent, drop = 0, self.drops > 0
        self.drops -= drop
        for offset in range(0, len(body), self.block):
            if drop and sent >= self.drop_after:
                assert request.transport is not None
                request.transport.close()
                return
            if self.stall_after is not None and sent >= self.stall_after:
                await asyncio.sleep(60)  # cancelled when the client goes away
            await response.write(body[offset : offset + self.block])
            sent += self.block
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
        await response.write_eof()


def closed_port() -> int:
    """A port on 127.0.0.1 with nobody listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def self_signed(directory: Path, name: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for ``name``, and the certificate's file."""
    cert_path, key_path = write_self_signed(directory, name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def drain(download: Download, size: int = BLOCK, parts: list[bytes] | None = None) -> bytes:
    """Everything ``download`` hands out, read ``size`` bytes at a time (kept in ``parts``)."""
    parts = [] if parts is None else parts
    while chunk := download.read(size):
        assert len(chunk) <= size
        parts.append(chunk)
    assert download.read(size) == b""
    return b"".join(parts)


def _collect(chunks: Iterator[bytes], parts: list[bytes], pause_s: float) -> bytes:
    for chunk in chunks:
        parts.append(chunk)
        if pause_s:
            time.sleep(pause_s)  # a consumer slower than the network
    return b"".join(parts)


class Ask(NamedTuple):
    """How to fetch: the limits, where progress goes, the TLS trust."""

    limits: FetchLimits
    progress: Callable[[int, int | None], None] | None
    ssl_context: ssl.SSLContext | None


class Client(abc.ABC):
    """One way the service fetches a URL."""

    name: ClassVar[str]
    strict: ClassVar[bool]
    """The update server's rules: paths named in reasons, no leniency (see ``Tolerance``)."""

    def of(self, path: str) -> str:
        """ " of PATH" where this way's reasons name paths, else nothing."""
        return f" of {path}" if self.strict else ""

    def for_(self, path: str) -> str:
        """ " for PATH" where this way's reasons name paths, else nothing."""
        return f" for {path}" if self.strict else ""

    def subject(self, path: str) -> str:
        """The file as this way's reasons name it."""
        return path if self.strict else "the file"

    async def fetch(
        self,
        url: str,
        limits: FetchLimits,
        *,
        progress: ProgressLog | None = None,
        parts: list[bytes] | None = None,
        pause_s: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> bytes:
        """The whole body of ``url``, read as this way reads it (chunks kept in ``parts``)."""
        report = None if progress is None else lambda done, size: progress.append((done, size))
        chunks = await self.chunks(url, Ask(limits, report, ssl_context))
        return await asyncio.to_thread(_collect, chunks, [] if parts is None else parts, pause_s)

    @abc.abstractmethod
    async def chunks(self, url: str, ask: Ask) -> Iterator[bytes]:
        """The body of ``url``, fetched as the iterator is run (in a worker thread)."""

    @abc.abstractmethod
    async def open(self, url: str, limits: FetchLimits) -> Download:
        """``url`` opened as a ``Download`` (the payload stream of this way)."""

    @abc.abstractmethod
    def fails(
        self, match: str, tuf: type[DownloadError] = DownloadError
    ) -> AbstractContextManager[None]:
        """Expect this way's error for ``tuf`` (python-tuf's family), matching ``match``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close what ``open`` left open."""


class LanClient(Client):
    """``sys/update_now {"fetch_url": …}``: ``check_url``, then ``open_download`` in a thread."""

    name = "lan"
    strict = False

    async def chunks(self, url: str, ask: Ask) -> Iterator[bytes]:
        target = await check_url(url, LOOPBACK)

        def run() -> Iterator[bytes]:
            with open_download(
                target, LOOPBACK, ask.limits, progress=ask.progress, ssl_context=ask.ssl_context
            ) as download:
                yield from iter(lambda: download.read(BLOCK), b"")

        return run()

    async def open(self, url: str, limits: FetchLimits) -> Download:
        target = await check_url(url, LOOPBACK)
        return await asyncio.to_thread(open_download, target, LOOPBACK, limits)

    @contextmanager
    def fails(self, match: str, tuf: type[DownloadError] = DownloadError) -> Iterator[None]:
        """Expect ``AcquireError`` matching ``match``; ``tuf`` is the other way's family."""
        with pytest.raises(AcquireError, match=match):
            yield

    def close(self) -> None:
        """Nothing to close: a LAN download owns its connections."""


class OriginClient(Client):
    """The update server: ``OriginFetcher.fetch`` (ngclient's way) and ``open_stream``."""

    name = "origin"
    strict = True

    def __init__(self) -> None:
        self._fetchers: list[OriginFetcher] = []

    async def chunks(self, url: str, ask: Ask) -> Iterator[bytes]:
        progress = ask.progress
        report = None if progress is None else lambda _url, done, size: progress(done, size)

        def run() -> Iterator[bytes]:
            with OriginFetcher(
                url, limits=ask.limits, progress=report, ssl_context=ask.ssl_context
            ) as fetcher:
                yield from fetcher.fetch(url)

        return run()

    async def open(self, url: str, limits: FetchLimits) -> Download:
        fetcher = OriginFetcher(url, limits=limits)
        self._fetchers.append(fetcher)
        return await asyncio.to_thread(fetcher.open_stream, url, limits.max_bytes or 1 << 40)

    @contextmanager
    def fails(self, match: str, tuf: type[DownloadError] = DownloadError) -> Iterator[None]:
        """Expect exactly ``tuf`` (python-tuf's family) matching ``match``."""
        with pytest.raises(DownloadError, match=match) as caught:
            yield
        assert type(caught.value) is tuf

    def close(self) -> None:
        for fetcher in self._fetchers:
            fetcher.close()
