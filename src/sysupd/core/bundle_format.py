"""The offline bundle's framing: magic, header length and the JSON header (bytes in, bytes out).

Layout (``docs/design/release-format.md``)::

    offset 0   8 bytes   magic  b"SYSUPDB\\x01"
    offset 8   8 bytes   header length H, unsigned big-endian (1 ≤ H ≤ 16 MiB)
    offset 16  H bytes   header: a UTF-8 JSON object
    offset 16+H          the payload bytes, exactly the signed length, then end of file

This module only frames and unframes; it does no file I/O and trusts nothing it decodes. The
header's metadata texts are *untrusted* until the device has verified them against its trust root.

Invariants: ``decode_bundle_header(encode_bundle_header(h)[BUNDLE_PREFIX_BYTES:]) == h``; the
decoders accept exactly the documented shape (a JSON object with exactly the keys ``format``,
``target``, ``roots``, ``timestamp``, ``snapshot``, ``targets``, ``releases``, ``chunks``;
``format`` the integer 2 (format 1 bundles carried no timestamp or snapshot); no
duplicate keys; ``chunks`` strict base64 of whole SHA-256 digests) and raise ``VerificationError``
naming the first thing that is wrong; a header longer than ``MAX_HEADER_BYTES`` is refused before
it is read.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, NoReturn

from sysupd.errors import VerificationError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_MAGIC",
    "BUNDLE_PREFIX_BYTES",
    "CHUNK_DIGEST_BYTES",
    "MAX_HEADER_BYTES",
    "BundleHeader",
    "decode_bundle_header",
    "decode_bundle_prefix",
    "encode_bundle_header",
]

BUNDLE_MAGIC = b"SYSUPDB\x01"
BUNDLE_FORMAT = 2
BUNDLE_PREFIX_BYTES = 16  # magic (8) + header length (8)
MAX_HEADER_BYTES = 16 * 1024 * 1024
CHUNK_DIGEST_BYTES = 32  # one SHA-256 digest per chunk in the chunk list

_KEYS = ("format", "target", "roots", "timestamp", "snapshot", "targets", "releases", "chunks")


@dataclass(frozen=True)
class BundleHeader:
    """What a bundle carries besides its payload (metadata as the exact signed texts)."""

    target: str
    """The payload's target path in the ``releases`` role, e.g. ``releases/demo-1.2.0.tar``."""
    roots: tuple[str, ...]
    """The texts of ``1.root.json``, ``2.root.json``, … up to the newest, in order."""
    timestamp: str
    """The text of ``timestamp.json`` (its expiry is not enforced offline: see trust.md)."""
    snapshot: str
    """The text of the ``N.snapshot.json`` the timestamp names."""
    targets: str
    """The text of the newest ``N.targets.json``."""
    releases: str
    """The text of the newest ``N.releases.json``."""
    chunks: bytes
    """The chunk list target's bytes: consecutive 32-byte SHA-256 digests."""


def encode_bundle_header(header: BundleHeader) -> bytes:
    """The bundle's first bytes: magic, header length and the header JSON.

    Raises:
        ValueError: the header would exceed ``MAX_HEADER_BYTES``.
    """
    document = {
        "format": BUNDLE_FORMAT,
        "target": header.target,
        "roots": list(header.roots),
        "timestamp": header.timestamp,
        "snapshot": header.snapshot,
        "targets": header.targets,
        "releases": header.releases,
        "chunks": base64.b64encode(header.chunks).decode("ascii"),
    }
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(
            f"the bundle header would be {len(body)} bytes; the format allows at most "
            f"{MAX_HEADER_BYTES}"
        )
    return BUNDLE_MAGIC + len(body).to_bytes(8, "big") + body


def decode_bundle_prefix(first_bytes: bytes) -> int:
    """The header length announced by a bundle's first ``BUNDLE_PREFIX_BYTES`` bytes.

    Only the first ``BUNDLE_PREFIX_BYTES`` of ``first_bytes`` are looked at.

    Raises:
        VerificationError: too short, wrong magic, or a header length of 0 or over 16 MiB.
    """
    if len(first_bytes) < BUNDLE_PREFIX_BYTES:
        raise VerificationError(
            f"not a sysupd bundle: shorter than its {BUNDLE_PREFIX_BYTES}-byte prefix"
        )
    if first_bytes[:8] != BUNDLE_MAGIC:
        raise VerificationError("not a sysupd bundle: wrong magic bytes")
    length = int.from_bytes(first_bytes[8:BUNDLE_PREFIX_BYTES], "big")
    if length == 0:
        raise VerificationError("bundle header length is 0")
    if length > MAX_HEADER_BYTES:
        raise VerificationError(
            f"bundle header length {length} exceeds the limit of {MAX_HEADER_BYTES} bytes"
        )
    return length


def decode_bundle_header(raw: bytes) -> BundleHeader:
    """The header carried in ``raw`` (the H bytes after the prefix), checked for shape only.

    Raises:
        VerificationError: not UTF-8 JSON, or not exactly the documented keys and types.
    """
    if len(raw) > MAX_HEADER_BYTES:
        _bad(f"is {len(raw)} bytes, over the limit of {MAX_HEADER_BYTES}")
    try:
        document = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError as exc:
        raise VerificationError("bundle header is not UTF-8") from exc
    except RecursionError as exc:
        raise VerificationError("bundle header is nested too deeply") from exc
    except ValueError as exc:
        raise VerificationError(f"bundle header is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        _bad("is not a JSON object")
    version = document.get("format")
    if version == 1 and type(version) is int:
        _bad(
            "format 1 is no longer supported: it carries no timestamp or snapshot metadata. "
            "Make the bundle again with this release tool ('sysupd release bundle')"
        )
    if type(version) is not int or version != BUNDLE_FORMAT:
        _bad(f"format {version!r} is not supported (expected {BUNDLE_FORMAT})")
    for key in _KEYS:
        if key not in document:
            _bad(f"lacks {key!r}")
    for key in document:
        if key not in _KEYS:
            _bad(f"has an unknown key {key!r}")
    roots = document["roots"]
    if not isinstance(roots, list) or not roots:
        _bad("'roots' is not a non-empty list")
    for index, text in enumerate(roots):
        if not isinstance(text, str) or not text:
            _bad(f"'roots'[{index}] is not a non-empty string")
        _check_utf8(text, f"'roots'[{index}]")
    return BundleHeader(
        target=_text(document, "target"),
        roots=tuple(roots),
        timestamp=_text(document, "timestamp"),
        snapshot=_text(document, "snapshot"),
        targets=_text(document, "targets"),
        releases=_text(document, "releases"),
        chunks=_chunk_list(_text(document, "chunks", allow_empty=True)),
    )


def _text(document: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = document[key]
    if not isinstance(value, str) or (not value and not allow_empty):
        _bad(f"{key!r} is not a non-empty string")
    _check_utf8(value, repr(key))
    return value


def _check_utf8(value: str, name: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which are no text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise VerificationError(f"bundle header {name} is not valid Unicode text") from exc


def _chunk_list(encoded: str) -> bytes:
    try:
        chunks = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise VerificationError("bundle header 'chunks' is not valid base64") from exc
    if len(chunks) % CHUNK_DIGEST_BYTES:
        _bad(f"'chunks' is {len(chunks)} bytes, not a whole number of SHA-256 digests")
    return chunks


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _bad(problem: str) -> NoReturn:
    raise VerificationError(f"bundle header {problem}")
