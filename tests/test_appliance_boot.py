"""The appliance disk (``tools/appliance``) boots in QEMU from slot A, and its sysupd answers.

Everything is real: OVMF, the standalone GRUB running the snippet of ``docs/grub.md`` on the ESP's
grubenv, the Debian kernel and systemd from slot A, and sysupd from the unit of ``docs/systemd``,
reached through QEMU's user-mode port forwarding with the project's client. The disk is built
once and reused from ``.cache/appliance`` while its inputs are unchanged (a cold build is about
4 minutes, most of it debootstrap); the boot takes about a minute under TCG.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.appliance import need_appliance_tools
from tools.appliance.build import build
from tools.appliance.vm import Vm, read_grubenv


@pytest.mark.timeout(1800)
async def test_appliance_boots_slot_a_and_answers_sys_info(tmp_path: Path) -> None:
    need_appliance_tools()
    appliance = build()
    vm = Vm(appliance, tmp_path / "vm")
    vm.start()
    try:
        answer = await vm.wait_for_api()
    finally:
        powered_off = await vm.poweroff()
    stages = ", ".join(f"{name} {at:.1f} s" for name, at in vm.timeline.items())
    print(f"appliance answered after {answer.seconds:.1f} s ({stages})")
    assert answer.info["slot"] == "A", answer.info
    assert answer.info["system_version"] == appliance.version
    assert answer.info["boot_status"] == "good"
    serial = vm.serial_text()
    assert "root=PARTLABEL=slot-a" in serial
    assert "sysupd.slot=A" in serial
    # GRUB counted the attempt in the ESP's grubenv and the service confirmed it there.
    assert read_grubenv(vm.disk, tmp_path) == {
        "ORDER": "A B",
        "A_OK": "1",
        "A_TRY": "0",
        "B_OK": "0",
        "B_TRY": "0",
    }
    assert powered_off, "the guest did not power off when sys/reboot asked it to"
