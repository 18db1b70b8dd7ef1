"""Offline bundles cut from the release repository: the header of signed metadata, then the payload.

The format is ``docs/design/release-format.md`` (framing: ``sysupd.core.bundle_format``).

Invariants:

- A bundle carries every root version, so a device can walk its trust forward from any root it
  holds, and the current timestamp, snapshot, targets and releases metadata with the release's
  chunk list.
- Metadata a device would refuse as expired (root, targets, releases: the freshness roles'
  expiry is not enforced offline) is refused here, before anything is written.
- The payload is streamed from the repository and checked against its signed length and SHA-256
  on the way; ``output`` is replaced only by a complete, matching bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from sysupd.core.bundle_format import BundleHeader, encode_bundle_header
from sysupd.errors import ConfigError, StateError
from sysupd.release._metadata import RELEASES, RepositoryMetadata
from sysupd.release._releases import ReleaseInfo, find_release, list_releases
from sysupd.release._targets import copy_hashing, read_target, target_path, write_streamed

__all__ = ["write_bundle"]


def write_bundle(md: RepositoryMetadata, version: str, output: Path) -> int:
    """Write the offline bundle of ``version`` to ``output``; return its size in bytes.

    Raises:
        ConfigError: unknown version, ``output`` not writable, or metadata a device would
            refuse as expired.
        StateError: the repository's files are missing or do not match their metadata.
    """
    if output.is_dir():
        raise ConfigError(f"the bundle output {output} is a directory")
    if not output.parent.is_dir():
        raise ConfigError(f"the directory of the bundle output {output} does not exist")
    with md.locked():
        md.load()
        info = find_release(list_releases(md.releases.signed.targets), version, md.dir)
        return _write(md, info, output)


def _write(md: RepositoryMetadata, info: ReleaseInfo, output: Path) -> int:
    """Write the bundle of ``info`` from the loaded state; return its size in bytes."""
    now = md.now()
    for role, signed in (("root", md.root), ("targets", md.targets), (RELEASES, md.releases)):
        if signed.signed.is_expired(now):
            raise ConfigError(
                f"{role} metadata expired at {signed.signed.expires.isoformat()}; a device "
                "would refuse the bundle (see docs/release-keys.md on renewing it)"
            )
    for role in ("targets", RELEASES):
        pinned = md.snapshot.signed.meta.get(f"{role}.json")
        if pinned is None or not pinned.hashes:
            raise ConfigError(
                f"the repository's snapshot names {role} by version only (signed by an older "
                "release tool), and devices refuse such a bundle: run 'sysupd release publish' "
                "first"
            )
    chunks = md.releases.signed.targets.get(info.chunks)
    payload = md.releases.signed.targets[info.target]
    if chunks is None:
        raise StateError(f"the chunk list {info.chunks} is not in the releases metadata")
    header = BundleHeader(
        target=info.target,
        roots=tuple(md.read_text(f"{n}.root.json") for n in range(1, md.root.signed.version + 1)),
        timestamp=md.read_text("timestamp.json"),
        snapshot=md.read_text(f"{md.snapshot.signed.version}.snapshot.json"),
        targets=md.read_text(f"{md.targets.signed.version}.targets.json"),
        releases=md.read_text(f"{md.releases.signed.version}.releases.json"),
        chunks=read_target(md.dir, chunks),
    )
    try:
        prefix = encode_bundle_header(header)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    source = target_path(md.dir, payload)

    def write(out: BinaryIO) -> None:
        out.write(prefix)
        length, sha256 = copy_hashing(source, out)
        if length != payload.length or sha256 != payload.hashes.get("sha256"):
            raise StateError(f"{source} does not match its signed length and hash")

    try:
        write_streamed(output.parent, output.name, write, lambda _: output)
    except OSError as exc:
        raise ConfigError(f"cannot write the bundle {output}: {exc}") from exc
    return len(prefix) + payload.length
