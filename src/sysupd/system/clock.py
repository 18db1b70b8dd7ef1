"""The clock seam: the real one and a hand-moved twin for tests.

Rules in ``core`` take ``now`` as an argument; the service reads it from a ``Clock`` so that tests
can move time instead of sleeping through 900-second token lifetimes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Where the service reads time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations and deadlines."""
        ...

    def utcnow(self) -> datetime:
        """The wall-clock time, timezone-aware UTC, for timestamps people read."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def utcnow(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: both readings advance together."""

    def __init__(self, start: datetime | None = None) -> None:
        self._mono = 1000.0
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        """The current reading."""
        return self._mono

    def utcnow(self) -> datetime:
        """The current wall time."""
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)
