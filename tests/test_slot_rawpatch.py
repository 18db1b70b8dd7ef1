"""A delta install's raw slot writer: chunks in any order, every block read back after an fsync.

``RawPatch`` is driven directly with real files: content-defined-sized chunks of a random image
written shuffled, some kept (the slot held them), read back by the blocks of the image's chunk
list, and the storage made to lie on one read (``os.preadv`` wrapped) to show each kind of chunk
is checked from what the slot returns.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sysupd.core.chunks import ChunkList, chunk_digests
from sysupd.errors import InstallError
from sysupd.slots import _blockreadback
from sysupd.slots.raw import RawSlot
from sysupd.slots.rawpatch import RawPatch

KiB = 1 << 10
MiB = 1 << 20

Chunk = tuple[int, bytes]  # offset, bytes
BLOCK = 256 * KiB  # the chunk list's block size


def _image(size: int, seed: int = 7) -> tuple[bytes, list[Chunk]]:
    """A random image and its chunks, of 20 to 90 KiB each."""
    rng = random.Random(seed)
    image = rng.randbytes(size)
    chunks, at = [], 0
    while at < size:
        length = min(rng.randint(20 * KiB, 90 * KiB), size - at)
        chunks.append((at, image[at : at + length]))
        at += length
    return image, chunks


def _patch(
    slot: Path,
    image: bytes,
    chunks: list[Chunk],
    kept: set[int],
    order_seed: int = 3,
    block: int = BLOCK,
) -> None:
    """Write ``image`` into ``slot`` as a delta install would: chunks ``kept`` (numbers) are
    in the slot already, the others written in a shuffled order."""
    held = bytearray(len(image))
    for number in kept:
        offset, data = chunks[number]
        held[offset : offset + len(data)] = data
    slot.write_bytes(bytes(held))
    blocks = ChunkList(chunk_digests(image, block), block, len(image))
    patch = RawPatch(RawSlot("B", slot), blocks)
    try:
        rest = [n for n in range(len(chunks)) if n not in kept]
        random.Random(order_seed).shuffle(rest)
        for number in kept:
            offset, data = chunks[number]
            patch.keep(offset, len(data))
        for number in rest:
            offset, data = chunks[number]
            patch.write_at(offset, data)
        patch.finish()
    except BaseException:
        patch.abort()
        raise
    finally:
        patch.close()


@pytest.mark.parametrize("block", [BLOCK, 3 * MiB // 2, 8 * MiB], ids=["small", "pieces", "one"])
def test_chunks_written_in_any_order_and_kept_ones_make_the_image(
    tmp_path: Path, block: int
) -> None:
    """Blocks smaller than the chunks' spread, larger than one read (hashed a piece at a time),
    and one block for the whole image."""
    image, chunks = _image(3 * MiB + 12_345)
    slot = tmp_path / "slot-B.img"
    _patch(slot, image, chunks, kept=set(range(0, len(chunks), 3)), block=block)
    assert slot.read_bytes() == image


def test_bytes_placed_twice_over_a_block_or_past_the_image_are_refused(tmp_path: Path) -> None:
    image, chunks = _image(1 * MiB)
    slot = tmp_path / "slot-B.img"
    slot.write_bytes(bytes(len(image)))
    patch = RawPatch(RawSlot("B", slot), ChunkList(chunk_digests(image, BLOCK), BLOCK, len(image)))
    try:
        offset, data = chunks[0]
        patch.keep(offset, len(data))
        with pytest.raises(InstallError, match="slot B: bytes of block 0 were placed twice"):
            patch.keep(0, BLOCK)
        with pytest.raises(InstallError, match="past the image's end"):
            patch.keep(len(image) - 10, 20)
    finally:
        patch.abort()
        patch.close()


@pytest.mark.parametrize("which", ["written", "kept"])
def test_bad_storage_is_caught_in_every_kind_of_chunk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, which: str
) -> None:
    """A chunk written and one the slot held are both checked from what the slot returns."""
    image, chunks = _image(2 * MiB)
    kept = set(range(1, len(chunks), 4))
    number = next(
        n for n in range(len(chunks) // 2, len(chunks)) if (n in kept) == (which == "kept")
    )
    offset, data = chunks[number]
    bad = offset + len(data) // 2
    start = bad // BLOCK * BLOCK
    end = min(start + BLOCK, len(image)) - 1
    real_preadv = os.preadv

    def lying(fd: int, buffers: list[memoryview], at: int) -> int:
        count = real_preadv(fd, buffers, at)
        if at <= bad < at + count:
            buffers[0][bad - at] ^= 0x01
        return count

    monkeypatch.setattr(os, "preadv", lying)
    slot = tmp_path / "slot-B.img"
    with pytest.raises(InstallError, match=f"reads back differently in bytes {start}-{end}: bad"):
        _patch(slot, image, chunks, kept)
    monkeypatch.undo()
    assert not any(t.name == "sysupd-block-readback" for t in threading.enumerate())
    held = slot.read_bytes()
    assert held[: 64 * KiB] == bytes(64 * KiB)  # zeroed: no half image looks like a filesystem
    assert held[offset : offset + len(data)] == data  # the rest kept for the next attempt


def test_no_chunk_is_read_back_before_an_fsync_that_covered_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_blockreadback, "_BATCH_BYTES", 256 * KiB)
    image, chunks = _image(4 * MiB)
    slot = tmp_path / "slot-B.img"
    slot.touch()
    inode = slot.stat().st_ino
    lock = threading.Lock()
    written: list[tuple[int, int]] = []  # ranges written so far
    durable: list[tuple[int, int]] = []  # ranges written before the last fsync started
    late: list[tuple[int, int]] = []  # reads of bytes no fsync had covered
    covered: list[int] = []  # for each fsync, how many writes it covered

    def ours(fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == inode
        except OSError:
            return False

    def wrap(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(fd: int, *args: Any) -> Any:
            if not ours(fd):
                return call(fd, *args)
            if name == "fsync":
                with lock:
                    snapshot = list(written)
                result = call(fd)
                with lock:  # writes only grow: the fsync that saw most covers most
                    covered.append(len(snapshot))
                    if len(snapshot) > len(durable):
                        durable[:] = snapshot
                return result
            if name == "pwritev":
                time.sleep(0.002)  # a slow disk: the read-back catches up between batches
            result = call(fd, *args)
            with lock:
                if name == "pwritev":
                    written.append((args[1], result))
                elif name == "preadv" and not _covered(durable, args[1], result):
                    late.append((args[1], result))
            return result

        return wrapped

    for name in ("pwritev", "fsync", "preadv"):
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))
    _patch(slot, image, chunks, kept=set())
    monkeypatch.undo()
    assert slot.read_bytes() == image
    assert late == []
    # It read back behind the writer, batch by batch: fsyncs before the last write, not only
    # the writer's final one.
    assert sum(1 for count in covered if count < len(written)) > 2


def _covered(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    """Whether ``ranges`` (offset, length) cover every byte of ``offset``+``length``."""
    at = offset
    for start, size in sorted(ranges):
        if start <= at < start + size:
            at = start + size
        if at >= offset + length:
            return True
    return at >= offset + length


def test_a_failure_of_the_read_back_itself_fails_the_install_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image, chunks = _image(1 * MiB)

    def broken(fd: int, buffers: list[memoryview], at: int) -> int:
        raise ValueError("a bug in the read-back")

    monkeypatch.setattr(os, "preadv", broken)
    with pytest.raises(InstallError, match=r"reading it back failed unexpectedly: ValueError"):
        _patch(tmp_path / "slot-B.img", image, chunks, kept=set())
