"""Every bad bundle is refused with a clear message, and nothing that matters changes: the booted
slot, the next boot, the trust — and the next good update still succeeds."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sysupd.core.bundle_format import BUNDLE_PREFIX_BYTES, encode_bundle_header
from sysupd.engine.engine import Engine
from sysupd.errors import AcquireError, InstallError, UpdateError, VerificationError
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.engines import make_engine, running_device, snapshot_tree
from tests.releases import make_repo, read_header


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0", "1.2.0")


@pytest.fixture
def good(repo: ReleaseRepository, tmp_path: Path) -> Path:
    out = tmp_path / "good.bundle"
    repo.write_bundle("1.1.0", out)
    return out


@pytest.fixture
def device(tmp_path: Path, repo: ReleaseRepository) -> Engine:
    return running_device(tmp_path, repo)


def _refused(
    engine: Engine, bundle: Path, error: type[UpdateError], match: str, good: Path
) -> None:
    state = engine.state_dir
    before = (
        snapshot_tree(state / "slots" / "A"),
        (state / "bootenv.json").read_bytes(),
        snapshot_tree(state / "trust") if (state / "trust").exists() else {},
    )
    with pytest.raises(error, match=match):
        engine.install(BundleFile(bundle))
    assert snapshot_tree(state / "slots" / "A") == before[0]
    status = engine.status().to_json()
    assert status["next_boot"] == "A"
    assert status["booted"] == "A"
    assert status["last_result"]["result"] == "failed"
    assert status["job"] is None
    if bundle.exists() and bundle.is_file():
        assert (state / "trust").exists() is False or snapshot_tree(state / "trust") == before[2]
    assert engine.install(BundleFile(good)).version  # the next update succeeds


def _rewrite(bundle: Path, out: Path, roots: tuple[str, ...]) -> Path:
    data = bundle.read_bytes()
    header = read_header(bundle)
    size = int.from_bytes(data[8:16], "big")
    payload = data[BUNDLE_PREFIX_BYTES + size :]
    out.write_bytes(encode_bundle_header(dataclasses.replace(header, roots=roots)) + payload)
    return out


def test_flipped_payload_byte(device: Engine, good: Path, tmp_path: Path) -> None:
    data = bytearray(good.read_bytes())
    data[-1000] ^= 0x40
    bad = tmp_path / "flipped.bundle"
    bad.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="does not match its signed hash"):
        device.install(BundleFile(bad))
    assert not any((device.state_dir / "slots" / "B").iterdir())  # nothing half-written is left
    _refused(device, bad, VerificationError, "does not match its signed hash", good)


def test_truncated_payload(device: Engine, good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.bundle"
    bad.write_bytes(good.read_bytes()[:-5000])
    _refused(device, bad, VerificationError, "truncated", good)


def test_truncated_header(device: Engine, good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.bundle"
    bad.write_bytes(good.read_bytes()[:300])
    _refused(device, bad, VerificationError, "truncated in its header", good)


def test_payload_longer_than_signed(device: Engine, good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "long.bundle"
    bad.write_bytes(good.read_bytes() + b"\0" * 10)
    _refused(device, bad, VerificationError, "longer than its signed length", good)


def test_bundle_of_another_repository(device: Engine, good: Path, tmp_path: Path) -> None:
    other = make_repo(tmp_path / "other", "1.1.0")
    bad = tmp_path / "other.bundle"
    other.write_bundle("1.1.0", bad)
    _refused(device, bad, VerificationError, "not signed by the keys", good)


def test_expired_releases(tmp_path: Path, good: Path, device: Engine) -> None:
    old = make_repo(tmp_path / "old", "1.1.0", at=datetime(2020, 1, 1, tzinfo=UTC))
    # The same keys cannot be had from another repository, so the device trusts the old one.
    engine = make_engine(tmp_path / "state-old", old)
    engine.start()
    engine.confirm(True, "")
    stale = tmp_path / "stale.bundle"
    old.write_bundle("1.1.0", stale)
    with pytest.raises(VerificationError, match="expired"):
        engine.install(BundleFile(stale))
    assert engine.status().to_json()["next_boot"] == "A"


def test_another_product(tmp_path: Path, repo: ReleaseRepository, good: Path) -> None:
    engine = make_engine(tmp_path / "state-p", repo, product="another-box")
    engine.start()
    engine.confirm(True, "")
    with pytest.raises(VerificationError, match="this device is 'another-box'"):
        engine.install(BundleFile(good))
    assert engine.status().to_json()["next_boot"] == "A"


def test_downgrade(device: Engine, repo: ReleaseRepository, good: Path, tmp_path: Path) -> None:
    newer = tmp_path / "newer.bundle"
    repo.write_bundle("1.2.0", newer)
    device.install(BundleFile(newer))
    booted = make_engine(device.state_dir, repo)
    booted.start()
    booted.confirm(True, "")
    with pytest.raises(VerificationError, match="older than the installed floor"):
        booted.install(BundleFile(good))
    assert booted.status().to_json()["next_boot"] == "B"
    allowed = make_engine(device.state_dir, repo, allow_downgrade=True)
    assert str(allowed.install(BundleFile(good)).version) == "1.1.0"


def test_root_chain_with_a_missing_version(
    device: Engine, repo: ReleaseRepository, tmp_path: Path, good: Path
) -> None:
    repo.rotate_key("root")
    repo.rotate_key("root")
    full = tmp_path / "rotated.bundle"
    repo.write_bundle("1.1.0", full)
    header = read_header(full)
    bad = _rewrite(full, tmp_path / "gap.bundle", roots=(header.roots[0], header.roots[2]))
    _refused(device, bad, VerificationError, "missing version 2", full)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty"), (os.urandom(4096), "not a sysupd bundle|magic")],
)
def test_not_a_bundle(
    device: Engine, good: Path, tmp_path: Path, content: bytes, match: str
) -> None:
    bad = tmp_path / "junk.bundle"
    bad.write_bytes(content)
    _refused(device, bad, VerificationError, match, good)


def test_a_directory(device: Engine, good: Path, tmp_path: Path) -> None:
    _refused(device, tmp_path, AcquireError, "not a regular file", good)


def test_a_missing_file(device: Engine, good: Path, tmp_path: Path) -> None:
    _refused(device, tmp_path / "missing.bundle", AcquireError, "does not exist", good)


def test_full_disk_during_install(tmp_path: Path, tiny_disk: Path) -> None:
    repo = ReleaseRepository.init(tmp_path / "raw-repo", "sysupd-demo")
    image = tmp_path / "image.img"
    image.write_bytes(os.urandom(2 * 1024 * 1024))
    repo.add_release("2.0.0", image=image, chunk_size=65536)
    bundle = tmp_path / "raw.bundle"
    repo.write_bundle("2.0.0", bundle)
    slot_a, slot_b = tmp_path / "slot-a.img", tiny_disk / "slot-b.img"
    slot_a.write_bytes(b"running system" * 100)
    slot_b.touch()
    engine = make_engine(tmp_path / "state-raw", repo, slots=[f"A:raw:{slot_a}", f"B:raw:{slot_b}"])
    engine.start()
    engine.confirm(True, "")
    with pytest.raises(InstallError, match="no space"):
        engine.install(BundleFile(bundle))
    assert slot_a.read_bytes() == b"running system" * 100
    assert engine.status().to_json()["next_boot"] == "A"
