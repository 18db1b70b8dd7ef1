"""The online channel: the update server's TUF repository, read with python-tuf's ``ngclient``.

A check makes a new ``Updater`` (bootstrapped from the device's trusted root; ngclient keeps its
own cache of timestamp and snapshot under ``<state_dir>/online`` for rollback and freeze
protection), refreshes, loads the ``releases`` role, and picks the newest release for this product
above the installed version and the floor. Rollback, freeze, mix-and-match, endless data, slow
retrieval and key rotation are ngclient's to refuse, through our origin-locked fetcher.

Installing downloads the (small) chunk list through ngclient, which verifies it, then streams the
payload from its consistent-snapshot URL straight into the engine's chunk verifier.

Invariants: nothing from the server is used unless ngclient verified the metadata naming it; the
trust store learns newer roots and metadata versions only with an installed release.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import DelegatedRole, Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from sysupd.core.bundletrust import ReleasePolicy, check_policy
from sysupd.core.chunkindex import MAX_INDEX_BYTES
from sysupd.core.manifest import Manifest, parse_manifest
from sysupd.core.trustchain import ROLES, TrustState, metadata_version, seen_floors
from sysupd.core.versions import Version
from sysupd.errors import AcquireError, VerificationError
from sysupd.fsutil import read_capped
from sysupd.sources.tuf_fetcher import Download, FetcherLimits, OriginFetcher

__all__ = ["Candidate", "OnlineChannel", "Survey", "open_updater"]

_PROBE = "releases/.sysupd-probe"  # a path under the releases delegation, to load that role
_MAX_CHUNK_LIST = 16 * 1024 * 1024


def open_updater(
    metadata_dir: Path,
    metadata_url: str,
    target_url: str | None,
    fetcher: OriginFetcher,
    bootstrap: bytes | None,
) -> Updater:
    """python-tuf's ``Updater`` as the online channel uses it: our origin-locked ``fetcher``,
    the default config, trust from ``bootstrap`` (``None``: the root stored in
    ``metadata_dir``).

    Raises:
        VerificationError: the trusted root cannot be used.
    """
    try:
        return Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=metadata_url,
            target_base_url=target_url,
            fetcher=fetcher,
            config=UpdaterConfig(),
            bootstrap=bootstrap,
        )
    except (RepositoryError, ValueError, OSError) as exc:
        raise VerificationError(f"the trusted root cannot be used: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Survey:
    """What a check found: the candidate, and why other releases are not for this device."""

    candidate: Candidate | None
    passed_over: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Candidate:
    """The newest acceptable release on the server."""

    manifest: Manifest
    payload: TargetFile
    chunks: TargetFile
    index: TargetFile | None = None
    """The chunk index's signed entry; ``None`` if the release has none, or names one that is
    not signed (``delta_index`` then refuses it)."""


class OnlineChannel:
    """One conversation with the update server (one ``Updater``); use from a worker thread."""

    def __init__(
        self,
        server: str,
        cache_dir: Path,
        trust: TrustState,
        limits: FetcherLimits,
        connections: int = 2,
        address: str | None = None,
    ) -> None:
        base = server.rstrip("/")
        self._cache = cache_dir
        self._seen = trust
        self._releases: Metadata[Targets] | None = None
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.fetcher = OriginFetcher(base, limits=limits, connections=connections, address=address)
        self._targets_url = f"{base}/targets/"
        self._updater = open_updater(
            cache_dir, f"{base}/metadata/", self._targets_url, self.fetcher, trust.root
        )

    def newest(
        self, policy: ReleasePolicy, installed: Version, wanted: Version | None = None
    ) -> Survey:
        """Refresh the metadata; the newest release for this device above ``installed`` (only
        ``wanted``, if given), and why each newer release that is not offered was passed over.

        Raises:
            AcquireError: the server could not be reached or sent too little, too slowly.
            VerificationError: the metadata is not trusted (signatures, expiry, rollback, …).
        """
        releases = self._releases = self.refresh()
        self.check_seen()
        delegation = self._delegation()
        best: Candidate | None = None
        passed_over: list[str] = []
        older: list[Version] = []
        for entry in releases.signed.targets.values():
            custom = entry.custom if isinstance(entry.custom, dict) else {}
            if "sysupd" not in custom:
                continue  # a chunk list, or another tool's target
            if not delegation.is_delegated_path(entry.path):
                passed_over.append(f"{entry.path} is outside the paths the releases role may sign")
                continue
            try:
                manifest = parse_manifest(entry.path, entry.length, entry.hashes, custom)
            except VerificationError as exc:
                passed_over.append(str(exc))
                continue
            if wanted is not None and manifest.version != wanted:
                continue
            if manifest.version <= installed:
                if manifest.product == policy.product:
                    older.append(manifest.version)
                continue
            try:
                check_policy(manifest, policy)
            except VerificationError as exc:
                passed_over.append(f"{manifest.version}: {exc}")
                continue
            chunks = releases.signed.targets.get(manifest.chunks_target)
            if chunks is None:
                passed_over.append(f"{manifest.version}: its chunk list is not signed")
                continue
            if best is None or manifest.version > best.manifest.version:
                index = None
                if manifest.index_target is not None:
                    index = releases.signed.targets.get(manifest.index_target)
                best = Candidate(manifest, entry, chunks, index)
        if best is None and older and max(older) < installed:  # equal: simply up to date
            passed_over.append(
                f"the newest release for {policy.product} on the server, {max(older)}, is older "
                f"than the installed {installed} (installing it would be a downgrade)"
            )
        return Survey(best, tuple(passed_over))

    def chunk_list(self, candidate: Candidate) -> bytes:
        """The candidate's chunk list, downloaded and verified by ngclient.

        Raises:
            AcquireError: the download failed.
            VerificationError: it does not match its signed length and hash.
        """
        return self._target(candidate.chunks, "chunk list", _MAX_CHUNK_LIST)

    def delta_index(self, candidate: Candidate) -> bytes:
        """The candidate's chunk index (delta updates), downloaded and verified by ngclient.

        Raises:
            AcquireError: the download failed.
            VerificationError: the release names an index that is not signed, or the index does
                not match its signed length and hash.
        """
        name = candidate.manifest.index_target
        if candidate.index is None:
            raise VerificationError(
                f"release {candidate.manifest.version} names the chunk index {name}, which the "
                "releases metadata does not sign"
            )
        return self._target(candidate.index, "chunk index", MAX_INDEX_BYTES)

    def index_of(self, product: str, version: Version) -> bytes | None:
        """After ``newest``: the chunk index of release ``version`` of ``product``, downloaded
        and verified by ngclient, if the server signs one (``None``: it has no such release, or
        the release no index).

        Raises:
            AcquireError: the download failed.
            VerificationError: the index does not match its signed length and hash.
        """
        releases = self._releases
        if releases is None:
            return None
        delegation = self._delegation()
        for entry in releases.signed.targets.values():
            custom = entry.custom if isinstance(entry.custom, dict) else {}
            if "sysupd" not in custom or not delegation.is_delegated_path(entry.path):
                continue
            try:
                manifest = parse_manifest(entry.path, entry.length, entry.hashes, custom)
            except VerificationError:
                continue
            if manifest.product != product or manifest.version != version:
                continue
            index = releases.signed.targets.get(manifest.index_target or "")
            if index is None:
                return None
            return self._target(index, f"chunk index of release {version}", MAX_INDEX_BYTES)
        return None

    def _target(self, target: TargetFile, what: str, cap: int) -> bytes:
        with tempfile.TemporaryDirectory(dir=self._cache) as scratch:
            path = Path(scratch) / "target"
            try:
                self._updater.download_target(target, str(path))
            except DownloadError as exc:
                raise AcquireError(f"the {what} could not be downloaded: {exc}") from exc
            except RepositoryError as exc:
                raise VerificationError(f"the {what} is not the signed one: {exc}") from exc
            return read_capped(path, cap)

    @property
    def targets_url(self) -> str:
        """The server's targets base URL, ending in ``/``."""
        return self._targets_url

    def open_payload(self, candidate: Candidate) -> tuple[str, Download]:
        """The payload's URL and an open stream of it (unverified bytes: feed the verifier)."""
        directory, _, name = candidate.payload.path.rpartition("/")
        url = f"{self._targets_url}{directory}/{candidate.manifest.sha256}.{name}"
        return url, self.fetcher.open_stream(url, candidate.manifest.length)

    def trusted(self) -> tuple[bytes, dict[str, bytes]]:
        """After ``refresh``: the newest verified root, and the verified metadata of each role
        in ``ROLES`` (for the device to keep).

        Raises:
            VerificationError: ngclient's cache lacks one (``refresh`` did not complete).
        """
        try:
            root = read_capped(self._cache / "root.json", 4 * 1024 * 1024)
            metadata = {role: read_capped(self._cache / f"{role}.json", 2**24) for role in ROLES}
        except OSError as exc:
            raise VerificationError(f"the verified metadata is missing: {exc}") from exc
        return root, metadata

    def _delegation(self) -> DelegatedRole:
        targets = Metadata[Targets].from_bytes(read_capped(self._cache / "targets.json", 2**24))
        roles = targets.signed.delegations.roles if targets.signed.delegations else None
        role = roles.get("releases") if roles else None
        if role is None:
            raise VerificationError("the update server's targets metadata delegates no releases")
        return role

    def check_seen(self) -> None:
        """After ``refresh``: refuse metadata older than what the device already trusts from any
        path (an offline bundle may have brought newer versions than this server's cache has
        seen), while those floors bind (``seen_floors``: a key rotation lifts them).

        Raises:
            VerificationError: a role is older than its binding floor.
        """
        root, metadata = self.trusted()
        floors = seen_floors(self._seen, root, metadata["targets"])
        for role in ROLES:
            version = metadata_version(metadata[role]) or 0
            if version < floors[role]:
                raise VerificationError(
                    f"the update server's {role} metadata v{version} is older than "
                    f"v{floors[role]}, which this device has already seen (rollback or a stale "
                    "mirror)"
                )

    def close(self) -> None:
        """Close the fetcher's connections."""
        self.fetcher.close()

    def refresh(self) -> Metadata[Targets]:
        """The TUF client workflow against the server, down to the ``releases`` role, which it
        returns (verified by ngclient; not yet checked against the device's floors).

        Raises:
            AcquireError: the server could not be read.
            VerificationError: its metadata is not trusted.
        """
        try:
            self._updater.refresh()
            self._updater.get_targetinfo(_PROBE)  # loads and verifies the releases role
            data = read_capped(self._cache / "releases.json", 2**24)
        except DownloadError as exc:
            raise AcquireError(f"the update server could not be read: {exc}") from exc
        except RepositoryError as exc:
            raise VerificationError(f"the update server's metadata is not trusted: {exc}") from exc
        except OSError as exc:
            raise VerificationError(f"the releases metadata is missing: {exc}") from exc
        return Metadata[Targets].from_bytes(data)
