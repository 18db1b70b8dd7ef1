"""The audit record: who logged in, who failed, who changed what — kept apart from the service log,
durable, and out of reach of connection noise.

Two streams of JSON lines in ``<state_dir>/audit/``, each rotated by size with many generations:

- ``changes.jsonl``: settings changed, updates started and ended, reboots scheduled, cancelled
  and carried out, users added, removed or given a new password, the trust adopted. Only a
  logged-in administrator (or the device itself) makes these, so nothing an anonymous client
  sends can push them out.
- ``access.jsonl``: logins, failed logins and lockouts. Repeats of the same event from the same
  address are recorded once a minute with their count, and past a budget of records a minute the
  rest are only counted, so a password-guessing flood costs a few lines a minute.

Every record is appended with ``O_APPEND`` under a lock and fsynced: the ``sysupd user`` command
writes to the same record as the service.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from sysupd.system.clock import Clock

__all__ = ["ACCESS", "CHANGES", "AuditLog"]

CHANGES = "changes"
ACCESS = "access"
_MAX_BYTES = 1 << 20
_GENERATIONS = 20
_WINDOW_S = 60.0
_BUDGET_PER_WINDOW = 100
"""Access records written one by one in a window; the rest of that window are only counted."""
_MAX_FIELD_CHARS = 200


@dataclass(slots=True)
class _Repeats:
    first_seen: float
    count: int = 0
    users: set[str] = field(default_factory=set)


class AuditLog:
    """Appends to and reads the audit record in ``directory``."""

    def __init__(
        self,
        directory: Path,
        clock: Clock,
        *,
        max_bytes: int = _MAX_BYTES,
        generations: int = _GENERATIONS,
    ) -> None:
        self._dir = directory
        self._clock = clock
        self._max_bytes = max_bytes
        self._generations = generations
        self._repeats: dict[tuple[str, str, str], _Repeats] = {}
        self._window_start = clock.monotonic()
        self._written_in_window = 0
        self._over_budget = 0
        self.dropped = 0
        """Records that could not be written (a full or broken disk); never an exception, since
        what is being recorded (a login, a change) must not fail because its record did."""
        self.last_error: str | None = None

    # -- writing -------------------------------------------------------------------------------

    def change(self, event: str, *, by: str, details: str = "", address: str = "") -> None:
        """A change to the device: never coalesced."""
        self._append(CHANGES, {"event": event, "user": by, "address": address, "details": details})

    def access(
        self, event: str, *, user: str, address: str, outcome: str, details: str = ""
    ) -> None:
        """A login, failed login or lockout: repeats within a minute are counted. A success
        takes valid credentials, so it is never held back by the budget: a flood of failures
        cannot hide who got in."""
        self.flush()
        now = self._clock.monotonic()
        success = outcome == "success"
        key = (event, outcome, f"{address} {user}" if success else address)
        repeats = self._repeats.get(key)
        if repeats is not None:
            repeats.count += 1
            if len(repeats.users) < 5:
                repeats.users.add(user[:64])
            return
        self._repeats[key] = _Repeats(now)
        if not success:
            if self._written_in_window >= _BUDGET_PER_WINDOW:
                self._over_budget += 1
                return
            self._written_in_window += 1
        self._append(
            ACCESS,
            {
                "event": event,
                "outcome": outcome,
                "user": user,
                "address": address,
                "details": details,
            },
        )

    def flush(self, *, everything: bool = False) -> None:
        """Write the counts of repeats whose minute is over (all of them at a stop)."""
        now = self._clock.monotonic()
        for key, repeats in list(self._repeats.items()):
            if everything or now - repeats.first_seen >= _WINDOW_S:
                del self._repeats[key]
                if repeats.count:
                    event, outcome, where = key
                    address = where.split(" ", 1)[0]
                    self._append(
                        ACCESS,
                        {
                            "event": event,
                            "outcome": outcome,
                            "user": ", ".join(sorted(repeats.users)),
                            "address": address,
                            "details": f"{repeats.count} more in the minute after the first",
                            "count": repeats.count,
                        },
                    )
        if everything or now - self._window_start >= _WINDOW_S:
            if self._over_budget:
                self._append(
                    ACCESS,
                    {
                        "event": "access noise",
                        "outcome": "counted",
                        "user": "",
                        "address": "",
                        "details": f"{self._over_budget} more access records were only counted",
                        "count": self._over_budget,
                    },
                )
            self._window_start, self._written_in_window, self._over_budget = now, 0, 0

    # -- reading -------------------------------------------------------------------------------

    def read(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records of both streams, oldest first."""
        records: list[dict[str, Any]] = []
        for stream in (CHANGES, ACCESS):
            records += self._newest(stream, limit)
        records.sort(key=lambda r: str(r.get("time", "")))
        return records[-limit:] if limit else []

    def _newest(self, stream: str, limit: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in self._files(stream):
            with contextlib.suppress(FileNotFoundError):
                lines = path.read_bytes().splitlines()
                batch = []
                for line in lines:
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict):
                            record["stream"] = stream
                            batch.append(record)
                found = batch + found
            if len(found) >= limit:
                break
        return found[-limit:]

    def _files(self, stream: str) -> Iterator[Path]:
        """Newest first."""
        yield self._dir / f"{stream}.jsonl"
        for n in range(1, self._generations + 1):
            yield self._dir / f"{stream}.jsonl.{n}"

    # -- inside --------------------------------------------------------------------------------

    def _append(self, stream: str, record: dict[str, Any]) -> None:
        clean = {
            k: (v[:_MAX_FIELD_CHARS] if isinstance(v, str) else v)
            for k, v in record.items()
            if v != "" or k == "event"
        }
        stamp = self._clock.utcnow().astimezone(UTC)
        clean = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **clean}
        line = json.dumps(clean, ensure_ascii=False).encode() + b"\n"
        try:
            self._write(stream, line)
        except OSError as exc:
            self.dropped += 1
            self.last_error = str(exc)

    def _write(self, stream: str, line: bytes) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self._dir / "audit.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self._dir / f"{stream}.jsonl"
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size + len(line) > self._max_bytes:
                    self._rotate(stream)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(line)
                while view:  # a short write must not glue two records together
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(lock)

    def _rotate(self, stream: str) -> None:
        files = list(self._files(stream))
        with contextlib.suppress(FileNotFoundError):
            files[-1].unlink()
        for older, newer in zip(reversed(files[1:]), reversed(files[:-1]), strict=True):
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)
