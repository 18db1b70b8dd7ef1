"""The chunk index format and the content-defined cutter: what a release tool writes, a device
reads exactly, and anything else is refused with what is wrong."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import struct
from pathlib import Path

import pytest

from sysupd.core.cdc import DEFAULT_PARAMS, StreamCutter
from sysupd.core.chunkindex import (
    INDEX_MAGIC,
    ChunkerParams,
    encode_index,
    parse_index,
    store_path,
    stored_bound,
    stored_digest,
)
from sysupd.delta.treestream import TreeTar
from sysupd.errors import VerificationError
from sysupd.release.payloads import pack_tree
from sysupd.slots.extract import ExtractLimits, extract_tree


def _index(chunks: list[bytes]) -> bytes:
    whole = b"".join(chunks)
    entries = [
        (hashlib.sha256(c).digest(), stored_digest(b"z" + c), len(c), len(c) + 9) for c in chunks
    ]
    return encode_index(len(whole), hashlib.sha256(whole).hexdigest(), DEFAULT_PARAMS, entries)


def test_an_index_reads_back_as_written() -> None:
    chunks = [os.urandom(n) for n in (20_000, 70_000, 5)]
    index = parse_index(_index(chunks))
    assert index.count == 3
    assert index.length == 90_005
    assert index.params == DEFAULT_PARAMS
    entry = index.entry(1)
    assert (entry.offset, entry.length) == (20_000, 70_000)
    assert entry.digest == hashlib.sha256(chunks[1]).digest()
    assert entry.stored_length == 70_009
    assert index.stored_bytes([0, 2]) == 20_009 + 14
    assert store_path(entry.digest) == f"chunks/{entry.address[:2]}/{entry.address}.zst"
    assert [index.span(n) for n in range(3)] == [(0, 20_000), (20_000, 70_000), (90_000, 5)]
    with pytest.raises(IndexError):
        index.entry(3)


def _with_header(data: bytes, **changes: object) -> bytes:
    (size,) = struct.unpack_from(">I", data, 8)
    header = json.loads(data[12 : 12 + size])
    header.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del header[key]
    text = json.dumps(header).encode()
    return data[:8] + struct.pack(">I", len(text)) + text + data[12 + size :]


def _huge_header(data: bytes) -> bytes:
    return data[:8] + struct.pack(">I", 1 << 30) + data[12:]


def _huge_chunker(data: bytes) -> bytes:
    return _with_header(data, min=1 << 30, max=1 << 30, avg=1 << 30)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda d: b"NOTANIDX" + d[8:], "magic", id="magic"),
        pytest.param(lambda d: d[:10], "magic", id="truncated-prefix"),
        pytest.param(
            lambda d: d[:8] + struct.pack(">I", 1 << 30) + d[12:],
            "header length",
            id="header-length",
        ),
        pytest.param(lambda d: d[:-1], "holds", id="truncated-entries"),
        pytest.param(lambda d: _with_header(d, format=2), "format 2", id="format"),
        pytest.param(lambda d: _with_header(d, chunker="rabin"), "rabin", id="chunker"),
        pytest.param(lambda d: _with_header(d, length=5), "add up to", id="length"),
        pytest.param(lambda d: _with_header(d, count=3), "states 3 chunks", id="count"),
        pytest.param(lambda d: _with_header(d, sha256="x" * 64), "SHA-256", id="sha256"),
        pytest.param(lambda d: _with_header(d, extra=1), "'extra'", id="unknown-field"),
        pytest.param(lambda d: _with_header(d, avg=None), "'avg'", id="missing-field"),
        pytest.param(lambda d: _with_header(d, max=True), "wrong type", id="bool"),
        pytest.param(
            lambda d: _with_header(d, min=1 << 30, max=1 << 30, avg=1 << 30),
            "sizes",
            id="huge-chunker",
        ),
        pytest.param(lambda d: d[:12] + b"{" * 5 + d[17:], "not JSON", id="not-json"),
    ],
)
def test_a_malformed_index_is_refused_naming_the_problem(damage: object, message: str) -> None:
    data = _index([os.urandom(30_000), os.urandom(40_000)])
    assert callable(damage)
    with pytest.raises(VerificationError, match=message):
        parse_index(damage(data))


def test_an_entry_out_of_range_is_refused() -> None:
    big = os.urandom(DEFAULT_PARAMS.max_bytes + 1)
    with pytest.raises(VerificationError, match="chunk 0 of the chunk index has"):
        parse_index(_index([big]))
    chunk = os.urandom(1000)
    entries = [(hashlib.sha256(chunk).digest(), bytes(16), 1000, stored_bound(1000) + 1)]
    data = encode_index(1000, hashlib.sha256(chunk).hexdigest(), DEFAULT_PARAMS, entries)
    with pytest.raises(VerificationError, match="stored in"):
        parse_index(data)
    assert data.startswith(INDEX_MAGIC)


def test_chunker_sizes_out_of_range_are_refused() -> None:
    with pytest.raises(VerificationError, match="min <= avg <= max"):
        ChunkerParams(100_000, 50_000, 200_000)


@pytest.mark.parametrize("piece", [777, 4096, 65_536, 1 << 20, 5 << 20])
def test_the_cutter_gives_the_same_chunks_however_the_stream_is_split(piece: int) -> None:
    data = random.Random(7).randbytes(3 << 20) + bytes(1 << 20)
    whole = StreamCutter(DEFAULT_PARAMS)
    expected = [*whole.feed(data), *whole.finish()]
    cutter = StreamCutter(DEFAULT_PARAMS)
    got: list[bytes] = []
    step = (
        piece if piece > 1 else 4096
    )  # one byte at a time would take a while; 4 KiB is odd enough
    for start in range(0, len(data), step):
        got.extend(cutter.feed(data[start : start + step]))
    got.extend(cutter.finish())
    assert got == expected
    assert b"".join(got) == data
    assert all(len(c) <= DEFAULT_PARAMS.max_bytes for c in got)
    assert all(len(c) >= DEFAULT_PARAMS.min_bytes for c in got[:-1])


def test_the_cutter_finds_the_same_chunks_after_an_insertion() -> None:
    data = random.Random(8).randbytes(2 << 20)
    moved = data[:500_000] + b"inserted" * 1000 + data[500_000:]
    before = set(_cut(data))
    after = _cut(moved)
    assert sum(1 for c in after if c not in before) <= 3


def _cut(data: bytes) -> list[bytes]:
    cutter = StreamCutter(DEFAULT_PARAMS)
    return [*cutter.feed(data), *cutter.finish()]


def test_a_tree_is_laid_out_as_the_release_tool_packs_it(tmp_path: Path) -> None:
    rng = random.Random(3)
    root = tmp_path / "tree"
    for n in range(120):
        path = root / f"d{n % 5}" / f"s{n % 3}" / f"file-{n}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.choice([0, 1, 511, 512, 513, 9000, 100_000])))
    (root / ("long-name-" * 20)).write_text("pax header")
    # Names at the edge of ustar's 100 bytes (a directory's counts its slash), and not ASCII:
    # the layout must know which members get a PAX header without making each header.
    for length in (99, 100, 101):
        (root / ("f" * length)).write_text("edge")
        (root / ("d" * length)).mkdir()
    (root / ("d" * 99) / "inside").write_text("under a 100-byte directory name")
    (root / "grüße").write_text("not ascii")
    (root / "d0" / "tool").write_text("#!/bin/sh\n")
    (root / "d0" / "tool").chmod(0o750)  # a header of another kind and mode
    (root / "empty").mkdir()
    (root / "not-a-member").symlink_to("d0")  # a tree on a device may hold one; no release does
    (root / "not-a-member").unlink()
    packed = io.BytesIO()
    pack_tree(root, packed, compress=False, chunk_size=1 << 20)
    tar = TreeTar(root)
    want = packed.getvalue()
    assert tar.length == len(want)
    assert b"".join(tar.stream()) == want
    for _ in range(500):
        offset = rng.randrange(len(want))
        length = rng.randrange(0, min(200_000, len(want) - offset) + 1)
        out = bytearray(b"\xff" * length)  # a reused buffer: every byte is written
        tar.read_into(offset, memoryview(out))
        assert out == want[offset : offset + length]
    with pytest.raises(OSError, match="outside"):
        tar.read_into(len(want) - 1, memoryview(bytearray(2)))
    tar.close()


def test_a_file_that_changed_since_the_walk_only_changes_its_own_bytes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a").write_bytes(b"a" * 5000)
    (root / "b").write_bytes(b"b" * 5000)
    tar = TreeTar(root)
    (root / "a").write_bytes(b"A" * 10)  # shrank
    data = b"".join(tar.stream())
    assert len(data) == tar.length
    assert b"b" * 5000 in data
    out = bytearray(b"\xff" * tar.length)  # a reused buffer: the missing bytes come as zeros
    tar.read_into(0, memoryview(out))
    assert out == data


def test_reading_a_tree_as_its_tar_leaves_the_files_access_times(tmp_path: Path) -> None:
    """A booted tree is read whole on every delta update: with its access times updated, each
    of its inodes would be left dirty, to be written back during the install."""
    root = tmp_path / "tree"
    root.mkdir()
    for name in ("a", "b"):
        (root / name).write_bytes(name.encode() * 3000)
        os.utime(root / name, ns=(1_000_000_000, 2_000_000_000))  # atime before mtime
    (root / "control").write_bytes(b"c")
    os.utime(root / "control", ns=(1_000_000_000, 2_000_000_000))
    (root / "control").read_bytes()  # relatime: a plain read updates it
    if (root / "control").stat().st_atime_ns == 1_000_000_000:
        pytest.skip("this filesystem does not update access times on reads (noatime)")
    tar = TreeTar(root)
    assert len(b"".join(tar.stream())) == tar.length
    tar.read_into(0, memoryview(bytearray(tar.length)))
    tar.close()
    assert [(root / name).stat().st_atime_ns for name in ("a", "b")] == [1_000_000_000] * 2


def test_a_tree_the_service_may_not_read_without_access_times_is_read_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_NOATIME is only for the file's owner (or CAP_FOWNER): where the kernel refuses it,
    the file is read all the same. (The refusal is staged: these tests run as root.)"""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a").write_bytes(b"a" * 3000)
    real_open = os.open

    def refusing_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_NOATIME:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real_open(path, flags, *args, **kwargs)

    tar = TreeTar(root)
    monkeypatch.setattr(os, "open", refusing_open)
    data = b"".join(tar.stream())
    out = bytearray(tar.length)
    tar.read_into(0, memoryview(out))
    tar.close()
    monkeypatch.undo()
    packed = io.BytesIO()
    pack_tree(root, packed, compress=False, chunk_size=1 << 20)
    assert data == out == packed.getvalue()


def test_an_installed_tree_is_laid_out_as_the_release_it_came_from(tmp_path: Path) -> None:
    # Modes a build tree may have (umask 002, private files) are stated as installed, so the
    # device's own tree gives the release's bytes again.
    root = tmp_path / "build"
    (root / "bin").mkdir(parents=True)
    (root / "bin").chmod(0o775)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o775)
    (root / "secret").write_bytes(b"x" * 3000)
    (root / "secret").chmod(0o600)
    packed = io.BytesIO()
    pack_tree(root, packed, compress=False, chunk_size=1 << 20)
    installed = tmp_path / "slot"
    installed.mkdir()
    packed.seek(0)
    extract_tree(packed, installed, ExtractLimits(max_total_bytes=1 << 20, max_entries=10))
    assert b"".join(TreeTar(installed).stream()) == packed.getvalue()
