"""The update engine: installing an update into the inactive slot, and the boot trial after it.

``Engine`` ties the pure rules (trust chain, chunk verification, boot environment, job states) to
their edges (trust store, state file, slot writers, bootloader adapter). One install runs at a
time (``UpdateLock``); it goes to the inactive slot, which is marked unbootable before the first
byte is written and made the next boot only after the whole payload verified — so the booted slot
and its boot entry are never touched, and an interruption at any instant boots what booted before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sysupd.boot.adapter import Bootloader, make_bootloader
from sysupd.core.bootenv import BootEnv
from sysupd.core.bundletrust import ReleasePolicy, check_policy, verify_bundle
from sysupd.core.chunkindex import ChunkIndex
from sysupd.core.chunks import ChunkVerifier
from sysupd.core.job import JobState, JobStateMachine
from sysupd.core.manifest import Manifest
from sysupd.core.settings import Settings
from sysupd.core.trustchain import metadata_version
from sysupd.core.units import human_rate, human_size
from sysupd.core.versions import parse_version
from sysupd.engine.boottrial import BootReport, BootTrial, slot_version, stamp
from sysupd.engine.bundles import check_payload_size, read_bundle_header
from sysupd.engine.deltawrite import (
    DeltaJob,
    IndexCache,
    Origins,
    checked_index,
    held_layout,
    write_delta,
)
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
from sysupd.engine.status import BootVerdict, EngineStatus, SlotStatus
from sysupd.engine.stream import VerifiedReader
from sysupd.engine.trust import TrustStore, TrustUpdate
from sysupd.errors import (
    AcquireError,
    BootError,
    InstallError,
    StateError,
    TrustRefused,
    VerificationError,
)
from sysupd.slots.base import PayloadSpec, SlotWriter
from sysupd.sources.base import Acquired, DeviceView, Log, Source
from sysupd.system.clock import Clock

if TYPE_CHECKING:
    pass

__all__ = ["ENGINE_SETTINGS", "BootReport", "Engine", "Progress", "Release", "engine_settings"]

ENGINE_SETTINGS = (
    "slots",
    "bootloader",
    "grubenv",
    "trust_root",
    "product",
    "allow_downgrade",
    "boot_attempts",
    "factory_version",
    "slot_capacity_bytes",
    "health_check_command",
)
"""The settings an engine is composed from or reads: a change to one needs a new engine."""


def engine_settings(settings: Settings) -> tuple[object, ...]:
    """The values of ``ENGINE_SETTINGS`` in ``settings``, to tell when they change."""
    return tuple(getattr(settings, name) for name in ENGINE_SETTINGS)


Progress = Callable[[JobState, int, int], None]
"""Called with the stage, bytes done and bytes in all."""


@dataclass(frozen=True, slots=True)
class Release:
    """A release whose metadata verified: what to install and how to check its payload."""

    manifest: Manifest
    chunk_list: bytes
    trust: TrustUpdate
    """The trust the release came with, kept only with the switch to it."""
    index: ChunkIndex | None = None
    """The verified chunk index, when the source offers the release's chunks one by one."""
    index_data: bytes = b""
    """Its bytes, kept with the slot it is installed into (``IndexCache``)."""


class Engine:
    """The update engine of one state directory, composed of its collaborators once.

    ``from_settings`` builds the real ones from the settings; tests hand in twins (a
    ``MemoryBootloader``, a recording slot writer) instead of patching.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        settings: Settings,
        clock: Clock,
        bootloader: Bootloader,
        slots: Sequence[SlotConfig],
        trust: TrustStore,
        state: StateFile,
        slot_writer: Callable[[SlotConfig], SlotWriter] = make_writer,
    ) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self.clock = clock
        self.bootloader = bootloader
        self.slots: dict[str, SlotConfig] = {s.name: s for s in slots}
        self.trust = trust
        self.state_file = state
        self.slot_writer = slot_writer
        self.lock_path = state_dir / "update.lock"
        self.boot_trial = BootTrial(
            settings=settings,
            clock=clock,
            bootloader=bootloader,
            trust=trust,
            state=state,
            lock_path=self.lock_path,
        )

    @classmethod
    def from_settings(
        cls,
        state_dir: Path,
        settings: Settings,
        clock: Clock,
        *,
        cmdline: Path = Path("/proc/cmdline"),
        bootloader: Bootloader | None = None,
        slot_writer: Callable[[SlotConfig], SlotWriter] = make_writer,
    ) -> Engine:
        """The engine the settings describe, in ``state_dir`` (made if missing); ``bootloader``
        and ``slot_writer`` replace the configured ones (twins, in tests).

        Raises:
            ConfigError: the bootloader settings are unusable.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        slots = slot_configs(settings.slots, state_dir)
        if bootloader is None:
            bootloader = make_bootloader(
                settings.bootloader,
                state_dir,
                tuple(s.name for s in slots),
                Path(settings.grubenv) if settings.grubenv else None,
                cmdline,
            )
        return cls(
            state_dir=state_dir,
            settings=settings,
            clock=clock,
            bootloader=bootloader,
            slots=slots,
            trust=TrustStore(state_dir / "trust", settings.trust_root),
            state=StateFile(state_dir / "engine.json"),
            slot_writer=slot_writer,
        )

    # -- boot (see boottrial) ------------------------------------------------------------------

    def start(self) -> BootReport:
        """At service start: settle an interrupted install, learn (or choose) the booted slot.

        Raises:
            BootError: no slot is bootable, or the bootloader's record is unusable.
        """
        return self.boot_trial.start()

    def confirm(self, healthy: bool, detail: str) -> LastResult | None:
        """Settle the booted slot's health check (``BootTrial.confirm``).

        Raises:
            BootError: before ``start``, or the bootloader's record is unusable.
            StateError: the engine's record cannot be read or written.
        """
        return self.boot_trial.confirm(healthy, detail)

    def confirm_locked(self, healthy: bool, detail: str) -> LastResult | None:
        """``confirm`` for a caller that holds the update lock already (``sysupd mark``)."""
        return self.boot_trial.confirm_locked(healthy, detail)

    def settle_boot(self, healthy: bool, detail: str) -> BootVerdict:
        """The boot trial's end, for the service and ``sysupd boot`` alike
        (``BootTrial.settle_boot``)."""
        return self.boot_trial.settle_boot(healthy, detail)

    # -- install -------------------------------------------------------------------------------

    def install(
        self,
        source: Source,
        *,
        progress: Progress | None = None,
        log: Log | None = None,
        origins: Origins | None = None,
    ) -> Manifest:
        """Acquire, verify and install an update from ``source`` into the inactive slot, in one
        pass; a failure is recorded as the last result and the booted slot is never touched.
        ``origins`` is told, during a delta install, where the payload's bytes came from.

        Raises:
            UpdateBusy: another update runs.
            AcquireError: the source failed (its bytes could not be had or read).
            VerificationError: the update is not trusted or not acceptable.
            InstallError: writing the slot failed.
            BootError: the bootloader's record is unusable.
            ConfigError: no trust root is configured, or it cannot be read.
            StateError: the engine's record or the trust store cannot be read or written.
        """
        say = log or (lambda _line: None)
        report = progress or (lambda _stage, _done, _total: None)
        with UpdateLock(self.lock_path), contextlib.ExitStack() as stack:
            job = JobStateMachine()
            try:
                job.advance(JobState.ACQUIRING)
                report(JobState.ACQUIRING, 0, 0)
                state = self.state_file.load()
                acquired = _enter_source(stack, source, self.device_view(state), say)
                release = self._verify(job, state, acquired, report, say)
                tell = origins or (lambda _device, _network, _downloaded: None)
                return self._write(job, state, release, acquired, report, say, tell)
            except Exception as exc:
                if job.state.running:
                    job.fail()
                failed = LastResult(
                    Outcome.FAILED, str(exc) or type(exc).__name__, self._now(), None
                )
                self.state_file.save(replace(self.state_file.load(), job=None, last_result=failed))
                if isinstance(exc, OSError):  # the source's are AcquireErrors: this is the slot's
                    raise InstallError(f"the install failed: {exc}") from exc
                raise

    def device_view(self, state: EngineState | None = None) -> DeviceView:
        """What a source may know of the device: its trust, policy and installed version.

        Raises:
            BootError: the bootloader's record is unusable.
            ConfigError, StateError: the trust cannot be read.
        """
        state = state or self.state_file.load()
        env = self.bootloader.load()
        installed = self._version(state, self._booted(state, env))
        return DeviceView(self.trust.load, self.policy(state), parse_version(installed))

    def _verify(
        self,
        job: JobStateMachine,
        state: EngineState,
        acquired: Acquired,
        report: Progress,
        say: Log,
    ) -> Release:
        """The release to install: verified here from a bundle's header, or by the source's
        channel already (then only the device's policy is checked)."""
        signed = acquired.release
        if signed is not None:
            job.advance(JobState.VERIFYING)
            report(JobState.VERIFYING, 0, 0)
            if check_policy(signed.manifest, self.policy(state)):
                say(f"downgrade to {signed.manifest.version} allowed by allow_downgrade")
            index = None
            if acquired.delta is not None and signed.index is not None:
                index = checked_index(signed.manifest, signed.index)
            trust = self.trust.update_online(signed)
            data = signed.index if index is not None and signed.index is not None else b""
            return Release(signed.manifest, signed.chunk_list, trust, index, data)
        started = self.clock.monotonic()
        header = read_bundle_header(acquired.stream)
        job.advance(JobState.VERIFYING)
        report(JobState.VERIFYING, 0, 0)
        try:
            verified = verify_bundle(
                header, self.trust.load(), self.policy(state), self.clock.utcnow()
            )
        except TrustRefused as exc:
            self._keep_roots(exc.roots, say)
            raise
        # Each verified root is trusted at once, whatever becomes of this install (the TUF
        # client workflow); versions and metadata go with the switch to the new slot.
        self._keep_roots(verified.new_roots, say)
        manifest = verified.manifest
        check_payload_size(acquired.stream, manifest.length)
        say(
            f"verified the signed metadata of release {manifest.version} for {manifest.product} "
            f"({human_size(manifest.length)} payload) in {self.clock.monotonic() - started:.2f} s"
        )
        if verified.downgrade:
            say(f"downgrade to {manifest.version} allowed by allow_downgrade")
        return Release(manifest, verified.chunk_list, self.trust.update_for(verified))

    def _keep_roots(self, roots: tuple[bytes, ...], say: Log) -> None:
        if not roots:
            return
        try:
            self.trust.keep_roots(roots)
        except StateError as exc:  # kept with the switch, or by the next bundle that brings them
            say(f"the newer roots this bundle brought could not be kept yet: {exc}")
        else:
            say(f"now trusting the newer roots this bundle brought (v{_root_versions(roots)})")

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
        acquired: Acquired,
        report: Progress,
        say: Log,
        origins: Origins,
    ) -> Manifest:
        manifest, origin = release.manifest, acquired.origin
        job.advance(JobState.INSTALLING)
        state, booted, target, held = self._claim_target(state, manifest, origin)
        indexes = IndexCache(self.state_dir / "delta")
        target_layout = indexes.load(target, held.version if held else None)
        indexes.forget(target)
        slot = self.slots[target]
        say(f"installing into slot {target} ({slot.kind} {slot.path})")
        writing = self.clock.monotonic()
        if release.index is not None and acquired.delta is not None:
            total = release.index.length
            record = state.slots.get(booted)
            holds = record.version if record else None
            layouts = (held_layout(indexes, booted, holds, acquired.delta, say), target_layout)
            delta = DeltaJob(
                manifest,
                release.index,
                release.chunk_list,
                acquired.delta,
                slot,
                self.slots.get(booted),
                *layouts,
            )
            how = self._write_delta(delta, report, say, origins)
        else:
            total = manifest.length
            report(JobState.INSTALLING, 0, total)
            self._write_stream(release, acquired, slot, report)
            how = ""
        job.mark_payload_verified()
        took = max(self.clock.monotonic() - writing, 1e-6)
        say(
            f"checked and wrote {human_size(total)} into slot {target} in {took:.2f} s "
            f"({human_rate(total / took)}){how}"
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
        if release.index_data:
            indexes.keep(target, str(manifest.version), release.index_data)
        job.advance(JobState.DONE)
        say(f"slot {target} will boot next, on trial")
        return manifest

    def _claim_target(
        self, state: EngineState, manifest: Manifest, origin: str
    ) -> tuple[EngineState, str, str, SlotRecord | None]:
        """Check the install may go ahead, then record the job and mark the inactive slot
        unbootable before anything is written: the new state, the booted and target slots,
        and what the target held."""
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
        held = state.slots.get(target)
        state = replace(
            state.with_slot(target, SlotRecord()),
            trial=None if state.trial == target else state.trial,
            job=JobRecord(target, str(manifest.version), origin, self._now()),
        )
        self.state_file.save(state)
        self.bootloader.save(env.begin_install(target))
        return state, booted, target, held

    def _write_delta(self, delta: DeltaJob, report: Progress, say: Log, origins: Origins) -> str:
        """The payload from this device's chunks and fetched ones; where its bytes came from."""
        total = delta.index.length
        report(JobState.INSTALLING, 0, total)
        tally = write_delta(
            delta,
            self.slot_writer(delta.target),
            say,
            lambda done: report(JobState.INSTALLING, done, total),
            origins,
        )
        return (
            f": {human_size(tally.from_device)} from this device ({human_size(tally.in_place)} "
            f"kept in place, {human_size(tally.copied)} copied), {human_size(tally.fetched)} "
            f"from the network ({tally.chunks_fetched} chunks, "
            f"{human_size(tally.downloaded)} downloaded)"
        )

    def _write_stream(
        self, release: Release, acquired: Acquired, slot: SlotConfig, report: Progress
    ) -> None:
        """The whole payload from the source's stream, chunk-verified, into ``slot``."""
        manifest = release.manifest
        total = manifest.length

        def on_bytes(done: int) -> None:
            report(JobState.INSTALLING, done, total)

        with VerifiedReader(
            acquired.stream,
            ChunkVerifier(release.chunk_list, manifest.chunk_size, total),
            progress=on_bytes,
        ) as reader:  # closed on every path: its read-ahead thread stops with it
            self.slot_writer(slot).install(reader, _spec(manifest))
            if not reader.complete:  # every writer reads to the end; refuse one that did not
                raise VerificationError("the payload was not read to its signed end")

    # -- status --------------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        """Slots, versions, boot order and trial state, and the last result; it reads files and
        may run the bootloader's tool, so the event loop calls it in a worker thread.

        Raises:
            StateError: the engine's record is unreadable.
        """
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
            slots[name] = SlotStatus(
                kind=config.kind,
                path=str(config.path),
                version=record.version if record else None,
                installed_at=record.installed_at if record else None,
                bootable=boot.ok if boot else None,
                tries=boot.tries if boot else None,
                booted=name == state.booted,
            )
        return EngineStatus(
            booted=state.booted,
            next_boot=env.order[0] if env else None,
            trial=state.trial,
            floor=state.floor,
            slots=slots,
            last_result=state.last_result,
            job=state.job,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _version(self, state: EngineState, slot: str) -> str:
        return slot_version(state, slot, self.settings.factory_version)

    def _now(self) -> str:
        return stamp(self.clock)


def _spec(manifest: Manifest) -> PayloadSpec:
    return PayloadSpec(
        kind=manifest.payload,
        compression=manifest.compression,
        installed_size=manifest.installed_size,
        length=manifest.length,
        sha256=manifest.sha256,
        entries=manifest.entries,
    )


def _enter_source(
    stack: contextlib.ExitStack, source: Source, device: DeviceView, say: Log
) -> Acquired:
    """Open ``source`` for the rest of the install; an ``OSError`` while opening it is the
    source's fault (an ``AcquireError``), not the slot's.

    Raises:
        AcquireError, VerificationError: as ``Source.open``.
    """
    try:
        return stack.enter_context(source.open(device, say))
    except OSError as exc:
        raise AcquireError(f"{source.label} could not be opened: {exc}") from exc


def _root_versions(roots: tuple[bytes, ...]) -> str:
    return ", v".join(str(metadata_version(root)) for root in roots)
