"""The bootloader seam: load and save the boot environment, and say which slot really booted.

The rules (which slot boots, trials, rollback) live in ``core.bootenv``; an adapter only stores
a ``BootEnv`` and reads it back unchanged. Invariants every adapter keeps:

- ``load`` after ``save(env)`` returns ``env`` (same order, same records);
- a stored environment that cannot be read as exactly the configured slots is a ``BootError``
  naming the file and the problem, never silently replaced by a fresh one: an operator must see
  it. Only a store that does not exist yet loads as ``BootEnv.fresh``;
- ``save`` replaces the stored environment as a whole or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sysupd.boot.filestate import FileBootloader
from sysupd.boot.grub import GrubBootloader
from sysupd.core.bootenv import BootEnv
from sysupd.errors import BootError, ConfigError

__all__ = ["BOOTLOADER_KINDS", "Bootloader", "MemoryBootloader", "make_bootloader"]

BOOTLOADER_KINDS = ("file", "grub")
"""The ``kind`` values ``make_bootloader`` accepts."""

BOOT_STATE_FILE = "bootenv.json"


class Bootloader(Protocol):
    """Where the boot environment lives between boots."""

    name: str
    """The adapter's kind, as configured (``file``, ``grub``)."""

    def load(self) -> BootEnv:
        """The stored environment, or ``BootEnv.fresh`` if none was ever stored.

        Raises:
            BootError: the store is unreadable, corrupt or names other slots.
        """
        ...

    def save(self, env: BootEnv) -> None:
        """Replace the stored environment with ``env``, durably.

        Raises:
            BootError: ``env`` names other slots, or the store cannot be written.
        """
        ...

    def booted_slot(self) -> str | None:
        """The slot the firmware booted, where it decides; ``None`` where sysupd decides.

        Raises:
            BootError: the boot record cannot be read or names an unknown slot.
        """
        ...


class MemoryBootloader:
    """An in-memory twin for tests: keeps the environment and records every save."""

    name = "memory"

    def __init__(
        self,
        slot_names: tuple[str, ...],
        env: BootEnv | None = None,
        booted: str | None = None,
    ) -> None:
        self.slot_names = slot_names
        self.env = env
        self.booted = booted
        self.saved: list[BootEnv] = []
        self.fail_with: BootError | None = None
        """When set, ``load`` and ``save`` raise it (a broken store)."""

    def load(self) -> BootEnv:
        """The last saved environment, or a fresh one."""
        if self.fail_with is not None:
            raise self.fail_with
        return self.env if self.env is not None else BootEnv.fresh(self.slot_names)

    def save(self, env: BootEnv) -> None:
        """Keep ``env`` and record it."""
        if self.fail_with is not None:
            raise self.fail_with
        if set(env.order) != set(self.slot_names):
            raise BootError(
                f"memory: refusing to save slots {env.order}, configured {self.slot_names}"
            )
        self.env = env
        self.saved.append(env)

    def booted_slot(self) -> str | None:
        """What the test said the firmware booted."""
        return self.booted


def make_bootloader(
    kind: str,
    state_dir: Path,
    slot_names: tuple[str, ...],
    grubenv: Path | None,
    cmdline: Path = Path("/proc/cmdline"),
) -> Bootloader:
    """The configured adapter: ``file`` keeps ``<state_dir>/bootenv.json``, ``grub`` a grubenv.

    Raises:
        ConfigError: unknown ``kind``, ``grub`` without a grubenv path, or slot names the
            adapter cannot store.
    """
    if kind == "file":
        return FileBootloader(state_dir / BOOT_STATE_FILE, slot_names)
    if kind == "grub":
        if grubenv is None:
            raise ConfigError("bootloader 'grub' needs the path of the grubenv file (grubenv)")
        return GrubBootloader(grubenv, slot_names, cmdline=cmdline)
    raise ConfigError(f"unknown bootloader {kind!r}; known: {', '.join(BOOTLOADER_KINDS)}")
