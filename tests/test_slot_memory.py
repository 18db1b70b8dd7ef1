"""The in-memory slot twin records what it was asked and fails as the real writers fail.

Each failure is staged twice: on a real writer (a real tmpfs that fills up, an fsync that
reports EIO) and on a ``MemorySlot`` told to fail the same way; both must raise the same error
and leave the slot wiped. Payloads go through the ``VerifiedReader`` from a file, as in the
engine.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from sysupd.errors import InstallError, VerificationError
from sysupd.slots.base import PayloadSpec, SlotWriter
from sysupd.slots.directory import DirectorySlot
from sysupd.slots.memory import InstallCall, MemorySlot
from sysupd.slots.raw import RawSlot
from tests import test_slot_directory as trees
from tests.test_slot_raw import MiB, install_from_file, raw_spec


def tree_install(slot: SlotWriter, tmp_path: Path, compression: str = "none") -> None:
    payload = trees.make_payload(compression)
    trees.install_from_file(slot, tmp_path, payload, payload, trees.spec_for(payload, compression))


def failing_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync of a regular file reports an I/O error, as a dying disk does."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_it_is_a_slot_writer_that_records_installs_and_wipes(tmp_path: Path) -> None:
    slot: SlotWriter = MemorySlot("B")
    image = os.urandom(3 * MiB + 5)
    seen = install_from_file(slot, tmp_path, image)
    assert isinstance(slot, MemorySlot)
    assert slot.data == image
    assert slot.installed == raw_spec(image)
    assert slot.installs == [InstallCall(raw_spec(image), len(image), None)]
    assert seen == [MiB, 2 * MiB, 3 * MiB, len(image)]  # as RawSlot reports progress
    assert slot.wiped == 0
    slot.wipe()
    assert slot.data == b""
    assert slot.installed is None
    assert slot.wiped == 1


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_tree_is_kept_as_the_archive_it_came_as(tmp_path: Path, compression: str) -> None:
    slot = MemorySlot("A")
    tree_install(slot, tmp_path, compression)
    assert slot.data == trees.make_payload(compression)
    assert slot.installed is not None
    assert slot.installed.kind == "tree"
    assert len(slot.data) == slot.installed.length


def test_a_tampered_payload_fails_in_the_reader_and_leaves_it_wiped(tmp_path: Path) -> None:
    slot = MemorySlot("B")
    install_from_file(slot, tmp_path, b"old" * 1000)
    image = os.urandom(MiB)
    tampered = image[:-1] + bytes([image[-1] ^ 1])
    with pytest.raises(VerificationError, match="does not match its signed hash"):
        install_from_file(slot, tmp_path, image, tampered)
    assert (slot.data, slot.installed, slot.wiped) == (b"", None, 1)
    last = slot.installs[-1]
    assert isinstance(last.error, VerificationError)
    assert last.written < len(image)


def test_a_payload_of_another_length_is_refused(tmp_path: Path) -> None:
    image = b"x" * 1000
    slot = MemorySlot("B")
    with pytest.raises(VerificationError, match="not its signed 999"):
        slot.install(io.BytesIO(image), PayloadSpec("raw", "none", 999, 999, "0" * 64))
    assert slot.wiped == 1


def test_it_reads_the_payload_to_its_end(tmp_path: Path) -> None:
    class Counting(io.BytesIO):
        ends = 0

        def read(self, size: int | None = -1, /) -> bytes:
            data = super().read(size)
            Counting.ends += not data
            return data

    image = b"y" * 200_000
    MemorySlot("B").install(Counting(image), raw_spec(image))
    assert Counting.ends >= 2  # the end of the image, then the one byte more expect_end asks


def test_a_full_disk_raises_what_the_raw_writer_raises(tmp_path: Path, tiny_disk: Path) -> None:
    image = os.urandom(2 * MiB)
    real_file = tiny_disk / "slot-B.img"
    real_file.write_bytes(b"")
    with pytest.raises(InstallError) as real:
        install_from_file(RawSlot("B", real_file), tmp_path, image)
    twin = MemorySlot("B", fail_write_at=MiB)
    with pytest.raises(InstallError) as fake:
        install_from_file(twin, tmp_path, image)
    assert str(fake.value) == str(real.value) == "no space left in slot B while writing the image"
    assert real_file.stat().st_size == 0
    assert (twin.data, twin.wiped) == (b"", 1)
    assert twin.installs[-1].written == MiB
    assert isinstance(twin.installs[-1].error, InstallError)


def test_a_broken_disk_says_io_error(tmp_path: Path) -> None:
    twin = MemorySlot("B", fail_write_at=0, fail_errno=errno.EIO)
    with pytest.raises(InstallError) as raised:
        install_from_file(twin, tmp_path, os.urandom(1000))
    assert str(raised.value) == "I/O error in slot B while writing the image"
    assert twin.installs[-1].written == 0


def test_a_full_disk_in_a_tree_says_no_space_as_the_directory_writer_does(
    tmp_path: Path, small_disk: Path
) -> None:
    big = {f"f{index}": os.urandom(MiB) for index in range(3)}
    tar = trees.make_tar(big)
    spec = PayloadSpec("tree", "none", 3 * MiB, len(tar), hashlib.sha256(tar).hexdigest(), 3)
    with pytest.raises(InstallError) as real:
        trees.install_from_file(DirectorySlot("B", small_disk / "B"), tmp_path, tar, tar, spec)
    twin = MemorySlot("B", fail_write_at=2 * MiB)
    with pytest.raises(InstallError) as fake:
        trees.install_from_file(twin, tmp_path, tar, tar, spec)
    words = "no space left in the slot while writing "
    assert str(real.value).startswith(words)
    assert str(fake.value) == words + "'files'"  # the twin does not unpack: no member name
    assert list((small_disk / "B").iterdir()) == []
    assert twin.data == b""


def test_a_failing_fsync_raises_what_the_directory_writer_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twin = MemorySlot("B", fail_fsync=True)
    with pytest.raises(InstallError) as fake:
        tree_install(twin, tmp_path)
    real_slot = tmp_path / "real-B"
    failing_fsync(monkeypatch)
    with pytest.raises(InstallError) as real:
        tree_install(DirectorySlot("B", real_slot), tmp_path)
    assert str(fake.value) == str(real.value) == "I/O error in the slot while writing 'files'"
    assert list(real_slot.iterdir()) == []
    assert (twin.data, twin.installed, twin.wiped) == (b"", None, 1)
    assert twin.installs[-1].written == twin.installs[-1].spec.length  # all of it, then fsync


def test_a_failing_fsync_raises_what_the_raw_writer_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = os.urandom(MiB)
    twin = MemorySlot("B", fail_fsync=True)
    with pytest.raises(InstallError) as fake:
        install_from_file(twin, tmp_path, image)
    real_file = tmp_path / "slot-B.img"
    real_file.write_bytes(b"old")
    failing_fsync(monkeypatch)
    with pytest.raises(InstallError) as real:
        install_from_file(RawSlot("B", real_file), tmp_path, image)
    assert str(fake.value) == str(real.value) == "I/O error in slot B while writing the image"
    assert real_file.stat().st_size == 0


def test_fail_write_at_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        MemorySlot("B", fail_write_at=-1)
