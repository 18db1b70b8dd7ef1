"""The health check that confirms a newly booted slot: the configured command, exit status 0.

An empty command means "the service started, which is health enough". The command runs without a
shell, with a deadline; its last line of output explains a failure in the log.
"""

from __future__ import annotations

import asyncio
import shlex

__all__ = ["run_health_check"]


async def run_health_check(command: str, timeout_s: float = 120.0) -> tuple[bool, str]:
    """Run ``command``; returns whether it passed and a line saying how it went."""
    if not command.strip():
        return True, "no health check is configured, so starting is enough"
    try:
        argv = shlex.split(command)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except ValueError as exc:
        return False, f"health check {command!r} cannot be parsed: {exc}"
    except OSError as exc:
        return False, f"health check {command!r} could not start: {exc.strerror}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"health check {command!r} did not finish within {timeout_s:g} s"
    lines = output.decode("utf-8", "replace").strip().splitlines()
    tail = f": {lines[-1][:200]}" if lines else ""
    if proc.returncode == 0:
        return True, f"health check {command!r} passed{tail}"
    return False, f"health check {command!r} exited with status {proc.returncode}{tail}"
