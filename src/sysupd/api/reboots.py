"""Reboots behind ``sys/reboot``, ``sys/reboot_time`` and ``sys/reboot_stop``, the update's
auto-reboot and the boot trial's: the timer, and what happens when one is scheduled, cancelled or
falls due.

At most one reboot is scheduled; a new one replaces it. Every schedule and cancel is logged,
audited and pushed as a ``sys/reboot`` event. A reboot that falls due while an update runs waits
(retried every ``REBOOT_RETRY_S``): an install is never cut short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sysupd.system.clock import Clock
from sysupd.system.reboot import RebootKind, run_reboot_action

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = ["REBOOT_RETRY_S", "RebootPlan", "RebootTimer", "Reboots"]

REBOOT_RETRY_S = 5
"""How soon a reboot that fell due during an update is tried again."""


@dataclass(frozen=True, slots=True)
class RebootPlan:
    """A scheduled reboot."""

    kind: RebootKind
    delay_s: int
    due_mono: float
    due_wall: datetime

    def to_wire(self) -> dict[str, Any]:
        """The ``sys/reboot`` reply and event."""
        return {
            "reboot_delay_seconds": self.delay_s,
            "reboot_time": self.due_wall.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reboot_type": self.kind.value,
        }


class RebootTimer:
    """One pending reboot, driven by the event loop's timer."""

    def __init__(self, clock: Clock, on_due: Callable[[RebootPlan], None]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._plan: RebootPlan | None = None
        self._handle: asyncio.TimerHandle | None = None

    @property
    def plan(self) -> RebootPlan | None:
        """The scheduled reboot, if any."""
        return self._plan

    def schedule(self, delay_s: int, kind: RebootKind) -> RebootPlan:
        """Schedule a reboot in ``delay_s`` seconds, replacing any scheduled one."""
        self.cancel()
        plan = RebootPlan(
            kind,
            delay_s,
            self._clock.monotonic() + delay_s,
            self._clock.utcnow() + timedelta(seconds=delay_s),
        )
        self._plan = plan
        self._handle = asyncio.get_running_loop().call_later(delay_s, self._fire, plan)
        return plan

    def cancel(self) -> bool:
        """Cancel the scheduled reboot; returns whether there was one."""
        had = self._plan is not None
        if self._handle is not None:
            self._handle.cancel()
        self._plan = self._handle = None
        return had

    def seconds_left(self) -> int:
        """Whole seconds until the scheduled reboot (0 when none)."""
        if self._plan is None:
            return 0
        return max(0, round(self._plan.due_mono - self._clock.monotonic()))

    def _fire(self, plan: RebootPlan) -> None:
        if self._plan is plan:
            self._plan = self._handle = None
            self._on_due(plan)


class Reboots:
    """The service's reboots: one timer, and the log, audit and events around it."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._timer = RebootTimer(service.clock, self._due)

    @property
    def plan(self) -> RebootPlan | None:
        """The scheduled reboot, if any."""
        return self._timer.plan

    def seconds_left(self) -> int:
        """Whole seconds until the scheduled reboot (0 when none)."""
        return self._timer.seconds_left()

    def schedule(self, delay_s: int, kind: RebootKind, *, by: str) -> RebootPlan:
        """Schedule a reboot for ``by`` and tell everyone."""
        service = self._service
        plan = self._timer.schedule(delay_s, kind)
        service.log.info(f"{kind.value} scheduled by {by} in {delay_s} s")
        service.audit.change("reboot scheduled", by=by, details=f"{kind.value} in {delay_s} s")
        service.events.publish("sys/reboot", plan.to_wire())
        return plan

    def cancel(self, *, by: str) -> bool:
        """Cancel the scheduled reboot, if any, and tell everyone; whether there was one."""
        service = self._service
        if not self._timer.cancel():
            return False
        service.log.info(f"scheduled reboot cancelled by {by}")
        service.audit.change("reboot cancelled", by=by)
        service.events.publish("sys/reboot", {"reboot_scheduled": False})
        return True

    def stop(self) -> None:
        """The service stops: a scheduled reboot is dropped, silently."""
        self._timer.cancel()

    def _due(self, plan: RebootPlan) -> None:
        service = self._service
        if service.updates.running:
            # Never cut an install short: try again once it has ended.
            service.log.info(f"{plan.kind.value} deferred: an update is running")
            self._timer.schedule(REBOOT_RETRY_S, plan.kind)
            return
        service.log.info(f"{plan.kind.value} now ({service.settings.reboot_action} action)")
        service.audit.change("reboot now", by="the service", details=plan.kind.value)
        service.spawn(self._reboot(plan))

    async def _reboot(self, plan: RebootPlan) -> None:
        service = self._service
        s = service.settings
        outcome = await run_reboot_action(
            s.reboot_action, plan.kind, s.reboot_command, s.poweroff_command
        )
        if outcome.failed:
            service.log.warning(f"{plan.kind.value} failed: {outcome.log_line}")
            service.events.publish("sys/reboot", {"reboot_scheduled": False})
        else:
            service.log.info(outcome.log_line)
        if outcome.process_exit is not None:
            service.request_exit(outcome.process_exit)
