"""Bypasses of the connection guard (``api.connections``) a review found: slow bodies from
clients that never log in, anonymous WebSockets, IPv6 addresses, large answers to slow readers
and log lines per anonymous socket.

As in ``test_connection_flood``: a real ``sysupd serve`` with small limits, the flood from
127.0.0.2 and up, the real client from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sysupd.api.connections import ConnectionGuard, GuardedSite
from sysupd.core.limits import connection_limits
from sysupd.servicelog import ServiceLog
from sysupd.system.clock import SystemClock
from tests.client import WsClient
from tests.procs import PlainServe, free_port

IDLE_S = 2.0
TOTAL = 20
PER_ADDRESS = 5
FLOOD_SOURCES = [f"127.0.0.{i}" for i in range(2, 2 + TOTAL // PER_ADDRESS)]


@contextlib.asynccontextmanager
async def _device(tmp_path: Path, **config: Any) -> AsyncIterator[PlainServe]:
    found = PlainServe(
        tmp_path,
        idle_timeout_s=IDLE_S,
        max_connections=TOTAL,
        max_connections_per_address=PER_ADDRESS,
        **config,
    )
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


async def _closed_by_the_server(reader: asyncio.StreamReader, within: float) -> bytes | None:
    """What the server sent before it closed, or None if it did not close in time."""
    got = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        return None
    except OSError:
        pass
    return got


async def test_slow_bodies_from_clients_that_never_log_in_lock_nobody_out(
    tmp_path: Path,
) -> None:
    async with _device(tmp_path) as device:
        slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for i in range(TOTAL):
            source = FLOOD_SOURCES[i % len(FLOOD_SOURCES)]
            slow.append(
                await asyncio.open_connection("127.0.0.1", device.http_port, local_addr=(source, 0))
            )
        # Half without credentials on a call that needs them, half on rpc/auth (credentials
        # in the body): the first are refused at once, the second cut off at the deadline.
        for i, (_, writer) in enumerate(slow):
            path = "/api/sys/info" if i % 2 else "/api/rpc/auth"
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: 100000\r\n\r\n{{".encode()
            )

        async def dribble() -> None:
            while True:
                for _, writer in slow:
                    with contextlib.suppress(OSError):
                        writer.write(b" ")
                await asyncio.sleep(0.5)  # slow bodies must be slow: the point of the test

        dribbling = asyncio.ensure_future(dribble())
        try:
            await device.answers()
            got = await asyncio.gather(*(_closed_by_the_server(r, 3 * IDLE_S + 5) for r, _ in slow))
            assert None not in got, f"{got.count(None)} slow-body connections still open"
            # Refused before the body is read: a 401 — unless the kernel reset the connection
            # first (the client keeps sending bytes the server will not read, and a close with
            # unread bytes is a reset, which may discard the answer). None is answered otherwise.
            refused = [answer or b"" for i, answer in enumerate(got) if i % 2]
            assert all(a == b"" or a.startswith(b"HTTP/1.1 401") for a in refused), refused
            assert any(a.startswith(b"HTTP/1.1 401") for a in refused), refused
            await device.answers()
        finally:
            dribbling.cancel()
            for _, writer in slow:
                writer.close()
        assert "bug" not in device.log()
        # A body that stops coming is answered at the deadline, and the connection closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", device.http_port)
        writer.write(
            b"POST /api/rpc/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = await _closed_by_the_server(reader, 3 * IDLE_S + 5)
        writer.close()
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert f"did not arrive within {IDLE_S:g} s".encode() in answer


async def test_a_client_gone_before_its_body_is_complete_is_no_bug(tmp_path: Path) -> None:
    async with _device(tmp_path) as device:
        auth = aiohttp.encode_basic_auth("admin", device.password)
        _, writer = await asyncio.open_connection("127.0.0.1", device.http_port)
        writer.write(
            f"POST /api/sys/info HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
            "Content-Length: 1000\r\n\r\n{".encode()
        )
        await writer.drain()
        # The service's side of this connection cannot be seen from here (a child process that
        # logs nothing for a 400 no one receives): the client waits a little, as a client that
        # gives up does, and then the service is given time to fail if it would.
        await asyncio.sleep(0.3)
        writer.transport.abort()
        await asyncio.sleep(0.5)
        await device.answers()
        log = device.log()
        # The client's doing, answered 400 (to nobody), not an error of the service.
        assert "ERROR" not in log, log[-2000:]
        assert "bug" not in log, log[-2000:]


async def test_websockets_that_have_not_logged_in_make_room_for_newcomers(
    tmp_path: Path,
) -> None:
    async with _device(tmp_path, login_timeout_s=120.0) as device:
        url = f"http://127.0.0.1:{device.http_port}/websocket"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            # A logged-in socket is busy: never dropped for a newcomer.
            kept = WsClient(await http.ws_connect(url))
            await kept.login("admin", device.password)
            sessions = []
            anonymous = []
            for i in range(TOTAL):
                connector = aiohttp.TCPConnector(local_addr=(FLOOD_SOURCES[i % 4], 0))
                session = aiohttp.ClientSession(connector=connector)
                sessions.append(session)
                with contextlib.suppress(aiohttp.ClientError):
                    anonymous.append(await session.ws_connect(url))
            try:
                await device.answers()  # would wait for the 120 s login deadline
                assert "system_id" in await kept.call("sys", "info")
                dropped = 0
                for ws in anonymous:
                    with contextlib.suppress(TimeoutError):
                        msg = await ws.receive(timeout=0.2)
                        dropped += msg.type in (
                            aiohttp.WSMsgType.CLOSE,
                            aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR,
                        )
                assert dropped >= 1
            finally:
                for ws in anonymous:
                    await ws.close()
                for session in sessions:
                    await session.close()
                await kept.close()


async def test_many_cross_site_upgrades_are_counted_not_logged(tmp_path: Path) -> None:
    async with _device(tmp_path) as device:
        url = f"http://127.0.0.1:{device.http_port}/websocket"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for _ in range(100):
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await http.ws_connect(url, headers={"Origin": "http://evil.example"})
        await device.answers()
        lines = [line for line in device.log().splitlines() if "refused" in line]
        assert 1 <= len(lines) < 30, len(lines)


class _FakeTransport(asyncio.Transport):
    def __init__(self, address: str) -> None:
        super().__init__()
        self._address = address
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self._address, 1234, 0, 0) if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


async def test_an_ipv6_64_counts_as_one_address(tmp_path: Path) -> None:
    log = ServiceLog(tmp_path / "sysupd.log", SystemClock(), 1 << 20)
    guard = ConnectionGuard(connection_limits(1024, 100, 3, 15.0), log)
    factory = guard.protocol_factory(asyncio.Protocol, None)
    transports = []
    try:
        for i in range(1, 6):  # five addresses of one /64
            transport = _FakeTransport(f"2001:db8:1:2::{i:x}")
            factory().connection_made(transport)
            transports.append(transport)
        other = _FakeTransport("2001:db8:1:3::1")  # another /64
        factory().connection_made(other)
        assert [t.aborted for t in transports] == [False, False, False, True, True]
        assert not other.aborted
        assert guard.open_connections == 4
    finally:
        guard.close()
        log.close()


async def test_a_large_answer_to_a_slow_reader_arrives_whole(tmp_path: Path) -> None:
    body = os.urandom(8 << 20)
    log = ServiceLog(tmp_path / "sysupd.log", SystemClock(), 1 << 20)
    guard = ConnectionGuard(connection_limits(1024, 20, 5, 1.0), log)

    async def large(_: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/large", large)
    runner = web.AppRunner(app, keepalive_timeout=1.0)
    await runner.setup()
    port = free_port()
    site = GuardedSite(runner, "127.0.0.1", port, guard, None)
    await site.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        writer.write(b"GET /large HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        got = bytearray()
        async with asyncio.timeout(120):  # liveness only
            while len(got) < len(body):
                chunk = await reader.read(16384)
                if not chunk:
                    break
                got += chunk
                await asyncio.sleep(0.01)  # a slow reader: some seconds for the whole
        assert len(got) == len(body)
        assert bytes(got) == body
        writer.close()
    finally:
        await runner.cleanup()
        guard.close()
        log.close()
