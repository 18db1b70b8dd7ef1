"""The update job's state machine: which stage may follow which, and no switch unless verified.

``idle → acquiring → verifying → installing → switching → done`` (a reboot is then required), or
``failed`` from any stage before ``done``. ``acquiring`` reads the release's metadata, ``verifying``
checks it against the trust root, ``installing`` streams the payload through the chunk verifier
into the inactive slot, ``switching`` tells the bootloader to try the new slot. A move the rules do
not allow raises ``IllegalTransition``: it is a bug in the engine, never the update's fault.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sysupd.errors import IllegalTransition

__all__ = ["JobState", "JobStateMachine"]


class JobState(enum.Enum):
    """Where an update job stands."""

    IDLE = "idle"
    ACQUIRING = "acquiring"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    SWITCHING = "switching"
    DONE = "done"
    FAILED = "failed"

    @property
    def running(self) -> bool:
        """Whether the job is under way."""
        return self not in (JobState.IDLE, JobState.DONE, JobState.FAILED)


_NEXT: dict[JobState, JobState] = {
    JobState.IDLE: JobState.ACQUIRING,
    JobState.ACQUIRING: JobState.VERIFYING,
    JobState.VERIFYING: JobState.INSTALLING,
    JobState.INSTALLING: JobState.SWITCHING,
    JobState.SWITCHING: JobState.DONE,
}


@dataclass(slots=True)
class JobStateMachine:
    """The checked state of one update job, and whether its payload fully verified."""

    state: JobState = JobState.IDLE
    payload_verified: bool = False
    history: list[JobState] = field(default_factory=lambda: [JobState.IDLE])

    def advance(self, target: JobState) -> None:
        """Move to the next stage.

        Raises:
            IllegalTransition: ``target`` is not the stage after the current one, or the job would
                switch slots before its whole payload verified.
        """
        if _NEXT.get(self.state) is not target:
            raise IllegalTransition(
                f"update job cannot go from {self.state.value} to {target.value}"
            )
        if target is JobState.SWITCHING and not self.payload_verified:
            raise IllegalTransition("update job cannot switch slots before the payload verified")
        self._enter(target)

    def mark_payload_verified(self) -> None:
        """Every chunk of the payload checked out and was written.

        Raises:
            IllegalTransition: the job is not installing.
        """
        if self.state is not JobState.INSTALLING:
            raise IllegalTransition(f"payload cannot be verified while {self.state.value}")
        self.payload_verified = True

    def fail(self) -> None:
        """End the job as failed.

        Raises:
            IllegalTransition: the job already ended.
        """
        if not self.state.running:
            raise IllegalTransition(f"update job cannot fail from {self.state.value}")
        self._enter(JobState.FAILED)

    def _enter(self, target: JobState) -> None:
        self.state = target
        self.history.append(target)
