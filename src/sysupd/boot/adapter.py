"""The bootloader seam: load and save the boot environment, and say which slot really booted.

The rules (which slot boots, trials, rollback) live in ``core.bootenv``; an adapter only stores
a ``BootEnv`` and reads it back unchanged. Invariants every adapter keeps:

- ``load`` after ``save(env)`` returns ``env`` (same order, same records);
- a stored environment that cannot be read as exactly the configured slots is a
  ``BootRecordUnusable`` naming the file and the problem, never silently replaced by a fresh one:
  a store that does not exist yet loads as ``BootEnv.fresh`` (or is ``BootRecordMissing`` where
  the caller asks). Only ``recreate`` replaces an unusable store, keeping it beside the new one
  for an operator to inspect; the engine's start calls it for a firmware bootloader, whose
  firmware booted such a device as a fresh one, and says so in its report;
- ``save`` and ``recreate`` replace the stored environment as a whole or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sysupd.boot.filestate import FileBootloader
from sysupd.boot.grub import GrubBootloader
from sysupd.core.bootenv import BootEnv
from sysupd.errors import BootError, BootRecordMissing, BootRecordUnusable, ConfigError

__all__ = ["BOOTLOADER_KINDS", "Bootloader", "MemoryBootloader", "make_bootloader"]

BOOTLOADER_KINDS = ("file", "grub")
"""The ``kind`` values ``make_bootloader`` accepts."""

BOOT_STATE_FILE = "bootenv.json"


class Bootloader(Protocol):
    """Where the boot environment lives between boots."""

    name: str
    """The adapter's kind, as configured (``file``, ``grub``)."""

    slot_names: tuple[str, ...]
    """The configured slots, in configured order."""

    def load(self, *, missing_ok: bool = True) -> BootEnv:
        """The stored environment, or ``BootEnv.fresh`` if none was ever stored.

        Raises:
            BootRecordMissing: none was ever stored, and not ``missing_ok``.
            BootRecordUnusable: the store is corrupt, truncated or names other slots.
            BootError: the store cannot be read at all (its tool is missing, an I/O error).
        """
        ...

    def save(self, env: BootEnv) -> None:
        """Replace the stored environment with ``env``, durably.

        Raises:
            BootError: ``env`` names other slots, or the store cannot be written.
        """
        ...

    def recreate(self, env: BootEnv) -> str | None:
        """Replace a missing or unusable store with ``env``, durably, keeping the unusable one
        beside it; where it is kept, ``None`` if there was none.

        Raises:
            BootError: ``env`` names other slots, or the store cannot be written; it is then as
                it was.
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
        """When set, ``load``, ``save`` and ``recreate`` raise it (a broken store)."""
        self.damage: str | None = None
        """When set, the stored record is unusable: ``load`` raises ``BootRecordUnusable`` with
        it, ``save`` refuses to edit it, and ``recreate`` moves it to ``kept``."""
        self.kept: str | None = None
        """The damage the last ``recreate`` replaced."""

    def load(self, *, missing_ok: bool = True) -> BootEnv:
        """The last saved environment, or a fresh one."""
        if self.fail_with is not None:
            raise self.fail_with
        if self.damage is not None:
            raise BootRecordUnusable(f"memory: {self.damage}")
        if self.env is None and not missing_ok:
            raise BootRecordMissing("memory: no boot record was ever stored")
        return self.env if self.env is not None else BootEnv.fresh(self.slot_names)

    def save(self, env: BootEnv) -> None:
        """Keep ``env`` and record it."""
        if self.fail_with is not None:
            raise self.fail_with
        if self.damage is not None:
            raise BootError(f"memory: refusing to edit an unusable record ({self.damage})")
        self._check(env)
        self.env = env
        self.saved.append(env)

    def recreate(self, env: BootEnv) -> str | None:
        """Keep ``env`` and record it; the damage it replaced (if any) goes to ``kept``."""
        if self.fail_with is not None:
            raise self.fail_with
        self._check(env)
        self.kept, self.damage = self.damage, None
        self.env = env
        self.saved.append(env)
        return None if self.kept is None else "memory: kept"

    def booted_slot(self) -> str | None:
        """What the test said the firmware booted."""
        return self.booted

    def _check(self, env: BootEnv) -> None:
        if set(env.order) != set(self.slot_names):
            raise BootError(
                f"memory: refusing to save slots {env.order}, configured {self.slot_names}"
            )


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
