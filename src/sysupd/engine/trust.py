"""The device's persisted trust: the newest verified root and the metadata versions it has seen.

Kept in ``<state_dir>/trust/``: ``root.json`` (newest verified root), ``N.root.json`` (each root
as it was accepted) and ``versions.json``. Until the first bundle is accepted, the trust root is
the file named by the ``trust_root`` setting. Every file is replaced atomically, roots before
versions, so an interruption leaves either the old or the new trust, never a mix that would
refuse good releases.
"""

from __future__ import annotations

import json
from pathlib import Path

from sysupd.core.trustchain import TrustState, VerifiedBundle
from sysupd.errors import ConfigError, StateError
from sysupd.fsutil import atomic_write, read_capped

__all__ = ["MAX_METADATA_BYTES", "TrustStore"]

MAX_METADATA_BYTES = 4 * 1024 * 1024


class TrustStore:
    """Reads and records what the device trusts."""

    def __init__(self, directory: Path, trust_root: str) -> None:
        self._dir = directory
        self._trust_root = trust_root

    def load(self) -> TrustState:
        """The current trust.

        Raises:
            ConfigError: no trust root is configured, or the configured file cannot be read.
            StateError: the persisted trust is unreadable.
        """
        persisted = self._dir / "root.json"
        if persisted.exists():
            root = self._read(persisted)
        elif not self._trust_root:
            raise ConfigError(
                "no trust root is configured: set trust_root to the repository's root.json"
            )
        else:
            try:
                root = read_capped(Path(self._trust_root), MAX_METADATA_BYTES)
            except OSError as exc:
                raise ConfigError(f"cannot read trust_root {self._trust_root}: {exc}") from exc
        versions_path = self._dir / "versions.json"
        versions: dict[str, int] = {}
        if versions_path.exists():
            try:
                loaded = json.loads(self._read(versions_path))
                versions = {k: int(loaded[k]) for k in ("targets", "releases")}
            except (ValueError, KeyError, TypeError) as exc:
                raise StateError(f"{versions_path} is corrupt: {exc}") from exc
        return TrustState(root, versions.get("targets", 0), versions.get("releases", 0))

    def record(self, verified: VerifiedBundle) -> None:
        """Persist the roots and metadata versions a verified bundle brought."""
        self._dir.mkdir(parents=True, exist_ok=True)
        for data in verified.new_roots:
            version = json.loads(data)["signed"]["version"]
            atomic_write(self._dir / f"{version}.root.json", data)
        if verified.new_roots or not (self._dir / "root.json").exists():
            atomic_write(self._dir / "root.json", verified.trust.root)
        versions = {
            "targets": verified.trust.targets_version,
            "releases": verified.trust.releases_version,
        }
        atomic_write(self._dir / "versions.json", json.dumps(versions).encode())

    def record_online(self, root: bytes, targets_version: int, releases_version: int) -> None:
        """Persist what the online channel verified, with the release it installed."""
        self._dir.mkdir(parents=True, exist_ok=True)
        current = self.load()
        if root != current.root:
            version = json.loads(root)["signed"]["version"]
            atomic_write(self._dir / f"{version}.root.json", root)
            atomic_write(self._dir / "root.json", root)
        versions = {
            "targets": max(targets_version, current.targets_version),
            "releases": max(releases_version, current.releases_version),
        }
        atomic_write(self._dir / "versions.json", json.dumps(versions).encode())

    def _read(self, path: Path) -> bytes:
        try:
            return read_capped(path, MAX_METADATA_BYTES)
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc}") from exc
