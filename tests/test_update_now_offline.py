"""sys/update_now from an uploaded file and from a LAN URL: events, log, status, reboot."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sysupd.release.repository import ReleaseRepository
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory
from tests.offline import device_overrides, file_route, lan_server, upload, wait_final
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.fixture
def bundle(repo: ReleaseRepository, tmp_path: Path) -> Path:
    out = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", out)
    return out


async def test_uploaded_bundle_installs_with_events(
    start_service: ServiceFactory,
    connect: ClientFactory,
    http: aiohttp.ClientSession,
    repo: ReleaseRepository,
    bundle: Path,
) -> None:
    service = await start_service(**device_overrides(repo))
    admin = await connect(service, login=ADMIN)
    watcher = await connect(service, login=USER)
    stored = await upload(http, admin, service.http_port, bundle.read_bytes(), "update.bundle")
    reply = await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]})
    assert reply == {"result": "success", "updates": "starting"}
    running, final = await wait_final(watcher)
    assert running
    assert running[0]["update_running"] is True
    assert running[0]["reboot_required"] is False
    assert "update started from the uploaded file update.bundle" in running[0]["details"]
    assert {"phase", "bytes_done", "bytes_total"} <= set(running[-1])
    assert {event["phase"] for event in running} <= {"download", "verify", "install", "switch"}
    assert all(event["details"] == event["log"].split("<br>")[-1] for event in running)
    assert final["result"] == "success"
    assert "phase" not in final
    assert final["reboot_required"] is True
    assert final["update_running"] is False
    log = final["details"].split("<br>")
    assert any("signed metadata of release 1.1.0" in line for line in log)
    assert any(re.search(r"\((\d|\.)+ (bytes|KiB|MiB)/s\)", line) for line in log)
    status = await watcher.call("sys", "update_status")
    assert status["reboot_required"] is True
    assert status["update_running"] is False
    assert status["update_status"] == final["details"]
    assert service.uploads.names() == []  # the upload is gone with its update
    assert (service.config.state_dir / "slots" / "B" / "etc" / "version").read_text() == "1.1.0\n"


async def test_auto_reboot_is_scheduled_and_can_be_stopped(
    start_service: ServiceFactory,
    connect: ClientFactory,
    http: aiohttp.ClientSession,
    repo: ReleaseRepository,
    bundle: Path,
) -> None:
    service = await start_service(
        **device_overrides(repo, auto_reboot=True, auto_reboot_delay_s=600)
    )
    admin = await connect(service, login=ADMIN)
    stored = await upload(http, admin, service.http_port, bundle.read_bytes(), "u.bundle")
    await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]})
    await wait_final(admin)
    reboot = await admin.next_event("sys/reboot")
    assert reboot["args"]["reboot_type"] == "restart"
    assert reboot["args"]["reboot_delay_seconds"] == 600
    assert await admin.call("sys", "reboot_stop") == {"result": "success"}
    assert (await admin.next_event("sys/reboot"))["args"] == {"reboot_scheduled": False}
    assert service.reboots.plan is None


async def test_fetch_url_streams_from_a_lan_server(
    start_service: ServiceFactory, connect: ClientFactory, repo: ReleaseRepository, bundle: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    admin = await connect(service, login=ADMIN)
    async with lan_server([file_route("/u.bundle", bundle)]) as (base, seen):
        reply = await admin.call("sys", "update_now", {"fetch_url": f"{base}/u.bundle"})
        assert reply == {"result": "success", "updates": "starting"}
        _, final = await wait_final(admin)
    assert final["result"] == "success", final["details"]
    assert "downloading from 127.0.0.1" in final["details"]
    assert seen == ["/u.bundle"]


async def test_second_update_now_while_one_runs(
    start_service: ServiceFactory,
    connect: ClientFactory,
    repo: ReleaseRepository,
    bundle: Path,
) -> None:
    service = await start_service(**device_overrides(repo))
    admin = await connect(service, login=ADMIN)
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = bundle.stat().st_size
        await response.prepare(request)
        data = bundle.read_bytes()
        await response.write(data[:100])
        await gate.wait()
        await response.write(data[100:])
        return response

    async with lan_server([web.get("/slow", slow)]) as (base, _):
        first = await admin.call("sys", "update_now", {"fetch_url": f"{base}/slow"})
        assert first["result"] == "success"
        again = await admin.call("sys", "update_now", {"fetch_url": f"{base}/slow"})
        assert again == {"result": "failure", "error": "Update procedure already running"}
        status = await admin.call("sys", "update_status")
        assert status["update_running"] is True
        gate.set()
        _, final = await wait_final(admin)
    assert final["result"] == "success", final["details"]
