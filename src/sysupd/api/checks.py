"""Update checks against the update server: ``sys/update_check``, ``sys/updates_available``, the
periodic check, and ``sys/update_now {}``'s online install.

A check runs in a worker thread with a new ngclient ``Updater`` (see ``sources.online``); one check
at a time. A failed check says so (``error``) and never reads as "no updates".
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sysupd.api.calls import Call, CallContext
from sysupd.core.manifest import Manifest
from sysupd.core.units import human_size
from sysupd.engine.engine import Engine
from sysupd.errors import SysupdError
from sysupd.sources.online import Survey
from sysupd.sources.server import ServerSource
from sysupd.sources.tuf_fetcher import FetcherLimits

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = ["CHECK_CALLS", "CheckResult", "UpdateChecker"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """How the last check ended."""

    checked_at: str
    candidate: Manifest | None
    error: str | None = None
    passed_over: tuple[str, ...] = ()
    """Why newer releases on the server are not for this device."""


class UpdateChecker:
    """Checks for updates for the service."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._lock = asyncio.Lock()
        self._cache_lock = threading.Lock()
        """ngclient's cache directory is used by one Updater at a time (check or install)."""
        self.last: CheckResult | None = None

    def limits(self) -> FetcherLimits:
        """The fetcher's limits from the configuration."""
        config = self._service.config
        return FetcherLimits(
            deadline_s=config.fetch_deadline_s, min_rate_window_s=config.fetch_stall_s
        )

    def installed(self) -> str:
        """The booted slot's version."""
        boot = self._service.boot
        return boot.version if boot else self._service.settings.factory_version

    async def check(self) -> CheckResult:
        """Check now (or wait for the check under way) and keep the result."""
        async with self._lock:
            service = self._service
            server = service.settings.update_server
            # Milliseconds, so that a client waiting for this check's result can tell it from
            # one that ended earlier in the same second.
            now = service.clock.utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if not server:
                result = CheckResult(now, None, "no update server is configured")
            else:
                try:
                    survey = await asyncio.to_thread(self._newest, server, service.engine())
                    found = survey.candidate.manifest if survey.candidate else None
                    result = CheckResult(now, found, passed_over=survey.passed_over)
                except SysupdError as exc:
                    result = CheckResult(now, None, str(exc))
                except Exception as exc:  # noqa: BLE001 - a check must end in a result, not a crash
                    service.log_bug("the update check", exc)
                    result = CheckResult(now, None, f"the check failed unexpectedly ({exc!r})")
            self.last = result
            if result.error:
                service.log.warning(f"update check failed: {result.error}")
            elif result.candidate:
                service.log.info(f"update check: {result.candidate.version} is available")
            else:
                service.log.info("update check: no newer release")
            return result

    def _newest(self, server: str, engine: Engine) -> Survey:
        return self.source(server, "").survey(engine.device_view())

    def available(self) -> dict[str, Any]:
        """``sys/updates_available``'s reply."""
        last = self.last
        reply: dict[str, Any] = {"updates_available": False, "version": None, "size": None}
        if last is None:
            return {
                **reply,
                "updates_info": "No update check has completed yet.",
                "last_checked": None,
            }
        reply["last_checked"] = last.checked_at
        if last.error:
            return {
                **reply,
                "updates_info": f"The last update check failed: {last.error}.",
                "error": last.error,
            }
        if last.candidate is None:
            info = f"No updates: {self.installed()} is the newest release for this system."
            if last.passed_over:
                info += " Passed over: " + "; ".join(last.passed_over[:5]) + "."
            return {**reply, "updates_info": info}
        found = last.candidate
        info = f"Version {found.version} is available ({human_size(found.length)})."
        if found.notes:
            info += f" {found.notes}"
        return {
            **reply,
            "updates_available": True,
            "updates_info": info,
            "version": str(found.version),
            "size": found.length,
        }

    async def run_periodically(self) -> None:
        """Check at start (the booted slot is known before the service listens) and every
        ``update_check_interval_s`` (0: never)."""
        while True:
            interval = self._service.settings.update_check_interval_s
            if interval > 0 and self._service.settings.update_server:
                await self.check()
                await asyncio.sleep(interval)
            else:
                await asyncio.sleep(60)

    def source(self, server: str, version: str, address: str | None = None) -> ServerSource:
        """The newest release on ``server`` as an update's source (``version``: what the check
        found, for people; the source picks again when the job opens it). ``address``: a
        repository at a ``fetch_url`` (ending in ``/``), whose host was checked and resolved to
        it, the only address connected to."""
        service = self._service
        return ServerSource.configured(
            server,
            service.config.state_dir,
            self._cache_lock,
            service.settings,
            self.limits(),
            version,
            address,
        )


async def update_check(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Start a check now; the reply does not wait for it."""
    ctx.service.spawn(ctx.service.checks.check())
    return {"result": "success", "status": "starting check for updates"}


async def updates_available(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The result of the last check."""
    return ctx.service.checks.available()


CHECK_CALLS = [
    Call("sys", "update_check", update_check, admin=True, changes=True),
    Call("sys", "updates_available", updates_available),
]
