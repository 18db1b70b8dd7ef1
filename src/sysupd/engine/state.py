"""The engine's persisted record: what each slot holds, the version floor, the job under way and
the last result (``<state_dir>/engine.json``, replaced atomically).

Invariant: a slot's recorded version is set only after its payload fully verified and was
written; ``job`` is set before the first byte goes to a slot and cleared when the job ends, so a
``job`` found at start-up means an install was interrupted.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sysupd.errors import StateError
from sysupd.fsutil import atomic_write, read_capped

__all__ = [
    "BootStatus",
    "EngineState",
    "JobRecord",
    "LastResult",
    "Outcome",
    "SlotRecord",
    "StateFile",
]

_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """What one slot holds."""

    version: str | None = None
    installed_at: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """An install under way."""

    slot: str
    version: str
    source: str
    started_at: str


class Outcome(enum.StrEnum):
    """How the last install or boot trial ended (the words are the wire's ``last_result``)."""

    INSTALLED = "installed"
    """Written and switched to; the new slot boots next, on trial."""
    SUCCESS = "success"
    """The new slot booted and passed its health check."""
    FAILED = "failed"
    """The install failed; the booted slot is as it was."""
    INTERRUPTED = "interrupted"
    """A crash or power cut stopped the install before the switch; the booted slot is as it was."""
    ROLLED_BACK = "rolled back"
    """The new slot failed its health check or did not come up; the previous one boots."""


class BootStatus(enum.StrEnum):
    """Where this start's boot trial stands (the words are ``sys/info``'s ``boot_status``)."""

    STARTING = "starting"
    TRIAL = "trial"
    """The health check of a newly booted slot runs."""
    GOOD = "good"
    UNHEALTHY = "unhealthy"
    """The check failed on an established slot: reported; there is no better slot to go to."""
    ROLLED_BACK = "rolled back"
    FAILED = "failed"
    """The new slot failed its check: the service reboots into the previous one."""
    ERROR = "error"
    """The trial could not run (said with its reason on the wire: ``error: …``)."""


@dataclass(frozen=True, slots=True)
class LastResult:
    """How the last update or boot trial ended, in words for people."""

    result: Outcome
    detail: str
    at: str
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire's form (``result`` as its word)."""
        return {
            "result": str(self.result),
            "detail": self.detail,
            "at": self.at,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class EngineState:
    """The engine's whole record."""

    slots: dict[str, SlotRecord] = field(default_factory=dict)
    floor: str | None = None
    """The lowest version accepted without ``allow_downgrade``: the last confirmed good one."""
    booted: str | None = None
    """The slot this start booted."""
    trial: str | None = None
    """A newly installed slot that has not yet passed its first health check."""
    job: JobRecord | None = None
    last_result: LastResult | None = None

    def with_slot(self, name: str, record: SlotRecord) -> EngineState:
        """A copy with ``name`` holding ``record``."""
        return replace(self, slots={**self.slots, name: record})

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)


class StateFile:
    """``engine.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> EngineState:
        """The record, or an empty one on first use.

        Raises:
            StateError: the file exists but is unreadable or malformed.
        """
        if not self.path.exists():
            return EngineState()
        try:
            data = json.loads(read_capped(self.path, _MAX_BYTES))
            return EngineState(
                slots={k: SlotRecord(**v) for k, v in data["slots"].items()},
                floor=data["floor"],
                booted=data["booted"],
                trial=data["trial"],
                job=JobRecord(**data["job"]) if data["job"] else None,
                last_result=_last_result(data["last_result"]) if data["last_result"] else None,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"the engine state {self.path} is unreadable: {exc}") from exc

    def save(self, state: EngineState) -> None:
        """Replace the record atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(state.to_json(), indent=1).encode())


def _last_result(data: dict[str, Any]) -> LastResult:
    return LastResult(**{**data, "result": Outcome(data["result"])})
