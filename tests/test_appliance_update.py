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

The steps and the checks are ``tools.appliance.scenarios.update_into_other_slot``, the very
scenario ``bench/appliance.py`` runs with the others (2 and 3, the rollbacks, run only there:
they would push the test command over ten minutes). About 4 minutes under TCG.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.appliance import need_appliance_tools
from tools.appliance.build import build
from tools.appliance.scenarios import ScenarioFailed, update_into_other_slot


@pytest.mark.timeout(2400)
async def test_update_into_slot_b_over_a_real_reboot(tmp_path: Path) -> None:
    need_appliance_tools()
    appliance = build()
    try:
        summary = await update_into_other_slot(appliance, tmp_path)
    except ScenarioFailed as exc:
        pytest.fail(str(exc))
    print(summary)
