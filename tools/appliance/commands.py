"""Running the host's programs for the builder and the harness: argument lists, never a shell.

Invariant: a failed program is a ``BuildError`` naming the command and the end of its output,
and a missing one names the Debian package that provides it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PACKAGES", "BuildError", "find_program", "run"]

PACKAGES = {
    "debootstrap": "debootstrap",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mdel": "mtools",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "grub-mkstandalone": "grub-efi-amd64-bin",
    "grub-editenv": "grub-common",
    "qemu-system-x86_64": "qemu-system-x86",
    "chroot": "coreutils",
}
"""The Debian package of each program the builder and the harness run."""

_SBIN = (Path("/usr/sbin"), Path("/sbin"))


class BuildError(Exception):
    """A program the builder or the harness runs is missing or failed."""


def find_program(program: str) -> str:
    """The path of ``program`` (on PATH or in the sbin directories a user's PATH may lack).

    Raises:
        BuildError: it is not installed; the message names its Debian package.
    """
    found = shutil.which(program)
    if found is None:
        found = next((str(d / program) for d in _SBIN if (d / program).exists()), None)
    if found is None:
        package = PACKAGES.get(program, program)
        raise BuildError(
            f"{program} is needed and is not installed: apt-get install {package} "
            "(scripts/system-deps installs what the appliance needs)"
        )
    return found


def run(
    argv: Sequence[str | Path],
    *,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 1800.0,
) -> bytes:
    """Run ``argv`` to its end; its standard output.

    Raises:
        BuildError: the program is missing, fails or outlasts ``timeout_s``.
    """
    args = [str(a) for a in argv]
    args[0] = find_program(args[0])
    try:
        done = subprocess.run(
            args,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            cwd=cwd,
            env=env,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{' '.join(args)} did not finish in {timeout_s:g} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-2000:]
        raise BuildError(f"{' '.join(args)} failed (exit {done.returncode}):\n{tail}")
    return done.stdout
