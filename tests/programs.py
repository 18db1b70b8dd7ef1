"""The real programs some tests drive. ``scripts/test`` installs them (``scripts/system-deps``);
where one is still missing, its tests fail and say which package to install, rather than skip
a whole area in silence."""

from __future__ import annotations

import functools
import inspect
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

__all__ = ["need", "requires"]

F = TypeVar("F", bound=Callable[..., Any])

PACKAGES = {
    "grub-editenv": "grub-common",
    "grub-script-check": "grub-common",
    "grub-emu": "grub-emu",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "nginx": "nginx",
    "systemd-analyze": "systemd",
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "grub-mkstandalone": "grub-efi-amd64-bin",
}
_SBIN = (Path("/usr/sbin"), Path("/sbin"))


def find(program: str) -> str | None:
    """Where ``program`` is, on PATH or in the sbin directories a user's PATH may lack."""
    found = shutil.which(program)
    if found is None:
        found = next((str(d / program) for d in _SBIN if (d / program).exists()), None)
    return found


def need(*programs: str) -> None:
    """Fail the test now, naming the Debian packages, unless every one of ``programs`` is here."""
    missing = [p for p in programs if find(p) is None]
    if missing:
        packages = sorted({PACKAGES.get(p, p) for p in missing})
        pytest.fail(
            f"this test drives {', '.join(missing)}, which is not installed: run scripts/test "
            f"(it installs what the tests need) or apt-get install {' '.join(packages)}"
        )


def requires(*programs: str) -> Callable[[F], F]:
    """A test decorator: ``need(*programs)`` before the test runs."""

    def wrap(test: F) -> F:
        if inspect.iscoroutinefunction(test):

            @functools.wraps(test)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                need(*programs)
                return await test(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> Any:
            need(*programs)
            return test(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
