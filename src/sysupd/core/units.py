"""Sizes, rates and durations in words for people, the same everywhere they are shown (job log,
events, update checks, the CLI). Binary units (KiB, MiB, GiB) for sizes, as ``ls -h`` and the
kernel use; a value is never rounded to zero (``0.0 MiB``) — small sizes go down a unit."""

from __future__ import annotations

__all__ = ["human_duration", "human_rate", "human_size"]

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def human_size(size: int) -> str:
    """``512 bytes``, ``3.4 KiB``, ``1.0 GiB``."""
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bytes_per_s: float) -> str:
    """``210 MiB/s``."""
    return f"{human_size(int(bytes_per_s))}/s"


def human_duration(seconds: float) -> str:
    """``less than 1 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    whole = round(seconds)
    if seconds < 0.5:
        return "less than 1 s"
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"
