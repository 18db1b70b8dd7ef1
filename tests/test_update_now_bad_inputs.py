"""Every bad sys/update_now input: refused at once with the contract's words, or ended by the final
failure event — and the running slot, the state and other uploads untouched."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.client import ApiError, WsClient
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory
from tests.engines import snapshot_tree
from tests.offline import device_overrides, file_route, lan_server, upload, wait_final
from tests.releases import make_repo

INVALID = {"result": "failure", "error": "Invalid file or url"}


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.fixture
def bundle(repo: ReleaseRepository, tmp_path: Path) -> Path:
    out = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", out)
    return out


@pytest.fixture
async def device(start_service: ServiceFactory, repo: ReleaseRepository) -> Service:
    return _mark_running(await start_service(**device_overrides(repo, fetch_stall_s=0.5)))


def _mark_running(service: Service) -> Service:
    running = service.config.state_dir / "slots" / "A"
    running.mkdir(parents=True, exist_ok=True)
    (running / "running-system").write_text("factory\n")
    return service


@pytest.fixture
async def admin(device: Service, connect: ClientFactory) -> WsClient:
    return await connect(device, login=ADMIN)


def _untouched(service: Service) -> None:
    assert snapshot_tree(service.config.state_dir / "slots" / "A") == {
        "running-system": b"factory\n"
    }
    status = service.engine().status().to_json()
    assert status["next_boot"] == "A"
    assert status["booted"] == "A"


async def _refused_now(admin: WsClient, args: dict[str, Any]) -> dict[str, Any]:
    reply = await admin.call("sys", "update_now", args)
    assert {k: reply[k] for k in ("result", "error")} == INVALID
    assert reply["details"]
    return reply


async def _fails_later(service: Service, admin: WsClient, args: dict[str, Any], why: str) -> None:
    assert (await admin.call("sys", "update_now", args))["result"] == "success"
    _, final = await wait_final(admin)
    assert final["result"] == "failure"
    assert final["reboot_required"] is False
    assert re.search(why, final["details"]), final["details"]
    _untouched(service)
    status = await admin.call("sys", "update_status")
    assert status["update_running"] is False
    assert status["reboot_required"] is False


@pytest.mark.parametrize(
    "args",
    [
        {"fetch_url": "http://127.0.0.1/x", "file_upload": "x"},
        {"fetch_url": 5},
        {"file_upload": None},
        {"file_upload": ["x"]},
        {"version": "1.1.0"},
    ],
)
async def test_argument_shape_is_400(
    device: Service, admin: WsClient, args: dict[str, Any]
) -> None:
    with pytest.raises(ApiError) as refused:
        await admin.call("sys", "update_now", args)
    assert refused.value.code == "400"
    _untouched(device)


async def test_users_may_not_update(device: Service, connect: ClientFactory) -> None:
    user = await connect(device, login=USER)
    with pytest.raises(ApiError) as refused:
        await user.call("sys", "update_now", {"file_upload": "x"})
    assert refused.value.code == "403"


@pytest.mark.parametrize("name", ["sub/update.bundle", "../update.bundle", ".hidden", "never-sent"])
async def test_bad_file_upload_names(
    device: Service, admin: WsClient, http: aiohttp.ClientSession, bundle: Path, name: str
) -> None:
    await upload(http, admin, device.http_port, bundle.read_bytes(), "kept.bundle")
    await _refused_now(admin, {"file_upload": name})
    assert device.uploads.names() == ["kept.bundle"]
    _untouched(device)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/u.bundle",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/u.bundle",
        "http://8.8.8.8/u.bundle",
        "not a url",
    ],
)
async def test_bad_fetch_urls(device: Service, admin: WsClient, url: str) -> None:
    await _refused_now(admin, {"fetch_url": url})
    _untouched(device)


async def test_host_outside_fetch_networks_is_never_contacted(
    start_service: ServiceFactory, connect: ClientFactory, repo: ReleaseRepository, bundle: Path
) -> None:
    service = await start_service(**device_overrides(repo, fetch_networks=["10.0.0.0/8"]))
    admin = await connect(service, login=ADMIN)
    async with lan_server([file_route("/u.bundle", bundle)]) as (base, seen):
        reply = await _refused_now(admin, {"fetch_url": f"{base}/u.bundle"})
        assert "127.0.0.1" in reply["details"]
    assert seen == []


async def test_redirect_to_a_disallowed_address(
    start_service: ServiceFactory, connect: ClientFactory, repo: ReleaseRepository, bundle: Path
) -> None:
    service = _mark_running(
        await start_service(**device_overrides(repo, fetch_networks=["127.0.0.1/32"]))
    )
    admin = await connect(service, login=ADMIN)

    async with lan_server([file_route("/u.bundle", bundle)]) as (elsewhere, seen_there):
        target = elsewhere.replace("127.0.0.1", "127.0.0.2") + "/u.bundle"

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(target)

        async with lan_server([web.get("/go", redirect)]) as (base, _):
            await _fails_later(service, admin, {"fetch_url": f"{base}/go"}, "redirect was refused")
    assert seen_there == []


async def test_not_found(device: Service, admin: WsClient) -> None:
    async with lan_server([]) as (base, _):
        await _fails_later(device, admin, {"fetch_url": f"{base}/missing"}, "404")


async def test_server_that_stalls(device: Service, admin: WsClient, bundle: Path) -> None:
    data = bundle.read_bytes()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[:2000])
        await asyncio.sleep(30)  # the stall is the point: far past fetch_stall_s (0.5 s)
        return response

    async with lan_server([web.get("/stall", stall)]) as (base, _):
        await _fails_later(device, admin, {"fetch_url": f"{base}/stall"}, "stalled")


async def test_more_bytes_than_signed(device: Service, admin: WsClient, bundle: Path) -> None:
    data = bundle.read_bytes() + b"\0" * 50_000

    async def long(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data)

    async with lan_server([web.get("/long", long)]) as (base, _):
        await _fails_later(device, admin, {"fetch_url": f"{base}/long"}, "longer than its signed")


async def test_dropped_connection_is_resumed(
    device: Service, admin: WsClient, bundle: Path
) -> None:
    data = bundle.read_bytes()
    drops = [1]

    async def flaky(request: web.Request) -> web.StreamResponse:
        if request.http_range.start is not None or not drops:
            return web.FileResponse(bundle)
        drops.pop()
        response = web.StreamResponse()
        response.content_length = len(data)
        response.headers["Accept-Ranges"] = "bytes"
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async with lan_server([web.get("/flaky", flaky)]) as (base, seen):
        assert (await admin.call("sys", "update_now", {"fetch_url": f"{base}/flaky"}))[
            "result"
        ] == "success"
        _, final = await wait_final(admin)
    assert final["result"] == "success", final["details"]
    assert len(seen) == 2


@pytest.mark.parametrize("damage", ["tampered", "truncated", "untrusted"])
async def test_bad_bundles_through_both_paths(
    device: Service,
    admin: WsClient,
    http: aiohttp.ClientSession,
    bundle: Path,
    tmp_path: Path,
    damage: str,
) -> None:
    data = bundle.read_bytes()
    if damage == "tampered":
        data = data[:-300] + bytes([data[-300] ^ 1]) + data[-299:]
    elif damage == "truncated":
        data = data[: len(data) - 4000]
    else:
        other = make_repo(tmp_path / "other", "1.1.0")
        other.write_bundle("1.1.0", tmp_path / "other.bundle")
        data = (tmp_path / "other.bundle").read_bytes()
    why = {
        "tampered": "does not match",
        "truncated": "truncated|ended after",
        "untrusted": "not signed",
    }
    stored = await upload(http, admin, device.http_port, data, "bad.bundle")
    await _fails_later(device, admin, {"file_upload": stored["file_upload"]}, why[damage])
    assert device.uploads.names() == []
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(data)
    async with lan_server([file_route("/bad.bundle", bad)]) as (base, _):
        await _fails_later(device, admin, {"fetch_url": f"{base}/bad.bundle"}, why[damage])
