"""Reboots wait for a running update, and a rollback after an API update is still reported."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from sysupd.release.repository import ReleaseRepository
from tests.conftest import ADMIN, ClientFactory, ServiceFactory, wait_until
from tests.offline import device_overrides, lan_server, upload, wait_final
from tests.releases import make_repo


async def test_a_due_reboot_waits_for_the_running_update(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo = make_repo(tmp_path, "1.1.0")
    bundle = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", bundle)
    service = await start_service(**device_overrides(repo, reboot_action="exit"))
    admin = await connect(service, login=ADMIN)
    gate = asyncio.Event()
    data = bundle.read_bytes()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[:100])
        await gate.wait()
        await response.write(data[100:])
        return response

    async with lan_server([web.get("/slow", slow)]) as (base, _):
        await admin.call("sys", "update_now", {"fetch_url": f"{base}/slow"})
        await admin.call("sys", "reboot", {"delay_seconds": 0})
        await wait_until(
            lambda: any("deferred: an update is running" in ln for ln in service.log.lines()),
            10,
            "the due reboot is deferred",
        )
        assert service.updates.running
        assert not service._exit.done()  # type: ignore[union-attr]
        gate.set()
        _, final = await wait_final(admin)
        assert final["result"] == "success"
    assert await asyncio.wait_for(service.wait_exit_requested(), 15)


async def test_rollback_after_an_api_update_is_in_update_status(
    tmp_path: Path,
    start_service: ServiceFactory,
    connect: ClientFactory,
    http: aiohttp.ClientSession,
) -> None:
    repo: ReleaseRepository = make_repo(tmp_path, "1.1.0")
    bundle = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", bundle)
    state = tmp_path / "state"
    settings = device_overrides(repo, reboot_action="exit", auto_reboot_delay_s=0)
    first = await start_service(state_dir=state, **settings)
    admin = await connect(first, login=ADMIN)
    stored = await upload(http, admin, first.http_port, bundle.read_bytes(), "u.bundle")
    await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]})
    await wait_final(admin)
    await admin.close()
    await first.stop()

    failing = {**settings, "health_check_command": "false"}
    trial = await start_service(state_dir=state, **failing)
    await asyncio.wait_for(trial.wait_exit_requested(), 15)  # the trial failed: reboot
    await trial.stop()

    after = await start_service(state_dir=state, **settings)
    admin = await connect(after, login=ADMIN)
    status = await admin.call("sys", "update_status")
    assert "update installed" in status["update_status"]
    assert "rolled back" in status["update_status"]
    info = await admin.call("sys", "info")
    assert (info["slot"], info["system_version"]) == ("A", "0.0.0")
