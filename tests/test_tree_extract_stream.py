"""The tree extractor's own tar reader: few large reads, pax records parsed here, all durable.

Archives are built with tarfile, or crafted block by block where tarfile would not write them.
"""

from __future__ import annotations

import errno
import gc
import io
import os
import stat
import tarfile
import threading
import tracemalloc
from pathlib import Path

import pytest

from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.engine.stream import VerifiedReader
from sysupd.errors import InstallError, VerificationError
from sysupd.slots import _durability, _treewriter
from sysupd.slots.base import PayloadSpec
from sysupd.slots.directory import DirectorySlot
from sysupd.slots.extract import extract_tree
from tests.test_tree_extract import LIMITS, MiB, dir_member, file_member, one_way, tar_bytes
from tests.test_tree_extract_bad_inputs import END, header


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    slot = tmp_path / "slot"
    slot.mkdir()
    return slot


class CountingSource(io.RawIOBase):
    """A one-way stream that counts the reads asked of it."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        count = min(len(buffer), len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def test_file_data_moves_in_large_reads(dest: Path) -> None:
    files = [file_member(f"d/f{index}", os.urandom(MiB)) for index in range(8)]
    source = CountingSource(tar_bytes(files))
    extract_tree(source, dest, LIMITS)  # type: ignore[arg-type]
    for info, data in files:
        assert (dest / info.name).read_bytes() == data
    # tarfile's stream mode took one read per 10 KiB record: over 800 here.
    assert source.reads < 8 * 4 + 40


def test_reads_of_one_byte_at_a_time(dest: Path) -> None:
    files = [file_member("a", b"x" * 1500), file_member("b/c", b"y" * 10)]
    data = tar_bytes(files)

    class Trickle(CountingSource):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            return super().readinto(buffer[:1])

    extract_tree(io.BufferedReader(Trickle(data), buffer_size=1), dest, LIMITS)
    assert (dest / "a").read_bytes() == b"x" * 1500
    assert (dest / "b/c").read_bytes() == b"y" * 10


def test_pax_size_and_mtime_records_are_used(dest: Path) -> None:
    info = tarfile.TarInfo("big")
    info.size = 0  # the ustar field; the pax record says 5
    info.pax_headers = {"size": "5", "mtime": "1234.5"}
    data = header(info, tarfile.PAX_FORMAT) + b"hello".ljust(512, b"\0") + END
    with tarfile.open(fileobj=io.BytesIO(data)) as check:  # tarfile reads it the same way
        assert check.getmember("big").size == 5
    extract_tree(one_way(data), dest, LIMITS)
    assert (dest / "big").read_bytes() == b"hello"
    assert (dest / "big").stat().st_mtime == 1234.5


def test_global_pax_headers_apply_to_later_members(dest: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "4321"}
    ) as tar:
        for name in ("one", "two"):
            info, _ = file_member(name, name.encode())
            tar.addfile(info, io.BytesIO(name.encode()))
    extract_tree(one_way(buffer.getvalue()), dest, LIMITS)
    assert (dest / "one").stat().st_mtime == (dest / "two").stat().st_mtime == 4321


@pytest.mark.parametrize(
    "record",
    [b"9 path=ab", b"x path=ab\n", b"99 path=ab\n", b"11 pathab\n", b"3 \n", b"7 =abc\n"],
    ids=["no newline", "no length", "too long", "no equals", "too short", "no keyword"],
)
def test_malformed_pax_records(tmp_path: Path, record: bytes) -> None:
    extended = tarfile.TarInfo("././@PaxHeader")
    extended.type = tarfile.XHDTYPE
    extended.size = len(record)
    data = (
        header(extended, tarfile.USTAR_FORMAT)
        + record.ljust(512, b"\0")
        + tar_bytes([file_member("f", b"x")])
    )
    dest = tmp_path / "slot"
    dest.mkdir()
    with pytest.raises(VerificationError, match="truncated or corrupt"):
        extract_tree(one_way(data), dest, LIMITS)


def test_every_file_and_directory_is_fsynced(monkeypatch: pytest.MonkeyPatch, dest: Path) -> None:
    synced: set[int] = set()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    monkeypatch.setattr(os, "fsync", fsync)
    names = [f"d{index % 5}/e{index % 3}/f{index}" for index in range(300)]
    extract_tree(one_way(tar_bytes([file_member(n, n.encode()) for n in names])), dest, LIMITS)
    monkeypatch.undo()
    written = {path.stat().st_ino for path in dest.rglob("*")} | {dest.stat().st_ino}
    assert written <= synced


def test_directories_are_fsynced_beside_the_writing_not_in_its_way(
    monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    """A directory left by the writer is fsynced with the next batch of files, on the syncer's
    thread: on the writer's it stalled the file creation behind it (a quarter of the writer
    thread's time in a tree of 35,000 files). Only the slot directory, last, is the writer's."""
    threads: dict[int, str] = {}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        details = os.fstat(fd)
        if stat.S_ISDIR(details.st_mode):
            threads[details.st_ino] = threading.current_thread().name

    monkeypatch.setattr(os, "fsync", fsync)
    names = [f"d{index % 7}/e{index % 3}/f{index}" for index in range(200)]
    extract_tree(one_way(tar_bytes([file_member(n, n.encode()) for n in names])), dest, LIMITS)
    monkeypatch.undo()
    directories = {path.stat().st_ino for path in dest.rglob("*") if path.is_dir()}
    assert len(directories) == 7 * 3 + 7
    assert {threads[inode] for inode in directories} == {"sysupd-tree-sync"}
    assert threads[dest.stat().st_ino] == "sysupd-tree-writer"


def test_directory_slot_verifies_ahead_and_leaves_no_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked: list[int] = []
    real = VerifiedReader.read_ahead

    def spy(self: VerifiedReader, chunks: int = 1) -> None:
        asked.append(chunks)
        real(self, chunks)

    monkeypatch.setattr(VerifiedReader, "read_ahead", spy)
    files = [file_member(f"f{index}", os.urandom(100_000)) for index in range(10)]
    payload = tar_bytes(files)
    chunk = 64 << 10
    spec = PayloadSpec("tree", "none", 10 * 100_000, len(payload), "0" * 64, entries=10)
    bundle = tmp_path / "payload"
    for sent in (payload, payload[:-700_000] + bytes(700_000)):  # good, then tampered
        bundle.write_bytes(sent)
        verifier = ChunkVerifier(chunk_digests(payload, chunk), chunk, len(payload))
        slot = DirectorySlot("B", tmp_path / "B")
        with bundle.open("rb") as source, VerifiedReader(source, verifier) as reader:
            if sent is payload:
                slot.install(reader, spec)
                assert reader.complete
            else:
                with pytest.raises(VerificationError, match="does not match"):
                    slot.install(reader, spec)
                assert list((tmp_path / "B").iterdir()) == []
        gc.collect()
        assert [t for t in threading.enumerate() if t.name == "sysupd-verify"] == []
    assert asked == [1, 1]


def writer_threads() -> list[threading.Thread]:
    names = ("sysupd-tree-writer", "sysupd-tree-sync")
    return [t for t in threading.enumerate() if t.name in names]


def test_a_source_error_mid_file_stops_the_writer(dest: Path) -> None:
    data = tar_bytes([file_member("a", os.urandom(3 * MiB)), file_member("b", b"b")])

    class Breaks(CountingSource):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.reads == 5:
                raise OSError(104, "the upload broke off")
            return super().readinto(buffer[: 256 << 10])

    with pytest.raises(OSError, match="broke off"):
        extract_tree(Breaks(data), dest, LIMITS)  # type: ignore[arg-type]
    assert writer_threads() == []
    assert [path.name for path in dest.iterdir()] in ([], ["a"])


def test_a_writer_error_comes_back_and_stops_it(small_disk: Path) -> None:
    dest = small_disk / "slot"
    dest.mkdir()
    members = [file_member(f"f{index}", os.urandom(MiB)) for index in range(6)]
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(InstallError, match="no space left in the slot while writing 'f"):
        extract_tree(one_way(tar_bytes(members)), dest, LIMITS)
    assert writer_threads() == []
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_clash_found_by_the_writer_is_raised_in_order(dest: Path) -> None:
    members = [file_member("x", b"first"), file_member("y", b"y"), file_member("x", b"again")]
    members += [file_member(f"later{index}", b"z") for index in range(50)]
    with pytest.raises(VerificationError, match="the file 'x' appears twice"):
        extract_tree(one_way(tar_bytes(members)), dest, LIMITS)
    assert (dest / "x").read_bytes() == b"first"
    assert writer_threads() == []


def test_file_data_in_flight_is_bounded(dest: Path) -> None:
    data = tar_bytes([file_member(f"f{index}", os.urandom(2 * MiB)) for index in range(16)])
    source = one_way(data)
    tracemalloc.start()
    try:
        extract_tree(source, dest, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    in_flight = _treewriter._QUEUED_BUFFERS * _treewriter.DATA_BYTES
    in_flight += _treewriter._QUEUED_SMALL * _treewriter.SMALL_BYTES
    assert peak < in_flight + 1.5 * MiB  # the buffers in flight, not the 32 MiB of files


def test_directories_in_a_row_are_synced_in_bounded_batches(
    monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    """Directories left wait for the next batch's fsync with the files: a run of them with no
    file between still goes in batches, so the descriptors held open stay bounded."""
    batches: list[int] = []
    real_submit = _durability.BatchSyncer.submit

    def submit(self: _durability.BatchSyncer, batch: list[int]) -> None:
        batches.append(len(batch))
        real_submit(self, batch)

    monkeypatch.setattr(_durability.BatchSyncer, "submit", submit)
    members = [dir_member(f"d{index:03}/e") for index in range(300)]
    members.append(file_member("last", b"x"))
    extract_tree(one_way(tar_bytes(members)), dest, LIMITS)
    monkeypatch.undo()
    assert sum(batches) == 2 * 300 + 1
    assert max(batches) <= _treewriter._FSYNC_BATCH_FILES
    assert len(list(dest.iterdir())) == 301


def test_the_extractor_runs_many_small_files_ahead_of_a_busy_writer(
    monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    """Each file takes a buffer of its own: small files take small ones, so while the writer
    is held up (here its first file's creation), the extracting thread queues some sixty
    files, not eight."""
    held, queued = threading.Event(), []
    real_open, real_begin = os.open, _treewriter.ThreadedTreeWriter.begin_file

    def slow_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_CREAT:
            assert held.wait(10)
        return real_open(path, flags, *args, **kwargs)

    def begin_file(self: _treewriter.ThreadedTreeWriter, entry: _treewriter.Entry) -> None:
        queued.append(entry.path)
        real_begin(self, entry)

    monkeypatch.setattr(os, "open", slow_open)
    monkeypatch.setattr(_treewriter.ThreadedTreeWriter, "begin_file", begin_file)
    names = [f"f{index:03}" for index in range(200)]
    data = tar_bytes([file_member(name, name.encode() * 300) for name in names])
    extracting = threading.Thread(target=extract_tree, args=(one_way(data), dest, LIMITS))
    extracting.start()
    try:
        for _ in range(200):  # until it has taken every small buffer (or 10 s)
            if len(queued) >= _treewriter._QUEUED_SMALL:
                break
            extracting.join(0.05)
        extracting.join(0.2)
        assert _treewriter._QUEUED_SMALL <= len(queued) < len(names)  # and waits for one
    finally:
        held.set()
        extracting.join()
    monkeypatch.undo()
    assert sorted(path.name for path in dest.iterdir()) == names


@pytest.mark.parametrize("failing", [1, 3], ids=["first batch", "a later batch"])
def test_a_failing_file_fsync_is_an_install_error_and_closes_everything(
    monkeypatch: pytest.MonkeyPatch, dest: Path, failing: int
) -> None:
    """Files are fsynced in batches on the syncer thread; its error comes back to the install."""
    real_fsync = os.fsync
    batches: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            batches.append(fd)
            if len(batches) == failing * _treewriter._FSYNC_BATCH_FILES:
                raise OSError(errno.EIO, "the disk went away")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    members = [file_member(f"f{index}", b"x") for index in range(5 * 64)]
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(InstallError, match="I/O error in the slot while writing 'files'"):
        extract_tree(one_way(tar_bytes(members)), dest, LIMITS)
    assert writer_threads() == []
    assert len(os.listdir("/proc/self/fd")) == before


def test_file_pages_are_dropped_once_durable(monkeypatch: pytest.MonkeyPatch, dest: Path) -> None:
    """A batch's writeback is started before its fsyncs, and after them its whole range is let
    go, so the page cache stays bounded."""
    events: list[tuple[str, int]] = []
    real_fsync, real_advise = os.fsync, os.posix_fadvise

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.fstat(fd).st_ino))

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        real_advise(fd, offset, length, advice)
        if (offset, length) == (0, 0):
            events.append(("advise", os.fstat(fd).st_ino))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "posix_fadvise", advise)
    names = [f"f{index}" for index in range(100)]
    extract_tree(one_way(tar_bytes([file_member(n, n.encode()) for n in names])), dest, LIMITS)
    monkeypatch.undo()
    for name in names:
        inode = (dest / name).stat().st_ino
        advised = [at for at, event in enumerate(events) if event == ("advise", inode)]
        assert len(advised) == 2  # writeback started, then the clean pages dropped
        assert advised[0] < events.index(("fsync", inode)) < advised[1]
