"""Tree payloads that are allowed extract byte-identical, with safe modes, from a one-way stream.

Archives are built here with tarfile (and once with the system's ``tar``) and fed through a
non-seekable stream, as the verifier hands them over; results are checked on the real files.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from sysupd.slots.extract import ExtractLimits, ExtractStats, extract_tree

MiB = 1 << 20
MTIME = 1_700_000_000
LIMITS = ExtractLimits(max_total_bytes=64 * MiB)

Member = tuple[tarfile.TarInfo, bytes | None]


class _OneWay(io.RawIOBase):
    """A read-only, non-seekable view of some bytes, handed out in small pieces."""

    def __init__(self, data: bytes, piece: int = 7_001) -> None:
        self._data = memoryview(data)
        self._piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._piece, len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def one_way(data: bytes) -> BinaryIO:
    """A stream like the one the verifier hands over: sequential, no seek, no tell."""
    return io.BufferedReader(_OneWay(data))


def file_member(name: str, data: bytes = b"", mode: int = 0o644, mtime: int = MTIME) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    return info, data


def dir_member(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, MTIME
    return info, None


def tar_bytes(members: Iterable[Member], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    slot = tmp_path / "slot"
    slot.mkdir()
    return slot


BIG = random.Random(1).randbytes(5 * MiB)
TREE: list[Member] = [
    dir_member("top/"),
    dir_member("top/sub", mode=0o700),
    dir_member("top/sub/deeper/", mode=0o1777),
    file_member("top/empty"),
    file_member("top/run.sh", b"#!/bin/sh\necho hi\n", mode=0o700),
    file_member("top/group-exec", b"x", mode=0o610),
    file_member("top/sub/big.bin", BIG, mode=0o666),
    file_member("top/sub/deeper/note.txt", b"private\n", mode=0o600),
]
EXPECTED = {
    "top/empty": (b"", 0o644),
    "top/run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
    "top/group-exec": (b"x", 0o755),
    "top/sub/big.bin": (BIG, 0o644),
    "top/sub/deeper/note.txt": (b"private\n", 0o644),
}
EXPECTED_STATS = ExtractStats(
    files=5, directories=3, bytes_written=sum(len(data) for data, _ in EXPECTED.values())
)


def assert_tree(dest: Path) -> None:
    found = {str(path.relative_to(dest)) for path in dest.rglob("*")}
    assert found == {"top", "top/sub", "top/sub/deeper", *EXPECTED}
    for name in ("top", "top/sub", "top/sub/deeper"):
        assert (dest / name).is_dir()
        assert mode_of(dest / name) == 0o755
    for name, (data, mode) in EXPECTED.items():
        path = dest / name
        assert stat.S_ISREG(path.lstat().st_mode)
        assert path.read_bytes() == data, name
        assert mode_of(path) == mode, name
        assert path.stat().st_mtime == MTIME
        assert path.stat().st_uid == os.getuid()


def test_good_tree_extracts_byte_identical_with_safe_modes(dest: Path) -> None:
    before = open_fds()
    with umask(0o077):  # modes come from the mask, not from the process umask
        stats = extract_tree(one_way(tar_bytes(TREE)), dest, LIMITS)
    assert stats == EXPECTED_STATS
    assert_tree(dest)
    assert open_fds() == before


def test_zstd_tree_extracts_the_same(dest: Path) -> None:
    data = zstd_bytes(tar_bytes(TREE))
    stats = extract_tree(one_way(data), dest, LIMITS, compression="zstd")
    assert stats == EXPECTED_STATS
    assert_tree(dest)


def test_zstd_payload_of_several_frames(dest: Path) -> None:
    """Parallel compressors (pzstd, zstd --adapt) and concatenation write several frames."""
    data = tar_bytes(TREE)
    frames = b"".join(zstd_bytes(data[start : start + MiB]) for start in range(0, len(data), MiB))
    source = one_way(frames)
    assert extract_tree(source, dest, LIMITS, compression="zstd") == EXPECTED_STATS
    assert_tree(dest)
    assert source.read() == b""


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_other_tar_formats_extract(dest: Path, tar_format: int) -> None:
    assert extract_tree(one_way(tar_bytes(TREE, tar_format)), dest, LIMITS) == EXPECTED_STATS
    assert_tree(dest)


def test_source_is_read_to_its_end_and_left_open(dest: Path) -> None:
    source = one_way(tar_bytes(TREE))
    extract_tree(source, dest, LIMITS)
    assert source.read() == b""
    assert not source.closed


def test_exact_byte_limit_is_allowed(dest: Path) -> None:
    limits = ExtractLimits(max_total_bytes=EXPECTED_STATS.bytes_written, max_entries=len(TREE))
    assert extract_tree(one_way(tar_bytes(TREE)), dest, limits) == EXPECTED_STATS


def test_long_names_in_pax_and_gnu_headers(dest: Path) -> None:
    deep = "/".join(f"component-{index:02d}-" + "x" * 40 for index in range(12))
    members = [file_member(f"{deep}/file-" + "y" * 200, b"long")]
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        target = dest / str(tar_format)
        target.mkdir()
        extract_tree(one_way(tar_bytes(members, tar_format)), target, LIMITS)
        assert (target / deep / ("file-" + "y" * 200)).read_bytes() == b"long"


def test_unlisted_parents_are_created_and_may_be_listed_later(dest: Path) -> None:
    members = [file_member("x/y/z.txt", b"z"), dir_member("x/"), dir_member("./x/y")]
    stats = extract_tree(one_way(tar_bytes(members)), dest, LIMITS)
    assert stats == ExtractStats(files=1, directories=2, bytes_written=1)
    assert (dest / "x/y/z.txt").read_bytes() == b"z"
    assert mode_of(dest / "x") == mode_of(dest / "x/y") == 0o755


def test_many_files_in_scattered_order(dest: Path) -> None:
    """More files than one fsync batch, revisiting directories out of order."""
    rng = random.Random(2)
    names = [f"d{index % 7}/e{index % 3}/f{index}" for index in range(400)]
    rng.shuffle(names)
    members = [file_member(name, name.encode()) for name in names]
    before = open_fds()
    stats = extract_tree(one_way(tar_bytes(members)), dest, LIMITS)
    assert stats.files == 400
    assert stats.directories == 7 + 7 * 3
    for name in names:
        assert (dest / name).read_bytes() == name.encode()
    assert open_fds() == before


def test_archive_with_no_members(dest: Path) -> None:
    assert extract_tree(one_way(tar_bytes([])), dest, LIMITS) == ExtractStats(0, 0, 0)
    assert list(dest.iterdir()) == []


def test_mtime_out_of_range_is_left_unset(dest: Path) -> None:
    members = [file_member("old", b"o", mtime=-5), file_member("far", b"f", mtime=1 << 40)]
    extract_tree(one_way(tar_bytes(members, tarfile.GNU_FORMAT)), dest, LIMITS)
    assert (dest / "old").read_bytes() == b"o"
    assert (dest / "far").stat().st_mtime > MTIME


@pytest.mark.skipif(shutil.which("tar") is None, reason="no system tar")
def test_archive_made_by_system_tar(tmp_path: Path, dest: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc/app").mkdir(parents=True)
    (tree / "etc/app/conf").write_bytes(b"k=v\n")
    (tree / "bin").mkdir()
    (tree / "bin/tool").write_bytes(b"\x7fELF")
    (tree / "bin/tool").chmod(0o750)
    archive = subprocess.run(
        ["tar", "-C", str(tree), "-cf", "-", "etc", "bin"], check=True, capture_output=True
    ).stdout
    stats = extract_tree(one_way(archive), dest, LIMITS)
    assert stats == ExtractStats(files=2, directories=3, bytes_written=8)
    assert (dest / "etc/app/conf").read_bytes() == b"k=v\n"
    assert mode_of(dest / "bin/tool") == 0o755


def test_limits_refuse_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        ExtractLimits(max_total_bytes=-1)
