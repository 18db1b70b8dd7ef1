"""The device's persisted trust: the newest verified root and the metadata versions it has seen.

Kept in ``<state_dir>/trust/``: ``root.json`` (newest verified root), ``N.root.json`` (each root
as it was accepted), ``versions.json``, and ``timestamp.json``, ``snapshot.json``,
``targets.json`` and ``releases.json``: the newest verified metadata an installed release came
with (from a bundle or the update server), against which an older bundle of a release still
listed there verifies. The first start copies the file named by the
``trust_root`` setting into ``root.json``; from then on the device's trust changes only by signed
root rotation, never by editing that setting.

A release's trust is *staged* (``pending.json``) before the boot switch and *committed* after it;
a start that finds the switch done commits a staged trust that a crash left behind, and one that
finds it not done discards it. So the trust always goes with the slot that boots, and every file
is replaced atomically, roots before versions, so an interruption never leaves a mix that would
refuse good releases.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sysupd.core.bundletrust import VerifiedBundle
from sysupd.core.trustchain import ROLES, TrustState, metadata_version
from sysupd.errors import ConfigError, StateError
from sysupd.fsutil import atomic_write, read_capped
from sysupd.sources.base import SignedRelease

__all__ = ["MAX_METADATA_BYTES", "TrustStore", "TrustUpdate"]

MAX_METADATA_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TrustUpdate:
    """What a release brings to the device's trust, to keep once the release is installed."""

    new_roots: tuple[bytes, ...]
    """Verified roots newer than the trusted one, oldest first."""
    root: bytes
    """The newest verified root."""
    seen: Mapping[str, int]
    """The version of each role in ``ROLES`` the release came with."""
    kept: Mapping[str, bytes]
    """The verified metadata of each role to keep (a role absent: its kept copy is dropped)."""


class TrustStore:
    """Reads and records what the device trusts."""

    def __init__(self, directory: Path, trust_root: str) -> None:
        self._dir = directory
        self._trust_root = trust_root

    @property
    def _pending(self) -> Path:
        return self._dir / "pending.json"

    def adopt(self) -> str | None:
        """Make the configured ``trust_root`` the device's own, once; returns a warning when the
        setting names another root than the one the device adopted.

        Raises:
            StateError: the trust directory cannot be written.
        """
        if not self._trust_root:
            return None
        try:
            configured = read_capped(Path(self._trust_root), MAX_METADATA_BYTES)
        except OSError:
            return None  # said when the trust is needed: see ``load``
        digest = hashlib.sha256(configured).hexdigest()
        adopted = self._dir / "adopted.sha256"
        try:
            if not (self._dir / "root.json").exists():
                self._dir.mkdir(parents=True, exist_ok=True)
                atomic_write(self._dir / "root.json", configured)
                atomic_write(adopted, digest.encode())
                return None
            if adopted.exists() and adopted.read_text().strip() != digest:
                return (
                    f"trust_root {self._trust_root} is not the root this device adopted; it is "
                    "ignored: the device's trust changes only by signed root rotation"
                )
        except OSError as exc:
            raise StateError(f"cannot record the trust root in {self._dir}: {exc}") from exc
        return None

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
                # a store written before timestamp and snapshot were kept lacks them: 0
                versions = {k: int(loaded[k]) for k in ROLES if k in loaded}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StateError(f"{versions_path} is corrupt: {exc}") from exc
        kept = {}
        for role in ROLES:
            path = self._dir / f"{role}.json"
            if path.exists():
                data = self._read(path)
                # Only the copy versions.json names: an older sysupd (the other slot) kept no
                # timestamp or snapshot and leaves a stale one behind when it commits.
                if metadata_version(data) == versions.get(role):
                    kept[role] = data
        return TrustState(root, versions, kept)

    @staticmethod
    def update_for(verified: VerifiedBundle) -> TrustUpdate:
        """The trust an offline bundle brings."""
        trust = verified.trust
        return TrustUpdate(verified.new_roots, trust.root, trust.seen, trust.kept)

    def update_online(self, signed: SignedRelease) -> TrustUpdate:
        """The trust the online channel verified: its newest root, and its versions and
        metadata to keep (its seen-version check refused anything below the binding floors)."""
        current = self.load()
        return TrustUpdate(
            () if signed.root == current.root else (signed.root,),
            signed.root,
            {role: metadata_version(data) or 0 for role, data in signed.metadata.items()},
            signed.metadata,
        )

    def stage(self, update: TrustUpdate, slot: str) -> None:
        """Keep ``update`` aside until the switch to ``slot`` it goes with is done."""
        record = {
            "slot": slot,
            "new_roots": [base64.b64encode(r).decode("ascii") for r in update.new_roots],
            "root": base64.b64encode(update.root).decode("ascii"),
            "versions": dict(update.seen),
            # as an older sysupd (the slot this may boot back into) reads a staged trust
            "targets": update.seen.get("targets", 0),
            "releases": update.seen.get("releases", 0),
            "metadata": {
                role: base64.b64encode(data).decode("ascii") for role, data in update.kept.items()
            },
        }
        self._dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._pending, json.dumps(record).encode())

    def commit_pending(self) -> bool:
        """Keep the staged trust, if any; safe to repeat after a crash. True if there was one.

        Raises:
            StateError: the staged record is unreadable.
        """
        if not self._pending.exists():
            return False
        try:
            record = json.loads(self._read(self._pending))
            metadata = {k: base64.b64decode(v) for k, v in record.get("metadata", {}).items()}
            # staged by an older sysupd (the one that installed this slot): two version numbers
            versions = record.get("versions") or {k: record[k] for k in ("targets", "releases")}
            update = TrustUpdate(
                tuple(base64.b64decode(r) for r in record["new_roots"]),
                base64.b64decode(record["root"]),
                {k: int(v) for k, v in versions.items() if k in ROLES},
                {k: v for k, v in metadata.items() if k in ROLES},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{self._pending} is corrupt: {exc}") from exc
        self._commit(update)
        self._pending.unlink()
        return True

    def discard_pending(self) -> None:
        """Forget a staged trust whose switch never happened."""
        self._pending.unlink(missing_ok=True)

    def settle_pending(self, next_slot: str, next_ok: bool) -> None:
        """At a start: keep a staged trust whose slot boots next, forget one whose does not —
        whatever the job record says (a commit may have failed after the switch).

        Raises:
            StateError: the staged record is unreadable.
        """
        if not self._pending.exists():
            return
        try:
            slot = json.loads(self._read(self._pending)).get("slot")
        except (ValueError, AttributeError) as exc:
            raise StateError(f"{self._pending} is corrupt: {exc}") from exc
        if slot == next_slot and next_ok:
            self.commit_pending()
        else:
            self.discard_pending()

    def keep_roots(self, roots: tuple[bytes, ...]) -> None:
        """Trust ``roots`` (verified, newer than the trusted one, oldest first) from now on,
        whatever becomes of the bundle that brought them.

        Raises:
            StateError: the trust directory cannot be written.
        """
        if not roots:
            return
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._write_roots(roots, roots[-1])
        except OSError as exc:
            raise StateError(f"cannot keep the verified roots in {self._dir}: {exc}") from exc

    def _write_roots(self, roots: tuple[bytes, ...], newest: bytes) -> None:
        """Keep ``roots`` and make ``newest`` the trusted root — never going back: a staged
        trust older than roots kept since (by a refused bundle) leaves the newer root."""
        for data in roots:
            path = self._dir / f"{_root_version(data)}.root.json"
            if not path.exists():
                atomic_write(path, data)
        current = self._dir / "root.json"
        if not current.exists() or _root_version(newest) > _root_version(self._read(current)):
            atomic_write(current, newest)

    def _commit(self, update: TrustUpdate) -> None:
        self._write_roots(update.new_roots, update.root)
        for role in ROLES:
            metadata = update.kept.get(role)
            if metadata is not None:
                atomic_write(self._dir / f"{role}.json", metadata)
            else:  # newer versions came without their metadata: the kept copy no longer speaks
                (self._dir / f"{role}.json").unlink(missing_ok=True)
        versions = {role: update.seen.get(role, 0) for role in ROLES}
        atomic_write(self._dir / "versions.json", json.dumps(versions).encode())

    def _read(self, path: Path) -> bytes:
        try:
            return read_capped(path, MAX_METADATA_BYTES)
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc}") from exc


def _root_version(data: bytes) -> int:
    return metadata_version(data) or 0  # roots here were verified: they have one
