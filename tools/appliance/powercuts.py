"""Scenario 4 of issue 12: cut the power (SIGKILL of QEMU) at points of an install and of the
trial boot, and check after each that the device survived.

Responsibility: one machine, cut again and again. Each cut is made from the host the moment it
sees its point — an install event past a byte offset, the ``switch`` phase (just before the
grubenv makes the new slot first), the install's final event (just after it), or a line of the
trial boot on the serial console — and then, with the machine off:

- the state database on the data partition passes ``PRAGMA integrity_check`` (after the journal
  replay the guest's next mount would do, ``vm.state_database_check``);

and, the machine powered on again:

- it comes up on a bootable slot, its health check passes (``boot_status`` good);
- an install the cut interrupted is reported as interrupted (``last_result``, and the service log)
  and the previous slot still runs; a cut after the switch, or during the trial boot, ends with
  the new slot confirmed.

The cuts follow each other on the same disk, so each one starts from what the previous ones left;
at the end one more update runs to its confirmation ("the next update succeeds"). The byte
offsets are random; the seed is in the summary so a run can be repeated
(``SYSUPD_POWERCUT_SEED``).

Invariant: a cut the device did not survive ends the scenario (``ScenarioFailed``, saying how many
survived and what the device reported instead); the power-cut figure is printed either way.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.appliance.build import Appliance
from tools.appliance.scenarios import (
    Device,
    ScenarioFailed,
    boot_factory,
    expect,
    kernel_slot,
    make_release,
)
from tools.appliance.vm import state_database_check

__all__ = ["Cut", "cut_plan", "survive_power_cuts"]

RANDOM_CUTS = 6
"""Cuts at random byte offsets of the payload (then the four fixed points: 10 in all)."""
_VERSIONS = tuple(f"{major}.0.0" for major in range(2, 10))


@dataclass(frozen=True, slots=True)
class Cut:
    """One power cut: where, and what the device must do after it."""

    where: str
    """What the host saw when it cut, for the summary."""
    during_install: Callable[[dict[str, Any]], bool] | None
    """Cut on the first install event this is true of; ``None``: during the trial boot."""
    serial: str = ""
    """For a cut during the trial boot: the console line (a regex) to cut at."""


def _past(fraction: float) -> Callable[[dict[str, Any]], bool]:
    def reached(args: dict[str, Any]) -> bool:
        total = int(args.get("bytes_total") or 0)
        return bool(total) and int(args.get("bytes_done") or 0) >= fraction * total

    return reached


def _switching(args: dict[str, Any]) -> bool:
    # Just before the grubenv write; the final event counts too, when the switch was quicker
    # than the next progress event.
    return args.get("phase") == "switch" or not args["update_running"]


def _ended(args: dict[str, Any]) -> bool:
    return not args["update_running"]


def cut_plan(seed: int) -> list[Cut]:
    """The cuts, in order: ``RANDOM_CUTS`` random offsets, the switch, after it, the trial boot."""
    rng = random.Random(seed)  # noqa: S311 (cut points, repeatable from the seed, not secrets)
    fractions = sorted(round(rng.uniform(0.02, 0.98), 3) for _ in range(RANDOM_CUTS))
    cuts = [Cut(f"{f:.1%} of the payload written", _past(f)) for f in fractions]
    cuts += [
        Cut("the switch phase (just before the grubenv write)", _switching),
        Cut("the install's final event (just after the grubenv write)", _ended),
        Cut("the trial boot's kernel starting", None, r"Linux version"),
        Cut(
            "the trial boot's sysupd starting (before its health check)",
            None,
            r"Starting .*sysupd\.service",
        ),
    ]
    return cuts


class _Releases:
    """The bundles the scenario installs, made on first use."""

    def __init__(self, appliance: Appliance, work: Path) -> None:
        self.appliance = appliance
        self.work = work
        self._bundles: dict[str, Path] = {}

    def after(self, running: str) -> tuple[str, Path]:
        """The release to install next: the first newer than ``running``, the version the device
        has confirmed (an interrupted install does not raise its floor, so it is tried again)."""
        version = next(v for v in _VERSIONS if _major(v) > _major(running))
        if version not in self._bundles:
            place = self.work / f"release-{version}"
            place.mkdir(parents=True, exist_ok=True)
            repo = self.work / "repo"  # one repository for them all, as a vendor has
            if not repo.exists():
                shutil.copytree(self.appliance.repo, repo)
            self._bundles[version] = make_release(self.appliance, version, place, repo=repo)
        return version, self._bundles[version]


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


@dataclass(slots=True)
class _Running:
    """What runs on the machine, as the scenario expects it."""

    slot: str
    version: str


async def survive_power_cuts(appliance: Appliance, work: Path) -> str:
    """Scenario 4: ``RANDOM_CUTS`` + 4 power cuts on one machine, then an update that succeeds."""
    seed = int(os.environ.get("SYSUPD_POWERCUT_SEED") or time.time())
    cuts = cut_plan(seed)
    releases = _Releases(appliance, work)
    notes: list[str] = []
    survived = 0
    async with boot_factory(appliance, work) as device:
        await device.configure(event_interval_s=0.2)  # a finer grain of byte offsets to cut at
        running = _Running("A", appliance.version)
        try:
            for number, cut in enumerate(cuts, start=1):
                version, bundle = releases.after(running.version)
                began = time.monotonic()
                outcome = await _cut_once(device, cut, version, bundle, running, work)
                survived += 1
                notes.append(f"{number}. {cut.where}: {outcome} ({time.monotonic() - began:.0f} s)")
                print(f"power cut {number}/{len(cuts)}: {notes[-1]}", flush=True)
            version, bundle = releases.after(running.version)
            await _update_to_confirmed(device, version, bundle, running)
        except ScenarioFailed as exc:
            figure = f"{survived}/{len(cuts)} power cuts survived (seed {seed})"
            print(figure, flush=True)
            raise ScenarioFailed(f"{figure}; cut {survived + 1}: {exc}") from exc
    figure = f"{survived}/{len(cuts)} power cuts survived (seed {seed})"
    print(figure, flush=True)
    return (
        f"{figure}; then {running.version} installed and confirmed in {running.slot}: "
        + "; ".join(notes)
    )


async def _cut_once(
    device: Device, cut: Cut, version: str, bundle: Path, running: _Running, work: Path
) -> str:
    """Make ``cut`` while installing ``version``, power on again, check; what happened."""
    target = "B" if running.slot == "A" else "A"
    if cut.during_install is not None:
        seen = await device.update(bundle, until=cut.during_install, cut=True)
        expect(seen.get("result") != "failure", f"the install failed before the cut: {seen}")
        switched = seen.get("result") == "success"  # the final event: the switch is done
        at = _at(seen)
    else:
        await device.install(bundle)
        await device.next_boot()  # the service's own reboot into the new slot
        trial_began = time.monotonic()
        await device.vm.wait_for_serial(cut.serial, since=device.mark)
        device.vm.kill()
        switched, at = True, f"cut {time.monotonic() - trial_began:.0f} s after its GRUB started"
    integrity = await asyncio.to_thread(state_database_check, device.vm.disk, work)
    expect(integrity == "ok", f"the state database fails its integrity check: {integrity}")
    device.power_on_again()
    await device.wait_for_api()
    report = await device.report()
    info, last = report.info, report.last_result
    booted = kernel_slot(device.boot_output())
    expect(info["boot_status"] == "good", f"the device did not come up good: {info}")
    expect(booted == info["slot"], f"GRUB booted {booted}, the service says {info['slot']}")
    if (info["slot"], info["system_version"]) == (running.slot, running.version):
        expect(not switched, f"the install of {version} was lost after its switch: {info}, {last}")
        expect(
            (last.get("result"), last.get("version")) == ("interrupted", version),
            f"the interrupted install of {version} is not reported: {last}",
        )
        expect("was interrupted" in report.log, "the service log does not say it was interrupted")
        return f"{at}; {running.slot} ({running.version}) kept, the install reported interrupted"
    expect(
        (info["slot"], info["system_version"]) == (target, version),
        f"neither {running.version} in {running.slot} nor {version} in {target}: {info}",
    )
    expect(
        (last.get("result"), last.get("version")) == ("success", version),
        f"{version} in {target} is not confirmed: {last}",
    )
    running.slot, running.version = target, version
    return f"{at}; {version} confirmed in {target} at the next boot"


async def _update_to_confirmed(
    device: Device, version: str, bundle: Path, running: _Running
) -> None:
    """The update after the cuts: installed, rebooted into, confirmed."""
    target = "B" if running.slot == "A" else "A"
    await device.install(bundle)
    await device.next_boot()
    await device.wait_for_api()
    report = await device.report()
    info, last = report.info, report.last_result
    expect(
        (info["slot"], info["system_version"], info["boot_status"]) == (target, version, "good"),
        f"the update after the cuts did not end with {version} in {target}, good: {info}",
    )
    expect(last.get("result") == "success", f"the update after the cuts: {last}")
    running.slot, running.version = target, version


def _at(event: dict[str, Any]) -> str:
    done, total = int(event.get("bytes_done") or 0), int(event.get("bytes_total") or 0)
    phase = event.get("phase") or ("ended" if not event["update_running"] else "?")
    share = f"{done / total:.1%}" if total else "0"
    return f"cut at {share} ({done:,} of {total:,} bytes, phase {phase})"
