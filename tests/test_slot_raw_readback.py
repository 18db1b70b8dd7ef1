"""The raw slot's read-back runs behind the writer, yet reads every byte only after an fsync.

The stretch after which the read-back worker catches up is made small here, so a few-MiB image
goes through many stretches. System calls are wrapped to record their order.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sysupd.errors import InstallError, VerificationError
from sysupd.slots import raw
from sysupd.slots.raw import RawSlot
from tests.test_slot_raw import CHUNK, MiB, install_from_file

STRETCH = 256 << 10


def readback_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sysupd-readback"]


@pytest.fixture(autouse=True)
def small_stretches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw, "_READBACK_BYTES", STRETCH)


@pytest.fixture
def slot_file(tmp_path: Path) -> Path:
    path = tmp_path / "slot-B.img"
    path.write_bytes(b"OLD" * 1000)
    return path


class Recorder:
    """Wraps write, fsync, ftruncate and preadv on the slot's descriptor, in call order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, slot: Path) -> None:
        self.events: list[tuple[str, int, int]] = []  # (what, offset or size, length)
        self._written = 0
        self._inode = slot.stat().st_ino
        self._lock = threading.Lock()
        for name in ("write", "fsync", "preadv", "ftruncate"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _ours(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == self._inode
        except OSError:
            return False

    def _wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(fd: int, *args: Any) -> Any:
            if not self._ours(fd):
                return call(fd, *args)
            if name == "fsync":  # durable: everything written before the call started
                with self._lock:
                    written = self._written
                result = call(fd)
                with self._lock:
                    self.events.append(("fsync", written, 0))
                return result
            if name == "write":
                time.sleep(0.002)  # a slow disk: the read-back catches up between stretches
            result = call(fd, *args)
            with self._lock:
                if name == "write":
                    self._written += result
                elif name == "ftruncate":
                    self._written = min(self._written, args[0])
                elif name == "preadv":
                    self.events.append(("preadv", args[1], result))
            return result

        return wrapped


def test_every_byte_is_read_back_after_an_fsync_that_covered_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slot_file: Path
) -> None:
    image = os.urandom(3 * MiB + 12_345)
    recorder = Recorder(monkeypatch, slot_file)
    install_from_file(RawSlot("B", slot_file), tmp_path, image)
    monkeypatch.undo()
    assert slot_file.read_bytes() == image
    durable = 0
    read = 0
    for what, offset, length in recorder.events:
        if what == "fsync":
            durable = max(durable, offset)
        else:
            assert offset == read, "read back in order, every byte once"
            assert offset + length <= durable, f"bytes {offset}+{length} read before an fsync"
            read += length
    assert read == len(image)
    fsyncs = [event for event in recorder.events if event[0] == "fsync"]
    assert len(fsyncs) > 3  # it read back behind the writer, stretch by stretch
    assert readback_threads() == []


def test_bad_storage_is_caught_in_any_stretch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slot_file: Path
) -> None:
    """The read-back hashes what the slot returns, not what was written."""
    image = os.urandom(2 * MiB)
    real_preadv = os.preadv

    def flaky(fd: int, buffers: list[memoryview], offset: int) -> int:
        count = real_preadv(fd, buffers, offset)
        if offset <= MiB + 7 < offset + count:
            buffers[0][MiB + 7 - offset] ^= 0x20
        return count

    monkeypatch.setattr(os, "preadv", flaky)
    with pytest.raises(InstallError, match="reads back differently: bad storage"):
        install_from_file(RawSlot("B", slot_file), tmp_path, image)
    monkeypatch.undo()
    assert slot_file.stat().st_size == 0
    assert readback_threads() == []


def test_a_failure_while_writing_stops_the_read_back(tmp_path: Path, slot_file: Path) -> None:
    image = os.urandom(2 * MiB)
    tampered = bytearray(image)
    tampered[MiB + 3 * CHUNK] ^= 1
    with pytest.raises(VerificationError, match="does not match"):
        install_from_file(RawSlot("B", slot_file), tmp_path, image, bytes(tampered))
    assert slot_file.stat().st_size == 0
    assert readback_threads() == []


def test_read_back_errors_are_install_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slot_file: Path
) -> None:
    real_preadv = os.preadv

    def failing(fd: int, buffers: list[memoryview], offset: int) -> int:
        if offset >= MiB:
            raise OSError(5, "Input/output error")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(InstallError, match="I/O error in slot B while reading back"):
        install_from_file(RawSlot("B", slot_file), tmp_path, os.urandom(2 * MiB))
    monkeypatch.undo()
    assert slot_file.stat().st_size == 0
    assert readback_threads() == []


def test_a_short_read_back_is_bad_storage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slot_file: Path
) -> None:
    real_preadv = os.preadv

    def short(fd: int, buffers: list[memoryview], offset: int) -> int:
        """A slot whose storage ends after 1 MiB."""
        if offset >= MiB:
            return 0
        return real_preadv(fd, [buffers[0][: MiB - offset]], offset)

    monkeypatch.setattr(os, "preadv", short)
    with pytest.raises(InstallError, match=rf"reads back only {MiB} of {2 * MiB} bytes"):
        install_from_file(RawSlot("B", slot_file), tmp_path, os.urandom(2 * MiB))
    monkeypatch.undo()
    assert readback_threads() == []


def test_one_stretch_reads_everything_back_after_the_final_fsync(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slot_file: Path
) -> None:
    image = os.urandom(2 * MiB + 5)
    monkeypatch.setattr(raw, "_READBACK_BYTES", len(image) + 1)
    recorder = Recorder(monkeypatch, slot_file)
    install_from_file(RawSlot("B", slot_file), tmp_path, image)
    monkeypatch.undo()
    assert recorder.events[0] == ("fsync", len(image), 0)
    assert [event[0] for event in recorder.events[1:]] == ["preadv"] * (len(recorder.events) - 1)


def test_each_stretch_is_uncached_before_and_after_its_read_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slot_file: Path
) -> None:
    """Before: so the read comes from the storage; after: so the page cache stays bounded."""
    image = os.urandom(2 * MiB)
    recorder = Recorder(monkeypatch, slot_file)
    real_advise = os.posix_fadvise

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        real_advise(fd, offset, length, advice)
        if recorder._ours(fd) and advice == os.POSIX_FADV_DONTNEED:
            with recorder._lock:
                recorder.events.append(("drop", offset, length))

    monkeypatch.setattr(os, "posix_fadvise", advise)
    install_from_file(RawSlot("B", slot_file), tmp_path, image)
    monkeypatch.undo()
    reads = [(offset, length) for what, offset, length in recorder.events if what == "preadv"]
    for offset, length in reads:
        at = recorder.events.index(("preadv", offset, length))
        before, after = recorder.events[:at], recorder.events[at + 1 :]
        assert any(w == "drop" and o <= offset and offset + length <= o + n for w, o, n in before)
        assert any(w == "drop" and o <= offset and offset + length <= o + n for w, o, n in after)
    assert sum(length for _, length in reads) == len(image)
