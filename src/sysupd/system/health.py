"""The health check that confirms a newly booted slot: the configured command, exit status 0.

An empty command means "the service started, which is health enough". The command runs without a
shell, with a deadline (the device setting ``health_check_timeout_s``); its last line of output
explains a failure in the log. It runs in a session of its own, so that at the deadline the whole
process group is killed: a script stuck in a child (``curl``, ``sleep``) leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal

__all__ = ["run_health_check"]


async def run_health_check(command: str, timeout_s: float) -> tuple[bool, str]:
    """Run ``command`` for at most ``timeout_s`` (``health_check_timeout_s``); returns whether
    it passed and a line saying how it went."""
    if not command.strip():
        return True, "no health check is configured, so starting is enough"
    try:
        argv = shlex.split(command)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except ValueError as exc:
        return False, f"health check {command!r} cannot be parsed: {exc}"
    except OSError as exc:
        return False, f"health check {command!r} could not start: {exc.strerror}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"health check {command!r} did not finish within {timeout_s:g} s"
    lines = output.decode("utf-8", "replace").strip().splitlines()
    tail = f": {lines[-1][:200]}" if lines else ""
    if proc.returncode == 0:
        return True, f"health check {command!r} passed{tail}"
    return False, f"health check {command!r} exited with status {proc.returncode}{tail}"
