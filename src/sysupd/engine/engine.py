"""The update engine: installing a bundle into the inactive slot, and the boot trial after it.

``Engine`` ties the pure rules (trust chain, chunk verification, boot environment, job states) to
their edges (trust store, state file, slot writers, bootloader adapter). One install runs at a
time (``UpdateLock``); it goes to the inactive slot, which is marked unbootable before the first
byte is written and made the next boot only after the whole payload verified — so the booted slot
and its boot entry are never touched, and an interruption at any instant boots what booted before.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from sysupd.boot.adapter import Bootloader, make_bootloader
from sysupd.core.bootenv import BootEnv
from sysupd.core.bundle_format import (
    BUNDLE_PREFIX_BYTES,
    decode_bundle_header,
    decode_bundle_prefix,
)
from sysupd.core.chunks import ChunkVerifier
from sysupd.core.job import JobState, JobStateMachine
from sysupd.core.manifest import Manifest
from sysupd.core.settings import Settings
from sysupd.core.trustchain import ReleasePolicy, check_policy, verify_bundle
from sysupd.core.units import human_rate, human_size
from sysupd.core.versions import parse_version
from sysupd.engine.lock import UpdateLock
from sysupd.engine.slotset import SlotConfig, inactive_slot, make_writer, slot_configs
from sysupd.engine.state import (
    EngineState,
    JobRecord,
    LastResult,
    Outcome,
    SlotRecord,
    StateFile,
)
from sysupd.engine.stream import ByteSource, VerifiedReader
from sysupd.engine.trust import TrustStore, TrustUpdate
from sysupd.errors import AcquireError, BootError, InstallError, StateError, VerificationError
from sysupd.slots.base import PayloadSpec
from sysupd.system.clock import Clock

__all__ = ["BootReport", "Engine", "Progress", "Release"]

Progress = Callable[[JobState, int, int], None]
"""Called with the stage, bytes done and bytes in all."""
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Release:
    """A release whose metadata verified: what to install and how to check its payload."""

    manifest: Manifest
    chunk_list: bytes
    trust: TrustUpdate
    """The trust the release came with, kept only with the switch to it."""


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


class Engine:
    """The update engine of one state directory."""

    def __init__(
        self,
        state_dir: Path,
        settings: Settings,
        clock: Clock,
        *,
        cmdline: Path = Path("/proc/cmdline"),
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.settings = settings
        self.clock = clock
        self.slots: dict[str, SlotConfig] = {
            s.name: s for s in slot_configs(settings.slots, state_dir)
        }
        self.bootloader: Bootloader = make_bootloader(
            settings.bootloader,
            state_dir,
            tuple(self.slots),
            Path(settings.grubenv) if settings.grubenv else None,
            cmdline,
        )
        self.trust = TrustStore(state_dir / "trust", settings.trust_root)
        self.state_file = StateFile(state_dir / "engine.json")
        self.lock_path = state_dir / "update.lock"

    # -- boot ----------------------------------------------------------------------------------

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
        env = self.bootloader.load()
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
        if booted not in state.slots:  # the slot the device shipped with
            state = state.with_slot(booted, SlotRecord(version=self.settings.factory_version))
        self.state_file.save(state)
        return BootReport(
            booted, self._version(state, booted), rolled_back, interrupted, trust_warning
        )

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
                self._now(),
                job.version,
            )
            return replace(state, job=None, trial=job.slot, last_result=done), None
        interrupted = f"the install of {job.version} into slot {job.slot} was interrupted"
        state = state.with_slot(job.slot, SlotRecord())
        return replace(
            state,
            job=None,
            trial=None if state.trial == job.slot else state.trial,
            last_result=LastResult(Outcome.INTERRUPTED, interrupted, self._now(), job.version),
        ), interrupted

    def confirm(self, healthy: bool, detail: str) -> LastResult | None:
        """Settle the booted slot's health check; returns the result it settles, if any.

        Only a slot on trial (newly installed) can fail: it is marked bad and the result is
        "rolled back" — the caller reboots, and the previous slot boots. A failing check on an
        established slot is reported but changes nothing, since there is no better slot to go to.
        """
        with UpdateLock(self.lock_path, blocking=True):
            return self.confirm_locked(healthy, detail)

    def confirm_locked(self, healthy: bool, detail: str) -> LastResult | None:
        """``confirm`` for a caller that holds the update lock already (``sysupd mark``)."""
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
                self._now(),
                version,
            )
        trial = None if state.trial == booted else state.trial  # a newer install waits its turn
        self.state_file.save(replace(state, floor=floor, trial=trial, last_result=result))
        return result if state.trial == booted else None

    # -- install -------------------------------------------------------------------------------

    def install_bundle(
        self, path: Path, *, progress: Progress | None = None, log: Log | None = None
    ) -> Manifest:
        """Verify and install an offline bundle file into the inactive slot.

        Raises:
            UpdateBusy: another update runs.
            AcquireError: the file cannot be read.
            VerificationError: the bundle is not trusted or not acceptable.
            InstallError: writing the slot failed.
        """
        return self._run_install(lambda: _open_bundle(path), str(path), progress, log)

    def install_stream(
        self,
        source: ByteSource,
        origin: str,
        *,
        progress: Progress | None = None,
        log: Log | None = None,
    ) -> Manifest:
        """Verify and install a bundle read from ``source`` (e.g. a download) in one pass.

        Raises:
            UpdateBusy: another update runs.
            AcquireError: the source failed.
            VerificationError: the bundle is not trusted or not acceptable.
            InstallError: writing the slot failed.
        """
        return self._run_install(lambda: contextlib.nullcontext(source), origin, progress, log)

    def _run_install(
        self,
        opener: Callable[[], AbstractContextManager[ByteSource]],
        origin: str,
        progress: Progress | None,
        log: Log | None,
    ) -> Manifest:
        say = log or (lambda _line: None)

        def run(job: JobStateMachine, state: EngineState) -> Manifest:
            with opener() as source:
                return self._install(job, state, source, origin, progress, say)

        return self._locked_job(run)

    def _locked_job(self, run: Callable[[JobStateMachine, EngineState], Manifest]) -> Manifest:
        """Run one install under the update lock; a failure is recorded as the last result."""
        with UpdateLock(self.lock_path):
            job = JobStateMachine()
            try:
                job.advance(JobState.ACQUIRING)
                return run(job, self.state_file.load())
            except Exception as exc:
                if job.state.running:
                    job.fail()
                failed = LastResult(
                    Outcome.FAILED, str(exc) or type(exc).__name__, self._now(), None
                )
                self.state_file.save(replace(self.state_file.load(), job=None, last_result=failed))
                if isinstance(exc, OSError):
                    raise InstallError(f"the install failed: {exc}") from exc
                raise

    def _install(
        self,
        job: JobStateMachine,
        state: EngineState,
        source: ByteSource,
        origin: str,
        progress: Progress | None,
        say: Log,
    ) -> Manifest:
        report = progress or (lambda _stage, _done, _total: None)
        started = self.clock.monotonic()
        report(JobState.ACQUIRING, 0, 0)
        header_size = decode_bundle_prefix(_read_exactly(source, BUNDLE_PREFIX_BYTES, "prefix"))
        header = decode_bundle_header(_read_exactly(source, header_size, "header"))
        job.advance(JobState.VERIFYING)
        report(JobState.VERIFYING, 0, 0)
        verified = verify_bundle(header, self.trust.load(), self.policy(state), self._clock_now())
        manifest = verified.manifest
        _check_payload_size(source, manifest.length)
        say(
            f"verified the signed metadata of release {manifest.version} for {manifest.product} "
            f"({human_size(manifest.length)} payload) in {self.clock.monotonic() - started:.2f} s"
        )
        if verified.downgrade:
            say(f"downgrade to {manifest.version} allowed by allow_downgrade")
        return self._write(
            job,
            state,
            Release(manifest, verified.chunk_list, self.trust.update_for(verified)),
            source,
            origin,
            report,
            say,
        )

    def install_release(
        self,
        release: Release,
        source: ByteSource,
        origin: str,
        *,
        progress: Progress | None = None,
        log: Log | None = None,
    ) -> Manifest:
        """Install a release whose metadata was verified elsewhere (the online channel), reading
        its payload from ``source``; the release policy is checked here.

        Raises:
            UpdateBusy: another update runs.
            AcquireError: the source failed.
            VerificationError: the release is not acceptable, or the payload not the signed one.
            InstallError: writing the slot failed.
        """
        say = log or (lambda _line: None)
        report = progress or (lambda _stage, _done, _total: None)

        def run(job: JobStateMachine, state: EngineState) -> Manifest:
            job.advance(JobState.VERIFYING)
            if check_policy(release.manifest, self.policy(state)):
                say(f"downgrade to {release.manifest.version} allowed by allow_downgrade")
            return self._write(job, state, release, source, origin, report, say)

        return self._locked_job(run)

    def target_slot(self) -> str:
        """The slot the next install goes to: the one the firmware did not boot.

        Raises:
            BootError: the bootloader's record is unusable.
        """
        env = self.bootloader.load()
        return inactive_slot(env.order, self._booted(self.state_file.load(), env))

    def _booted(self, state: EngineState, env: BootEnv) -> str:
        return self.bootloader.booted_slot() or state.booted or env.order[0]

    def policy(self, state: EngineState | None = None) -> ReleasePolicy:
        """The device's release policy: its product and version floor."""
        state = state or self.state_file.load()
        return ReleasePolicy(
            self.settings.product,
            parse_version(state.floor) if state.floor else None,
            self.settings.allow_downgrade,
        )

    def _write(
        self,
        job: JobStateMachine,
        state: EngineState,
        release: Release,
        source: ByteSource,
        origin: str,
        report: Progress,
        say: Log,
    ) -> Manifest:
        manifest = release.manifest
        job.advance(JobState.INSTALLING)
        env = self.bootloader.load()
        booted = self._booted(state, env)
        if state.trial is not None and state.trial == booted:
            raise InstallError(
                f"slot {booted} is still on trial: an update now would overwrite the only "
                "known-good slot; wait until its health check has passed"
            )
        if booted not in state.slots:  # installing before the first start: the factory slot
            state = state.with_slot(booted, SlotRecord(version=self.settings.factory_version))
        target = inactive_slot(env.order, booted)
        capacity = self.settings.slot_capacity_bytes
        if capacity and manifest.installed_size > capacity:  # before anything changes
            raise InstallError(
                f"release {manifest.version} needs {manifest.installed_size} bytes, more than the "
                f"{capacity} bytes slot {target} holds (setting slot_capacity_bytes)"
            )
        state = replace(
            state.with_slot(target, SlotRecord()),
            trial=None if state.trial == target else state.trial,
            job=JobRecord(target, str(manifest.version), origin, self._now()),
        )
        self.state_file.save(state)
        self.bootloader.save(env.begin_install(target))
        slot = self.slots[target]
        say(f"installing into slot {target} ({slot.kind} {slot.path})")
        total = manifest.length
        writing = self.clock.monotonic()
        report(JobState.INSTALLING, 0, total)

        def on_bytes(done: int) -> None:
            report(JobState.INSTALLING, done, total)

        reader = VerifiedReader(
            source,
            ChunkVerifier(release.chunk_list, manifest.chunk_size, total),
            progress=on_bytes,
        )
        make_writer(self.slots[target]).install(reader, _spec(manifest))
        if not reader.complete:  # every writer reads to the end; refuse one that did not
            raise VerificationError("the payload was not read to its signed end")
        job.mark_payload_verified()
        took = max(self.clock.monotonic() - writing, 1e-6)
        say(
            f"checked and wrote {human_size(total)} into slot {target} in {took:.2f} s "
            f"({human_rate(total / took)})"
        )

        job.advance(JobState.SWITCHING)
        report(JobState.SWITCHING, total, total)
        # Record the slot's new content and stage its trust first, then switch, then keep the
        # trust: a crash in between is settled at the next start (see _settle_job), never a mix,
        # and the trust always goes with the slot that boots.
        state = replace(
            state.with_slot(target, SlotRecord(str(manifest.version), self._now(), origin)),
            trial=target,
        )
        self.state_file.save(state)
        self.trust.stage(release.trust, target)
        self.bootloader.save(self.bootloader.load().activate(target))
        # Newer roots and metadata versions are kept only with the update they came with. The
        # switch is made: a commit that fails now is redone at the next start (settle_pending),
        # not a failed install.
        try:
            self.trust.commit_pending()
        except (OSError, StateError) as exc:
            say(f"the new trust is kept at the next start ({exc})")
        state = replace(
            state,
            job=None,
            last_result=LastResult(
                Outcome.INSTALLED,
                f"version {manifest.version} installed into slot {target}; reboot to try it",
                self._now(),
                str(manifest.version),
            ),
        )
        self.state_file.save(state)
        job.advance(JobState.DONE)
        say(f"slot {target} will boot next, on trial")
        return manifest

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Slots, versions, boot order and trial state, and the last result."""
        state = self.state_file.load()
        env: BootEnv | None
        try:
            env = self.bootloader.load()
        except BootError:
            env = None
        slots = {}
        for name, config in self.slots.items():
            record = state.slots.get(name)
            boot = env.slots.get(name) if env else None
            slots[name] = {
                "kind": config.kind,
                "path": str(config.path),
                "version": record.version if record else None,
                "installed_at": record.installed_at if record else None,
                "bootable": boot.ok if boot else None,
                "tries": boot.tries if boot else None,
                "booted": name == state.booted,
            }
        return {
            "booted": state.booted,
            "next_boot": env.order[0] if env else None,
            "trial": state.trial,
            "floor": state.floor,
            "slots": slots,
            "last_result": state.to_json()["last_result"],
            "job": state.to_json()["job"],
        }

    # -- helpers -------------------------------------------------------------------------------

    def _version(self, state: EngineState, slot: str) -> str:
        record = state.slots.get(slot)
        return record.version if record and record.version else self.settings.factory_version

    def _rolled_back(self, state: EngineState, cause: str) -> EngineState:
        result = LastResult(Outcome.ROLLED_BACK, cause, self._now(), None)
        return replace(state, trial=None, last_result=result)

    def _now(self) -> str:
        return self._clock_now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _clock_now(self) -> datetime:
        return self.clock.utcnow()


def _spec(manifest: Manifest) -> PayloadSpec:
    return PayloadSpec(
        kind=manifest.payload,
        compression=manifest.compression,
        installed_size=manifest.installed_size,
        length=manifest.length,
        sha256=manifest.sha256,
        entries=manifest.entries,
    )


class _open_bundle:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise AcquireError(f"{self._path} does not exist") from exc
        except OSError as exc:
            raise AcquireError(f"cannot open {self._path}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AcquireError(f"{self._path} is not a regular file, so it is not a bundle")
        self._file = os.fdopen(fd, "rb", buffering=0)
        return self._file

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _read_exactly(source: ByteSource, size: int, what: str) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:  # a stream may return less than asked for
        part = source.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    if got != size:
        if what == "prefix" and not got:
            raise VerificationError("the file is empty, not a sysupd bundle")
        if what == "prefix":
            raise VerificationError(f"the file is not a sysupd bundle: it has only {got} bytes")
        raise VerificationError(f"the bundle is truncated in its {what}")
    return b"".join(parts)


def _check_payload_size(source: ByteSource, length: int) -> None:
    if not isinstance(source, io.IOBase):
        return  # not a file: the verifying reader still catches it
    try:
        left = os.fstat(source.fileno()).st_size - source.tell()
    except (OSError, ValueError):
        return  # not a file: the verifying reader still catches it
    if left < length:
        raise VerificationError(
            f"the bundle is truncated: its payload has {left} of {length} bytes"
        )
    if left > length:
        raise VerificationError(
            f"the bundle's payload is longer than its signed length ({left} > {length} bytes)"
        )
