"""One update job as clients see it: its log, stage, byte counts and the progress line for
people.

The job's state is the engine's ``JobState`` (as its progress reports it), then ``DONE`` or
``FAILED``; the wire's ``result`` and ``phase`` words are derived from it, never stored apart.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from sysupd.core.job import JobState
from sysupd.core.units import human_duration, human_rate, human_size

__all__ = ["JobRun", "ended_state"]

_PHASES = {
    JobState.ACQUIRING: "download",
    JobState.VERIFYING: "verify",
    JobState.INSTALLING: "install",
    JobState.SWITCHING: "switch",
}

_RESULTS = {JobState.DONE: "success", JobState.FAILED: "failure"}
"""The wire's ``result`` of an ended job."""


@dataclass(slots=True)
class JobRun:
    """One update job's public state."""

    source: str
    lines: list[str] = field(default_factory=list)
    state: JobState = JobState.ACQUIRING
    """The engine's stage while it runs (as its progress reports it), then ``DONE``/``FAILED``."""
    bytes_done: int = 0
    bytes_total: int = 0
    ended_at: str = ""
    local: bool = False
    """The bytes are on this machine already (an upload): nothing is downloaded."""
    slot: str = ""
    """The slot it installs into, once known."""
    installing_since: float | None = None
    """When the payload started to flow (monotonic), for the rate and the time left."""
    bytes_from_device: int | None = None
    """In a delta update: payload bytes the device held already (``None``: not a delta)."""
    bytes_from_network: int | None = None
    """In a delta update: payload bytes fetched."""
    bytes_downloaded: int | None = None
    """In a delta update: bytes downloaded for them (compressed chunks)."""

    @property
    def running(self) -> bool:
        """Until the job's final event."""
        return self.state.running

    @property
    def result(self) -> str | None:
        """The wire's word for how it ended ("success", "failure"); ``None`` while it runs."""
        return _RESULTS.get(self.state)

    @property
    def phase(self) -> str:
        """The contract's phase of a running job: download, verify, install or switch (an
        upload's bytes are here already: its first phase is verify)."""
        if self.local and self.state is JobState.ACQUIRING:
            return "verify"
        return _PHASES.get(self.state, "switch")

    def origins(self) -> dict[str, int | None]:
        """(ext) Where a delta update's bytes come from, for the events; empty for a whole
        payload."""
        if self.bytes_from_device is None:
            return {}
        return {
            "bytes_from_device": self.bytes_from_device,
            "bytes_from_network": self.bytes_from_network,
            "bytes_downloaded": self.bytes_downloaded,
        }

    def log_text(self) -> str:
        """The whole log as clients get it: HTML-escaped lines joined by ``<br>``."""
        return "<br>".join(html.escape(line, quote=False) for line in self.lines)

    def rate(self, now: float) -> float | None:
        """Bytes a second since the payload started to flow, once there is a rate to tell."""
        if self.installing_since is None or now <= self.installing_since or not self.bytes_done:
            return None
        return self.bytes_done / (now - self.installing_since)

    def progress_line(self, now: float) -> str | None:
        """ "installing into slot B: 512.0 MiB of 1.0 GiB, 210 MiB/s, 3 s left" while the payload
        flows; ``None`` in the other phases (their log line says what happens)."""
        if self.phase != "install" or not self.bytes_total or self.bytes_done >= self.bytes_total:
            return None
        where = f"installing into slot {self.slot}" if self.slot else "installing"
        line = f"{where}: {human_size(self.bytes_done)} of {human_size(self.bytes_total)}"
        if self.bytes_from_device is not None and self.bytes_from_network is not None:
            line += (
                f" ({human_size(self.bytes_from_device)} from this device, "
                f"{human_size(self.bytes_from_network)} from the network)"
            )
        rate = self.rate(now)
        if rate:
            left = (self.bytes_total - self.bytes_done) / rate
            line += f", {human_rate(rate)}, {human_duration(left)} left"
        return line


def ended_state(result: object) -> JobState | None:
    """The state an ended job's wire ``result`` word stands for; ``None`` for anything else."""
    return next((state for state, word in _RESULTS.items() if word == result), None)
