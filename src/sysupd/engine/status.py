"""What the engine reports: the slots, the boot order, the trial and the last result, as one
frozen record read at one moment (``Engine.status``), and the boot trial's verdict.

``to_json`` gives the wire's and the CLI's JSON form; the keys and words are those the API has
always sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sysupd.engine.state import BootStatus, JobRecord, LastResult

__all__ = ["BootVerdict", "EngineStatus", "SlotStatus"]


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """One slot: its storage, what it holds, and what the bootloader thinks of it."""

    kind: str
    path: str
    version: str | None
    installed_at: str | None
    bootable: bool | None
    """``None``: the bootloader's record could not be read."""
    tries: int | None
    booted: bool


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """The engine's state as clients are told it."""

    booted: str | None
    next_boot: str | None
    trial: str | None
    """A newly installed slot that has not yet passed its health check."""
    floor: str | None
    slots: dict[str, SlotStatus]
    last_result: LastResult | None
    job: JobRecord | None
    """An install under way (or one a crash interrupted, until the next start)."""

    @property
    def reboot_required(self) -> bool:
        """From a successful install until the reboot into the new slot."""
        return self.trial is not None and self.trial != self.booted

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``last_result``'s ``result`` is its wire word)."""
        document = asdict(self)
        document["last_result"] = self.last_result.to_json() if self.last_result else None
        return document


@dataclass(frozen=True, slots=True)
class BootVerdict:
    """How a boot trial ended: what to report, and whether to reboot into the previous slot."""

    status: BootStatus
    """``GOOD``, ``UNHEALTHY``, ``ROLLED_BACK`` or ``FAILED``."""
    settled: LastResult | None
    """The result this trial recorded: a new slot confirmed or abandoned; ``None`` if none."""
    detail: str
    """The health check's own words."""

    @property
    def reboot(self) -> bool:
        """The new slot was abandoned: reboot, and the previous one boots."""
        return self.status is BootStatus.FAILED
