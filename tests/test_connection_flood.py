"""Connection floods against a real ``sysupd serve`` whose descriptor limit is lowered to 256 (issue
9, finding 1): idle and slow connections, from one address and from many, more than the process
has descriptors. The service goes on answering, closes what does not talk, and logs counts, not a
line (or a traceback) per connection.

The flood comes from 127.0.0.2 and up, the real client from 127.0.0.1: every 127/8 address is
loopback on Linux, and the per-address cap must not hit the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sysupd.api.connections import ConnectionGuard
from sysupd.core.limits import RESERVED_DESCRIPTORS, connection_limits
from sysupd.servicelog import ServiceLog
from sysupd.system.clock import SystemClock
from tests.procs import PlainServe

LIMIT = 256
IDLE_S = 2.0
TOTAL = LIMIT - RESERVED_DESCRIPTORS  # derived, as at the defaults
PER_ADDRESS = TOTAL // 4


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[PlainServe]:
    found = PlainServe(tmp_path, descriptor_limit=LIMIT, idle_timeout_s=IDLE_S)
    await found.start()
    yield found
    await found.stop()


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _flood(
    port: int, count: int, sources: list[str]
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` idle connections, round robin over ``sources``."""
    opened = []
    for i in range(count):
        with contextlib.suppress(OSError):
            opened.append(await _open(port, sources[i % len(sources)]))
    return opened


async def _closed_by_the_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()


async def test_more_idle_connections_than_descriptors_from_many_addresses(
    device: PlainServe,
) -> None:
    sources = [f"127.0.0.{i}" for i in range(2, 42)]
    flood = await _flood(device.http_port, LIMIT + 100, sources)
    try:
        await device.answers()
        # Everything idle is closed by the server within the idle timeout (and the oldest went
        # earlier, for newer ones, once the total was reached).
        closed = await asyncio.gather(*(_closed_by_the_server(r, IDLE_S + 5) for r, _ in flood))
        assert all(closed), f"{closed.count(False)} idle connections still open"
        await device.answers()
    finally:
        _close_all(flood)
    log = device.log()
    assert "idle connections dropped for newer ones" in log or "without a request" in log
    assert log.count("connections") < 10, "counted, not one line per connection"
    stderr = device.stderr_path.read_bytes()
    assert b"Traceback" not in stderr
    assert len(stderr) < 20_000


async def test_one_address_gets_its_share_and_no_more(device: PlainServe) -> None:
    flood = await _flood(device.http_port, PER_ADDRESS + 40, ["127.0.0.2"])
    try:
        refused = await asyncio.gather(*(_closed_by_the_server(r, 1.0) for r, _ in flood))
        assert refused.count(True) >= 40  # over its share: closed at once
        assert refused.count(False) <= PER_ADDRESS
        await device.answers()  # another address is not hurt
    finally:
        _close_all(flood)
    assert f"refused over the {PER_ADDRESS} per address: 127.0.0.2" in device.log()


async def test_slow_headers_are_cut_off_however_steadily_they_come(device: PlainServe) -> None:
    slow = await _flood(device.http_port, 30, [f"127.0.0.{i}" for i in range(50, 60)])
    try:
        for _, writer in slow:
            writer.write(b"GET /api/sys/info HTTP/1.1\r\n")

        async def dribble() -> None:
            for n in range(int(IDLE_S * 4)):
                for _, writer in slow:
                    with contextlib.suppress(OSError):
                        writer.write(f"X-Slow-{n}: 1\r\n".encode())
                await asyncio.sleep(0.5)  # slow clients must be slow: the point of the test

        dribbling = asyncio.ensure_future(dribble())
        closed = await asyncio.gather(*(_closed_by_the_server(r, IDLE_S + 5) for r, _ in slow))
        dribbling.cancel()
        assert all(closed), f"{closed.count(False)} slow connections still open"
        await device.answers()
    finally:
        _close_all(slow)


async def test_a_keep_alive_connection_works_then_is_closed_when_idle(device: PlainServe) -> None:
    reader, writer = await _open(device.http_port, "127.0.0.1")
    try:
        for _ in range(3):  # requests on one connection, each well within the timeout
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        assert await _closed_by_the_server(reader, IDLE_S + 5)
    finally:
        writer.close()


def test_the_limits_follow_the_descriptor_limit_unless_configured() -> None:
    at_systemds_default = connection_limits(1024, 0, 0, 15.0)
    assert at_systemds_default.total == 1024 - RESERVED_DESCRIPTORS
    assert at_systemds_default.per_address == at_systemds_default.total // 4
    assert connection_limits(1024, 100, 10, 15.0).total == 100
    assert connection_limits(1024, 100, 10, 15.0).per_address == 10
    assert connection_limits(1024, 5000, 0, 15.0).total == 1024 - RESERVED_DESCRIPTORS
    assert connection_limits(20, 0, 0, 15.0).total == 16
    assert connection_limits(1024, 50, 80, 15.0).per_address == 50


async def test_accept_failing_for_want_of_descriptors_is_counted_not_traced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = ServiceLog(tmp_path / "sysupd.log", SystemClock(), 1 << 20)
    guard = ConnectionGuard(connection_limits(1024, 0, 0, 15.0), log)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(guard.exception_handler)
    try:
        for _ in range(500):  # as the loop retries accept() while descriptors are out
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )
    finally:
        loop.set_exception_handler(previous)
        guard.close()
        log.close()
    lines = [line for line in log.lines() if "accept failed" in line]
    assert len(lines) == 2, lines  # the first at once, then one count for the rest
    assert "Too many open files" in lines[0]
    assert "499 accept failed" in lines[1]
    assert "Traceback" not in capsys.readouterr().err
