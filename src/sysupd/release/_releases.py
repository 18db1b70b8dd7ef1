"""Releases in the repository: how one is described in the ``releases`` role, and adding one.

Payloads are made by ``sysupd.release.payloads``; the entry format is
``docs/design/release-format.md``.

Invariants:

- A release is two or three targets in ``releases``: the payload
  ``releases/<product>-<version>.<ext>`` with its description in ``custom.sysupd``, the payload's
  chunk list ``releases/<product>-<version>.<ext>.chunks`` and, unless delta chunks were turned
  off, its chunk index ``….<ext>.index`` (its chunks in the repository's chunk store); entries
  without ``custom.sysupd`` are no release.
- Each version is released once; every input is checked, and every key it needs found, before
  the payload is packed.
- The payload is streamed to disk while hashed, then signed into ``releases`` with a new snapshot
  and timestamp, all under the repository's lock and on the state re-read under it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from sysupd.core.cdc import DEFAULT_PARAMS
from sysupd.core.manifest import MAX_CHUNK_SIZE
from sysupd.core.versions import Version, parse_version
from sysupd.errors import ConfigError, StateError
from sysupd.release._chunkstore import ChunkCutter, chunk_store
from sysupd.release._metadata import RELEASES, RepositoryMetadata
from sysupd.release._targets import store_payload, store_target_bytes
from sysupd.release.payloads import PayloadDigest, copy_image, pack_tree

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "PayloadPlan",
    "ReleaseInfo",
    "add_release",
    "find_release",
    "list_releases",
    "parse_release_version",
    "plan_payload",
]

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024


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
    index: str | None = None
    """The chunk index's target (delta updates); ``None`` for a release added without one."""
    """A tree's members (regular files and directories); ``None`` for an image, or for a tree
    added by a release tool older than the field (devices refuse such a release)."""


@dataclass(frozen=True)
class PayloadPlan:
    """How a release's payload is to be made, once its inputs are checked."""

    kind: str
    """``tree`` (a tar payload) or ``raw`` (an image)."""
    extension: str
    compression: str
    chunk_size: int
    produce: Callable[..., PayloadDigest]
    """``produce(destination, tap=None)``: write the payload; hand ``tap`` its plain form."""


def parse_release_version(text: str) -> Version:
    """The version ``text`` names.

    Raises:
        ConfigError: it is not a valid version.
    """
    try:
        return parse_version(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def list_releases(targets: Mapping[str, TargetFile]) -> list[ReleaseInfo]:
    """Every release among the ``releases`` role's ``targets``, oldest version first.

    Raises:
        StateError: a release's signed entry is malformed.
    """
    found = [
        info
        for path, target in targets.items()
        if (info := _release_info(path, target)) is not None
    ]
    return sorted(found, key=lambda info: parse_version(info.version))


def find_release(infos: list[ReleaseInfo], version: str, where: Path) -> ReleaseInfo:
    """The release ``version`` among ``infos`` (of the repository in ``where``).

    Raises:
        ConfigError: ``version`` is not valid or not released.
    """
    wanted = parse_release_version(version)
    for info in infos:
        if parse_version(info.version) == wanted:
            return info
    raise ConfigError(f"no release {version} in {where}")


def plan_payload(
    *, tree: Path | None, image: Path | None, compress: str, chunk_size: int
) -> PayloadPlan:
    """Check the inputs of a payload from a file tree or an image, and say how to make it.

    Raises:
        ConfigError: neither or both sources, a tree that is not a directory, an image that is
            not a non-empty file, compression other than ``none``/``zstd`` or for an image, or a
            chunk size out of range.
    """
    if compress not in ("none", "zstd"):
        raise ConfigError(f"unknown compression {compress!r}: use none or zstd")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"chunk size {chunk_size} is not between 1 and {MAX_CHUNK_SIZE}")
    if tree is not None and image is None:
        if not tree.is_dir():
            raise ConfigError(f"the tree {tree} is not a directory")
        zstd = compress == "zstd"
        produce = functools.partial(pack_tree, tree, compress=zstd, chunk_size=chunk_size)
        return PayloadPlan("tree", "tar.zst" if zstd else "tar", compress, chunk_size, produce)
    if image is not None and tree is None:
        if compress != "none":
            raise ConfigError("compression applies to tree payloads only; images are stored as is")
        if not image.is_file() or image.stat().st_size == 0:
            raise ConfigError(f"the image {image} is not a non-empty regular file")
        produce = functools.partial(copy_image, image, chunk_size=chunk_size)
        return PayloadPlan("raw", "img", compress, chunk_size, produce)
    raise ConfigError("give exactly one of a tree (--tree) or an image (--image)")


def add_release(
    md: RepositoryMetadata,
    product: str,
    parsed: Version,
    plan: PayloadPlan,
    notes: str | None,
    *,
    delta: bool = True,
) -> ReleaseInfo:
    """Add version ``parsed`` of ``product`` with the payload ``plan`` describes: write the
    payload and its chunk list as target files and, if ``delta``, cut its plain form into the
    chunk store and write its chunk index; list them in ``releases``, then re-sign releases (and
    root or targets if close to expiry), snapshot and timestamp.

    Raises:
        ConfigError: ``parsed`` is already released, the tree holds anything but regular files
            and directories, or a signing key that is missing.
        StateError: the repository could not be read or written.
    """
    with md.locked():
        md.load()
        released = list_releases(md.releases.signed.targets)
        if any(parse_version(info.version) == parsed for info in released):
            raise ConfigError(f"version {parsed} is already released in {md.dir}")
        for needed in (RELEASES, "snapshot", "timestamp"):
            md.signer(needed)  # a missing key fails now, not after packing
        name = f"{product}-{parsed}.{plan.extension}"
        raw = plan.kind == "raw"  # the payload is its plain form: hashed once, by its sink
        cutter = (
            ChunkCutter(chunk_store(md.dir), DEFAULT_PARAMS, hash_whole=not raw) if delta else None
        )
        try:
            produce = functools.partial(plan.produce, tap=cutter)
            digest = store_payload(md.dir / "targets" / RELEASES, name, produce)
            index_bytes = None
            if cutter is not None:
                index_bytes = cutter.finish(digest.sha256 if raw else None)
        except BaseException:
            if cutter is not None:
                cutter.abandon()
            raise
        if cutter is not None:
            cutter.close()
        chunks = TargetFile.from_data(f"{RELEASES}/{name}.chunks", digest.chunk_digests, ["sha256"])
        store_target_bytes(md.dir, chunks, digest.chunk_digests)
        index = None
        if index_bytes is not None:
            index = TargetFile.from_data(f"{RELEASES}/{name}.index", index_bytes, ["sha256"])
            store_target_bytes(md.dir, index, index_bytes)
        custom: dict[str, Any] = {
            "product": product,
            "version": str(parsed),
            "payload": plan.kind,
            "compression": plan.compression,
            "installed_size": digest.installed_size,
            **({"entries": digest.entries} if plan.kind == "tree" else {}),
            "chunk_size": plan.chunk_size,
            "chunks": chunks.path,
            **({"index": index.path} if index is not None else {}),
        }
        if notes is not None:
            custom["notes"] = notes
        payload = TargetFile(
            digest.length,
            {"sha256": digest.sha256},
            f"{RELEASES}/{name}",
            {"custom": {"sysupd": custom}},
        )
        md.releases.signed.targets[payload.path] = payload
        md.releases.signed.targets[chunks.path] = chunks
        if index is not None:
            md.releases.signed.targets[index.path] = index
        md.commit(RELEASES, md.releases)
        md.renew_expiring(skip=(RELEASES,))
        md.commit_snapshot_and_timestamp()
    return _described(payload.path, payload, custom)


def _release_info(path: str, target: TargetFile) -> ReleaseInfo | None:
    """The release a payload entry describes; ``None`` for entries without ``custom.sysupd``."""
    custom = target.custom
    if not isinstance(custom, dict) or "sysupd" not in custom:
        return None
    return _described(path, target, custom["sysupd"])


def _described(path: str, target: TargetFile, fields: Any) -> ReleaseInfo:
    """The release the payload entry ``target`` with ``custom.sysupd`` ``fields`` describes."""
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
            index=fields.get("index"),
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
        and (info.index is None or isinstance(info.index, str))
    ):
        raise StateError(f"the releases entry {path} has a malformed custom.sysupd")
    return info
