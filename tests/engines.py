"""An engine on a temp state directory trusting a test repository, as a device would have it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sysupd.boot.adapter import Bootloader
from sysupd.core.settings import Settings, apply_changes
from sysupd.engine.engine import Engine
from sysupd.engine.slotset import SlotConfig, make_writer
from sysupd.release.repository import ReleaseRepository
from sysupd.slots.base import SlotWriter
from sysupd.system.clock import SystemClock
from tests.releases import PRODUCT

__all__ = [
    "booted_engine",
    "bundle_file",
    "device_settings",
    "make_engine",
    "running_device",
    "snapshot_tree",
]


def device_settings(repo: ReleaseRepository, **changes: Any) -> Settings:
    """Settings of a device of ``PRODUCT`` that trusts ``repo``'s first root."""
    return apply_changes(
        Settings(),
        {"product": PRODUCT, "trust_root": str(repo.path / "metadata" / "1.root.json"), **changes},
    )


def make_engine(
    state_dir: Path,
    repo: ReleaseRepository,
    *,
    boot_twin: Bootloader | None = None,
    slot_writer: Callable[[SlotConfig], SlotWriter] = make_writer,
    **changes: Any,
) -> Engine:
    """An engine for ``state_dir`` (a fresh one is a fresh power-on), with ``changes`` to the
    device's settings; ``boot_twin`` and ``slot_writer`` replace the configured bootloader and
    slot writers with twins."""
    return Engine.from_settings(
        state_dir,
        device_settings(repo, **changes),
        SystemClock(),
        bootloader=boot_twin,
        slot_writer=slot_writer,
    )


def booted_engine(state_dir: Path, repo: ReleaseRepository, **changes: Any) -> Engine:
    """An engine that started and confirmed its slot, as after a good boot."""
    engine = make_engine(state_dir, repo, **changes)
    engine.start()
    engine.confirm(True, "")
    return engine


def running_device(tmp_path: Path, repo: ReleaseRepository, **changes: Any) -> Engine:
    """A booted device on directory slots; slot A holds the running system (a marker file)."""
    engine = booted_engine(tmp_path / "state", repo, **changes)
    running = tmp_path / "state" / "slots" / "A"
    running.mkdir(parents=True, exist_ok=True)
    (running / "running-system").write_text("factory\n")
    return engine


def bundle_file(repo: ReleaseRepository, directory: Path, version: str) -> Path:
    """The offline bundle of ``version``, written into ``directory``."""
    out = directory / f"{version}.bundle"
    repo.write_bundle(version, out)
    return out


def snapshot_tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by relative path, to compare before and after."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
