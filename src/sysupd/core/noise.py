"""Log lines on a budget: the first few of a kind in a minute are written one by one, the rest are
counted and said in one line when the minute is over, so noise an anonymous client makes (sockets
opened and closed without a login) cannot flood the log and push out what matters."""

from __future__ import annotations

from collections import Counter

__all__ = ["LineBudget"]


class LineBudget:
    """``budget`` lines per ``window_s``; the rest counted by source."""

    def __init__(self, budget: int, window_s: float = 60.0) -> None:
        self._budget = budget
        self._window_s = window_s
        self._start: float | None = None
        self._spent = 0
        self._counted: Counter[str] = Counter()

    def allow(self, now: float) -> bool:
        """Whether one more line may be written now."""
        expired = self._start is None or now - self._start >= self._window_s
        if expired and not self._counted:  # counted lines are said (``summary``) first
            self._start, self._spent = now, 0
        if self._spent < self._budget:
            self._spent += 1
            return True
        return False

    def count(self, source: str) -> None:
        """A line that was not written."""
        self._counted[source] += 1

    def summary(self, now: float, what: str, *, force: bool = False) -> str | None:
        """When the window is over (or ``force``) and lines were counted: the line that says
        so."""
        if not self._counted or self._start is None:
            return None
        if now - self._start < self._window_s and not force:
            return None
        total = sum(self._counted.values())
        top = ", ".join(f"{s}: {n}" for s, n in self._counted.most_common(5))
        self._counted.clear()
        self._start, self._spent = now, 0
        return f"{total} {what} since the last count, only counted (from {top})"
