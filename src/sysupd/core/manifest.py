"""A release's signed manifest: the ``custom.sysupd`` fields of its payload's target entry.

Parsed strictly from already-verified metadata: every key of the format
(``docs/design/release-format.md``) must be present with the right type and a sane value, and
nothing unknown is accepted, so a release means exactly one thing.

The limits a device enforces come from here: ``installed_size`` (the bytes a slot must hold) and,
for a tree, ``entries`` (the archive's members: its regular files and directories). A tree
release without ``entries`` was made by a release tool older than that field and is refused;
a raw one must not carry it, since an image has no members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from sysupd.core.versions import Version, parse_version
from sysupd.errors import VerificationError

__all__ = ["MAX_CHUNK_SIZE", "Manifest", "parse_manifest"]

MAX_CHUNK_SIZE = 64 * 1024 * 1024
_REQUIRED = {
    "product": str,
    "version": str,
    "payload": str,
    "compression": str,
    "installed_size": int,
    "chunk_size": int,
    "chunks": str,
}
_OPTIONAL = {"notes": str, "entries": int, "index": str}


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a release says about itself, once its signatures checked out."""

    target: str
    product: str
    version: Version
    payload: Literal["tree", "raw"]
    compression: Literal["none", "zstd"]
    installed_size: int
    chunk_size: int
    chunks_target: str
    length: int
    sha256: str
    notes: str = ""
    entries: int | None = None
    """A tree's members (regular files and directories); ``None`` for a raw image."""
    index_target: str | None = None
    """The chunk index's target, for a delta update; ``None`` if the release has none."""


def parse_manifest(target: str, length: int, hashes: dict[str, str], custom: Any) -> Manifest:
    """Build the manifest of ``target`` from its signed length, hashes and ``custom`` field.

    Raises:
        VerificationError: a field is missing, unknown, of the wrong type or out of range.
    """
    fields = custom.get("sysupd") if isinstance(custom, dict) else None
    if not isinstance(fields, dict):
        raise VerificationError(f"release {target} carries no sysupd manifest")
    unknown = sorted(set(fields) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise VerificationError(f"release {target} has an unknown manifest field {unknown[0]!r}")
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in fields:
            if name in _REQUIRED:
                raise VerificationError(f"release {target} has no manifest field {name!r}")
            continue
        value = fields[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise VerificationError(f"release {target}: manifest field {name!r} has a wrong type")
    try:
        version = parse_version(fields["version"])
    except ValueError as exc:
        raise VerificationError(f"release {target}: {exc}") from exc
    if fields["payload"] not in ("tree", "raw"):
        raise VerificationError(f"release {target}: unknown payload kind {fields['payload']!r}")
    if fields["compression"] not in ("none", "zstd"):
        raise VerificationError(f"release {target}: unknown compression {fields['compression']!r}")
    if fields["payload"] == "raw" and fields["compression"] != "none":
        raise VerificationError(f"release {target}: a raw payload cannot be compressed")
    if not 0 < fields["chunk_size"] <= MAX_CHUNK_SIZE:
        raise VerificationError(f"release {target}: chunk size {fields['chunk_size']} is invalid")
    if fields["installed_size"] < 0:
        raise VerificationError(f"release {target}: negative installed size")
    if fields["payload"] == "raw" and fields["installed_size"] != length:
        raise VerificationError(f"release {target}: a raw image's size must equal its length")
    _check_entries(target, fields["payload"], fields.get("entries"))
    sha256 = hashes.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise VerificationError(f"release {target} has no SHA-256 hash")
    return Manifest(
        target=target,
        product=fields["product"],
        version=version,
        payload=cast(Literal["tree", "raw"], fields["payload"]),
        compression=cast(Literal["none", "zstd"], fields["compression"]),
        installed_size=fields["installed_size"],
        chunk_size=fields["chunk_size"],
        chunks_target=fields["chunks"],
        length=length,
        sha256=sha256.lower(),
        notes=fields.get("notes", ""),
        entries=fields.get("entries"),
        index_target=fields.get("index"),
    )


def _check_entries(target: str, payload: str, entries: int | None) -> None:
    """A tree states its member count; an image states none.

    Raises:
        VerificationError: the count is missing for a tree, present for an image, or negative.
    """
    if payload == "raw":
        if entries is not None:
            raise VerificationError(
                f"release {target}: a raw payload has no members, so no manifest field 'entries'"
            )
        return
    if entries is None:
        raise VerificationError(
            f"release {target} was made by an older release tool: add it again with this one "
            "('sysupd release add', as a new version), which states how many files and "
            "directories it holds (manifest field 'entries')"
        )
    if entries < 0:
        raise VerificationError(f"release {target}: negative member count")
