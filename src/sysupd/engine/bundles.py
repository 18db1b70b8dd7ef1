"""Reading an offline bundle's signed metadata from the front of its stream.

The metadata is read with exact sizes (a stream may return less than asked), then verified by
the pure trust chain; the payload that follows is left in the stream for the chunk verifier.
For a file, the payload's length is checked against the signed length before any slot is
touched; for a download the verifying reader catches it at the end.
"""

from __future__ import annotations

import io
import os

from sysupd.core.bundle_format import (
    BUNDLE_PREFIX_BYTES,
    BundleHeader,
    decode_bundle_header,
    decode_bundle_prefix,
)
from sysupd.errors import AcquireError, VerificationError
from sysupd.sources.base import ByteSource

__all__ = ["check_payload_size", "read_bundle_header"]


def read_bundle_header(source: ByteSource) -> BundleHeader:
    """The bundle's header (unverified); ``source`` is left at the payload's first byte.

    Raises:
        VerificationError: not a bundle, or truncated in its header.
        AcquireError: the source failed (an ``OSError`` reading it included).
    """
    header_size = decode_bundle_prefix(_read_exactly(source, BUNDLE_PREFIX_BYTES, "prefix"))
    return decode_bundle_header(_read_exactly(source, header_size, "header"))


def _read_exactly(source: ByteSource, size: int, what: str) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:  # a stream may return less than asked for
        try:
            part = source.read(size - got)
        except OSError as exc:  # the source's fault, not the slot's
            raise AcquireError(f"the bundle could not be read: {exc.strerror or exc}") from exc
        if not part:
            break
        parts.append(part)
        got += len(part)
    if got != size:
        if what == "prefix" and not got:
            raise VerificationError("the file is empty, not a sysupd bundle")
        if what == "prefix":
            raise VerificationError(f"the file is not a sysupd bundle: it has only {got} bytes")
        raise VerificationError(f"the bundle is truncated in its {what}")
    return b"".join(parts)


def check_payload_size(source: ByteSource, length: int) -> None:
    """For a file: its payload is exactly the signed ``length`` (checked before any write).

    Raises:
        VerificationError: it is shorter or longer.
    """
    if not isinstance(source, io.IOBase):
        return  # not a file: the verifying reader still catches it
    try:
        left = os.fstat(source.fileno()).st_size - source.tell()
    except (OSError, ValueError):
        return  # not a file: the verifying reader still catches it
    if left < length:
        raise VerificationError(
            f"the bundle is truncated: its payload has {left} of {length} bytes"
        )
    if left > length:
        raise VerificationError(
            f"the bundle's payload is longer than its signed length ({left} > {length} bytes)"
        )
