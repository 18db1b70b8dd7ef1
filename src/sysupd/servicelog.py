"""The service log behind ``sys/middleware_log``: a bounded in-memory tail plus a log file.

Lines are timestamped, never contain a newline, and never contain passwords or tokens (callers log
names and outcomes only). The tail is bounded by the size it has on the wire (HTML-escaped UTF-8,
``<br>``-joined). The file is appended to and rotated once it passes four times the tail size,
keeping ``GENERATIONS`` older files (``sysupd.log.1`` the newest of them); on start the tail is
preloaded from it, so the log of an update survives the reboot. A file that cannot be written (a
full disk) never makes logging fail: the tail goes on, and the file is reopened at the next line.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
from collections import deque
from pathlib import Path
from typing import TextIO

from sysupd.system.clock import Clock

__all__ = ["GENERATIONS", "ServiceLog"]

GENERATIONS = 5
"""Rotated files kept besides the current one (the audit record, ``store.audit``, keeps more)."""

_console = logging.getLogger("sysupd")


class ServiceLog:
    """Append-only log lines, newest last."""

    def __init__(self, path: Path | None, clock: Clock, max_bytes: int) -> None:
        self._path = path
        self._clock = clock
        self._max_bytes = max_bytes
        self._lines: deque[tuple[str, int]] = deque()
        self._size = 0
        self._file: TextIO | None = None
        self._file_broken = False
        self._closed = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._preload(path)
            self._file = path.open("a", encoding="utf-8")

    def info(self, message: str, *, console: bool = True) -> None:
        """Record a line; ``console=False`` keeps it off stderr (the command printed it already)."""
        self._write("INFO", message, console=console)

    def warning(self, message: str, *, console: bool = True) -> None:
        """Record a line about something that went wrong but was handled."""
        self._write("WARNING", message, console=console)

    def error(self, message: str, *, console: bool = True) -> None:
        """Record a line about a failure."""
        self._write("ERROR", message, console=console)

    def text(self) -> str:
        """The tail as ``sys/middleware_log`` returns it: HTML-escaped lines joined by ``<br>``."""
        return "<br>".join(html.escape(line, quote=False) for line, _ in self._lines)

    def lines(self) -> list[str]:
        """The tail, newest last."""
        return [line for line, _ in self._lines]

    def close(self) -> None:
        """Close the file; lines logged afterwards (a handler finishing late) stay in memory."""
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, level: str, message: str, *, console: bool = True) -> None:
        stamp = self._clock.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} {level} {' '.join(message.splitlines())}"
        if console:
            getattr(_console, level.lower())(message)
        self._append(line)
        if self._path is None or self._closed:
            return
        try:
            if self._file is None:
                self._file = self._path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
            if self._file.tell() > 4 * self._max_bytes:
                self._rotate()
            self._file_broken = False
        except OSError as exc:
            if not self._file_broken:
                _console.error("cannot write the service log %s: %s", self._path, exc)
            self._file_broken = True
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def _append(self, line: str) -> None:
        size = len(html.escape(line, quote=False).encode()) + len("<br>")
        self._lines.append((line, size))
        self._size += size
        while self._size > self._max_bytes + len("<br>") and len(self._lines) > 1:
            self._size -= self._lines.popleft()[1]

    def _preload(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - self._max_bytes))
                data = handle.read()
        except FileNotFoundError:
            return
        lines = data.decode("utf-8", "replace").splitlines()
        for line in lines[1:] if len(data) >= self._max_bytes else lines:
            self._append(line)

    def _rotate(self) -> None:
        assert self._file is not None
        assert self._path is not None
        self._file.close()
        self._file = None
        for n in range(GENERATIONS - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(
                    self._path.with_suffix(f".log.{n}"), self._path.with_suffix(f".log.{n + 1}")
                )
        os.replace(self._path, self._path.with_suffix(".log.1"))
        self._file = self._path.open("a", encoding="utf-8")
