"""Building real signed releases and bundles for the tests, with the project's own release tool."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sysupd.core.bundle_format import (
    BUNDLE_PREFIX_BYTES,
    BundleHeader,
    decode_bundle_header,
    decode_bundle_prefix,
)
from sysupd.release import keys
from sysupd.release._metadata import RepositoryMetadata
from sysupd.release.repository import ReleaseRepository
from sysupd.system.clock import ManualClock, SystemClock

__all__ = ["PRODUCT", "make_repo", "make_tree", "read_header"]

PRODUCT = "sysupd-demo"


def make_tree(directory: Path, version: str, size: int = 300_000) -> Path:
    """A small file tree for a release of ``version``."""
    (directory / "bin").mkdir(parents=True)
    (directory / "etc").mkdir()
    (directory / "etc" / "version").write_text(version + "\n")
    (directory / "bin" / "app").write_bytes(os.urandom(size))
    (directory / "bin" / "app").chmod(0o755)
    return directory


def make_repo(
    directory: Path, *versions: str, product: str = PRODUCT, at: datetime | None = None
) -> ReleaseRepository:
    """A release repository with a tree release per version (chunks of 64 KiB)."""
    clock = ManualClock(at) if at is not None else None
    repo = ReleaseRepository.init(directory / "repo", product, clock=clock)
    for version in versions:
        tree = make_tree(directory / f"tree-{version}", version)
        repo.add_release(version, tree=tree, compress="zstd", chunk_size=65536)
    return repo


def read_header(bundle: Path) -> BundleHeader:
    """The header of a bundle file."""
    data = bundle.read_bytes()
    size = decode_bundle_prefix(data[:BUNDLE_PREFIX_BYTES])
    return decode_bundle_header(data[BUNDLE_PREFIX_BYTES : BUNDLE_PREFIX_BYTES + size])


def fast_forward(repo: ReleaseRepository) -> tuple[bytes, bytes]:
    """What an attacker who stole ``repo``'s targets key makes a device see: ``targets`` v999
    (signed with the stolen key) delegating ``releases`` to a key of the attacker's own, and an
    empty ``releases`` v999 signed with it; both valid today, so a device that verified them
    keeps them and their versions, and refuses every honest release after."""
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    attacker = keys.generate_signer()
    targets, releases = md.targets, md.releases
    assert targets.signed.delegations is not None
    assert targets.signed.delegations.roles
    role = targets.signed.delegations.roles["releases"]
    for keyid in list(role.keyids):
        targets.signed.revoke_key(keyid, "releases")
    targets.signed.add_key(attacker.public_key, "releases")
    targets.signed.version = 999
    targets.sign(md.signer("targets"))
    releases.signed.version = 999
    releases.signed.targets.clear()  # it lists nothing: every honest release reads as withdrawn
    releases.sign(attacker)
    return targets.to_bytes(), releases.to_bytes()
