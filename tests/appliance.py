"""What the appliance tests (``tools/appliance``, issue 12) need before they build and boot."""

from __future__ import annotations

import os

import pytest

from tests.programs import need
from tools.appliance.vm import OVMF_CODE, OVMF_VARS

__all__ = ["need_appliance_tools"]

PROGRAMS = (
    "qemu-system-x86_64",
    "debootstrap",
    "sfdisk",
    "mkfs.vfat",
    "mcopy",
    "mke2fs",
    "grub-mkstandalone",
    "grub-editenv",
)


def need_appliance_tools() -> None:
    """Fail now, saying what to install, unless the builder and the harness can run here."""
    need(*PROGRAMS)
    missing = [str(f) for f in (OVMF_CODE, OVMF_VARS) if not f.exists()]
    if missing:
        pytest.fail(f"this test boots UEFI firmware {', '.join(missing)}: apt-get install ovmf")
    if os.geteuid() != 0:
        pytest.fail("building the appliance image needs root (debootstrap, chroot, bind mounts)")
