"""The scenarios of issue 12 on real boots, and the steps they share.

Responsibility: each scenario boots a fresh copy of the appliance disk (``vm.Vm``), drives the
guest only through its API with the project's client, and checks what the guest reports —
``sys/info``, ``sys/update_status``, ``sys/middleware_log`` — and, once the machine is off, the
ESP's grubenv. The steps they share (make a signed release, boot the factory slot, upload and
install, wait for GRUB's next start, read what the device says) are here once, for the test of
scenario 1 (``tests/test_appliance_update.py``) and for the runner of them all
(``bench/appliance.py``).

Invariants: a scenario either returns a one-line summary or raises ``ScenarioFailed`` saying what
the guest reported instead (with the serial console's last lines when a wait ran out); its QEMU
process has ended when it returns, whatever happened.

Every scenario, in order, is listed in ``tools.appliance.suite``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysupd.client import ApiError, ClientFailure
from tools.appliance.build import Appliance, release_bundle, release_image
from tools.appliance.vm import Answer, Vm, read_grubenv

__all__ = [
    "Device",
    "Report",
    "ScenarioFailed",
    "boot_factory",
    "expect",
    "kernel_slot",
    "make_release",
    "powered_on",
    "rollback_on_failed_health_check",
    "rollback_when_never_up",
    "update_into_other_slot",
]

GRUB_STARTS = "Welcome to GRUB"
BOOT_ATTEMPTS = 3
"""GRUB's attempts per slot: the chain of docs/grub.md (and ``boot_attempts`` in the guest)."""
_BOOT_S = 600.0
"""The deadline of one boot under TCG (typically about a minute; the host's load shows)."""


class ScenarioFailed(Exception):
    """The guest did not do or report what the scenario expects."""


def expect(condition: bool, what: str) -> None:
    """Raise ``ScenarioFailed(what)`` unless ``condition``."""
    if not condition:
        raise ScenarioFailed(what)


@dataclass(frozen=True, slots=True)
class Report:
    """What the guest says about itself through the API after a boot."""

    info: dict[str, Any]
    status: dict[str, Any]
    log: str

    @property
    def last_result(self) -> dict[str, Any]:
        """``sys/update_status``'s ``last_result`` (empty when there is none)."""
        last: dict[str, Any] = self.status.get("last_result") or {}
        return last


class Device:
    """One booted appliance: the machine and the steps the scenarios take on it."""

    def __init__(self, appliance: Appliance, vm: Vm) -> None:
        self.appliance = appliance
        self.vm = vm
        self.mark = 0
        """An offset into the serial console: where the current boot's output begins."""

    async def install(self, bundle: Path | None) -> dict[str, Any]:
        """Upload ``bundle`` (``None``: an online update from the update server), start the
        update and follow its events to the final one, which must say success; afterwards
        ``mark`` is where the reboot's output will begin."""
        final = await self.update(bundle)
        expect(final.get("result") == "success", f"the install failed: {final}")
        async with self.vm.client() as client:
            await client.login("admin", self.appliance.admin_password)
            status = await client.call("sys/update_status")
            expect(status["reboot_required"] is True, f"no reboot required: {status}")
        self.mark = len(self.vm.serial_text())
        return final

    async def update(
        self,
        source: Path | str | None,
        *,
        until: Callable[[dict[str, Any]], bool] = lambda args: not args["update_running"],
        cut: bool = False,
    ) -> dict[str, Any]:
        """Start an update — of a bundle uploaded from this path, from this ``fetch_url``, or
        (``None``) online — and follow its events to the first for which ``until`` is true (by
        default the final one, whatever its result): that event. ``cut``: then cut the power."""
        seen: dict[str, Any] | None = None
        try:
            async with self.vm.client() as client:
                await client.login("admin", self.appliance.admin_password)
                args: dict[str, Any] = {}
                if isinstance(source, Path):
                    args["file_upload"] = (await client.upload(source))["file_upload"]
                elif source is not None:
                    args["fetch_url"] = source
                started = await client.call("sys/update_now", args)
                expect(started.get("result") == "success", f"update_now refused: {started}")
                async for event in client.events():
                    if event.name != "sys/update_now":
                        continue
                    if until(event.args):
                        seen = event.args
                        if cut:
                            self.vm.kill()
                        break
                    expect(event.args["update_running"], f"the update ended: {event.args}")
        except (ClientFailure, ApiError, OSError):
            if seen is None or not cut:
                raise
            # Closing the connection to a machine whose power is gone may fail: that is the cut.
        expect(seen is not None, "the connection ended before the update did")
        assert seen is not None
        return seen

    async def configure(self, **settings: Any) -> None:
        """Change the operator's settings (``sys/set_config``)."""
        async with self.vm.client() as client:
            await client.login("admin", self.appliance.admin_password)
            answer = await client.call("sys/set_config", settings)
            expect(answer.get("result") == "success", f"set_config refused: {answer}")

    def power_on_again(self) -> None:
        """Start the machine again on its disk as the last run left it (after a power cut)."""
        self.vm.power_on()
        self.mark = 0

    async def next_boot(self, timeout_s: float = _BOOT_S) -> str:
        """Wait for GRUB's next start after ``mark``; the serial output of the boot it ends
        (from ``mark`` to that start), and ``mark`` moves to the new boot."""
        found = await self.vm.wait_for_serial(GRUB_STARTS, timeout_s, since=self.mark + 1)
        ended = self.vm.serial_text()[self.mark : found.start()]
        self.mark = found.start()
        return ended

    async def wait_for_api(self, timeout_s: float = _BOOT_S) -> Answer:
        """The current boot's first ``sys/info``, timed from its GRUB start."""
        self.vm.restart_clock()
        return await self.vm.wait_for_api(timeout_s)

    def boot_output(self) -> str:
        """The serial output of the current boot so far."""
        return self.vm.serial_text()[self.mark :]

    async def report(self) -> Report:
        """``sys/info``, ``sys/update_status`` and ``sys/middleware_log``, as the guest says."""
        async with self.vm.client() as client:
            await client.login("admin", self.appliance.admin_password)
            info = await client.call("sys/info")
            status = await client.call("sys/update_status")
            log = (await client.call("sys/middleware_log"))["log"]
        return Report(info, status, str(log))


def make_release(
    appliance: Appliance, version: str, work: Path, *, repo: Path | None = None, **defect: Any
) -> Path:
    """A signed offline bundle of a raw release ``version`` of the appliance's root tree, with
    ``defect`` as ``release_image`` takes it (``unhealthy=WHY``, ``init_panics=True``), made in
    ``work`` (``repo``: add it to that repository, as ``release_repository`` says)."""
    image = release_image(appliance, version, **defect)
    return release_bundle(appliance, version, work, image, repo=repo)


@contextlib.asynccontextmanager
async def boot_factory(appliance: Appliance, work: Path) -> AsyncIterator[Device]:
    """A fresh copy of the disk booted to its first answer: the factory version in slot A,
    good. The machine is powered off (or killed) when the block ends."""
    vm = Vm(appliance, work / "vm")
    vm.start()
    try:
        first = await vm.wait_for_api(_BOOT_S)
        expect(
            (first.info["slot"], first.info["system_version"], first.info["boot_status"])
            == ("A", appliance.version, "good"),
            f"the factory boot is not {appliance.version} in A, good: {first.info}",
        )
        expect("sysupd.slot=A" in vm.serial_text(), "GRUB did not boot slot A first")
        yield Device(appliance, vm)
    finally:
        if not await vm.poweroff():
            vm.kill()


@contextlib.asynccontextmanager
async def powered_on(device: Device) -> AsyncIterator[Answer]:
    """The machine of ``device`` (off) powered on again on its disk as it is, to its first
    answer; powered off (or killed) when the block ends."""
    device.power_on_again()
    try:
        yield await device.wait_for_api()
    finally:
        if not await device.vm.poweroff():
            device.vm.kill()


def _grubenv(device: Device, work: Path) -> dict[str, str]:
    return read_grubenv(device.vm.disk, work)


def kernel_slot(output: str) -> str | None:
    """The ``sysupd.slot=`` GRUB put on the kernel command line in ``output``."""
    found = re.search(r"(?i)command line:.*\bsysupd\.slot=(\w+)", output)
    return found.group(1) if found else None


async def update_into_other_slot(appliance: Appliance, work: Path) -> str:
    """Scenario 1: v1 on A, a raw v2 uploaded and installed into B, a real reboot, GRUB boots
    B, the health check passes and B is confirmed."""
    new = "2.0.0"
    bundle = make_release(appliance, new, work)
    async with boot_factory(appliance, work) as device:
        began = time.monotonic()
        await device.install(bundle)
        installed_s = time.monotonic() - began
        await device.next_boot()  # the service reboots by itself (auto_reboot, 10 s)
        answer = await device.wait_for_api()
        expect(kernel_slot(device.boot_output()) == "B", "GRUB did not boot slot B")
        report = await device.report()
        expect(
            (report.info["slot"], report.info["system_version"], report.info["boot_status"])
            == ("B", new, "good"),
            f"not {new} in B, good: {report.info}",
        )
        last = report.last_result
        expect(
            (last.get("result"), last.get("version")) == ("success", new),
            f"last_result is not a success of {new}: {last}",
        )
    env = _grubenv(device, work)
    confirmed = {"ORDER": "B A", "A_OK": "1", "A_TRY": "0", "B_OK": "1", "B_TRY": "0"}
    expect(env == confirmed, f"the grubenv is not B confirmed: {env}")
    return (
        f"{new} confirmed in B: upload and install {installed_s:.0f} s, "
        f"B answered {answer.seconds:.0f} s after its GRUB started; grubenv {_env_line(env)}"
    )


async def rollback_on_failed_health_check(appliance: Appliance, work: Path) -> str:
    """Scenario 2: v3 whose health check fails is installed into B and booted; ``sysupd boot``
    (the unit's ExecStartPre) marks B bad and reboots; GRUB boots A, and the service says
    "rolled back" and why."""
    new, why = "3.0.0", "the appliance's own check fails in this release (scenario 2)"
    bundle = make_release(appliance, new, work, unhealthy=why)
    async with boot_factory(appliance, work) as device:
        await device.install(bundle)
        await device.next_boot()
        began = time.monotonic()
        trial = await device.next_boot()  # B's boot, ended by the service's own reboot
        expect(kernel_slot(trial) == "B", "GRUB did not boot the new slot B")
        expect(why in trial, f"B's console does not show the failed check ({why!r})")
        await device.wait_for_api()
        back_s = time.monotonic() - began
        expect(kernel_slot(device.boot_output()) == "A", "GRUB did not boot slot A again")
        report = await device.report()
    env = _grubenv(device, work)
    detail = _check_rolled_back(report, appliance.version, new, "failed its health check")
    expect(why in detail, f"last_result does not say why: {detail}")
    expect(env["ORDER"] == "A B" and env["B_OK"] == "0", f"B is not marked bad: {env}")
    return f"rolled back to A in {back_s:.0f} s after B's start: {detail}; grubenv {_env_line(env)}"


async def rollback_when_never_up(appliance: Appliance, work: Path) -> str:
    """Scenario 3: v4 whose init exits (the kernel panics, ``panic=10`` reboots) is installed
    into B; GRUB tries B three times, then boots A, and the service reports the rollback."""
    new = "4.0.0"
    bundle = make_release(appliance, new, work, init_panics=True)
    async with boot_factory(appliance, work) as device:
        await device.install(bundle)
        await device.next_boot()
        began = time.monotonic()
        attempts: list[float] = []
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            output = await device.next_boot()
            attempts.append(time.monotonic() - began - sum(attempts))
            expect(kernel_slot(output) == "B", f"attempt {attempt} did not boot B")
            expect("Kernel panic" in output, f"attempt {attempt} of B did not panic")
        answer = await device.wait_for_api()
        back_s = time.monotonic() - began
        expect(kernel_slot(device.boot_output()) == "A", "GRUB did not fall back to A")
        report = await device.report()
    env = _grubenv(device, work)
    detail = _check_rolled_back(report, appliance.version, new, "did not come up")
    expect(env["B_OK"] == "0" and env["ORDER"] == "A B", f"B is not marked bad: {env}")
    spans = ", ".join(f"{s:.0f}" for s in attempts)
    return (
        f"rolled back to A {back_s:.0f} s after B's first start (B's attempts {spans} s, "
        f"A answered {answer.seconds:.0f} s after its GRUB): {detail}; grubenv {_env_line(env)}"
    )


def _check_rolled_back(report: Report, version: str, bad: str, cause: str) -> str:
    """What scenarios 2 and 3 expect after the fallback: ``version`` running in A, "rolled
    back" in ``boot_status``, ``last_result`` and the service log, with ``cause``; the detail."""
    info, last = report.info, report.last_result
    expect(
        (info["slot"], info["system_version"]) == ("A", version),
        f"not {version} in A after the rollback: {info}",
    )
    expect(info["boot_status"] == "rolled back", f"boot_status is not rolled back: {info}")
    detail = str(last.get("detail", ""))
    expect(last.get("result") == "rolled back", f"last_result is not rolled back: {last}")
    expect(cause in detail and bad in detail, f"last_result does not say {cause!r}: {last}")
    expect("rolled back" in report.status["update_status"], f"update_status: {report.status}")
    expect(f"rolled back: slot B ({bad})" in report.log, "the service log has no rollback line")
    return detail


def _env_line(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))
