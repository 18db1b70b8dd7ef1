"""Scenario 5 of issue 12: an online update from a TUF repository that nginx serves on the host.

Responsibility: publish release 2.0.0 in a copy of the appliance's repository (the keys the device
trusts), serve its ``metadata/`` and ``targets/`` — never its keys — with a real nginx on the
host's loopback, point the guest's ``update_server`` at it as the guest sees it (QEMU's
user-mode networking maps 10.0.2.2 to the host's 127.0.0.1), and let the device check, download
through its TUF client, install, reboot and confirm. nginx's access log shows the device fetched
the payload itself: nothing is uploaded.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.appliance.build import Appliance, release_image, release_repository
from tools.appliance.scenarios import Device, ScenarioFailed, boot_factory, expect, kernel_slot
from tools.nginx import access_log, nginx_serving

__all__ = ["GUEST_HOST", "check_for_updates", "update_online"]

GUEST_HOST = "10.0.2.2"
"""The host's loopback as the guest reaches it (QEMU user-mode networking)."""
_CHECK_S = 300.0


async def check_for_updates(device: Device, timeout_s: float = _CHECK_S) -> dict[str, Any]:
    """``sys/update_check``, then ``sys/updates_available`` once that check has ended."""
    async with device.vm.client() as client:
        await client.login("admin", device.appliance.admin_password)
        before = (await client.call("sys/updates_available")).get("last_checked")
        started = await client.call("sys/update_check")
        expect(started.get("result") == "success", f"update_check refused: {started}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            available: dict[str, Any] = await client.call("sys/updates_available")
            if available.get("last_checked") not in (None, before):
                return available
            await asyncio.sleep(1.0)
    raise ScenarioFailed(f"no update check ended within {timeout_s:g} s")


async def update_online(appliance: Appliance, work: Path) -> str:
    """Scenario 5: 2.0.0 published on the host's nginx; the device checks, downloads it itself,
    installs it into B, reboots, and confirms it."""
    new = "2.0.0"
    repo = release_repository(appliance, new, work, release_image(appliance, new))
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    for part in ("metadata", "targets"):
        (www / part).symlink_to(repo / part)
    with nginx_serving(www, work / "nginx") as url:
        server = f"http://{GUEST_HOST}:{urlsplit(url).port}"
        async with boot_factory(appliance, work) as device:
            await device.configure(update_server=server)
            available = await check_for_updates(device)
            expect(
                available.get("updates_available") is True and available.get("version") == new,
                f"the check against {server} did not find {new}: {available}",
            )
            began = time.monotonic()
            await device.install(None)
            installed_s = time.monotonic() - began
            await device.next_boot()
            await device.wait_for_api()
            expect(kernel_slot(device.boot_output()) == "B", "GRUB did not boot slot B")
            report = await device.report()
        requests = access_log(work / "nginx")
    info, last = report.info, report.last_result
    expect(
        (info["slot"], info["system_version"], info["boot_status"]) == ("B", new, "good"),
        f"not {new} in B, good: {info}",
    )
    expect(
        (last.get("result"), last.get("version")) == ("success", new),
        f"last_result is not a success of {new}: {last}",
    )
    payloads = [line for line in requests if "GET /targets/" in line and '" 200 ' in line]
    expect(bool(payloads), f"nginx served no target to the device: {requests[-5:]}")
    metadata = sum("GET /metadata/" in line for line in requests)
    return (
        f"{new} found at {server}, downloaded by the device and installed in {installed_s:.0f} s, "
        f"confirmed in B; nginx served {metadata} metadata and {len(payloads)} target requests"
    )
