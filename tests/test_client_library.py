"""``sysupd.client`` in-process against a real service: calls, errors, uploads, reconnects."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.client import (
    ApiError,
    CertificateChanged,
    Client,
    ConnectionFailed,
    Disconnected,
    Event,
    NotLoggedIn,
    NotTls,
    Reconnected,
    parse_server,
)
from sysupd.client.pinning import KnownServers, establish
from sysupd.system.reboot import RebootKind
from tests.conftest import ADMIN, USER, ServiceFactory


def _plain(service: Service) -> Client:
    return Client(parse_server(f"http://127.0.0.1:{service.http_port}"))


async def test_calls_and_error_replies(service: Service) -> None:
    async with _plain(service) as client:
        with pytest.raises(ApiError) as refused:
            await client.call("sys/info")
        assert refused.value.code == "401"
        login = await client.login(*USER)
        assert login.ttl_s == 900
        assert client.token == login.token
        assert (await client.call("sys/info"))["system_id"] == service.system_id
        with pytest.raises(ApiError) as forbidden:
            await client.call("sys/reboot", {"delay_seconds": 5})
        assert (forbidden.value.code, forbidden.value.message) == ("403", "Forbidden")
        assert "administrators" in forbidden.value.details


async def test_a_spent_or_unknown_token_is_not_logged_in(service: Service) -> None:
    async with _plain(service) as client:
        token = (await client.login(*ADMIN)).token
    async with _plain(service) as client:
        await client.resume(token)
    async with _plain(service) as client:
        with pytest.raises(NotLoggedIn, match="the login has ended"):
            await client.resume(token)


async def test_not_connected_and_unreachable_fail_at_once(service: Service) -> None:
    client = _plain(service)
    with pytest.raises(ConnectionFailed, match="not connected"):
        await client.call("sys/info")
    gone = Client(parse_server("http://127.0.0.1:1"))
    with pytest.raises(ConnectionFailed, match=r"cannot reach http://127\.0\.0\.1:1"):
        await gone.connect()
    await gone.close()


async def test_https_to_the_plain_listener_says_to_use_http(
    service: Service, tmp_path: Path
) -> None:
    server = parse_server(f"https://127.0.0.1:{service.http_port}")
    plain = f"use http://127.0.0.1:{service.http_port}"
    client = Client(server)
    with pytest.raises(NotTls, match=f"does not speak TLS here; {plain}$"):
        await client.connect()
    await client.close()
    known = KnownServers(tmp_path / "known_servers")
    with pytest.raises(NotTls, match=f"{plain}$"):
        await establish(server, known)
    assert not known.path.exists()


async def test_a_call_in_flight_when_the_service_stops_fails_instead_of_hanging(
    start_service: ServiceFactory,
) -> None:
    service = await start_service()
    async with _plain(service) as client:
        await client.login(*ADMIN)
        await service.stop()
        with pytest.raises(ConnectionFailed):
            await client.call("sys/info")


async def test_upload_reports_progress_and_lands(service: Service, tmp_path: Path) -> None:
    data = tmp_path / "big.bin"
    data.write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    seen: list[tuple[int, int]] = []
    async with _plain(service) as client:
        await client.login(*ADMIN)
        stored = await client.upload(
            data, name="big.bin", progress=lambda s, n: seen.append((s, n))
        )
    assert stored["file_upload"] == "big.bin"
    assert stored["size"] == data.stat().st_size
    assert seen[0] == (0, stored["size"])
    assert seen[-1] == (stored["size"], stored["size"])
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert service.uploads.names() == ["big.bin"]


async def test_a_file_name_the_service_would_refuse_is_sent_as_upload_bundle(
    service: Service, tmp_path: Path
) -> None:
    async with _plain(service) as client:
        await client.login(*ADMIN)
        for name in (".hidden.bundle", "odd..name.bundle", "ok.bundle"):
            data = tmp_path / name
            data.write_bytes(b"x" * 10)
            stored = await client.upload(data)
            expected = name if name == "ok.bundle" else "upload.bundle"
            assert (stored["file_upload"], stored["size"]) == (expected, 10)
    assert sorted(service.uploads.names()) == ["ok.bundle", "upload.bundle"]


async def test_an_upload_refusal_is_an_api_error(service: Service, tmp_path: Path) -> None:
    """A name the caller gives is sent as it is: the refusal says what is wrong with it."""
    data = tmp_path / "f"
    data.write_bytes(b"x")
    async with _plain(service) as client:
        await client.login(*ADMIN)
        with pytest.raises(ApiError) as refused:
            await client.upload(data, name=".hidden")
    assert refused.value.code == "400"
    assert "starts with a dot" in refused.value.details


async def test_follow_survives_a_restart_of_the_service(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    first = await start_service()
    port = first.http_port
    client = Client(parse_server(f"http://127.0.0.1:{port}"))
    await client.connect()
    await client.login(*ADMIN)
    stream = client.follow(retry_for_s=30)
    restarted: list[Service] = []
    disconnected = asyncio.Event()

    async def restart() -> None:
        await first.stop()
        # Back only once the client has seen the service go: it must reconnect, not carry on.
        await asyncio.wait_for(disconnected.wait(), 10)
        restarted.append(await start_service(http_port=port))

    task = asyncio.create_task(restart())
    items = []
    async for item in stream:
        items.append(item)
        if isinstance(item, Disconnected):
            disconnected.set()
        if isinstance(item, Reconnected):
            break
    await task
    assert isinstance(items[0], Disconnected)
    assert (await client.call("sys/info"))["system_id"] == restarted[0].system_id
    restarted[0].reboots.schedule(900, RebootKind.RESTART, by="the test")
    event = await anext(stream)
    assert isinstance(event, Event)
    assert event.name == "sys/reboot"
    await client.close()


async def test_a_pinned_certificate_that_changed_is_refused_before_sending(
    service: Service, tmp_path: Path
) -> None:
    server = parse_server(f"https://127.0.0.1:{service.https_port}")
    known = KnownServers(tmp_path / "known_servers")
    trust = await establish(server, known)
    assert trust.newly_pinned
    assert service.certificate is not None
    assert trust.fingerprint == service.certificate.fingerprint
    async with Client(server, ssl=trust.ssl) as client:
        await client.login(*ADMIN)
    known.pin(server, "AB:" * 31 + "AB")
    again = await establish(server, known)
    client = Client(server, ssl=again.ssl)
    with pytest.raises(CertificateChanged) as changed:
        await client.connect()
    await client.close()
    assert changed.value.presented == service.certificate.fingerprint
    assert "--accept-certificate" in str(changed.value)
    assert isinstance(again.ssl, aiohttp.Fingerprint)


def test_pins_are_changed_under_the_lock_of_known_servers(tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "known_servers")
    first = parse_server("https://192.0.2.1:5185")
    holder = os.open(tmp_path / "known_servers.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another command, in the middle of its change
    pinned = threading.Event()

    def pin() -> None:
        known.pin(first, "AB:" * 31 + "AB")
        pinned.set()

    thread = threading.Thread(target=pin)
    thread.start()
    try:
        assert not pinned.wait(0.5), "it waits for the lock"
        assert not known.path.exists()
    finally:
        os.close(holder)
    thread.join(10)
    assert pinned.is_set()
    assert known.get(first) == "AB:" * 31 + "AB"

    servers = [parse_server(f"https://192.0.2.{n}:5185") for n in range(2, 22)]
    threads = [
        threading.Thread(target=known.pin, args=(server, f"{n:02X}:" * 31 + "00"))
        for n, server in enumerate(servers)
    ]
    for each in threads:
        each.start()
    for each in threads:
        each.join(10)
    assert [known.get(server) for server in servers] == [
        f"{n:02X}:" * 31 + "00" for n in range(len(servers))
    ], "no pin lost to another's change"
