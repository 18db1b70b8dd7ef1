"""Raw images install into a file slot exactly, or fail cleanly: too large, tampered, disk full.

Images are random bytes signed with a chunk list here and fed through the ``VerifiedReader``
from a file. The full disk is a real 1 MiB tmpfs; no loop or real block device is touched.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.engine.stream import VerifiedReader
from sysupd.errors import InstallError, VerificationError
from sysupd.slots.base import PayloadSpec, SlotWriter
from sysupd.slots.raw import RawSlot

MiB = 1 << 20
CHUNK = 64 << 10


def raw_spec(image: bytes) -> PayloadSpec:
    return PayloadSpec("raw", "none", len(image), len(image), hashlib.sha256(image).hexdigest())


def install_from_file(
    slot: SlotWriter,
    tmp_path: Path,
    signed: bytes,
    sent: bytes | None = None,
    spec: PayloadSpec | None = None,
) -> list[int]:
    """Install ``sent`` (default: ``signed``) from a file, checked against ``signed``."""
    payload = tmp_path / "image.payload"
    payload.write_bytes(signed if sent is None else sent)
    spec = spec or raw_spec(signed)
    verifier = ChunkVerifier(chunk_digests(signed, CHUNK), CHUNK, len(signed))
    seen: list[int] = []
    with payload.open("rb") as source, VerifiedReader(source, verifier) as reader:
        slot.install(reader, spec, progress=seen.append)
        assert reader.complete
    return seen


@pytest.fixture
def slot_file(tmp_path: Path) -> Path:
    path = tmp_path / "slot-B.img"
    path.write_bytes(b"OLD IMAGE " * 500_000)  # larger than the new ones: truncation shows
    return path


def test_image_installs_exactly(tmp_path: Path, slot_file: Path) -> None:
    image = os.urandom(3 * MiB + 12_345)
    seen = install_from_file(RawSlot("B", slot_file), tmp_path, image)
    assert slot_file.read_bytes() == image
    assert slot_file.stat().st_size == len(image)
    assert seen == [MiB, 2 * MiB, 3 * MiB, len(image)]


def test_memory_stays_flat(tmp_path: Path, slot_file: Path) -> None:
    image = os.urandom(24 * MiB)
    payload = tmp_path / "image.payload"
    payload.write_bytes(image)
    spec = raw_spec(image)
    chunk = 4 * MiB
    verifier = ChunkVerifier(chunk_digests(image, chunk), chunk, len(image))
    tracemalloc.start()
    try:
        with payload.open("rb") as source, VerifiedReader(source, verifier) as reader:
            RawSlot("B", slot_file).install(reader, spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Two 4 MiB chunk buffers (one verified ahead) and three 1 MiB copy buffers, not the image.
    assert peak < 12 * MiB
    assert slot_file.stat().st_size == len(image)


def test_empty_image(tmp_path: Path, slot_file: Path) -> None:
    install_from_file(RawSlot("B", slot_file), tmp_path, b"")
    assert slot_file.stat().st_size == 0


def test_image_larger_than_the_slot_is_refused_before_writing(
    tmp_path: Path, slot_file: Path
) -> None:
    before = slot_file.read_bytes()
    image = os.urandom(2 * MiB)
    with pytest.raises(InstallError, match="larger than slot B"):
        install_from_file(RawSlot("B", slot_file, max_bytes=MiB), tmp_path, image)
    assert slot_file.read_bytes() == before


def test_tampered_image_is_refused_and_the_slot_wiped(tmp_path: Path, slot_file: Path) -> None:
    image = os.urandom(MiB)
    tampered = bytearray(image)
    tampered[700_000] ^= 0x08
    with pytest.raises(VerificationError, match="does not match its signed hash"):
        install_from_file(RawSlot("B", slot_file), tmp_path, image, bytes(tampered))
    assert slot_file.stat().st_size == 0


def test_truncated_image_is_refused(tmp_path: Path, slot_file: Path) -> None:
    image = os.urandom(MiB)
    with pytest.raises(VerificationError, match="payload ended after"):
        install_from_file(RawSlot("B", slot_file), tmp_path, image, image[:-5])
    assert slot_file.stat().st_size == 0


def test_tree_payload_and_inconsistent_spec_are_refused(tmp_path: Path, slot_file: Path) -> None:
    before = slot_file.read_bytes()
    image = os.urandom(CHUNK)
    digest = hashlib.sha256(image).hexdigest()
    slot = RawSlot("B", slot_file)
    with pytest.raises(VerificationError, match="tree payload cannot go into a raw slot"):
        install_from_file(slot, tmp_path, image, spec=PayloadSpec("tree", "none", 1, 1, digest, 1))
    with pytest.raises(VerificationError, match="must equal its installed size"):
        install_from_file(
            slot, tmp_path, image, spec=PayloadSpec("raw", "none", 2 * CHUNK, CHUNK, digest)
        )
    assert slot_file.read_bytes() == before


def test_readback_mismatch_is_an_install_error(tmp_path: Path, slot_file: Path) -> None:
    """A spec whose hash the written bytes do not have (as bad storage would show)."""
    image = os.urandom(CHUNK * 2)
    slot = RawSlot("B", slot_file)
    lying = PayloadSpec("raw", "none", len(image), len(image), "0" * 64)
    payload = tmp_path / "image.payload"
    payload.write_bytes(image)
    # An unverified stream, so only the read-back can notice.
    with (
        payload.open("rb") as source,
        pytest.raises(InstallError, match="reads back differently: bad storage"),
    ):
        slot.install(source, lying)
    assert slot_file.stat().st_size == 0


def test_symlink_to_a_file_is_refused(tmp_path: Path, slot_file: Path) -> None:
    before = slot_file.read_bytes()
    link = tmp_path / "slot-link"
    link.symlink_to(slot_file)
    with pytest.raises(InstallError, match="symbolic link"):
        install_from_file(RawSlot("L", link), tmp_path, os.urandom(CHUNK))
    with pytest.raises(InstallError, match="symbolic link"):
        RawSlot("L", link).wipe()
    assert slot_file.read_bytes() == before


def test_missing_or_odd_slot_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="cannot be found"):
        RawSlot("B", tmp_path / "missing").wipe()
    assert not (tmp_path / "missing").exists()
    with pytest.raises(InstallError, match="not a block device or file"):
        RawSlot("B", tmp_path).wipe()


def test_wipe_truncates_a_file_slot(slot_file: Path) -> None:
    RawSlot("B", slot_file).wipe()
    assert slot_file.stat().st_size == 0


def test_full_disk_is_an_install_error(tmp_path: Path, tiny_disk: Path) -> None:
    slot_file = tiny_disk / "slot-B.img"
    slot_file.write_bytes(b"")
    image = os.urandom(2 * MiB)
    with pytest.raises(InstallError, match="no space left in slot B"):
        install_from_file(RawSlot("B", slot_file), tmp_path, image)
    assert slot_file.stat().st_size == 0  # wiped, and the space given back
    assert os.statvfs(tiny_disk).f_bfree == os.statvfs(tiny_disk).f_blocks
