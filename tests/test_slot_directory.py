"""Tree payloads install byte-identical into a directory slot; bad ones leave it empty.

Payloads are real tar and tar.zst archives built here, signed with a chunk list, and fed through
the ``VerifiedReader`` from a file, as a bundle's payload is. A sibling directory plays the
running slot and must never change.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.engine.stream import VerifiedReader
from sysupd.errors import InstallError, VerificationError
from sysupd.slots.base import PayloadSpec, SlotWriter
from sysupd.slots.directory import DirectorySlot
from sysupd.slots.extract import MAX_MEMBERS

CHUNK = 16 << 10
MTIME = 1_700_000_000

TREE: dict[str, bytes] = {
    "etc/app.conf": b"mode = production\n",
    "bin/app": b"#!/bin/sh\necho hello\n",
    "share/data.bin": os.urandom(200_000),
    "share/empty": b"",
    "README": b"the new release\n" * 100,
}


def make_tar(tree: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(tree.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def make_payload(compression: str) -> bytes:
    tar = make_tar(TREE)
    return zstandard.ZstdCompressor().compress(tar) if compression == "zstd" else tar


def spec_for(payload: bytes, compression: str, entries: int = len(TREE)) -> PayloadSpec:
    """The spec a release of ``TREE`` signs (its archive lists the files only, no directories)."""
    return PayloadSpec(
        kind="tree",
        compression=compression,  # type: ignore[arg-type]
        installed_size=sum(len(data) for data in TREE.values()),
        length=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        entries=entries,
    )


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a directory)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def slots(tmp_path: Path) -> tuple[Path, Path]:
    """An inactive slot holding an old tree, and a running slot beside it."""
    inactive, running = tmp_path / "slots" / "B", tmp_path / "slots" / "A"
    for root in (inactive, running):
        (root / "old" / "deep").mkdir(parents=True)
        (root / "old" / "deep" / "file").write_bytes(b"old release " + root.name.encode())
        (root / "top").write_bytes(b"top")
        (root / "old" / "link").symlink_to(running / "top")
    return inactive, running


def install_from_file(
    slot: SlotWriter, tmp_path: Path, signed: bytes, sent: bytes, spec: PayloadSpec
) -> list[int]:
    """Install ``sent`` (the bytes on disk) against the chunk list of ``signed``."""
    bundle = tmp_path / "payload.bin"
    bundle.write_bytes(sent)
    verifier = ChunkVerifier(chunk_digests(signed, CHUNK), CHUNK, len(signed))
    seen: list[int] = []
    with bundle.open("rb") as source, VerifiedReader(source, verifier) as reader:
        slot.install(reader, spec, progress=seen.append)
        assert reader.complete
    return seen


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_tree_installs_byte_identical(
    tmp_path: Path, slots: tuple[Path, Path], compression: str
) -> None:
    inactive, running = slots
    before = snapshot(running)
    payload = make_payload(compression)
    slot = DirectorySlot("B", inactive)
    seen = install_from_file(slot, tmp_path, payload, payload, spec_for(payload, compression))

    files = {
        str(path.relative_to(inactive)): path.read_bytes()
        for path in inactive.rglob("*")
        if path.is_file()
    }
    assert files == TREE
    assert {p.name for p in inactive.iterdir()} == {"etc", "bin", "share", "README"}
    assert os.stat(inactive / "bin" / "app").st_mode & 0o777 == 0o755
    assert os.stat(inactive / "README").st_mtime == MTIME
    assert snapshot(running) == before
    assert seen
    assert seen[-1] == len(payload)
    assert seen == sorted(seen)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_tampered_payload_leaves_the_slot_empty(
    tmp_path: Path, slots: tuple[Path, Path], compression: str
) -> None:
    inactive, running = slots
    before = snapshot(running)
    payload = make_payload(compression)
    tampered = bytearray(payload)
    tampered[len(payload) // 2] ^= 0x01
    slot = DirectorySlot("B", inactive)
    with pytest.raises(VerificationError, match="does not match its signed hash"):
        install_from_file(slot, tmp_path, payload, bytes(tampered), spec_for(payload, compression))
    assert list(inactive.iterdir()) == []
    assert snapshot(running) == before


def test_truncated_payload_leaves_the_slot_empty(tmp_path: Path, slots: tuple[Path, Path]) -> None:
    inactive, _ = slots
    payload = make_payload("zstd")
    slot = DirectorySlot("B", inactive)
    with pytest.raises(VerificationError, match="payload ended after"):
        install_from_file(slot, tmp_path, payload, payload[:-1], spec_for(payload, "zstd"))
    assert list(inactive.iterdir()) == []


def test_tree_larger_than_signed_is_refused(tmp_path: Path, slots: tuple[Path, Path]) -> None:
    inactive, _ = slots
    payload = make_payload("none")
    small = PayloadSpec(
        "tree", "none", 1000, len(payload), hashlib.sha256(payload).hexdigest(), len(TREE)
    )
    with pytest.raises(VerificationError, match="more than the 1000 bytes"):
        install_from_file(DirectorySlot("B", inactive), tmp_path, payload, payload, small)
    assert list(inactive.iterdir()) == []


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_more_members_than_signed_are_refused(
    tmp_path: Path, slots: tuple[Path, Path], compression: str
) -> None:
    inactive, running = slots
    before = snapshot(running)
    payload = make_payload(compression)
    fewer = spec_for(payload, compression, entries=len(TREE) - 1)
    with pytest.raises(VerificationError, match=f"more than the {len(TREE) - 1} members"):
        install_from_file(DirectorySlot("B", inactive), tmp_path, payload, payload, fewer)
    assert list(inactive.iterdir()) == []
    assert snapshot(running) == before


def test_symlink_as_slot_path_is_refused(tmp_path: Path, slots: tuple[Path, Path]) -> None:
    _, running = slots
    before = snapshot(running)
    link = tmp_path / "slots" / "C"
    link.symlink_to(running, target_is_directory=True)
    slot = DirectorySlot("C", link)
    with pytest.raises(InstallError, match="symbolic link"):
        slot.wipe()
    payload = make_payload("none")
    with pytest.raises(InstallError, match="symbolic link"):
        install_from_file(slot, tmp_path, payload, payload, spec_for(payload, "none"))
    assert snapshot(running) == before


def test_file_as_slot_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "slot"
    path.write_bytes(b"not a directory")
    with pytest.raises(InstallError, match="not a directory"):
        DirectorySlot("B", path).wipe()
    assert path.read_bytes() == b"not a directory"


def test_raw_payload_is_refused_and_changes_nothing(
    tmp_path: Path, slots: tuple[Path, Path]
) -> None:
    inactive, _ = slots
    before = snapshot(inactive)
    image = os.urandom(3 * CHUNK)
    spec = PayloadSpec("raw", "none", len(image), len(image), hashlib.sha256(image).hexdigest())
    with pytest.raises(VerificationError, match="a raw payload cannot go into a directory slot"):
        install_from_file(DirectorySlot("B", inactive), tmp_path, image, image, spec)
    assert snapshot(inactive) == before


def test_wipe_creates_a_missing_slot_and_keeps_links_targets(
    tmp_path: Path, slots: tuple[Path, Path]
) -> None:
    inactive, running = slots
    before = snapshot(running)
    DirectorySlot("B", inactive).wipe()
    assert list(inactive.iterdir()) == []
    assert snapshot(running) == before

    fresh = tmp_path / "new" / "slot"
    DirectorySlot("N", fresh).wipe()
    assert fresh.is_dir()
    assert list(fresh.iterdir()) == []


def test_bad_spec_is_refused() -> None:
    with pytest.raises(VerificationError, match="cannot be compressed"):
        PayloadSpec("raw", "zstd", 1, 1, "00" * 32)
    with pytest.raises(VerificationError, match="64 hex digits"):
        PayloadSpec("tree", "none", 1, 1, "xyz")
    with pytest.raises(VerificationError, match="not negative"):
        PayloadSpec("tree", "none", -1, 1, "00" * 32)
    with pytest.raises(VerificationError, match="unknown compression"):
        PayloadSpec("tree", "gzip", 1, 1, "00" * 32)  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="a tree must state its member count"):
        PayloadSpec("tree", "none", 1, 1, "00" * 32)
    with pytest.raises(VerificationError, match="a tree must state its member count"):
        PayloadSpec("tree", "none", 1, 1, "00" * 32, -1)
    with pytest.raises(VerificationError, match="a raw payload has no member count"):
        PayloadSpec("raw", "none", 1, 1, "00" * 32, 0)


def test_a_signed_count_over_the_devices_ceiling_is_refused_before_the_slot_is_emptied(
    tmp_path: Path, slots: tuple[Path, Path]
) -> None:
    """A release may state any count: a million empty files cost inodes the byte capacity does
    not count, so the device keeps a ceiling of its own."""
    inactive, running = slots
    (inactive / "old-content").write_text("kept\n")
    before = snapshot(running)
    payload = make_payload("none")
    huge = spec_for(payload, "none", entries=MAX_MEMBERS + 1)
    with pytest.raises(VerificationError, match=f"more than the {MAX_MEMBERS}"):
        install_from_file(DirectorySlot("B", inactive), tmp_path, payload, payload, huge)
    assert (inactive / "old-content").read_text() == "kept\n"
    assert snapshot(running) == before
