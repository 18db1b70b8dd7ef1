"""The release repository: a TUF repository of signed releases, and offline bundles cut from it.

Layout and formats are ``docs/design/release-format.md``; the trust model is
``shared/contract/UPDATES.md``. Metadata is built, signed and serialized with python-tuf's
Metadata API only; keys are ``sysupd.release.keys``; payloads are made by
``sysupd.release.payloads``.

Invariants:

- Roles ``root``, ``targets``, ``snapshot``, ``timestamp``, one ed25519 key and threshold 1 each;
  ``targets`` delegates ``releases/*`` (terminating) to ``releases``, which lists every target.
  ``consistent_snapshot`` is on: metadata is ``N.<role>.json`` (and ``timestamp.json``), target
  files are ``targets/releases/<sha256>.<name>``; old versions are never rewritten or deleted.
- The repository's current state is what ``timestamp.json`` reaches (timestamp → snapshot →
  targets and releases) plus the newest of the consecutive ``N.root.json``. Every change writes
  new versioned files first and ``timestamp.json`` last, each atomically, so an interrupted
  command leaves the previous state in force.
- Every signed change bumps the role's version and renews its expiry (``EXPIRY``); every change
  ends with a new snapshot and timestamp. A root rotation is signed by the old and the new root
  key; a new key for another top-level role is named by a new root signed by the root key; a new
  ``releases`` key by a new ``targets`` version signed by the targets key. Replaced keys are
  removed from the metadata.
- Mutating commands hold an exclusive lock on ``DIR/.lock`` and re-read the state under it.
- Payloads are streamed to disk while hashed; a bundle is streamed from the stored payload,
  whose bytes are checked against the signed hash before the bundle replaces ``output``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from sysupd.core.bundle_format import BundleHeader, encode_bundle_header
from sysupd.core.versions import Version, parse_version
from sysupd.errors import ConfigError, StateError, SysupdError
from sysupd.release import keys
from sysupd.release.payloads import COPY_BLOCK_BYTES, PayloadDigest, copy_image, pack_tree
from sysupd.system.clock import Clock, SystemClock

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EXPIRY",
    "MAX_CHUNK_SIZE",
    "RENEW_BEFORE",
    "ReleaseInfo",
    "ReleaseRepository",
]

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
EXPIRY: Mapping[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=365),
    "releases": timedelta(days=365),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
RENEW_BEFORE = timedelta(days=30)
"""``add`` and ``publish`` re-sign root, targets and releases (keys permitting) this near expiry."""

_RELEASES = "releases"
_PRODUCT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_SERIALIZER = JSONSerializer(compact=False)
MAX_CHUNK_SIZE = 64 * 1024 * 1024  # devices buffer one chunk to check it before use
_NOTES_FILE = "repo.json"

_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


@dataclass(frozen=True)
class ReleaseInfo:
    """One release as signed in the ``releases`` role."""

    version: str
    target: str
    length: int
    sha256: str
    payload: str
    compression: str
    installed_size: int
    chunk_size: int
    chunks: str
    notes: str | None
    entries: int | None = None
    """A tree's members (regular files and directories); ``None`` for an image, or for a tree
    added by a release tool older than the field (devices refuse such a release)."""


class ReleaseRepository:
    """A release repository on disk; create with ``init`` or load with ``open``."""

    def __init__(self, repo_dir: Path, product: str, clock: Clock | None = None) -> None:
        self._dir = repo_dir
        self._product = product
        self._clock: Clock = clock or SystemClock()
        self._signers: dict[str, CryptoSigner] = {}
        self._root: Metadata[Root]
        self._targets: Metadata[Targets]
        self._releases: Metadata[Targets]
        self._snapshot: Metadata[Snapshot]
        self._timestamp: Metadata[Timestamp]

    # ----------------------------------------------------------------- creating and opening

    @classmethod
    def init(cls, repo_dir: Path, product: str, *, clock: Clock | None = None) -> ReleaseRepository:
        """Create a repository for ``product`` in the empty or absent ``repo_dir``.

        Raises:
            ConfigError: ``product`` is not a valid name, or ``repo_dir`` is not empty.
            StateError: the files could not be written.
        """
        if not isinstance(product, str) or not _PRODUCT_RE.fullmatch(product):
            raise ConfigError(
                f"invalid product name {product!r}: use letters, digits, '.', '_' and '-' "
                "(at most 64, starting with a letter or digit)"
            )
        if repo_dir.exists() and (not repo_dir.is_dir() or any(repo_dir.iterdir())):
            raise ConfigError(f"{repo_dir} already exists and is not an empty directory")
        repo = cls(repo_dir, product, clock)
        try:
            repo_dir.mkdir(parents=True, exist_ok=True)
            repo._keys_dir.mkdir(mode=0o700)
            repo._metadata_dir.mkdir()
            (repo_dir / "targets" / _RELEASES).mkdir(parents=True)
        except OSError as exc:
            raise StateError(f"cannot create the repository in {repo_dir}: {exc}") from exc
        with repo._locked():
            for role in keys.ROLE_NAMES:
                signer = keys.generate_signer()
                keys.save_signer(keys.key_file(repo._keys_dir, role), signer)
                repo._signers[role] = signer
            repo._create_metadata()
            repo._write_notes()  # last: a repository without repo.json is incomplete
        return repo

    @classmethod
    def open(cls, repo_dir: Path, *, clock: Clock | None = None) -> ReleaseRepository:
        """Load the repository in ``repo_dir``.

        Raises:
            ConfigError: ``repo_dir`` is not a release repository.
            StateError: its metadata is missing or unreadable.
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
        repo = cls(repo_dir, product, clock)
        repo._load()
        return repo

    # ----------------------------------------------------------------------------- reading

    @property
    def path(self) -> Path:
        """The repository directory."""
        return self._dir

    @property
    def product(self) -> str:
        """The product every release of this repository is for."""
        return self._product

    def metadata_versions(self) -> dict[str, int]:
        """The current version of each role's metadata."""
        return {
            "root": self._root.signed.version,
            "targets": self._targets.signed.version,
            _RELEASES: self._releases.signed.version,
            "snapshot": self._snapshot.signed.version,
            "timestamp": self._timestamp.signed.version,
        }

    def releases(self) -> list[ReleaseInfo]:
        """Every release, oldest version first.

        Raises:
            StateError: a release's signed entry is malformed.
        """
        found = [
            info
            for path, target in self._releases.signed.targets.items()
            if (info := _release_info(path, target)) is not None
        ]
        return sorted(found, key=lambda info: parse_version(info.version))

    def release(self, version: str) -> ReleaseInfo:
        """The release ``version``.

        Raises:
            ConfigError: ``version`` is not valid or not released.
        """
        wanted = _parse_version(version)
        for info in self.releases():
            if parse_version(info.version) == wanted:
                return info
        raise ConfigError(f"no release {version} in {self._dir}")

    # ---------------------------------------------------------------------------- changing

    def add_release(
        self,
        version: str,
        *,
        tree: Path | None = None,
        image: Path | None = None,
        compress: str = "none",
        notes: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> ReleaseInfo:
        """Add ``version`` from a file tree (a tar payload) or an image (a raw payload).

        Writes the payload and its chunk list as target files, lists both in ``releases``, then
        re-signs releases (and root or targets if close to expiry), snapshot and timestamp.

        Raises:
            ConfigError: invalid version, already released, neither or both sources, a tree that
                is not a directory or holds anything but regular files and directories, an image
                that is not a non-empty file, compression other than ``none``/``zstd`` or for an
                image, a chunk size out of range, or a signing key that is missing.
            StateError: the repository could not be read or written.
        """
        parsed = _parse_version(version)
        if compress not in ("none", "zstd"):
            raise ConfigError(f"unknown compression {compress!r}: use none or zstd")
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk size {chunk_size} is not between 1 and {MAX_CHUNK_SIZE}")
        if notes is not None and not isinstance(notes, str):
            raise ConfigError("release notes must be text")
        produce: Callable[[BinaryIO], PayloadDigest]
        if tree is not None and image is None:
            if not tree.is_dir():
                raise ConfigError(f"the tree {tree} is not a directory")
            kind, extension = "tree", "tar.zst" if compress == "zstd" else "tar"
            produce = functools.partial(
                pack_tree, tree, compress=compress == "zstd", chunk_size=chunk_size
            )
        elif image is not None and tree is None:
            if compress != "none":
                raise ConfigError(
                    "compression applies to tree payloads only; images are stored as is"
                )
            if not image.is_file() or image.stat().st_size == 0:
                raise ConfigError(f"the image {image} is not a non-empty regular file")
            kind, extension = "raw", "img"
            produce = functools.partial(copy_image, image, chunk_size=chunk_size)
        else:
            raise ConfigError("give exactly one of a tree (--tree) or an image (--image)")

        with self._locked():
            self._load()
            if any(parse_version(info.version) == parsed for info in self.releases()):
                raise ConfigError(f"version {parsed} is already released in {self._dir}")
            for needed in (_RELEASES, "snapshot", "timestamp"):
                self._signer(needed)  # a missing key fails now, not after packing
            name = f"{self._product}-{parsed}.{extension}"
            digest = self._store_payload(name, produce)
            chunks = TargetFile.from_data(
                f"{_RELEASES}/{name}.chunks", digest.chunk_digests, ["sha256"]
            )
            self._store_target_bytes(chunks, digest.chunk_digests)
            custom: dict[str, Any] = {
                "product": self._product,
                "version": str(parsed),
                "payload": kind,
                "compression": compress,
                "installed_size": digest.installed_size,
                **({"entries": digest.entries} if kind == "tree" else {}),
                "chunk_size": chunk_size,
                "chunks": chunks.path,
            }
            if notes is not None:
                custom["notes"] = notes
            payload = TargetFile(
                digest.length,
                {"sha256": digest.sha256},
                f"{_RELEASES}/{name}",
                {"custom": {"sysupd": custom}},
            )
            self._releases.signed.targets[payload.path] = payload
            self._releases.signed.targets[chunks.path] = chunks
            self._commit(_RELEASES, self._releases)
            self._renew_expiring(skip=(_RELEASES,))
            self._commit_snapshot_and_timestamp()
        return ReleaseInfo(
            version=str(parsed),
            target=payload.path,
            length=digest.length,
            sha256=digest.sha256,
            payload=kind,
            compression=compress,
            installed_size=digest.installed_size,
            chunk_size=chunk_size,
            chunks=chunks.path,
            notes=notes,
            entries=custom.get("entries"),
        )

    def publish(self) -> dict[str, int]:
        """Re-sign snapshot and timestamp with fresh versions and expiry; return all versions.

        Also re-signs targets or releases if their signatures no longer match their delegator
        (a ``rotate_key`` cut short), root, targets and releases if within ``RENEW_BEFORE`` of
        expiry and their key is at hand, and rewrites ``metadata/root.json`` if stale.

        Raises:
            ConfigError: a signing key that is needed is missing.
            StateError: the repository could not be read or written.
        """
        with self._locked():
            self._load()
            if not _verifies(self._root.signed, "targets", self._targets):
                self._commit("targets", self._targets)
            if not _verifies(self._targets.signed, _RELEASES, self._releases):
                self._commit(_RELEASES, self._releases)
            self._renew_expiring()
            newest = self._read_bytes(f"{self._root.signed.version}.root.json")
            try:
                current = self._read_bytes("root.json")
            except StateError:
                current = b""
            if current != newest:
                keys.write_file_atomically(self._metadata_dir / "root.json", newest)
            self._commit_snapshot_and_timestamp()
            return self.metadata_versions()

    def rotate_key(self, role: str) -> str:
        """Give ``role`` a new key and return its key id; the old key leaves the metadata.

        ``root``: root N+1 signed by the old and the new root key. ``targets``, ``snapshot``,
        ``timestamp``: root N+1 signed by the root key, then that role re-signed with its new
        key. ``releases``: targets N+1 (signed by the targets key) delegating to the new key,
        then releases re-signed. Snapshot and timestamp follow in every case.

        Raises:
            ConfigError: unknown role, or a signing key that is needed is missing.
            StateError: the repository could not be read or written.
        """
        pending = keys.pending_key_file(self._keys_dir, role)
        delegator = "targets" if role == _RELEASES else "root"
        with self._locked():
            self._load()
            # Fail before changing anything if a key is missing. The role's own old key is not
            # needed (a lost key can be replaced), except root's: the old root signs the new.
            for needed in sorted(({"snapshot", "timestamp"} - {role}) | {delegator}):
                self._signer(needed)
            new = keys.generate_signer()
            keys.save_signer(pending, new)
            if role == _RELEASES:
                for keyid in list(self._keyids(_RELEASES)):
                    self._targets.signed.revoke_key(keyid, _RELEASES)
                self._targets.signed.add_key(new.public_key, _RELEASES)
                self._commit("targets", self._targets)
            else:
                root_signer = self._signer("root")
                root = self._root.signed
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(new.public_key, role)
                signers = [root_signer, new] if role == "root" else [root_signer]
                self._commit("root", self._root, signers=signers)
            keys.promote_pending_key(self._keys_dir, role)
            self._signers[role] = new
            if role in ("targets", _RELEASES):
                self._commit(role, self._targets if role == "targets" else self._releases)
            self._commit_snapshot_and_timestamp()
            self._write_notes()
        return new.public_key.keyid

    def write_bundle(self, version: str, output: Path) -> int:
        """Write the offline bundle of ``version`` to ``output``; return its size in bytes.

        The payload is streamed from the repository, and checked against its signed length and
        SHA-256 on the way; ``output`` is replaced only by a complete, matching bundle.

        Raises:
            ConfigError: unknown version, ``output`` not writable, or metadata a device would
                refuse as expired.
            StateError: the repository's files are missing or do not match their metadata.
        """
        if output.is_dir():
            raise ConfigError(f"the bundle output {output} is a directory")
        if not output.parent.is_dir():
            raise ConfigError(f"the directory of the bundle output {output} does not exist")
        with self._locked():
            self._load()
            info = self.release(version)
            now = self._now()
            for role, md in (
                ("root", self._root),
                ("targets", self._targets),
                (_RELEASES, self._releases),
            ):
                if md.signed.is_expired(now):
                    raise ConfigError(
                        f"{role} metadata expired at {md.signed.expires.isoformat()}; a device "
                        "would refuse the bundle (see docs/release-keys.md on renewing it)"
                    )
            chunks = self._releases.signed.targets.get(info.chunks)
            payload = self._releases.signed.targets[info.target]
            if chunks is None:
                raise StateError(f"the chunk list {info.chunks} is not in the releases metadata")
            header = BundleHeader(
                target=info.target,
                roots=tuple(
                    self._read_text(f"{n}.root.json")
                    for n in range(1, self._root.signed.version + 1)
                ),
                targets=self._read_text(f"{self._targets.signed.version}.targets.json"),
                releases=self._read_text(f"{self._releases.signed.version}.releases.json"),
                chunks=self._read_target(chunks),
            )
            try:
                prefix = encode_bundle_header(header)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            self._stream_bundle(prefix, payload, output)
        return len(prefix) + payload.length

    # ----------------------------------------------------------------------------- helpers

    @property
    def _keys_dir(self) -> Path:
        return self._dir / "keys"

    @property
    def _metadata_dir(self) -> Path:
        return self._dir / "metadata"

    def _now(self) -> datetime:
        return self._clock.utcnow().astimezone(UTC)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            handle = (self._dir / ".lock").open("a+b")
        except OSError as exc:
            raise StateError(f"cannot open the lock file in {self._dir}: {exc}") from exc
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConfigError(
                    f"another 'sysupd release' command is working on {self._dir}"
                ) from exc
            completed = False
            try:
                yield
                completed = True
            finally:
                if not completed:
                    # Forget half-made changes: the files on disk are the state.
                    with contextlib.suppress(SysupdError):
                        self._load()

    def _create_metadata(self) -> None:
        now = self._now()
        root = Metadata(Root(expires=now + EXPIRY["root"], consistent_snapshot=True))
        for role in ("root", "targets", "snapshot", "timestamp"):
            root.signed.add_key(self._signers[role].public_key, role)
        releases_key = self._signers[_RELEASES].public_key
        delegation = DelegatedRole(
            name=_RELEASES,
            keyids=[releases_key.keyid],
            threshold=1,
            terminating=True,
            paths=[f"{_RELEASES}/*"],
        )
        targets = Metadata(
            Targets(
                expires=now + EXPIRY["targets"],
                delegations=Delegations(
                    keys={releases_key.keyid: releases_key}, roles={_RELEASES: delegation}
                ),
            )
        )
        releases = Metadata(Targets(expires=now + EXPIRY[_RELEASES]))
        self._root, self._targets, self._releases = root, targets, releases
        self._snapshot = Metadata(Snapshot(expires=now + EXPIRY["snapshot"]))
        self._timestamp = Metadata(Timestamp(expires=now + EXPIRY["timestamp"]))
        self._commit("root", root, bump=False)
        self._commit("targets", targets, bump=False)
        self._commit(_RELEASES, releases, bump=False)
        self._commit_snapshot_and_timestamp(bump=False)

    def _load(self) -> None:
        self._signers.clear()
        newest = 0
        while (self._metadata_dir / f"{newest + 1}.root.json").is_file():
            newest += 1
        if newest == 0:
            raise StateError(f"{self._metadata_dir} holds no 1.root.json")
        self._root = self._read(f"{newest}.root.json", Root)
        self._timestamp = self._read("timestamp.json", Timestamp)
        snapshot_version = self._timestamp.signed.snapshot_meta.version
        self._snapshot = self._read(f"{snapshot_version}.snapshot.json", Snapshot)
        versions = {}
        for role in ("targets", _RELEASES):
            meta = self._snapshot.signed.meta.get(f"{role}.json")
            if meta is None:
                raise StateError(f"snapshot version {snapshot_version} does not list {role}")
            versions[role] = meta.version
        self._targets = self._read(f"{versions['targets']}.targets.json", Targets)
        self._releases = self._read(f"{versions[_RELEASES]}.releases.json", Targets)

    def _read_bytes(self, name: str) -> bytes:
        path = self._metadata_dir / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc

    def _read_text(self, name: str) -> str:
        try:
            return self._read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateError(f"{self._metadata_dir / name} is not UTF-8") from exc

    def _read(self, name: str, kind: type[_S]) -> Metadata[_S]:
        try:
            md: Metadata[_S] = Metadata.from_bytes(self._read_bytes(name))
        except DeserializationError as exc:
            raise StateError(f"{self._metadata_dir / name} is not valid metadata: {exc}") from exc
        if not isinstance(md.signed, kind):
            raise StateError(f"{self._metadata_dir / name} is not {kind.type} metadata")
        return md

    def _keyids(self, role: str) -> list[str]:
        if role == _RELEASES:
            return list(self._targets.signed.get_delegated_role(_RELEASES).keyids)
        return list(self._root.signed.roles[role].keyids)

    def _signer(self, role: str) -> CryptoSigner:
        """The signer for ``role``, checked against the key the metadata names."""
        cached = self._signers.get(role)
        if cached is not None:
            return cached
        path = keys.key_file(self._keys_dir, role)
        expected = self._keyids(role)
        signer = keys.load_signer(path) if path.exists() else None
        if signer is None or signer.public_key.keyid not in expected:
            pending = keys.pending_key_file(self._keys_dir, role)
            if pending.exists() and keys.load_signer(pending).public_key.keyid in expected:
                # A rotate-key stopped after writing the metadata that names the new key.
                keys.promote_pending_key(self._keys_dir, role)
                signer = keys.load_signer(path)
        if signer is None:
            raise ConfigError(
                f"the {role} key {path} is missing; it is needed to sign {role} metadata "
                "(see docs/release-keys.md)"
            )
        if signer.public_key.keyid not in expected:
            raise ConfigError(f"{path} is not the {role} key that the metadata names")
        self._signers[role] = signer
        return signer

    def _commit(
        self,
        role: str,
        md: Metadata[Any],
        *,
        bump: bool = True,
        signers: Sequence[CryptoSigner] = (),
    ) -> bytes:
        """Bump, renew, sign and write ``md``; return the bytes written."""
        if bump:
            md.signed.version += 1
        md.signed.expires = self._now() + EXPIRY[role]
        for index, signer in enumerate(signers or [self._signer(role)]):
            md.sign(signer, append=index > 0)
        data = md.to_bytes(_SERIALIZER)
        if role == "timestamp":
            keys.write_file_atomically(self._metadata_dir / "timestamp.json", data)
        else:
            keys.write_file_atomically(
                self._metadata_dir / f"{md.signed.version}.{role}.json", data
            )
        if role == "root":
            keys.write_file_atomically(self._metadata_dir / "root.json", data)
        return data

    def _commit_snapshot_and_timestamp(self, *, bump: bool = True) -> None:
        meta = self._snapshot.signed.meta
        meta.clear()
        meta["targets.json"] = MetaFile(self._targets.signed.version)
        meta[f"{_RELEASES}.json"] = MetaFile(self._releases.signed.version)
        data = self._commit("snapshot", self._snapshot, bump=bump)
        self._timestamp.signed.snapshot_meta = MetaFile.from_data(
            self._snapshot.signed.version, data, ["sha256"]
        )
        self._commit("timestamp", self._timestamp, bump=bump)

    def _renew_expiring(self, skip: Sequence[str] = ()) -> None:
        """Re-sign root, targets and releases if they expire soon and their key is here."""
        horizon = self._now() + RENEW_BEFORE
        for role, md in (
            ("root", self._root),
            ("targets", self._targets),
            (_RELEASES, self._releases),
        ):
            if role in skip or md.signed.expires > horizon:
                continue
            if keys.key_file(self._keys_dir, role).exists():
                self._commit(role, md)

    def _write_notes(self) -> None:
        notes = {
            "product": self._product,
            "keyids": {role: self._keyids(role)[0] for role in keys.ROLE_NAMES},
        }
        data = json.dumps(notes, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        keys.write_file_atomically(self._dir / _NOTES_FILE, data)

    def _target_file(self, target: TargetFile) -> Path:
        directory, _, name = target.path.rpartition("/")
        return self._dir / "targets" / directory / f"{target.hashes['sha256']}.{name}"

    def _store_target_bytes(self, target: TargetFile, data: bytes) -> None:
        keys.write_file_atomically(self._target_file(target), data)

    def _read_target(self, target: TargetFile) -> bytes:
        path = self._target_file(target)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            target.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as exc:
            raise StateError(f"{path} does not match its signed length and hash") from exc
        return data

    def _store_payload(
        self, name: str, produce: Callable[[BinaryIO], PayloadDigest]
    ) -> PayloadDigest:
        """Run ``produce`` into a temp file, then move it to its consistent-snapshot name."""
        directory = self._dir / "targets" / _RELEASES
        try:
            fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        except OSError as exc:
            raise StateError(f"cannot create a payload file in {directory}: {exc}") from exc
        done = False
        try:
            with os.fdopen(fd, "wb") as handle:
                digest = produce(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, directory / f"{digest.sha256}.{name}")
            done = True
        except OSError as exc:
            raise StateError(f"cannot write the payload {name} in {directory}: {exc}") from exc
        finally:
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name)
        return digest

    def _stream_bundle(self, prefix: bytes, payload: TargetFile, output: Path) -> None:
        source = self._target_file(payload)
        try:
            fd, temp_name = tempfile.mkstemp(
                dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise ConfigError(f"cannot write the bundle {output}: {exc.strerror}") from exc
        done = False
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(prefix)
                length, sha256 = _copy_hashing(source, out)
                if length != payload.length or sha256 != payload.hashes.get("sha256"):
                    raise StateError(f"{source} does not match its signed length and hash")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, output)
            done = True
        except OSError as exc:
            raise ConfigError(f"cannot write the bundle {output}: {exc}") from exc
        finally:
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name)


def _copy_hashing(source: Path, out: BinaryIO) -> tuple[int, str]:
    """Copy ``source`` to ``out`` block by block; return its length and SHA-256."""
    digest = hashlib.sha256()
    length = 0
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise StateError(f"cannot read the payload {source}: {exc.strerror}") from exc
    with handle:
        while block := handle.read(COPY_BLOCK_BYTES):
            digest.update(block)
            length += len(block)
            out.write(block)
    return length, digest.hexdigest()


def _verifies(delegator: Root | Targets, role: str, md: Metadata[Any]) -> bool:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError:
        return False
    return True


def _parse_version(text: str) -> Version:
    try:
        return parse_version(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _release_info(path: str, target: TargetFile) -> ReleaseInfo | None:
    """The release a payload entry describes; ``None`` for entries without ``custom.sysupd``."""
    custom = target.custom
    if not isinstance(custom, dict) or "sysupd" not in custom:
        return None
    fields = custom["sysupd"]
    try:
        notes = fields.get("notes")
        info = ReleaseInfo(
            version=str(parse_version(fields["version"])),
            target=path,
            length=target.length,
            sha256=target.hashes["sha256"],
            payload=fields["payload"],
            compression=fields["compression"],
            installed_size=fields["installed_size"],
            chunk_size=fields["chunk_size"],
            chunks=fields["chunks"],
            notes=notes,
            entries=fields.get("entries"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StateError(f"the releases entry {path} has a malformed custom.sysupd") from exc
    if not (
        isinstance(info.payload, str)
        and isinstance(info.compression, str)
        and type(info.installed_size) is int
        and type(info.chunk_size) is int
        and isinstance(info.chunks, str)
        and (notes is None or isinstance(notes, str))
        and (info.entries is None or type(info.entries) is int)
    ):
        raise StateError(f"the releases entry {path} has a malformed custom.sysupd")
    return info
