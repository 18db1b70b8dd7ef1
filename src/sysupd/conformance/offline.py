"""The offline trust path as the TUF conformance suite drives it: sysupd's own walker
(``core.trustchain.verify_metadata``, the check every offline bundle goes through), fed from the
suite's repository.

Responsibility: play the bundle builder — ``RepositoryBundle`` reads from the repository exactly
the metadata a bundle would carry (the roots above the trusted one, the timestamp, the snapshot
it names, the ``targets`` that names), on demand, so the walker asks for them in the workflow's
order and a refusal stops the reading — then run the walker and write each role it trusted to
the metadata directory as it comes into force. Targets are looked up in the top-level
``targets``, or in ``releases`` where it delegates that role (the walker follows that one
delegation, sysupd's; the suite's delegation graphs are out of its scope: see
``docs/design/trust.md``), downloaded and checked against their signed length and hashes.

Nothing the repository serves is used before the walker verified it, except to choose which
file to read next (a wrong choice is refused by the walker).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from tuf.api.exceptions import DownloadError, DownloadHTTPError, LengthOrHashMismatchError
from tuf.api.metadata import TargetFile

from sysupd.conformance.metadata_dir import load_trust, persist
from sysupd.core.trustchain import VerifiedMetadata, releases_delegation, verify_metadata
from sysupd.errors import AcquireError, StateError, VerificationError
from sysupd.fsutil import atomic_write
from sysupd.sources.tuf_fetcher import FetcherLimits, OriginFetcher
from sysupd.system.clock import SystemClock

__all__ = ["RepositoryBundle", "download", "refresh"]

# As python-tuf's ngclient (UpdaterConfig): the most each role's file may be.
_MAX_BYTES = {"root": 512_000, "timestamp": 16_384, "snapshot": 2_000_000, "targets": 5_000_000}
_MAX_TARGET_BYTES = 64 * 1024 * 1024
_ABSENT = {403, 404}  # how a repository says "no such root version" (the workflow stops there)


class RepositoryBundle:
    """A bundle's metadata, read from a repository as the walker asks for it."""

    def __init__(self, fetcher: OriginFetcher, metadata_url: str, trusted_root: bytes) -> None:
        self._fetcher = fetcher
        self._base = metadata_url.rstrip("/")
        self._consistent = _consistent(trusted_root)

    def root(self, version: int) -> bytes | None:
        try:
            data = self._fetch(f"{version}.root.json", "root")
        except DownloadHTTPError as exc:
            if exc.status_code in _ABSENT:
                return None
            raise
        self._consistent = _consistent(data)  # unverified: it only picks the next file names
        return data

    def timestamp(self) -> bytes | None:
        return self._fetch("timestamp.json", "timestamp")

    def role(self, role: str, version: int) -> bytes | None:
        name = f"{version}.{role}.json" if self._consistent else f"{role}.json"
        return self._fetch(quote(name, safe=""), role)

    def _fetch(self, name: str, role: str) -> bytes:
        return self._fetcher.download_bytes(f"{self._base}/{name}", _MAX_BYTES.get(role, 5_000_000))


def refresh(metadata_dir: Path, metadata_url: str) -> None:
    """The TUF client workflow for the top-level roles, through sysupd's offline walker.

    Raises:
        AcquireError: the repository could not be read.
        VerificationError: its metadata is not trusted.
        StateError: the metadata directory cannot be used.
    """
    with OriginFetcher(metadata_url, limits=FetcherLimits()) as fetcher:
        _walk(fetcher, metadata_dir, metadata_url, delegated=False)


def download(
    metadata_dir: Path,
    metadata_url: str,
    target_base_url: str,
    target_dir: Path,
    target_names: Sequence[str],
) -> None:
    """Refresh, then each of ``target_names`` in order, verified, into ``target_dir`` (one file
    per target path; one whose hashes match is not downloaded again).

    Raises:
        AcquireError: a download failed, or a target is not in the trusted metadata.
        VerificationError: metadata or a target is not the signed one.
        StateError: the metadata or target directory cannot be used.
    """
    with OriginFetcher(metadata_url, limits=FetcherLimits()) as fetcher:
        verified = _walk(fetcher, metadata_dir, metadata_url, delegated=False)
        consistent = bool(verified.root.signed.consistent_snapshot)
        for name in target_names:
            entry = verified.targets.signed.targets.get(name)
            if entry is None and _in_releases(verified, name):
                verified = _walk(fetcher, metadata_dir, metadata_url, delegated=True)
                assert verified.releases is not None  # walked: delegated=True
                entry = verified.releases.signed.targets.get(name)
            if entry is None:
                raise AcquireError(f"{name} is not a target in the trusted metadata")
            _download(fetcher, entry, target_base_url, target_dir, consistent=consistent)


def _in_releases(verified: VerifiedMetadata, name: str) -> bool:
    """Whether ``name`` is a path sysupd's one delegation, ``releases``, may sign."""
    try:
        return releases_delegation(verified.targets).is_delegated_path(name)
    except VerificationError:
        return False  # not a sysupd repository: no releases role


def _walk(
    fetcher: OriginFetcher, metadata_dir: Path, metadata_url: str, *, delegated: bool
) -> VerifiedMetadata:
    trust = load_trust(metadata_dir)
    source = RepositoryBundle(fetcher, metadata_url, trust.root)
    try:
        return verify_metadata(
            trust,
            source,
            SystemClock().utcnow(),
            delegated=delegated,
            keep=lambda role, data: persist(metadata_dir, role, data),
        )
    except DownloadError as exc:
        raise AcquireError(str(exc) or type(exc).__name__) from exc


def _download(
    fetcher: OriginFetcher, entry: TargetFile, base_url: str, target_dir: Path, *, consistent: bool
) -> None:
    path = target_dir / quote(entry.path, safe="")
    if path.is_file() and _matches(entry, path.read_bytes()):
        return
    directory, _, name = entry.path.rpartition("/")
    if consistent:
        name = f"{next(iter(entry.hashes.values()))}.{name}"
    url = f"{base_url.rstrip('/')}/{quote(f'{directory}/{name}' if directory else name)}"
    try:
        data = fetcher.download_bytes(url, min(entry.length, _MAX_TARGET_BYTES))
    except DownloadError as exc:
        raise AcquireError(f"{entry.path} could not be downloaded: {exc}") from exc
    if not _matches(entry, data):
        raise VerificationError(f"{entry.path} does not match its signed length and hashes")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise StateError(f"cannot store {entry.path}: {exc}") from exc


def _matches(entry: TargetFile, data: bytes) -> bool:
    try:
        entry.verify_length_and_hashes(data)
    except LengthOrHashMismatchError:
        return False
    return True


def _consistent(root: bytes) -> bool:
    try:
        return json.loads(root)["signed"]["consistent_snapshot"] is True
    except (ValueError, KeyError, TypeError):
        return True
