"""How the benchmarks print: aligned tables, verdicts, rates, and what was measured where."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["machine", "mbs", "median", "revision", "span", "table", "verdict"]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(rows: Sequence[Sequence[str]], left: int = 1, indent: str = "  ") -> None:
    """Print ``rows`` (the first is the heading) as aligned columns, the first ``left`` of them
    to the left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j < left else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(indent + "  ".join(cells).rstrip())
        if i == 0:
            print(indent + "  ".join("-" * w for w in widths))


def mbs(size: int, seconds: float) -> str:
    """MB/s (10^6 bytes per second)."""
    return f"{size / 1e6 / seconds:,.0f}" if seconds > 0 else "-"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def revision() -> str:
    """The commit of the sysupd being measured, and whether src/ differs from it."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {head}" + (" with src/ modified" if dirty else "")


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (
        f"{os.cpu_count()} CPUs ({model}), {ram:.0f} GiB RAM, Linux {platform.release()},"
        f" Python {platform.python_version()}"
    )
