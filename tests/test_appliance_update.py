"""Scenario 1 of issue 12 on real boots: the appliance disk (``tools/appliance``) boots in QEMU
from slot A and answers ``sys/info`` with v1; a raw v2 bundle is uploaded, installed into slot B,
the ESP's grubenv switched, a real reboot (``systemctl reboot`` in the guest restarts the
machine), GRUB boots B, the health check passes and the slot is confirmed.

Everything is real: OVMF, the standalone GRUB running the snippet of ``docs/grub.md`` on the ESP's
grubenv, the Debian kernel and systemd from the slot, sysupd from the unit of ``docs/systemd``,
reached through QEMU's user-mode port forwarding with the project's client. The disk is built
once and reused from ``.cache/appliance`` while its inputs are unchanged (a cold build takes 2 to
4 minutes, most of it debootstrap). One test, not a boot test and an update test: each boot costs
about a minute under TCG, and the whole test command must stay under ten minutes.

The v2 image is the appliance's root tree naming 2.0.0, released with ``sysupd release`` under
the keys the device trusts; it goes through the guest's own upload, verification and raw slot
writer (``/dev/disk/by-partlabel/slot-b``). About 5 minutes under TCG.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from sysupd.client import Client
from tests.appliance import need_appliance_tools
from tools.appliance.build import build, release_bundle, release_image
from tools.appliance.vm import Vm, read_grubenv

NEW = "2.0.0"


async def _install(client: Client, bundle: Path) -> dict[str, Any]:
    """Upload ``bundle``, start the update, and follow its events to the final one."""
    stored = await client.upload(bundle)
    started = await client.call("sys/update_now", {"file_upload": stored["file_upload"]})
    assert started.get("result") == "success", started
    async for event in client.events():
        if event.name == "sys/update_now" and not event.args.get("update_running"):
            return event.args
    raise AssertionError("the connection ended before the update did")


@pytest.mark.timeout(2400)
async def test_update_into_slot_b_over_a_real_reboot(tmp_path: Path) -> None:
    need_appliance_tools()
    appliance = build()
    bundle = release_bundle(appliance, NEW, tmp_path, release_image(appliance, NEW))
    vm = Vm(appliance, tmp_path / "vm")
    vm.start()
    try:
        first = await vm.wait_for_api()
        assert first.info["slot"] == "A", first.info
        assert first.info["system_version"] == appliance.version
        assert first.info["boot_status"] == "good"
        assert "root=PARTLABEL=slot-a" in vm.serial_text()
        assert "sysupd.slot=A" in vm.serial_text()
        began = time.monotonic()
        async with vm.client() as client:
            await client.login("admin", appliance.admin_password)
            final = await _install(client, bundle)
            assert final.get("result") == "success", final.get("details")
            status = await client.call("sys/update_status")
            assert status["reboot_required"] is True, status
            before_reboot = len(vm.serial_text())
        installed_s = time.monotonic() - began
        # The service reboots by itself (auto_reboot, 10 s): GRUB starts again in this process.
        await vm.wait_for_serial("Welcome to GRUB", 600, since=before_reboot)
        vm.restart_clock()
        second = await vm.wait_for_api(600)
        assert "sysupd.slot=B" in vm.serial_text()[before_reboot:]
        assert second.info["slot"] == "B", second.info
        assert second.info["system_version"] == NEW
        assert second.info["boot_status"] == "good"
        async with vm.client() as client:
            await client.login("admin", appliance.admin_password)
            last = (await client.call("sys/update_status")).get("last_result") or {}
        assert (last.get("result"), last.get("version")) == ("success", NEW), last
        stages = ", ".join(f"{name} {at:.1f} s" for name, at in vm.timeline.items())
        print(
            f"v1 answered after {first.seconds:.0f} s; upload and install {installed_s:.0f} s; "
            f"v2 answered {second.seconds:.0f} s after its GRUB started ({stages}); "
            f"last result {last}"
        )
    finally:
        powered_off = await vm.poweroff()
    assert powered_off, "the guest did not power off when sys/reboot asked it to"
    # GRUB counted B's attempt in the ESP's grubenv and the service confirmed it there.
    assert read_grubenv(vm.disk, tmp_path) == {
        "ORDER": "B A",
        "A_OK": "1",
        "A_TRY": "0",
        "B_OK": "1",
        "B_TRY": "0",
    }
