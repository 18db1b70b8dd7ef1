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
from sysupd.release.repository import ReleaseRepository
from sysupd.system.clock import ManualClock

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
