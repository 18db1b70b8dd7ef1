"""Fixtures: a real service on 127.0.0.1 with free ports, real SQLite in a temp directory."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.config import build_config
from sysupd.system.clock import Clock, ManualClock
from tests import _settrace_race
from tests.client import WsClient
from tests.fetching import Serve, app_servers

_settrace_race.install()

ADMIN = ("root", "admin-secret-1")
USER = ("alice", "user-secret-1")

# Argon2id still, at a cost that keeps a test run short; production uses the library defaults.
FAST_KDF = {"kdf_time_cost": 1, "kdf_memory_kib": 8192, "kdf_parallelism": 1}


def test_config_values(state_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Configuration values for a service under test."""
    return {
        "state_dir": str(state_dir),
        "host": "127.0.0.1",
        "ws_port": 0,
        "http_port": 0,
        "wss_port": 0,
        "https_port": 0,
        **FAST_KDF,
        **overrides,
    }


test_config_values.__test__ = False  # type: ignore[attr-defined]

ServiceFactory = Callable[..., Awaitable[Service]]
ClientFactory = Callable[..., Awaitable[WsClient]]

_POLL_S = 0.02


async def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` (a plain or an async function) until it is true; after ``timeout_s``
    seconds fail, saying ``what`` was waited for. For conditions that raise no event of their
    own (a log line, a file, a process's state); never a statement about elapsed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting until {what}")
        await asyncio.sleep(_POLL_S)


async def boot_settled(service: Service, timeout_s: float = 30) -> str:
    """The service's boot status once its boot trial has settled (and logged how)."""
    try:
        await asyncio.wait_for(service.boot_settled.wait(), timeout_s)
    except TimeoutError:
        raise AssertionError(
            f"the boot trial did not settle within {timeout_s:g} s: {service.boot_status}"
        ) from None
    return str(service.boot_status)


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start services (with users ADMIN and USER); all are stopped at the end of the test."""
    async with started_services(tmp_path) as start:
        yield start


@asynccontextmanager
async def started_services(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """A factory of services (with users ADMIN and USER) in ``tmp_path``; all stop on exit."""
    started: list[Service] = []

    async def start(
        state_dir: Path | None = None, clock: Clock | None = None, **overrides: Any
    ) -> Service:
        config = build_config(test_config_values(state_dir or tmp_path / "state", **overrides))
        service = Service(config, clock=clock)
        if service.users.count() == 0:
            service.users.add(*ADMIN, is_admin=True)
            service.users.add(*USER, is_admin=False)
        await service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            await service.stop()  # idempotent: a test may have stopped it already


@pytest.fixture
async def service(start_service: ServiceFactory) -> Service:
    """One running service."""
    return await start_service()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def connect(http: aiohttp.ClientSession) -> AsyncIterator[ClientFactory]:
    """Open WebSocket clients to a service (logged in as ``login`` when given)."""
    clients: list[WsClient] = []

    async def open_client(
        service: Service, login: tuple[str, str] | None = None, path: str = "/websocket"
    ) -> WsClient:
        ws = await http.ws_connect(f"http://127.0.0.1:{service.ws_port}{path}")
        client = WsClient(ws)
        clients.append(client)
        if login is not None:
            await client.login(*login)
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on 127.0.0.0/8 (TLS if given a context); returns the port."""
    async with app_servers() as start:
        yield start


def _tmpfs(mount_point: Path, size_mib: int) -> Iterator[Path]:
    """A real tmpfs of ``size_mib`` at ``mount_point``, or a skip where mounting is not allowed."""
    mount_point.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount here to make a small filesystem")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a {size_mib} MiB tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A full-disk stand-in: a real 1 MiB tmpfs for this test only."""
    yield from _tmpfs(tmp_path / "tiny", 1)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs for this test only."""
    yield from _tmpfs(tmp_path / "small", 2)


def api_url(service: Service, call: str) -> str:
    """The HTTP URL of ``call`` (``namespace/name``)."""
    return f"http://127.0.0.1:{service.http_port}/api/{call}"
