"""The bundle's framing: a round trip, and every malformed prefix or header refused by name."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sysupd.core.bundle_format import (
    BUNDLE_MAGIC,
    BUNDLE_PREFIX_BYTES,
    MAX_HEADER_BYTES,
    BundleHeader,
    decode_bundle_header,
    decode_bundle_prefix,
    encode_bundle_header,
)
from sysupd.errors import VerificationError

HEADER = BundleHeader(
    target="releases/demo-1.2.0.tar.zst",
    roots=('{"signed": 1}', '{"signed": "r\u00e9 2"}'),
    timestamp='{"signed": "timestamp"}',
    snapshot='{"signed": "snapshot"}',
    targets='{"signed": "targets"}',
    releases='{"signed": "releases"}',
    chunks=bytes(range(64)),
)


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": 2,
        "target": HEADER.target,
        "roots": list(HEADER.roots),
        "timestamp": HEADER.timestamp,
        "snapshot": HEADER.snapshot,
        "targets": HEADER.targets,
        "releases": HEADER.releases,
        "chunks": base64.b64encode(HEADER.chunks).decode(),
    }
    document.update(changes)
    return document


def _raw(document: object) -> bytes:
    return json.dumps(document).encode()


def test_round_trip() -> None:
    encoded = encode_bundle_header(HEADER)
    assert encoded[:8] == BUNDLE_MAGIC == b"SYSUPDB\x01"
    length = decode_bundle_prefix(encoded[:BUNDLE_PREFIX_BYTES])
    assert length == len(encoded) - BUNDLE_PREFIX_BYTES
    assert int.from_bytes(encoded[8:16], "big") == length
    assert decode_bundle_header(encoded[BUNDLE_PREFIX_BYTES:]) == HEADER
    # the prefix decoder looks at the first 16 bytes only
    assert decode_bundle_prefix(encoded + b"payload") == length
    body = json.loads(encoded[BUNDLE_PREFIX_BYTES:])
    assert list(body) == [
        "format",
        "target",
        "roots",
        "timestamp",
        "snapshot",
        "targets",
        "releases",
        "chunks",
    ]


def test_empty_chunk_list_round_trips() -> None:
    header = BundleHeader("releases/x.img", ("r",), "ts", "s", "t", "r", b"")
    encoded = encode_bundle_header(header)
    assert decode_bundle_header(encoded[BUNDLE_PREFIX_BYTES:]) == header


def test_encoding_refuses_an_oversized_header() -> None:
    huge = BundleHeader("releases/x", ("r" * MAX_HEADER_BYTES,), "ts", "s", "t", "r", b"")
    with pytest.raises(ValueError, match="at most"):
        encode_bundle_header(huge)


@pytest.mark.parametrize(
    ("first_bytes", "problem"),
    [
        (b"", "shorter than"),
        (BUNDLE_MAGIC + b"\x00" * 7, "shorter than"),
        (b"SYSUPDB\x02" + (10).to_bytes(8, "big"), "wrong magic"),
        (b"PK\x03\x04SYSU" + (10).to_bytes(8, "big"), "wrong magic"),
        (BUNDLE_MAGIC + (0).to_bytes(8, "big"), "length is 0"),
        (BUNDLE_MAGIC + (MAX_HEADER_BYTES + 1).to_bytes(8, "big"), "exceeds the limit"),
        (BUNDLE_MAGIC + b"\xff" * 8, "exceeds the limit"),
    ],
)
def test_bad_prefixes(first_bytes: bytes, problem: str) -> None:
    with pytest.raises(VerificationError, match=problem):
        decode_bundle_prefix(first_bytes)


def test_the_largest_allowed_header_length_passes_the_prefix() -> None:
    assert decode_bundle_prefix(BUNDLE_MAGIC + MAX_HEADER_BYTES.to_bytes(8, "big")) == (
        MAX_HEADER_BYTES
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
        (_raw([1, 2]), "not a JSON object"),
        (_raw("text"), "not a JSON object"),
        (_raw({k: v for k, v in _document().items() if k != "roots"}), "lacks 'roots'"),
        (_raw({k: v for k, v in _document().items() if k != "chunks"}), "lacks 'chunks'"),
        (_raw({k: v for k, v in _document().items() if k != "timestamp"}), "lacks 'timestamp'"),
        (_raw(_document(snapshot="")), "'snapshot' is not a non-empty string"),
        (_raw(_document(extra=1)), "unknown key 'extra'"),
        (_raw(_document(format=3)), "format 3 is not supported"),
        (_raw(_document(format=1)), "format 1 is no longer supported: it carries no timestamp"),
        (_raw({"format": 1, "target": "t"}), "format 1 is no longer supported"),
        (_raw(_document(format="2")), "format '2' is not supported"),
        (_raw(_document(format=True)), "format True is not supported"),
        (_raw(_document(format=1.0)), "format 1.0 is not supported"),
        (_raw(_document(target="")), "'target' is not a non-empty string"),
        (_raw(_document(target=5)), "'target' is not a non-empty string"),
        (_raw(_document(roots=[])), "'roots' is not a non-empty list"),
        (_raw(_document(roots="r1")), "'roots' is not a non-empty list"),
        (_raw(_document(roots=["r1", 2])), r"'roots'\[1\] is not a non-empty string"),
        (_raw(_document(targets=None)), "'targets' is not a non-empty string"),
        (_raw(_document(releases={"a": 1})), "'releases' is not a non-empty string"),
        (_raw(_document(chunks=7)), "'chunks' is not a non-empty string"),
        (_raw(_document(chunks="not base64!")), "not valid base64"),
        (_raw(_document(chunks="AAAA\n")), "not valid base64"),
        (_raw(_document(chunks="\u00e9AAA")), "not valid base64"),
        (_raw(_document(chunks=base64.b64encode(b"x" * 33).decode())), "whole number"),
        (b'{"format": NaN}', "not valid JSON"),
        (
            b'{"format":2,"format":2,"target":"t","roots":["r"],"targets":"t",'
            b'"releases":"r","chunks":""}',
            "duplicate key 'format'",
        ),
    ],
)
def test_bad_headers_are_refused_by_name(raw: bytes, problem: str) -> None:
    with pytest.raises(VerificationError, match=problem):
        decode_bundle_header(raw)


def test_an_oversized_header_is_refused_before_parsing() -> None:
    with pytest.raises(VerificationError, match="over the limit"):
        decode_bundle_header(b" " * (MAX_HEADER_BYTES + 1))


@pytest.mark.parametrize("key", ["timestamp", "snapshot", "target", "roots"])
def test_a_lone_surrogate_is_refused_by_name(key: str) -> None:
    """JSON's \\ud800 escape decodes to no text: refused here, never met later as a crash."""
    value: object = ["\ud800"] if key == "roots" else "\ud800"
    raw = json.dumps(_document(**{key: value})).encode()
    with pytest.raises(VerificationError, match="is not valid Unicode text"):
        decode_bundle_header(raw)
