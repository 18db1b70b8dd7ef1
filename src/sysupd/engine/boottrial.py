"""The boot trial: what the engine does at each start and when the booted slot's health check
has run.

At start: settle an install a crash interrupted (did it get as far as the switch?), learn the
slot that booted (the file bootloader chooses it here; a firmware bootloader says which on the
kernel command line) and whether that is a fallback from a slot that never came up. After the
health check: confirm the slot, or abandon a newly installed one that failed (the previous slot
boots next). Every step runs under the update lock.

A firmware bootloader's record that is missing or unusable (a lost or corrupt grubenv) did not
stop the firmware: it booted as on a fresh device. The start then recreates the record around
the slot that booted (``BootEnv.recreated``: it good and first, the others bad until an install
rewrites them), keeps the unusable one for inspection and says so in ``BootReport.repaired``;
where it cannot (no slot on the kernel command line, an unwritable directory), the start fails
with a ``BootError`` naming both problems. The file bootloader's record is never recreated:
sysupd chooses from it, and a missing one is a fresh device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sysupd.boot.adapter import Bootloader
from sysupd.core.bootenv import BootEnv
from sysupd.core.settings import Settings
from sysupd.core.versions import parse_version
from sysupd.engine.lock import UpdateLock
from sysupd.engine.state import (
    BootStatus,
    EngineState,
    LastResult,
    Outcome,
    SlotRecord,
    StateFile,
)
from sysupd.engine.status import BootVerdict
from sysupd.engine.trust import TrustStore
from sysupd.errors import BootError, BootRecordMissing, BootRecordUnusable
from sysupd.system.clock import Clock

__all__ = ["BootReport", "BootTrial", "slot_version", "stamp"]


@dataclass(frozen=True, slots=True)
class BootReport:
    """What ``Engine.start`` found."""

    slot: str
    version: str
    rolled_back: str | None
    """Why the previous boot choice was abandoned, if it was."""
    interrupted: str | None
    """The install that a crash or power cut interrupted, if any."""
    trust_warning: str | None = None
    """Why the configured trust root is ignored, if it is."""
    repaired: str | None = None
    """The bootloader's record that was missing or unusable and recreated, and how, if one was."""


class BootTrial:
    """The engine's boot-time steps, over the engine's own collaborators."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        bootloader: Bootloader,
        trust: TrustStore,
        state: StateFile,
        lock_path: Path,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.bootloader = bootloader
        self.trust = trust
        self.state_file = state
        self.lock_path = lock_path

    def start(self) -> BootReport:
        """At service start: settle an interrupted install, learn (or choose) the booted slot.

        Raises:
            BootError: no slot is bootable, or the bootloader's record is unusable.
        """
        with UpdateLock(self.lock_path, blocking=True):
            return self._start()

    def _start(self) -> BootReport:
        trust_warning = self.trust.adopt()
        state = self.state_file.load()
        env, repaired = self._boot_env(state)
        self.trust.settle_pending(env.order[0], env.slots[env.order[0]].ok)
        state, interrupted = self._settle_job(state, env)
        preferred = env.order[0]
        fell_back = False
        if self.bootloader.name == "file":  # sysupd itself is the bootloader
            choice = env.choose_boot(self.settings.boot_attempts)
            if choice.slot is None:
                raise BootError("no slot is bootable: every slot is marked bad or out of attempts")
            booted, env = choice.slot, choice.env
            fell_back = choice.fell_back_from is not None
            self.bootloader.save(env)
        else:  # the firmware chose, and says which on the kernel command line
            found = self.bootloader.booted_slot()
            if found is None:
                raise BootError(
                    "the kernel command line names no sysupd.slot: is the boot loader set up "
                    "as docs/grub.md says?"
                )
            booted = found
            record = env.slots[preferred]
            # Only a slot the firmware really tried and gave up on is a rollback; a restart of
            # the service before the reboot into a new slot is not.
            fell_back = booted != preferred and (
                not record.ok or record.tries >= self.settings.boot_attempts
            )
        rolled_back = None
        if fell_back:
            rolled_back = (
                f"slot {preferred} ({self._version(state, preferred)}) did not come up within "
                f"{self.settings.boot_attempts} boot attempts; slot {booted} booted instead"
            )
            state = self._rolled_back(state, rolled_back)
        state = replace(state, booted=booted)
        if repaired is not None and state.trial not in (None, booted):
            state = replace(state, trial=None)  # its slot is marked bad now: it never boots
        if booted not in state.slots:  # the slot the device shipped with
            state = state.with_slot(booted, SlotRecord(version=self.settings.factory_version))
        self.state_file.save(state)
        if fell_back:
            # Marked bad as a failed health check marks it, after the rollback is recorded (a
            # power cut between the two records it again): the bootloader's record says so, and
            # the next start does not find the same fallback and report it anew.
            self.bootloader.save(env.reject(preferred))
        return BootReport(
            booted,
            self._version(state, booted),
            rolled_back,
            interrupted,
            trust_warning,
            repaired,
        )

    def _boot_env(self, state: EngineState) -> tuple[BootEnv, str | None]:
        """The bootloader's record, and for a firmware bootloader whose record was missing or
        unusable, the one recreated around the slot that booted, with the sentence saying so.

        Raises:
            BootError: the record cannot be read, or is unusable and cannot be recreated.
        """
        if self.bootloader.name == "file":  # sysupd chooses: no record is a fresh device
            return self.bootloader.load(), None
        try:
            return self.bootloader.load(missing_ok=False), None
        except BootRecordUnusable as exc:
            return self._recreate(state, exc)

    def _recreate(self, state: EngineState, unusable: BootRecordUnusable) -> tuple[BootEnv, str]:
        """The firmware booted without the record: write it anew around the slot it booted."""
        problem = str(unusable).rstrip(".")
        try:
            booted = self.bootloader.booted_slot()
            if booted is None:
                raise BootError(
                    "the kernel command line names no sysupd.slot, so nothing says which slot "
                    "booted"
                )
            env = BootEnv.recreated(self.bootloader.slot_names, booted)
            kept = self.bootloader.recreate(env)
        except BootError as cannot:
            raise BootError(f"{problem}; it cannot be recreated: {cannot}") from unusable
        written = f"slot {booted} ({self._version(state, booted)}) good and first"
        others = env.order[1:]
        if others:
            plural = "s" if len(others) > 1 else ""
            written += f", slot{plural} {', '.join(others)} marked bad until the next install"
        if isinstance(unusable, BootRecordMissing):
            return env, f"{problem}: created it with {written}"
        repaired = f"{problem}: recreated it with {written}"
        if kept is not None:
            repaired += f"; the unusable copy is kept as {kept}"
        return env, repaired

    def _settle_job(self, state: EngineState, env: BootEnv) -> tuple[EngineState, str | None]:
        """A job record at start-up: did the install get as far as the switch, or not?"""
        job = state.job
        if job is None:
            return state, None
        if env.order[0] == job.slot and env.slots[job.slot].ok:
            # The switch happened; only the final bookkeeping was lost.
            done = LastResult(
                Outcome.INSTALLED,
                f"version {job.version} installed into slot {job.slot}; reboot to try it",
                stamp(self.clock),
                job.version,
            )
            return replace(state, job=None, trial=job.slot, last_result=done), None
        interrupted = f"the install of {job.version} into slot {job.slot} was interrupted"
        state = state.with_slot(job.slot, SlotRecord())
        return replace(
            state,
            job=None,
            trial=None if state.trial == job.slot else state.trial,
            last_result=LastResult(
                Outcome.INTERRUPTED, interrupted, stamp(self.clock), job.version
            ),
        ), interrupted

    def confirm(self, healthy: bool, detail: str) -> LastResult | None:
        """Settle the booted slot's health check; returns the result it settles, if any.

        Only a slot on trial (newly installed) can fail: it is marked bad and the result is
        "rolled back" — the caller reboots, and the previous slot boots. A failing check on an
        established slot is reported but changes nothing, since there is no better slot to go to.

        Raises:
            BootError: before ``start``, or the bootloader's record is unusable.
            StateError: the engine's record cannot be read or written.
        """
        with UpdateLock(self.lock_path, blocking=True):
            return self.confirm_locked(healthy, detail)

    def confirm_locked(self, healthy: bool, detail: str) -> LastResult | None:
        """``confirm`` for a caller that holds the update lock already (``sysupd mark``).

        Raises:
            BootError, StateError: as ``confirm``.
        """
        state = self.state_file.load()
        booted = state.booted
        if booted is None:
            raise BootError("confirm() before start()")
        env = self.bootloader.load()
        version = self._version(state, booted)
        fallback = any(r.ok for name, r in env.slots.items() if name != booted)
        if not healthy and state.trial == booted and fallback:
            self.bootloader.save(env.reject(booted))
            cause = f"slot {booted} ({version}) failed its health check: {detail}"
            state = self._rolled_back(state, cause)
            self.state_file.save(state)
            return state.last_result
        self.bootloader.save(env.confirm(booted))
        if not healthy:
            return None
        floor = state.floor
        if floor is None or parse_version(version) > parse_version(floor):
            floor = version
        result = state.last_result
        if state.trial == booted:
            how = (
                f"passed its health check ({detail})"
                if self.settings.health_check_command.strip()
                else "is confirmed (no health check is configured, so starting is enough)"
            )
            result = LastResult(
                Outcome.SUCCESS,
                f"version {version} booted in slot {booted} and {how}",
                stamp(self.clock),
                version,
            )
        trial = None if state.trial == booted else state.trial  # a newer install waits its turn
        self.state_file.save(replace(state, floor=floor, trial=trial, last_result=result))
        return result if state.trial == booted else None

    def settle_boot(self, healthy: bool, detail: str) -> BootVerdict:
        """The boot trial's end, for the service and ``sysupd boot`` alike: ``confirm`` with the
        health check's result, and the verdict to report (reboot when ``verdict.reboot``).

        Raises:
            BootError: before ``start``, or the bootloader's record is unusable.
            StateError: the engine's record cannot be read or written.
        """
        settled = self.confirm(healthy, detail)
        if settled is not None and settled.result is Outcome.ROLLED_BACK:
            return BootVerdict(BootStatus.FAILED, settled, detail)
        last = self.state_file.load().last_result
        if last is not None and last.result is Outcome.ROLLED_BACK:
            status = BootStatus.ROLLED_BACK  # this start fell back from a slot that never came up
        else:
            status = BootStatus.GOOD if healthy else BootStatus.UNHEALTHY
        return BootVerdict(status, settled, detail)

    def _version(self, state: EngineState, slot: str) -> str:
        return slot_version(state, slot, self.settings.factory_version)

    def _rolled_back(self, state: EngineState, cause: str) -> EngineState:
        result = LastResult(Outcome.ROLLED_BACK, cause, stamp(self.clock), None)
        return replace(state, trial=None, last_result=result)


def slot_version(state: EngineState, slot: str, factory_version: str) -> str:
    """The version ``slot`` holds: its recorded one, or the factory's."""
    record = state.slots.get(slot)
    return record.version if record and record.version else factory_version


def stamp(clock: Clock) -> str:
    """Now, as the engine's records say it."""
    return clock.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
