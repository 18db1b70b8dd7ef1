"""Reboot actions: what "reboot" means on this machine.

``exec`` and ``exit`` are carried out by the process's entry point once the service has shut
down cleanly (re-executing itself, or exiting 0 for a supervisor); ``command`` hands the reboot to
the system (``systemctl reboot``), which will stop the service in its own time. Nothing here ever
reboots a machine by itself: only the configured command does.
"""

from __future__ import annotations

import asyncio
import enum
import shlex
from dataclasses import dataclass

__all__ = ["ProcessExit", "RebootKind", "RebootOutcome", "run_reboot_action"]


class RebootKind(enum.Enum):
    """What was asked for (the contract's ``reboot_type``)."""

    RESTART = "restart"
    POWEROFF = "poweroff"


class ProcessExit(enum.Enum):
    """How the service process ends after it stops serving."""

    EXIT = "exit"
    """Exit with status 0."""
    REEXEC = "reexec"
    """Replace the process with a fresh start of the same command line."""


@dataclass(frozen=True, slots=True)
class RebootOutcome:
    """What the action did: a line for the log and, if the service must stop, how."""

    log_line: str
    process_exit: ProcessExit | None
    failed: bool = False


async def run_reboot_action(
    action: str, kind: RebootKind, reboot_command: str, poweroff_command: str
) -> RebootOutcome:
    """Carry out the configured reboot ``action`` (``exec``, ``command`` or ``exit``)."""
    if action == "exec":
        if kind is RebootKind.POWEROFF:
            return RebootOutcome("poweroff: stopping the service", ProcessExit.EXIT)
        return RebootOutcome("restart: re-executing the service", ProcessExit.REEXEC)
    if action == "exit":
        return RebootOutcome(f"{kind.value}: exiting for the supervisor", ProcessExit.EXIT)
    command = poweroff_command if kind is RebootKind.POWEROFF else reboot_command
    line, ok = await _run_command(command)
    return RebootOutcome(line, None, failed=not ok)


async def _run_command(command: str) -> tuple[str, bool]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"reboot command {command!r} cannot be parsed: {exc}", False
    if not argv:
        return "no reboot command is configured", False
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await proc.communicate()
    except OSError as exc:
        return f"reboot command {command!r} could not start: {exc.strerror}", False
    text = output.decode("utf-8", "replace").strip().splitlines()
    tail = f": {text[-1]}" if text else ""
    line = f"reboot command {command!r} exited with status {proc.returncode}{tail}"
    return line, proc.returncode == 0
