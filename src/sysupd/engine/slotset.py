"""The configured slots: names, kinds and paths, and the writer for each.

The ``slots`` setting lists ``NAME:TYPE:PATH``; empty means the embedded default, a directory pair
``A`` and ``B`` under ``<state_dir>/slots``, so the whole update cycle runs on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from sysupd.slots.base import SlotWriter
from sysupd.slots.directory import DirectorySlot
from sysupd.slots.raw import RawSlot

__all__ = ["SlotConfig", "inactive_slot", "make_writer", "slot_configs"]


@dataclass(frozen=True, slots=True)
class SlotConfig:
    """One slot."""

    name: str
    kind: Literal["directory", "raw"]
    path: Path


def slot_configs(setting: tuple[str, ...], state_dir: Path) -> tuple[SlotConfig, ...]:
    """The slots the ``slots`` setting describes (already validated by the settings registry)."""
    if not setting:
        return tuple(
            SlotConfig(name, "directory", state_dir / "slots" / name) for name in ("A", "B")
        )
    configs = []
    for item in setting:
        name, kind, path = item.split(":", 2)
        configs.append(SlotConfig(name, cast(Literal["directory", "raw"], kind), Path(path)))
    return tuple(configs)


def make_writer(config: SlotConfig) -> SlotWriter:
    """The writer that installs into ``config``'s slot."""
    if config.kind == "directory":
        return DirectorySlot(config.name, config.path)
    return RawSlot(config.name, config.path)


def inactive_slot(order: tuple[str, ...], booted: str) -> str:
    """The slot an update goes to: the first in boot order that is not the booted one."""
    return next(name for name in order if name != booted)
