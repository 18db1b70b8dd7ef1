"""The release repository: a TUF repository of signed releases, and offline bundles cut from it.

Layout and formats are ``docs/design/release-format.md``; the trust model is
``shared/contract/UPDATES.md``. This module is the tool's one entry point, ``ReleaseRepository``;
the work is done by its parts, each stating its own invariants:

- ``_metadata``: the layout, the lock, loading the current state and signing each role;
- ``_targets``: target files under their consistent-snapshot names, written atomically;
- ``_releases``: how a release is described in ``releases``, and adding one;
- ``_bundles``: offline bundles cut from a release;
- ``_rotation``: giving a role a new key.

Invariants: every command that changes the repository holds its lock and re-reads its state
under it; every change writes new versioned files first and ``timestamp.json`` last, so an
interrupted command leaves the previous state in force.
"""

from __future__ import annotations

from pathlib import Path

from sysupd.errors import ConfigError, StateError
from sysupd.release import _bundles, _releases, _rotation, keys
from sysupd.release._metadata import (
    EXPIRY,
    RELEASES,
    RENEW_BEFORE,
    RepositoryMetadata,
    check_product,
    read_product,
    verifies,
)
from sysupd.release._releases import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    ReleaseInfo,
    find_release,
    list_releases,
    parse_release_version,
    plan_payload,
)
from sysupd.system.clock import Clock, SystemClock

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EXPIRY",
    "MAX_CHUNK_SIZE",
    "RENEW_BEFORE",
    "ReleaseInfo",
    "ReleaseRepository",
]


class ReleaseRepository:
    """A release repository on disk; create with ``init`` or load with ``open``."""

    def __init__(self, repo_dir: Path, product: str, clock: Clock | None = None) -> None:
        self._dir = repo_dir
        self._product = product
        self._md = RepositoryMetadata(repo_dir, clock or SystemClock())

    # ----------------------------------------------------------------- creating and opening

    @classmethod
    def init(cls, repo_dir: Path, product: str, *, clock: Clock | None = None) -> ReleaseRepository:
        """Create a repository for ``product`` in the empty or absent ``repo_dir``.

        Raises:
            ConfigError: ``product`` is not a valid name, or ``repo_dir`` is not empty.
            StateError: the files could not be written.
        """
        check_product(product)
        if repo_dir.exists() and (not repo_dir.is_dir() or any(repo_dir.iterdir())):
            raise ConfigError(f"{repo_dir} already exists and is not an empty directory")
        repo = cls(repo_dir, product, clock)
        md = repo._md
        try:
            repo_dir.mkdir(parents=True, exist_ok=True)
            md.keys_dir.mkdir(mode=0o700)
            md.metadata_dir.mkdir()
            (repo_dir / "targets" / RELEASES).mkdir(parents=True)
        except OSError as exc:
            raise StateError(f"cannot create the repository in {repo_dir}: {exc}") from exc
        with md.locked():
            signers = {role: keys.generate_signer() for role in keys.ROLE_NAMES}
            for role, signer in signers.items():
                keys.save_signer(keys.key_file(md.keys_dir, role), signer)
            md.create(signers)
            md.write_notes(product)  # last: a repository without repo.json is incomplete
        return repo

    @classmethod
    def open(cls, repo_dir: Path, *, clock: Clock | None = None) -> ReleaseRepository:
        """Load the repository in ``repo_dir``.

        Raises:
            ConfigError: ``repo_dir`` is not a release repository.
            StateError: its metadata is missing or unreadable.
        """
        repo = cls(repo_dir, read_product(repo_dir), clock)
        repo._md.load()
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
        return self._md.versions()

    def releases(self) -> list[ReleaseInfo]:
        """Every release, oldest version first.

        Raises:
            StateError: a release's signed entry is malformed.
        """
        return list_releases(self._md.releases.signed.targets)

    def release(self, version: str) -> ReleaseInfo:
        """The release ``version``.

        Raises:
            ConfigError: ``version`` is not valid or not released.
        """
        return find_release(self.releases(), version, self._dir)

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
        delta: bool = True,
    ) -> ReleaseInfo:
        """Add ``version`` from a file tree (a tar payload) or an image (a raw payload).

        Writes the payload and its chunk list as target files and (``delta``) its chunks into
        the chunk store with their index, lists them in ``releases``, then re-signs releases
        (and root or targets if close to expiry), snapshot and timestamp.

        Raises:
            ConfigError: invalid version, already released, neither or both sources, a tree that
                is not a directory or holds anything but regular files and directories, an image
                that is not a non-empty file, compression other than ``none``/``zstd`` or for an
                image, a chunk size out of range, or a signing key that is missing.
            StateError: the repository could not be read or written.
        """
        parsed = parse_release_version(version)
        if notes is not None and not isinstance(notes, str):
            raise ConfigError("release notes must be text")
        plan = plan_payload(tree=tree, image=image, compress=compress, chunk_size=chunk_size)
        return _releases.add_release(self._md, self._product, parsed, plan, notes, delta=delta)

    def publish(self) -> dict[str, int]:
        """Re-sign snapshot and timestamp with fresh versions and expiry; return all versions.

        Also re-signs targets or releases if their signatures no longer match their delegator
        (a ``rotate_key`` cut short), root, targets and releases if within ``RENEW_BEFORE`` of
        expiry and their key is at hand, and rewrites ``metadata/root.json`` if stale.

        Raises:
            ConfigError: a signing key that is needed is missing.
            StateError: the repository could not be read or written.
        """
        md = self._md
        with md.locked():
            md.load()
            if not verifies(md.root.signed, "targets", md.targets):
                md.commit("targets", md.targets)
            if not verifies(md.targets.signed, RELEASES, md.releases):
                md.commit(RELEASES, md.releases)
            md.renew_expiring()
            newest = md.read_bytes(f"{md.root.signed.version}.root.json")
            try:
                current = md.read_bytes("root.json")
            except StateError:
                current = b""
            if current != newest:
                keys.write_file_atomically(md.metadata_dir / "root.json", newest)
            md.commit_snapshot_and_timestamp()
            return md.versions()

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
        return _rotation.rotate_key(self._md, self._product, role)

    def write_bundle(self, version: str, output: Path) -> int:
        """Write the offline bundle of ``version`` to ``output``; return its size in bytes.

        The payload is streamed from the repository, and checked against its signed length and
        SHA-256 on the way; ``output`` is replaced only by a complete, matching bundle.

        Raises:
            ConfigError: unknown version, ``output`` not writable, or metadata a device would
                refuse as expired.
            StateError: the repository's files are missing or do not match their metadata.
        """
        return _bundles.write_bundle(self._md, version, output)
