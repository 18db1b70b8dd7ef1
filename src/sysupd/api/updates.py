"""The update job as clients see it: ``sys/update_now``, its events, and ``sys/update_status``.

One job at a time. The engine does the work in a worker thread (it is blocking file I/O); this
module keeps the job's log (lines for people: source, size, version, each phase with its duration
and throughput, the cause of a failure), publishes ``sys/update_now`` events — one at the start,
one every ``event_interval_s`` and (ext) one shortly after each new log line, all with the last
log line, and the final one with the whole log — and persists the last job so
``sys/update_status`` still tells what happened after a restart.

Invariants: ``running`` is true from the accepted ``update_now`` until the final event; exactly
one final event is sent per job; a running event's ``details`` is the last log line and its
``phase`` one of the contract's four (the final event has no ``phase``); the source's temporary
file is removed when the job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sysupd.api.calls import Call, CallContext
from sysupd.api.jobrun import JobRun, ended_state
from sysupd.core.job import JobState
from sysupd.core.schema import Arg, Schema
from sysupd.core.units import human_size
from sysupd.engine.engine import Engine
from sysupd.engine.lock import UpdateLock
from sysupd.engine.state import LastResult, Outcome
from sysupd.engine.status import EngineStatus
from sysupd.errors import InvalidURL, SysupdError, UpdateBusy
from sysupd.fsutil import atomic_write, read_capped
from sysupd.sources.base import Source
from sysupd.sources.bundlefile import BundleFile
from sysupd.sources.lan import FetchLimits, check_url
from sysupd.sources.url import UrlSource
from sysupd.system.reboot import RebootKind

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = ["UPDATE_CALLS", "UpdateManager"]

_EVENT = "sys/update_now"
_LINE_EVENT_DELAY_S = 0.05


class UpdateManager:
    """Runs update jobs for the service and answers for them."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._path = service.config.state_dir / "last-update.json"
        self.job: JobRun | None = self._load_last()
        self._soon: asyncio.TimerHandle | None = None

    def engine_status(self) -> EngineStatus | None:
        """The engine's status, ``None`` when it cannot be read; it reads files and may run the
        bootloader's tool (grub-editenv), so the event loop calls it in a worker thread."""
        try:
            return self._service.engine().status()
        except SysupdError:
            return None

    @property
    def running(self) -> bool:
        """Whether a job is under way."""
        return self.job is not None and self.job.running

    def status(self) -> dict[str, Any]:
        """``sys/update_status``'s reply (reading the engine where it is called)."""
        return self.reply(self.engine_status())

    def reply(self, engine: EngineStatus | None) -> dict[str, Any]:
        """``sys/update_status``'s reply from the engine's status ``engine``; (ext)
        ``last_result``: how the engine's last install or boot trial ended (``result``,
        ``detail``, ``at``, ``version``), or ``None``."""
        last = engine.last_result if engine else None
        text = self.job.log_text() if self.job is not None else ""
        news, at = _news(last)
        if news and (self.job is None or (not self.job.running and at >= self.job.ended_at)):
            text = f"{text}<br>{news}" if text else news
        return {
            "reboot_required": engine is not None and engine.reboot_required,
            "update_running": self.running,
            "update_status": text,
            "last_result": last.to_json() if last is not None else None,
        }

    def start(self, source: Source, cleanup: Callable[[], None], *, by: str) -> None:
        """Begin a job from ``source`` for user ``by``; the caller has checked that none runs.
        A local source's bytes are here already, so the job verifies instead of downloading."""
        local = source.local
        self.job = JobRun(source.label, local=local)
        self._service.audit.change("update started", by=by, details=source.label)
        self._service.spawn(self._run(self.job, source, cleanup, by))

    async def _run(self, job: JobRun, source: Source, cleanup: Callable[[], None], by: str) -> None:
        service = self._service
        loop = asyncio.get_running_loop()
        self._say(job, f"update started from {job.source}")
        self._persist(job)
        self._publish_progress(job)
        ticker = service.spawn(self._tick(job))
        engine = service.engine()

        def progress(stage: JobState, done: int, total: int) -> None:
            # Called from the worker thread: plain assignments, read by the ticker.
            if stage is JobState.INSTALLING and job.installing_since is None:
                job.installing_since = service.clock.monotonic()
            if stage.running:
                job.state = stage
            job.bytes_done, job.bytes_total = done, total

        def origins(device: int, network: int, downloaded: int) -> None:
            job.bytes_from_device, job.bytes_from_network = device, network
            job.bytes_downloaded = downloaded

        def log(line: str) -> None:
            loop.call_soon_threadsafe(self._say, job, line)

        def run() -> object:
            with contextlib.suppress(SysupdError):
                job.slot = engine.target_slot()  # for people only: the engine decides again
            return engine.install(source, progress=progress, log=log, origins=origins)

        started = loop.time()
        try:
            await asyncio.to_thread(run)
        except SysupdError as exc:
            await asyncio.sleep(0)  # let log lines queued by the worker land first
            self._say(job, f"update failed: {exc}")
            job.state = JobState.FAILED
        except Exception as exc:  # noqa: BLE001 - a bug ends the job, not the service
            self._say(job, "update failed: an internal error; see sys/middleware_log")
            service.log_bug(f"the update job from {job.source}", exc)
            job.state = JobState.FAILED
        else:
            await asyncio.sleep(0)
            self._say(job, f"update installed in {loop.time() - started:.1f} s; reboot to start it")
            job.state = JobState.DONE
        # No await from here to the final event: ``running`` (derived from the state) turns
        # false only together with it, as the module's invariant says.
        finally:
            ticker.cancel()
            self._cancel_soon()
            with contextlib.suppress(OSError):
                cleanup()
        self._end(job, by)

    def _end(self, job: JobRun, by: str) -> None:
        """A job is over: kept, recorded, told to everyone, and a reboot scheduled if due."""
        service = self._service
        job.ended_at = service.clock.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        self._persist(job)
        last = job.lines[-1] if job.lines else ""
        service.audit.change("update ended", by=by, details=f"{job.result}: {last}")
        success = job.state is JobState.DONE
        service.events.publish(
            _EVENT,
            {
                "result": job.result,
                "reboot_required": success,
                "update_running": False,
                "details": job.log_text(),
                "bytes_done": job.bytes_done,
                "bytes_total": job.bytes_total,
                **job.origins(),
                "log": job.log_text(),
            },
        )
        if success and service.settings.auto_reboot:
            service.reboots.schedule(
                service.settings.auto_reboot_delay_s, RebootKind.RESTART, by="the update"
            )

    async def _tick(self, job: JobRun) -> None:
        while True:
            await asyncio.sleep(self._service.settings.event_interval_s)
            self._publish_progress(job)

    def _publish_progress(self, job: JobRun) -> None:
        """A running event: the contract's keys, then (ext) the numbers, ``progress`` (the line
        for people while the payload flows, plain text, else ``None``) and the log so far."""
        self._cancel_soon()
        now = self._service.clock.monotonic()
        rate = job.rate(now) if job.phase == "install" else None
        left = (job.bytes_total - job.bytes_done) / rate if rate else None
        last = job.lines[-1] if job.lines else ""
        self._service.events.publish(
            _EVENT,
            {
                "update_running": True,
                "reboot_required": False,
                "details": html.escape(last, quote=False),
                "phase": job.phase,
                "bytes_done": job.bytes_done,
                "bytes_total": job.bytes_total,
                "progress": job.progress_line(now),
                "rate_bytes_s": int(rate) if rate else None,
                "seconds_left": round(left, 1) if left is not None else None,
                "slot": job.slot or None,
                **job.origins(),
                "log": job.log_text(),
            },
        )

    def _publish_soon(self, job: JobRun) -> None:
        """A new log line: tell everyone shortly (lines close together make one event)."""
        if self._soon is None and job.running:
            loop = asyncio.get_running_loop()
            self._soon = loop.call_later(_LINE_EVENT_DELAY_S, self._publish_progress, job)

    def _cancel_soon(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def _say(self, job: JobRun, line: str) -> None:
        stamp = self._service.clock.utcnow().strftime("%H:%M:%S")
        job.lines.append(f"{stamp} {line}")
        self._service.log.info(f"update: {line}")
        if len(job.lines) > 1:
            self._publish_soon(job)

    def _persist(self, job: JobRun) -> None:
        record = {
            "source": job.source,
            "lines": job.lines,
            "running": job.running,
            "result": job.result,
            "ended_at": job.ended_at,
        }
        try:
            atomic_write(self._path, json.dumps(record).encode())
        except OSError as exc:
            self._service.log.warning(f"cannot record the update job: {exc}")

    def _load_last(self) -> JobRun | None:
        try:
            record = json.loads(read_capped(self._path, 4 * 1024 * 1024))
            ended = ended_state(record["result"])
            job = JobRun(
                str(record["source"]),
                [str(x) for x in record["lines"]],
                ended or JobState.FAILED,
                ended_at=str(record.get("ended_at", "")),
            )
            was_running = bool(record["running"]) or ended is None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._service.log.warning(f"ignoring an unreadable {self._path}: {exc}")
            return None
        if was_running:  # the service stopped while it ran: what did the engine get to?
            try:
                last = self._service.engine().status().last_result
            except SysupdError:
                last = None
            if last is not None and last.result is Outcome.INSTALLED:
                job.lines.append("the service stopped at the end of this update; it installed")
                job.state = JobState.DONE
            else:
                job.lines.append("the service stopped while this update ran; it did not complete")
                job.state = JobState.FAILED
        return job


def _news(last: LastResult | None) -> tuple[str, str]:
    """What the engine recorded after the job, and when, to be said plainly even after the job
    that led to it: the new slot confirmed, a rollback, or an interrupted install."""
    prefix = _NEWS.get(last.result) if last is not None else None
    if last is None or prefix is None:
        return "", ""
    return html.escape(prefix + last.detail, quote=False), last.at


_NEWS = {
    Outcome.SUCCESS: "after the reboot: ",
    Outcome.ROLLED_BACK: "rolled back: ",
    Outcome.INTERRUPTED: "",
}
"""Engine results that ``sys/update_status`` tells after the job's own log, with their lead-in."""


_BUSY = {"result": "failure", "error": "Update procedure already running"}
_SETTLE_WAIT_S = 5.0


def _invalid(why: str) -> dict[str, Any]:
    return {"result": "failure", "error": "Invalid file or url", "details": why}


def _lock_free(engine: Engine) -> bool:
    """Whether no other process (``sysupd install``) holds the update lock right now."""
    try:
        with UpdateLock(engine.lock_path):
            return True
    except UpdateBusy:
        return False


async def update_now(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Start an update from an uploaded file, a LAN URL, or (``{}``) the update server."""
    service = ctx.service
    manager = service.updates
    try:
        await asyncio.wait_for(service.boot_settled.wait(), _SETTLE_WAIT_S)
    except TimeoutError:
        return {
            "result": "failure",
            "error": "The system is still checking the slot it booted; try again shortly",
        }
    if manager.running or not _lock_free(service.engine()):
        return _BUSY
    if "file_upload" in args:
        name = args["file_upload"]
        try:
            path = service.uploads.path_of(name)
        except ValueError as exc:
            return _invalid(str(exc))
        size = path.stat().st_size
        # The job reads its own copy of the name: a new upload under the same name meanwhile is
        # neither read nor deleted by it.
        taken = path.with_name(f".job-{secrets.token_hex(8)}")
        os.replace(path, taken)
        manager.start(
            BundleFile(taken, f"the uploaded file {name} ({human_size(size)})"),
            lambda: taken.unlink(missing_ok=True),
            by=_who(ctx),
        )
        return {"result": "success", "updates": "starting"}
    if "fetch_url" in args:
        try:
            target = await check_url(args["fetch_url"], service.settings.fetch_networks)
        except InvalidURL as exc:
            return _invalid(str(exc))
        if manager.running:  # another update_now won the race while the name resolved
            return _BUSY
        if urlsplit(target.url).path.endswith("/"):  # a published repository, not a bundle
            repository = service.checks.source(target.url, "", target.address)
            manager.start(repository, lambda: None, by=_who(ctx))
            return {"result": "success", "updates": "starting"}
        limits = FetchLimits(
            max_bytes=service.settings.max_upload_bytes,
            deadline_s=service.config.fetch_deadline_s,
            min_rate_window_s=service.config.fetch_stall_s,
        )
        networks = service.settings.fetch_networks
        source = UrlSource(target, networks, limits)
        manager.start(source, lambda: None, by=_who(ctx))
        return {"result": "success", "updates": "starting"}
    server = service.settings.update_server
    if not server:
        return {"result": "failure", "error": "No update server is configured"}
    checked = await service.checks.check()
    if checked.error:
        return {"result": "failure", "error": f"The update check failed: {checked.error}"}
    if checked.candidate is None:
        return {"result": "failure", "error": "No newer update is available"}
    if manager.running:  # another update_now won the race while the check ran
        return _BUSY
    manager.start(
        service.checks.source(server, str(checked.candidate.version)), lambda: None, by=_who(ctx)
    )
    return {"result": "success", "updates": "starting"}


def _who(ctx: CallContext) -> str:
    return ctx.user.name if ctx.user is not None else "?"


async def update_status(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The update's state and log."""
    updates = ctx.service.updates
    return updates.reply(await asyncio.to_thread(updates.engine_status))


UPDATE_CALLS = [
    Call(
        "sys",
        "update_now",
        update_now,
        Schema(
            {"fetch_url": Arg(str), "file_upload": Arg(str)},
            exclusive=(frozenset({"fetch_url", "file_upload"}),),
        ),
        admin=True,
        changes=True,
    ),
    Call("sys", "update_status", update_status),
]
