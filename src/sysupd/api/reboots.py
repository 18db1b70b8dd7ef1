"""The reboot timer behind ``sys/reboot``, ``sys/reboot_time`` and ``sys/reboot_stop``.

At most one reboot is scheduled; a new one replaces it. When it falls due, ``on_due`` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sysupd.system.clock import Clock
from sysupd.system.reboot import RebootKind

__all__ = ["RebootPlan", "RebootTimer"]


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
