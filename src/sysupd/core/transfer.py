"""Rules for byte transfers shared by the LAN fetcher and the update-server fetcher.

Pure: fed times and byte counts, returns decisions.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RateWatch"]


class RateWatch:
    """The minimum-rate rule over network time: at least ``min_bps`` across every full window."""

    def __init__(self, window_s: float, min_bps: int) -> None:
        self._window_s = window_s
        self._min_bps = min_bps
        self._samples: deque[tuple[float, int]] = deque([(0.0, 0)])

    def stalled(self, now_s: float, total: int) -> bool:
        """Record ``total`` bytes at ``now_s``; true when the last window fell below the rate."""
        if now_s - self._samples[-1][0] >= self._window_s / 32:  # bounds the samples kept
            self._samples.append((now_s, total))
        edge = now_s - self._window_s
        while len(self._samples) >= 2 and self._samples[1][0] <= edge:
            self._samples.popleft()
        start_s, start_total = self._samples[0]
        if start_s > edge:
            return False  # not a full window of history yet
        return total - start_total < self._min_bps * (now_s - start_s)
