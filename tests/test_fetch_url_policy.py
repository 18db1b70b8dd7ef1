"""Which fetch URLs may be fetched, and where the connection goes: the LAN policy.

Refused URLs must be refused before any socket is opened: a process-wide audit hook records every
``getaddrinfo`` and ``connect`` the process makes while a test watches, and the test servers count
the requests they see. ``check_url`` (async, for the API) and ``check_url_blocking`` (for
redirects, in the download's thread) are held to the same table. Every network test stays on
127.0.0.0/8; how the bytes move is test_fetch_transfer.py's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web

from sysupd.errors import AcquireError, InvalidURL
from sysupd.sources.lan import (
    MAX_URL_CHARS,
    Download,
    FetchLimits,
    PinnedTarget,
    check_url,
    check_url_blocking,
    open_download,
)
from tests.fetching import Serve, self_signed

DATA = random.Random(7).randbytes(512 * 1024)
LOOPBACK = ["127.0.0.0/8"]
LIMITS = FetchLimits(max_bytes=len(DATA), deadline_s=10, min_rate_window_s=5)

SocketEvent = tuple[str, tuple[object, ...]]
_socket_log: list[SocketEvent] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _socket_log is not None and event in ("socket.getaddrinfo", "socket.connect"):
        _socket_log.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle unless a test watches


@contextmanager
def socket_events() -> Iterator[list[SocketEvent]]:
    """Record every name lookup and connect in this process (any thread) inside the block."""
    global _socket_log  # noqa: PLW0603 - the audit hook is process-wide
    _socket_log = []
    try:
        yield _socket_log
    finally:
        _socket_log = None


def connected_to(events: list[SocketEvent]) -> list[str]:
    """The addresses of the connects in ``events``."""
    return [str(args[1][0]) for name, args in events if name == "socket.connect"]  # type: ignore[index]


def looked_up(events: list[SocketEvent]) -> list[str]:
    """The host names looked up in ``events`` (an IP address given as such asks no DNS)."""
    hosts = [str(args[0]) for name, args in events if name == "socket.getaddrinfo"]
    return [host for host in hosts if not _is_ip(host)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Recorder:
    """An app serving ``DATA`` at /file, redirects at /r/N (N hops) and /to?u=URL; it logs paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.hosts: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/file", self.file)
        self.app.router.add_get("/r/{n}", self.hops)
        self.app.router.add_get("/to", self.to)

    async def file(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        self.hosts.append(request.headers.get("Host", ""))
        return web.Response(body=DATA)

    async def hops(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        n = int(request.match_info["n"])
        raise web.HTTPFound("/file" if n <= 1 else f"../r/{n - 1}")

    async def to(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        raise web.HTTPTemporaryRedirect(request.query["u"])


async def fetch_all(
    target: PinnedTarget,
    networks: Sequence[str] = LOOPBACK,
    limits: FetchLimits = LIMITS,
    ssl_context: ssl.SSLContext | None = None,
) -> Download:
    """``target`` downloaded whole in a worker thread, as the update job does; the download."""

    def run() -> Download:
        with open_download(target, networks, limits, ssl_context=ssl_context) as download:
            parts = []
            while chunk := download.read(65536):
                parts.append(chunk)
            assert b"".join(parts) == DATA
        return download

    return await asyncio.to_thread(run)


Check = Callable[[str, Sequence[str]], Awaitable[PinnedTarget]]


async def _blocking(url: str, networks: Sequence[str]) -> PinnedTarget:
    return await asyncio.to_thread(check_url_blocking, url, networks)


CHECKS = [pytest.param(check_url, id="check_url"), pytest.param(_blocking, id="blocking")]


REFUSED = [
    ("ftp://127.0.0.1/update.bundle", "ftp is not allowed"),
    ("file:///etc/passwd", "file is not allowed"),
    ("gopher://127.0.0.1:70/", "gopher is not allowed"),
    ("127.0.0.1/update.bundle", "no scheme"),
    ("http://user:secret@127.0.0.1/update.bundle", "user name or password"),
    ("http://user@127.0.0.1/update.bundle", "user name or password"),
    ("http:///update.bundle", "no host"),
    ("http://127.0.0.1:0/update.bundle", "port 0 is outside 1-65535"),
    ("http://127.0.0.1:70000/update.bundle", "port is outside 1-65535"),
    ("http://2130706433/update.bundle", "not a plain IP address"),
    ("http://127.1/update.bundle", "not a plain IP address"),
    ("http://127.0.0.1/" + "a" * MAX_URL_CHARS, "longer than 2048 characters"),
    ("http://8.8.8.8/x", "host 8.8.8.8 is not on an allowed network"),
    ("https://10.1.2.3/x", "host 10.1.2.3 is not on an allowed network"),
    ("http://[::ffff:8.8.8.8]/x", "is not on an allowed network"),
    ("http://[::1]/x", "host ::1 is not on an allowed network"),
]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[reason for _, reason in REFUSED])
async def test_refused_before_any_socket(check: Check, url: str, reason: str) -> None:
    with socket_events() as events, pytest.raises(InvalidURL, match=re.escape(reason)):
        await check(url, LOOPBACK)
    assert events == []


@pytest.mark.parametrize("check", CHECKS)
async def test_literal_addresses_are_checked_without_lookups(check: Check) -> None:
    with socket_events() as events:
        plain = await check("http://127.0.0.1:8080/a/b?c=d#frag", LOOPBACK)
        mapped = await check("https://[::ffff:127.0.0.5]/x", LOOPBACK)
    assert events == []
    assert plain == PinnedTarget("http://127.0.0.1:8080/a/b?c=d", "127.0.0.1", 8080, "127.0.0.1")
    assert (mapped.port, ipaddress.IPv6Address(mapped.address).ipv4_mapped) == (
        443,
        ipaddress.ip_address("127.0.0.5"),
    )


@pytest.mark.parametrize("check", CHECKS)
async def test_a_name_resolving_outside_the_networks_is_refused(serve: Serve, check: Check) -> None:
    recorder = Recorder()
    port = await serve(recorder.app)
    with socket_events() as events, pytest.raises(InvalidURL) as caught:
        await check(f"http://localhost:{port}/file", ["10.0.0.0/8"])
    assert (
        str(caught.value)
        == "host localhost resolves to 127.0.0.1, which is not on an allowed network"
    )
    assert looked_up(events) == ["localhost"]
    assert connected_to(events) == []
    assert recorder.paths == []


async def test_a_name_is_resolved_once_and_the_checked_address_is_used(serve: Serve) -> None:
    recorder = Recorder()
    port = await serve(recorder.app)
    with socket_events() as events:
        target = await check_url(f"http://LocalHost:{port}/file", LOOPBACK)
        lookups = len(looked_up(events))
        download = await fetch_all(target)
    assert (download.host, download.address) == ("localhost", "127.0.0.1")
    assert target == PinnedTarget(f"http://localhost:{port}/file", "localhost", port, "127.0.0.1")
    assert lookups == 1
    assert looked_up(events) == ["localhost"]  # none by the download itself
    assert recorder.hosts == [f"localhost:{port}"]


async def test_the_connection_goes_to_the_pinned_address_only(serve: Serve) -> None:
    """A name that no DNS knows still works: the client never asks DNS, it uses the pin."""
    recorder = Recorder()
    port = await serve(recorder.app)
    target = PinnedTarget(
        f"http://updates.invalid:{port}/file", "updates.invalid", port, "127.0.0.1"
    )
    with socket_events() as events:
        await fetch_all(target)
    assert looked_up(events) == []
    assert connected_to(events) == ["127.0.0.1"]
    assert recorder.hosts == [f"updates.invalid:{port}"]


async def test_a_pinned_address_outside_the_networks_is_refused(serve: Serve) -> None:
    recorder = Recorder()
    port = await serve(recorder.app)
    target = PinnedTarget(f"http://127.0.0.1:{port}/file", "127.0.0.1", port, "127.0.0.1")
    with (
        socket_events() as events,
        pytest.raises(AcquireError, match=r"127\.0\.0\.1 is not on an allowed network"),
    ):
        await fetch_all(target, ["10.0.0.0/8"])
    assert events == []
    assert recorder.paths == []


async def test_redirects_are_followed_and_rechecked(serve: Serve) -> None:
    recorder = Recorder()
    port = await serve(recorder.app)
    target = await check_url(f"http://127.0.0.1:{port}/r/3", LOOPBACK)
    limits = FetchLimits(max_bytes=len(DATA), max_redirects=3)
    with socket_events() as events:
        download = await fetch_all(target, limits=limits)
    assert (download.size, download.url) == (len(DATA), f"http://127.0.0.1:{port}/file")
    assert recorder.paths == ["/r/3", "/r/2", "/r/1", "/file"]
    assert connected_to(events) == ["127.0.0.1"] * 4


async def test_a_redirect_to_a_disallowed_address_never_connects_there(serve: Serve) -> None:
    outside, inside = Recorder(), Recorder()
    outside_port = await serve(outside.app, "127.0.0.2")
    inside_port = await serve(inside.app)
    away = f"http://127.0.0.2:{outside_port}/file"
    target = await check_url(f"http://127.0.0.1:{inside_port}/to?u={away}", ["127.0.0.1/32"])
    with (
        socket_events() as events,
        pytest.raises(
            AcquireError,
            match=r"^a redirect was refused: host 127\.0\.0\.2 is not on an allowed",
        ),
    ):
        await fetch_all(target, ["127.0.0.1/32"])
    assert inside.paths == ["/to"]
    assert outside.paths == []
    assert connected_to(events) == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("ftp://127.0.0.1/file", "ftp is not allowed"),
        ("http://user:pw@127.0.0.1/file", "user name or password"),
        ("http://8.8.8.8/file", "host 8.8.8.8 is not on an allowed network"),
    ],
)
async def test_redirects_obey_the_same_rules(serve: Serve, location: str, reason: str) -> None:
    recorder = Recorder()
    port = await serve(recorder.app)
    target = await check_url(f"http://127.0.0.1:{port}/to?u={location}", LOOPBACK)
    with socket_events() as events, pytest.raises(AcquireError, match=re.escape(reason)):
        await fetch_all(target)
    assert connected_to(events) == ["127.0.0.1"]


async def test_https_to_a_pinned_address_verifies_the_host_name(
    serve: Serve, tmp_path: Path
) -> None:
    server_context, cert = self_signed(tmp_path, "updates.invalid")
    recorder = Recorder()
    port = await serve(recorder.app, ssl_context=server_context)

    def target(host: str) -> PinnedTarget:
        return PinnedTarget(f"https://{host}:{port}/file", host, port, "127.0.0.1")

    trusting = ssl.create_default_context(cafile=str(cert))
    await fetch_all(target("updates.invalid"), ssl_context=trusting)
    with pytest.raises(AcquireError, match=r"certificate of other\.invalid is not trusted"):
        await fetch_all(target("other.invalid"), ssl_context=trusting)
    with pytest.raises(AcquireError, match=r"certificate of updates\.invalid is not trusted"):
        await fetch_all(target("updates.invalid"))
    assert recorder.paths == ["/file"]
    assert recorder.hosts == [f"updates.invalid:{port}"]
