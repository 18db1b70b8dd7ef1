"""Every unsafe, over-size or broken tree payload is refused, and nothing escapes the slot.

Each test hand-crafts the archive, expects ``VerificationError`` (or ``InstallError`` for the
slot's own faults), and checks that nothing was written outside the slot directory, that no link
or special file exists inside it, and that no file descriptor leaked.
"""

from __future__ import annotations

import errno
import io
import os
import random
import stat
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import pytest
import zstandard

from sysupd.errors import InstallError, SysupdError, VerificationError
from sysupd.slots.extract import ExtractLimits, extract_tree
from tests.test_tree_extract import (
    LIMITS,
    Member,
    MiB,
    dir_member,
    file_member,
    one_way,
    open_fds,
    tar_bytes,
    zstd_bytes,
)

END = b"\0" * 1024  # the end-of-archive blocks


@dataclass(frozen=True)
class Slot:
    dest: Path
    outside: Path  # a sibling of dest that must stay empty

    def refuse(
        self,
        data: bytes | BinaryIO,
        match: str,
        *,
        limits: ExtractLimits = LIMITS,
        compression: Literal["none", "zstd"] = "none",
        error: type[SysupdError] = VerificationError,
    ) -> None:
        """Extract, expect ``error`` matching ``match``, and check nothing escaped or leaked."""
        source = one_way(data) if isinstance(data, bytes) else data
        before = open_fds()
        with pytest.raises(error, match=match):
            extract_tree(source, self.dest, limits, compression=compression)
        assert open_fds() == before
        assert_contained(self)


def assert_contained(slot: Slot) -> None:
    assert sorted(path.name for path in slot.dest.parent.iterdir()) == sorted(
        [slot.dest.name, slot.outside.name]
    )
    assert list(slot.outside.iterdir()) == []
    for path in slot.dest.rglob("*"):
        kind = path.lstat().st_mode
        assert stat.S_ISREG(kind) or stat.S_ISDIR(kind), f"{path} is neither file nor directory"
        assert not kind & (stat.S_ISUID | stat.S_ISGID), f"{path} is setuid or setgid"


@pytest.fixture
def slot(tmp_path: Path) -> Slot:
    made = Slot(tmp_path / "slot", tmp_path / "outside")
    made.dest.mkdir()
    made.outside.mkdir()
    return made


def special(name: str, kind: bytes, **fields: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info, None


def header(info: tarfile.TarInfo, tar_format: Literal[0, 1, 2] = tarfile.GNU_FORMAT) -> bytes:
    return info.tobuf(tar_format, "utf-8", "surrogateescape")


def with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def zeros_zstd(*, before: bytes, zero_bytes: int, after: bytes) -> bytes:
    """``before`` + ``zero_bytes`` zeros + ``after``, zstd-compressed without holding the zeros."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = bytes(MiB)
    parts = [compressor.compress(before)]
    for _ in range(zero_bytes // MiB):
        parts.append(compressor.compress(chunk))
    parts += [compressor.compress(after), compressor.flush()]
    return b"".join(parts)


# Paths that leave the tree.


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "a/b/../../../evil", ".."])
def test_dotdot_member(slot: Slot, name: str) -> None:
    slot.refuse(tar_bytes([file_member("a/b/ok"), file_member(name, b"x")]), r"'\.\.'")


def test_absolute_path(slot: Slot) -> None:
    slot.refuse(tar_bytes([file_member(f"{slot.outside}/abs", b"x")]), "absolute")


def test_symlink(slot: Slot) -> None:
    link = special("link", tarfile.SYMTYPE, linkname=str(slot.outside))
    slot.refuse(tar_bytes([link, file_member("link/evil", b"x")]), "symbolic link")


def test_hardlink(slot: Slot) -> None:
    target = file_member("a", b"data")
    slot.refuse(tar_bytes([target, special("b", tarfile.LNKTYPE, linkname="a")]), "hard link")


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device")],
)
def test_device_node(slot: Slot, kind: bytes, what: str) -> None:
    slot.refuse(tar_bytes([special("dev", kind, devmajor=1, devminor=3)]), what)


def test_fifo(slot: Slot) -> None:
    slot.refuse(tar_bytes([special("pipe", tarfile.FIFOTYPE)]), "FIFO")


@pytest.mark.parametrize("kind", [tarfile.CONTTYPE, b"Z", b"V"])
def test_other_member_types(slot: Slot, kind: bytes) -> None:
    slot.refuse(tar_bytes([special("odd", kind)], tarfile.GNU_FORMAT), "refused")


def test_gnu_sparse_member(slot: Slot) -> None:
    slot.refuse(tar_bytes([special("holes", tarfile.GNUTYPE_SPARSE)], tarfile.GNU_FORMAT), "sparse")


@pytest.mark.parametrize(
    "pax",
    [
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "9"},
        {"GNU.sparse.map": "0,4", "GNU.sparse.size": "9"},
        {"GNU.sparse.size": "9"},
    ],
)
def test_pax_sparse_member_is_refused_before_its_map_is_read(
    slot: Slot, pax: dict[str, str]
) -> None:
    info, _ = file_member("holes", b"")
    info.size = 512
    info.pax_headers = pax
    # A 1.0 map that claims a billion entries: tarfile would read it into memory to the end.
    sparse_map = b"1000000000\n" + b"0\n" * 40_000
    data = header(info, tarfile.PAX_FORMAT) + sparse_map + END
    started = time.monotonic()
    slot.refuse(data, "sparse")
    assert time.monotonic() - started < 1


# Modes.


@pytest.mark.parametrize(
    "member",
    [
        file_member("suid", b"x", mode=0o4755),
        file_member("sgid", b"x", mode=0o2755),
        dir_member("sgid-dir", mode=0o2775),
    ],
    ids=["setuid file", "setgid file", "setgid directory"],
)
def test_setuid_and_setgid_bits(slot: Slot, member: Member) -> None:
    slot.refuse(tar_bytes([member]), "setuid or setgid")


# Names.


@pytest.mark.parametrize("name", [".", "./", "./.", "a/.."])
def test_names_that_are_only_dot(slot: Slot, name: str) -> None:
    slot.refuse(tar_bytes([dir_member(name)]), r"only '\.'|'\.\.'")


def test_empty_name(slot: Slot) -> None:
    slot.refuse(tar_bytes([file_member("", b"x")]), "empty")


def test_nul_byte_in_name(slot: Slot) -> None:
    info, data = file_member("plain", b"x")
    info.pax_headers = {"path": "evil\x00name"}
    slot.refuse(tar_bytes([(info, data)]), "NUL")


def test_path_too_deep(slot: Slot) -> None:
    slot.refuse(tar_bytes([file_member("d/" * 100 + "f", b"x")]), "deeper")


def test_component_too_long(slot: Slot) -> None:
    slot.refuse(tar_bytes([file_member("a/" + "n" * 300, b"x")]), "longer than 255")


def test_oversized_extended_header(slot: Slot) -> None:
    slot.refuse(tar_bytes([file_member("p/" * 6000 + "f", b"x")]), "extended header")


def test_chained_extended_headers(slot: Slot) -> None:
    long_name = "n" * 300
    full = header(file_member(long_name, b"")[0], tarfile.GNU_FORMAT)
    longname_record = full[:1024]  # an 'L' header and its one block of name
    data = longname_record * 5000 + full + END
    slot.refuse(data, "nested too deeply|truncated or corrupt")


# Duplicates and clashes.


@pytest.mark.parametrize(
    ("first", "second"),
    [("a", "a"), ("a/b", "a/./b"), ("a/b", "./a//b"), ("x", "x/")],
)
def test_duplicate_file_names(slot: Slot, first: str, second: str) -> None:
    members = [file_member(first, b"first"), file_member(second, b"second")]
    slot.refuse(tar_bytes(members, tarfile.GNU_FORMAT), "appears twice")
    assert (slot.dest / first).read_bytes() == b"first"


@pytest.mark.parametrize(("first", "second"), [("d", "d"), ("d/e", "./d/./e/")])
def test_duplicate_directory_names(slot: Slot, first: str, second: str) -> None:
    slot.refuse(tar_bytes([dir_member(first), dir_member(second)]), "appears twice")


def test_file_then_directory_of_the_same_name(slot: Slot) -> None:
    slot.refuse(tar_bytes([file_member("x", b"f"), dir_member("x")]), "directory where the file")


def test_directory_then_file_of_the_same_name(slot: Slot) -> None:
    slot.refuse(tar_bytes([dir_member("x"), file_member("x", b"f")]), "file where the directory")


def test_member_under_a_file(slot: Slot) -> None:
    members = [file_member("x", b"f"), file_member("x/y/z", b"under")]
    slot.refuse(tar_bytes(members), "under 'x', which is a file")


def test_directory_with_data(slot: Slot) -> None:
    info, _ = dir_member("d")
    info.size = 512
    slot.refuse(header(info) + b"\0" * 512 + END, "directory with data")


# Sizes.


def test_file_larger_than_the_limit_is_refused_before_writing(slot: Slot) -> None:
    data = tar_bytes([file_member("big", bytes(2 * MiB))])
    slot.refuse(data, "more than the 1048576 bytes", limits=ExtractLimits(max_total_bytes=MiB))
    assert not (slot.dest / "big").exists()


def test_files_together_larger_than_the_limit(slot: Slot) -> None:
    members = [file_member(f"part{index}", bytes(400 * 1024)) for index in range(3)]
    slot.refuse(tar_bytes(members), "part2", limits=ExtractLimits(max_total_bytes=MiB))
    assert sum(path.stat().st_size for path in slot.dest.iterdir()) <= MiB


def test_too_many_members(slot: Slot) -> None:
    members = [file_member(f"f{index}") for index in range(5)]
    limits = ExtractLimits(max_total_bytes=MiB, max_entries=4)
    slot.refuse(tar_bytes(members), "more than the 4 members", limits=limits)


def test_zstd_bomb_member(slot: Slot) -> None:
    info, _ = file_member("bomb", b"")
    info.size = 200 * MiB
    data = zeros_zstd(before=header(info), zero_bytes=200 * MiB, after=END)
    assert len(data) < MiB
    started = time.monotonic()
    slot.refuse(data, "more than", limits=ExtractLimits(MiB), compression="zstd")
    assert time.monotonic() - started < 2
    assert sum(path.stat().st_size for path in slot.dest.rglob("*")) <= MiB


def test_zstd_bomb_of_bare_zeros(slot: Slot) -> None:
    data = zeros_zstd(before=b"", zero_bytes=200 * MiB, after=b"")
    started = time.monotonic()
    slot.refuse(data, "after its end", limits=ExtractLimits(MiB), compression="zstd")
    assert time.monotonic() - started < 2


def test_header_claiming_less_than_it_holds(slot: Slot) -> None:
    info, _ = file_member("short", b"")
    info.size = 10
    data = header(info) + b"A" * 4096 + END
    slot.refuse(data, "truncated or corrupt")


def test_negative_size(slot: Slot) -> None:
    block = bytearray(header(file_member("neg", b"")[0], tarfile.USTAR_FORMAT))
    block[124:136] = b"\xff" * 12  # base-256, i.e. -1
    slot.refuse(with_checksum(block) + END, "negative size")


# Broken archives.


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_random_bytes(slot: Slot, compression: Literal["none", "zstd"]) -> None:
    data = random.Random(3).randbytes(64 * 1024)
    slot.refuse(data, "truncated or corrupt", compression=compression)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_empty_input(slot: Slot, compression: Literal["none", "zstd"]) -> None:
    slot.refuse(b"", "truncated or corrupt", compression=compression)


GOOD = tar_bytes([dir_member("d"), file_member("d/a", b"a" * 3000), file_member("d/b", b"b")])


@pytest.mark.parametrize(
    "cut",
    [100, 512 + 100, 1024 + 1500, 1024 + 3072 + 200, 1024 + 3072 + 1024],
    ids=["first header", "second header", "file data", "last header", "before end blocks"],
)
def test_truncated_archive(slot: Slot, cut: int) -> None:
    assert GOOD[1024 + 3072 + 1024 :].count(0) == len(GOOD) - (1024 + 3072 + 1024)
    slot.refuse(GOOD[:cut], "truncated or corrupt")


def test_truncated_zstd_archive(slot: Slot) -> None:
    data = zstd_bytes(tar_bytes([file_member("r", random.Random(4).randbytes(100_000))]))
    slot.refuse(data[: len(data) // 2], "truncated or corrupt", compression="zstd")


def test_garbage_after_the_end(slot: Slot) -> None:
    slot.refuse(GOOD + b"trailing junk", "data after its end-of-archive block")


def test_garbage_after_the_zstd_frame(slot: Slot) -> None:
    data = zstd_bytes(GOOD) + b"trailing junk"
    slot.refuse(data, "truncated or corrupt", compression="zstd")


def test_source_errors_pass_through_unchanged(slot: Slot) -> None:
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise OSError(errno.ECONNRESET, "the upload broke off")

    with pytest.raises(OSError, match="broke off") as caught:
        extract_tree(io.BufferedReader(Failing()), slot.dest, LIMITS)
    assert not isinstance(caught.value, SysupdError)
    assert_contained(slot)


# The slot itself.


def test_dest_not_empty(slot: Slot) -> None:
    (slot.dest / "old").write_bytes(b"keep")
    slot.refuse(tar_bytes([file_member("new", b"x")]), "not empty", error=InstallError)
    assert [path.name for path in slot.dest.iterdir()] == ["old"]
    assert (slot.dest / "old").read_bytes() == b"keep"


def test_dest_missing(slot: Slot) -> None:
    slot.dest.rmdir()
    with pytest.raises(InstallError, match="cannot be opened"):
        extract_tree(one_way(tar_bytes([])), slot.dest, LIMITS)


def test_full_disk(small_disk: Path) -> None:
    slot = Slot(small_disk / "slot", small_disk / "outside")
    slot.dest.mkdir()
    slot.outside.mkdir()
    data = tar_bytes([file_member("fits", b"x" * 1000), file_member("huge", bytes(4 * MiB))])
    slot.refuse(data, "no space left", error=InstallError)
    assert os.statvfs(small_disk).f_bfree == 0
