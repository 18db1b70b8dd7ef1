"""The release repository's signed metadata on disk: its layout, its lock, and signing each role.

Layout and formats are ``docs/design/release-format.md``. Metadata is built, signed and
serialized with python-tuf's Metadata API only; keys are ``sysupd.release.keys``.

Invariants:

- Roles ``root``, ``targets``, ``snapshot``, ``timestamp``, one ed25519 key and threshold 1 each;
  ``targets`` delegates ``releases/*`` (terminating) to ``releases``, which lists every target.
  ``consistent_snapshot`` is on: metadata is ``N.<role>.json`` (and ``timestamp.json``); old
  versions are never rewritten or deleted.
- The repository's current state is what ``timestamp.json`` reaches (timestamp → snapshot →
  targets and releases) plus the newest of the consecutive ``N.root.json``. Every change writes
  new versioned files first and ``timestamp.json`` last, each atomically, so an interrupted
  command leaves the previous state in force; a change that fails half-way is forgotten by
  re-reading that state.
- Every signed change bumps the role's version and renews its expiry (``EXPIRY``); every change
  ends with a new snapshot and timestamp (``commit_snapshot_and_timestamp``).
- A signer is used only if its key is the one the metadata names for its role.
- Mutating commands hold an exclusive lock on ``DIR/.lock`` and re-read the state under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from sysupd.errors import ConfigError, StateError, SysupdError
from sysupd.release import keys
from sysupd.system.clock import Clock

__all__ = [
    "EXPIRY",
    "RELEASES",
    "RENEW_BEFORE",
    "RepositoryMetadata",
    "check_product",
    "read_product",
    "verifies",
]

EXPIRY: Mapping[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=365),
    "releases": timedelta(days=365),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
RENEW_BEFORE = timedelta(days=30)
"""``add`` and ``publish`` re-sign root, targets and releases (keys permitting) this near expiry."""

RELEASES = "releases"
"""The delegated role that lists every release, and the target directory it owns."""

_PRODUCT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_SERIALIZER = JSONSerializer(compact=False)
_NOTES_FILE = "repo.json"

_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


def check_product(product: object) -> str:
    """``product`` if it is a valid product name.

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(product, str) or not _PRODUCT_RE.fullmatch(product):
        raise ConfigError(
            f"invalid product name {product!r}: use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return product


def read_product(repo_dir: Path) -> str:
    """The product the repository in ``repo_dir`` is for, from the tool's notes.

    Raises:
        ConfigError: ``repo_dir`` is not a release repository.
        StateError: its notes are unreadable or name no valid product.
    """
    notes_file = repo_dir / _NOTES_FILE
    try:
        notes = json.loads(notes_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{repo_dir} is not a release repository (no {_NOTES_FILE}); "
            "create one with 'sysupd release init'"
        ) from exc
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {notes_file}: {exc}") from exc
    product = notes.get("product") if isinstance(notes, dict) else None
    if not isinstance(product, str) or not _PRODUCT_RE.fullmatch(product):
        raise StateError(f"{notes_file} names no valid product")
    return product


def verifies(delegator: Root | Targets, role: str, md: Metadata[Any]) -> bool:
    """Whether ``md`` carries the signatures ``delegator`` requires of ``role``."""
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError:
        return False
    return True


class RepositoryMetadata:
    """The five roles' current metadata of the repository in ``repo_dir``, and their signers.

    ``create`` or ``load`` fills the roles; the other methods need one of them first.
    """

    root: Metadata[Root]
    targets: Metadata[Targets]
    releases: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]

    def __init__(self, repo_dir: Path, clock: Clock) -> None:
        self.dir = repo_dir
        self.keys_dir = repo_dir / "keys"
        self.metadata_dir = repo_dir / "metadata"
        self._clock = clock
        self.signers: dict[str, CryptoSigner] = {}

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        return self._clock.utcnow().astimezone(UTC)

    def versions(self) -> dict[str, int]:
        """The current version of each role's metadata."""
        return {
            "root": self.root.signed.version,
            "targets": self.targets.signed.version,
            RELEASES: self.releases.signed.version,
            "snapshot": self.snapshot.signed.version,
            "timestamp": self.timestamp.signed.version,
        }

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's lock; a block that fails re-reads the state on disk.

        Raises:
            ConfigError: another command holds the lock.
            StateError: the lock file cannot be opened.
        """
        try:
            handle = (self.dir / ".lock").open("a+b")
        except OSError as exc:
            raise StateError(f"cannot open the lock file in {self.dir}: {exc}") from exc
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConfigError(
                    f"another 'sysupd release' command is working on {self.dir}"
                ) from exc
            completed = False
            try:
                yield
                completed = True
            finally:
                if not completed:
                    # Forget half-made changes: the files on disk are the state.
                    with contextlib.suppress(SysupdError):
                        self.load()

    def create(self, signers: Mapping[str, CryptoSigner]) -> None:
        """Write version 1 of every role, naming and signed by ``signers`` (one per role)."""
        self.signers.update(signers)
        now = self.now()
        root = Metadata(Root(expires=now + EXPIRY["root"], consistent_snapshot=True))
        for role in ("root", "targets", "snapshot", "timestamp"):
            root.signed.add_key(signers[role].public_key, role)
        releases_key = signers[RELEASES].public_key
        delegation = DelegatedRole(
            name=RELEASES,
            keyids=[releases_key.keyid],
            threshold=1,
            terminating=True,
            paths=[f"{RELEASES}/*"],
        )
        targets = Metadata(
            Targets(
                expires=now + EXPIRY["targets"],
                delegations=Delegations(
                    keys={releases_key.keyid: releases_key}, roles={RELEASES: delegation}
                ),
            )
        )
        releases = Metadata(Targets(expires=now + EXPIRY[RELEASES]))
        self.root, self.targets, self.releases = root, targets, releases
        self.snapshot = Metadata(Snapshot(expires=now + EXPIRY["snapshot"]))
        self.timestamp = Metadata(Timestamp(expires=now + EXPIRY["timestamp"]))
        self.commit("root", root, bump=False)
        self.commit("targets", targets, bump=False)
        self.commit(RELEASES, releases, bump=False)
        self.commit_snapshot_and_timestamp(bump=False)

    def load(self) -> None:
        """Read the current state from disk (and forget the signers checked so far).

        Raises:
            StateError: a file is missing or is not the metadata it should be.
        """
        self.signers.clear()
        newest = 0
        while (self.metadata_dir / f"{newest + 1}.root.json").is_file():
            newest += 1
        if newest == 0:
            raise StateError(f"{self.metadata_dir} holds no 1.root.json")
        self.root = self._read(f"{newest}.root.json", Root)
        self.timestamp = self._read("timestamp.json", Timestamp)
        snapshot_version = self.timestamp.signed.snapshot_meta.version
        self.snapshot = self._read(f"{snapshot_version}.snapshot.json", Snapshot)
        versions = {}
        for role in ("targets", RELEASES):
            meta = self.snapshot.signed.meta.get(f"{role}.json")
            if meta is None:
                raise StateError(f"snapshot version {snapshot_version} does not list {role}")
            versions[role] = meta.version
        self.targets = self._read(f"{versions['targets']}.targets.json", Targets)
        self.releases = self._read(f"{versions[RELEASES]}.releases.json", Targets)

    def read_bytes(self, name: str) -> bytes:
        """The metadata file ``name`` as stored.

        Raises:
            StateError: it cannot be read.
        """
        path = self.metadata_dir / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc

    def read_text(self, name: str) -> str:
        """The metadata file ``name`` as text.

        Raises:
            StateError: it cannot be read or is not UTF-8.
        """
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateError(f"{self.metadata_dir / name} is not UTF-8") from exc

    def _read(self, name: str, kind: type[_S]) -> Metadata[_S]:
        try:
            md: Metadata[_S] = Metadata.from_bytes(self.read_bytes(name))
        except DeserializationError as exc:
            raise StateError(f"{self.metadata_dir / name} is not valid metadata: {exc}") from exc
        if not isinstance(md.signed, kind):
            raise StateError(f"{self.metadata_dir / name} is not {kind.type} metadata")
        return md

    def keyids(self, role: str) -> list[str]:
        """The key ids the metadata names for ``role``."""
        if role == RELEASES:
            return list(self.targets.signed.get_delegated_role(RELEASES).keyids)
        return list(self.root.signed.roles[role].keyids)

    def signer(self, role: str) -> CryptoSigner:
        """The signer for ``role``, checked against the key the metadata names.

        Raises:
            ConfigError: the key is missing, or is not the one the metadata names.
        """
        cached = self.signers.get(role)
        if cached is not None:
            return cached
        path = keys.key_file(self.keys_dir, role)
        expected = self.keyids(role)
        signer = keys.load_signer(path) if path.exists() else None
        if signer is None or signer.public_key.keyid not in expected:
            pending = keys.pending_key_file(self.keys_dir, role)
            if pending.exists() and keys.load_signer(pending).public_key.keyid in expected:
                # A rotate-key stopped after writing the metadata that names the new key.
                keys.promote_pending_key(self.keys_dir, role)
                signer = keys.load_signer(path)
        if signer is None:
            raise ConfigError(
                f"the {role} key {path} is missing; it is needed to sign {role} metadata "
                "(see docs/release-keys.md)"
            )
        if signer.public_key.keyid not in expected:
            raise ConfigError(f"{path} is not the {role} key that the metadata names")
        self.signers[role] = signer
        return signer

    def commit(
        self,
        role: str,
        md: Metadata[Any],
        *,
        bump: bool = True,
        signers: Sequence[CryptoSigner] = (),
    ) -> bytes:
        """Bump, renew, sign (by ``signers``, or the role's own key) and write ``md``; return
        the bytes written.

        Raises:
            ConfigError: the role's key is needed and missing.
            StateError: the file could not be written.
        """
        if bump:
            md.signed.version += 1
        md.signed.expires = self.now() + EXPIRY[role]
        for index, signer in enumerate(signers or [self.signer(role)]):
            md.sign(signer, append=index > 0)
        data = md.to_bytes(_SERIALIZER)
        if role == "timestamp":
            keys.write_file_atomically(self.metadata_dir / "timestamp.json", data)
        else:
            keys.write_file_atomically(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        if role == "root":
            keys.write_file_atomically(self.metadata_dir / "root.json", data)
        return data

    def commit_snapshot_and_timestamp(self, *, bump: bool = True) -> None:
        """Sign and write a snapshot of the current targets and releases, then its timestamp.

        Raises:
            ConfigError: the snapshot or timestamp key is missing.
            StateError: a file could not be written.
        """
        meta = self.snapshot.signed.meta
        meta.clear()
        # Length and hash too, not only the version: then a thief of the releases key alone
        # cannot sign another releases of the current version (docs/design/trust.md).
        for role, signed in (("targets", self.targets), (RELEASES, self.releases)):
            version = signed.signed.version
            data = self.read_bytes(f"{version}.{role}.json")
            meta[f"{role}.json"] = MetaFile.from_data(version, data, ["sha256"])
        data = self.commit("snapshot", self.snapshot, bump=bump)
        self.timestamp.signed.snapshot_meta = MetaFile.from_data(
            self.snapshot.signed.version, data, ["sha256"]
        )
        self.commit("timestamp", self.timestamp, bump=bump)

    def renew_expiring(self, skip: Sequence[str] = ()) -> None:
        """Re-sign root, targets and releases if they expire soon and their key is here.

        Raises:
            ConfigError: a key that is here is not the one the metadata names.
            StateError: a file could not be written.
        """
        horizon = self.now() + RENEW_BEFORE
        for role, md in (
            ("root", self.root),
            ("targets", self.targets),
            (RELEASES, self.releases),
        ):
            if role in skip or md.signed.expires > horizon:
                continue
            if keys.key_file(self.keys_dir, role).exists():
                self.commit(role, md)

    def write_notes(self, product: str) -> None:
        """Write the tool's notes (``repo.json``): the product and each role's key id.

        Raises:
            StateError: the file could not be written.
        """
        notes = {
            "product": product,
            "keyids": {role: self.keyids(role)[0] for role in keys.ROLE_NAMES},
        }
        data = json.dumps(notes, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        keys.write_file_atomically(self.dir / _NOTES_FILE, data)
