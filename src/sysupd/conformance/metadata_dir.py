"""The conformance protocol's metadata directory (``D/<role>.json``), for both paths.

Responsibility: store the initial root (no checks: the protocol's ``init``), read the directory
as the device's ``TrustState`` (each file a kept copy, its version the floor), and write back
what a walk trusted — each role only when it verified, never deleting one, as python-tuf's
ngclient does (a copy that no longer verifies simply stops counting at the next walk).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sysupd.core.trustchain import ROLES, TrustState, metadata_version
from sysupd.errors import StateError
from sysupd.fsutil import atomic_write, read_capped

__all__ = ["initialize", "load_trust", "persist"]

_MAX_BYTES = 16 * 1024 * 1024


def initialize(metadata_dir: Path, trusted_root: Path) -> None:
    """Trust ``trusted_root`` from now on (no checks, no network, as the protocol says).

    Raises:
        StateError: it cannot be read or stored.
    """
    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trusted_root, metadata_dir / "root.json")
    except OSError as exc:
        raise StateError(f"cannot store the trusted root: {exc}") from exc


def load_trust(metadata_dir: Path) -> TrustState:
    """The directory as the device's trust: ``root.json`` and a kept copy of each role present.

    Raises:
        StateError: ``root.json`` is missing or a file cannot be read.
    """
    try:
        root = read_capped(metadata_dir / "root.json", _MAX_BYTES)
        kept = {
            role: read_capped(metadata_dir / f"{role}.json", _MAX_BYTES)
            for role in ROLES
            if (metadata_dir / f"{role}.json").exists()
        }
    except OSError as exc:
        raise StateError(f"cannot read the trusted metadata: {exc}") from exc
    seen = {role: metadata_version(data) or 0 for role, data in kept.items()}
    return TrustState(root, seen, kept)


def persist(metadata_dir: Path, role: str, data: bytes) -> None:
    """Write ``role``'s metadata (exact bytes) as ``D/<role>.json``, unless it holds them already.

    Raises:
        StateError: the file cannot be written.
    """
    path = metadata_dir / f"{role}.json"
    try:
        if not path.exists() or path.read_bytes() != data:
            atomic_write(path, data)
    except OSError as exc:
        raise StateError(f"cannot store the trusted metadata: {exc}") from exc
