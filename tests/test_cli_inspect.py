"""``sysupd inspect BUNDLE`` on real signed bundles: what it shows, whether this device would take
it, a clear reason for every bundle it would not, and nothing on disk changed by looking."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sysupd.release.repository import ReleaseRepository
from tests.engines import snapshot_tree
from tests.procs import run_cli, write_config
from tests.releases import PRODUCT, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0", "1.2.0")


@pytest.fixture
def bundle(tmp_path: Path, repo: ReleaseRepository) -> Path:
    out = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", out)
    return out


def _device(tmp_path: Path, root: Path | None, name: str = "device", **extra: object) -> list[str]:
    """The options of a device of PRODUCT trusting ``root`` (none configured: ``None``)."""
    settings: dict[str, object] = {"product": PRODUCT, **extra}
    if root is not None:
        settings["trust_root"] = str(root)
    config = write_config(tmp_path / f"{name}.toml", **settings)
    state = tmp_path / f"{name}-state"
    state.mkdir(exist_ok=True)
    return ["--config", str(config), "--state-dir", str(state)]


@pytest.fixture
def device(tmp_path: Path, repo: ReleaseRepository) -> list[str]:
    return _device(tmp_path, repo.path / "metadata" / "1.root.json")


async def _inspect(device: list[str], *args: str) -> tuple[int, str, str]:
    """``sysupd inspect ARGS``, checking that nothing in the state directory changed."""
    state = Path(device[3])
    before = snapshot_tree(state)
    result = await run_cli("inspect", *args, *device)
    assert snapshot_tree(state) == before
    return result


async def _inspect_json(device: list[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = await _inspect(device, *args, "--json")
    report = json.loads(out)
    assert isinstance(report, dict)
    return code, report, err


def _error(err: str) -> str:
    """The one error line of a refused bundle."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(r"(?i)error: .+", lines[0]), err
    return lines[0]


async def test_good_bundle(device: list[str], bundle: Path, repo: ReleaseRepository) -> None:
    info = repo.release("1.1.0")
    code, out, err = await _inspect(device, str(bundle))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    for expected in (
        "product:     sysupd-demo",
        "version:     1.1.0",
        "payload:     tree, compression zstd",
        f"target:      {info.target}",
        f"sha256:      {info.sha256}",
        "roots:       v1",
        "result:      accepted: this device would install it",
    ):
        assert expected in lines, out
    size = next(line for line in lines if line.startswith("size:"))
    assert size.endswith(f"KiB ({info.length:,} bytes)")
    installed = next(line for line in lines if line.startswith("installed:"))
    assert installed.endswith(f"KiB ({info.installed_size:,} bytes)")
    assert any(
        re.fullmatch(r"  releases +threshold 1 of 1 key\(s\); v\d+, expires .+", line)
        for line in lines
    )
    assert any(re.fullmatch(r"  [0-9a-f]{64}  ed25519/ed25519  releases", line) for line in lines)
    assert "trust:       ok: signatures, root chain and expiry check out" in lines
    assert "chunk hashes not checked" in out


async def test_good_bundle_json(device: list[str], bundle: Path, repo: ReleaseRepository) -> None:
    info = repo.release("1.1.0")
    code, report, err = await _inspect_json(device, str(bundle), "--check-payload")
    assert (code, err) == (0, "")
    assert {k: report[k] for k in ("product", "version", "payload", "compression")} == {
        "product": PRODUCT,
        "version": "1.1.0",
        "payload": "tree",
        "compression": "zstd",
    }
    assert (report["size"], report["installed_size"]) == (info.length, info.installed_size)
    assert (report["sha256"], report["target"], report["notes"]) == (info.sha256, info.target, "")
    assert (report["verified"], report["accepted"], report["reason"]) == (True, True, None)
    assert set(report["roles"]) == {"root", "targets", "releases", "snapshot", "timestamp"}
    for name, role in report["roles"].items():
        assert role["threshold"] == 1
        assert len(role["keyids"]) == 1
        carried = name in ("root", "targets", "releases")
        assert (role["version"] is not None, role["expired"]) == (
            carried,
            False if carried else None,
        )
    assert sorted(r for key in report["keys"] for r in key["roles"]) == sorted(report["roles"])
    assert report["payload_check"]["chunks_checked"] is True
    assert report["payload_check"]["ok"] is True
    assert report["policy"] == {
        "ok": True,
        "detail": "for this product (sysupd-demo); no version floor yet",
        "device_product": PRODUCT,
        "floor": None,
        "allow_downgrade": False,
        "downgrade": False,
    }


async def test_trust_root_given_or_configured(
    tmp_path: Path, bundle: Path, repo: ReleaseRepository
) -> None:
    bare = _device(tmp_path, None, "bare")
    code, report, err = await _inspect_json(bare, str(bundle))
    assert code == 1
    assert "no trust root is configured" in _error(err)
    assert report["product"] == PRODUCT  # what the header claims is still shown
    assert (report["trust"]["ok"], report["verified"]) == (False, False)

    root = repo.path / "metadata" / "1.root.json"
    code, report, _ = await _inspect_json(bare, str(bundle), "--trust-root", str(root))
    assert (code, report["accepted"]) == (0, True)
    assert report["trust"]["against"] == f"{root} (root v1)"

    foreign = make_repo(tmp_path / "foreign", "1.1.0")
    other_root = foreign.path / "metadata" / "1.root.json"
    device = _device(tmp_path, repo.path / "metadata" / "1.root.json")
    code, _, err = await _inspect(device, str(bundle), "--trust-root", str(other_root))
    assert code == 1  # the given root wins over the configured one
    assert "not signed by the keys this device trusts" in _error(err)


async def test_roots_kept_after_a_rotation(
    tmp_path: Path, device: list[str], repo: ReleaseRepository
) -> None:
    repo.rotate_key("root")
    rotated = tmp_path / "rotated.bundle"
    repo.write_bundle("1.1.0", rotated)
    code, report, _ = await _inspect_json(device, str(rotated))
    assert (code, report["root_versions"], report["trust"]["new_roots"]) == (0, [1, 2], [2])
    assert not (Path(device[3]) / "trust").exists()  # looking does not keep the new root

    assert (await run_cli("install", str(rotated), *device))[0] == 0  # an install keeps it
    repo.add_release("1.3.0", tree=tmp_path / "tree-1.2.0", compress="zstd", chunk_size=65536)
    newer = tmp_path / "1.3.0.bundle"
    repo.write_bundle("1.3.0", newer)
    code, out, _ = await _inspect(device, str(newer))
    assert code == 0
    assert "against this device's trust store (root v2, as last accepted)" in out


async def test_foreign_bundle(tmp_path: Path, device: list[str]) -> None:
    foreign = make_repo(tmp_path / "foreign", "1.1.0")
    bad = tmp_path / "foreign.bundle"
    foreign.write_bundle("1.1.0", bad)
    code, out, err = await _inspect(device, str(bad))
    assert code == 1
    assert _error(err).endswith(
        "the bundle is not trusted: timestamp metadata is not signed by the keys this device "
        "trusts for it"
    )
    assert "UNVERIFIED" in out
    assert "version:     1.1.0" in out  # still everything that could be read
    assert "result:      REFUSED" in out


async def test_another_product(tmp_path: Path, device: list[str]) -> None:
    other = make_repo(tmp_path / "other", "1.1.0", product="fridge")
    bad = tmp_path / "fridge.bundle"
    other.write_bundle("1.1.0", bad)
    trusting = _device(tmp_path, other.path / "metadata" / "1.root.json", "trusting")
    code, report, err = await _inspect_json(trusting, str(bad))
    assert code == 1
    assert report["trust"]["ok"] is True
    assert (report["verified"], report["accepted"], report["product"]) == (True, False, "fridge")
    assert "the release is for product 'fridge', this device is 'sysupd-demo'" in _error(err)


async def test_below_the_floor(tmp_path: Path, device: list[str], repo: ReleaseRepository) -> None:
    newer, older = tmp_path / "1.2.0.bundle", tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.2.0", newer)
    repo.write_bundle("1.1.0", older)
    assert (await run_cli("boot", *device))[0] == 0
    assert (await run_cli("install", str(newer), *device))[0] == 0
    assert (await run_cli("boot", *device))[0] == 0  # 1.2.0 kept: the floor is 1.2.0
    code, report, err = await _inspect_json(device, str(older))
    assert code == 1
    assert (report["verified"], report["accepted"], report["policy"]["floor"]) == (
        True,
        False,
        "1.2.0",
    )
    assert "version 1.1.0 is older than the installed floor 1.2.0" in _error(err)

    allowing = _device(
        tmp_path, repo.path / "metadata" / "1.root.json", "device", allow_downgrade=True
    )
    code, report, _ = await _inspect_json(allowing, str(older))
    assert (code, report["policy"]["downgrade"], report["accepted"]) == (0, True, True)
    assert "allowed by allow_downgrade" in report["policy"]["detail"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("random.bin", os.urandom(4096), "not a sysupd bundle: wrong magic bytes"),
        ("empty.bundle", b"", "the file is empty, not a sysupd bundle"),
        ("short.bundle", b"SYSUPDB", "shorter than its 16-byte prefix"),
        ("missing.bundle", None, "missing.bundle does not exist"),
        ("a-directory", "dir", "a-directory is a directory, not a bundle"),
    ],
)
async def test_not_a_bundle(
    tmp_path: Path, device: list[str], name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "dir":
        path.mkdir()
    code, out, err = await _inspect(device, str(path))
    assert code == 1
    assert message in _error(err)
    assert out.splitlines() == [
        out.splitlines()[0],
        f"result:      not readable: {_error(err).split(': ', 1)[1]}",
    ]
    code, report, _ = await _inspect_json(device, str(path))
    assert (code, report["verified"], report["accepted"]) == (1, False, False)
    assert message in report["reason"]


async def test_truncated(tmp_path: Path, device: list[str], bundle: Path) -> None:
    data = bundle.read_bytes()
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(data[:-5000])
    code, report, err = await _inspect_json(device, str(cut))
    assert code == 1
    assert report["trust"]["ok"] is True  # the header is whole and signed
    assert report["payload_check"]["ok"] is False
    signed = report["size"]
    assert _error(err).endswith(
        f"the bundle is truncated: its payload has {signed - 5000} of {signed} bytes"
    )
    cut.write_bytes(data[:300])
    code, _, err = await _inspect(device, str(cut))
    assert code == 1
    assert "the bundle is truncated in its header" in _error(err)
    cut.write_bytes(data + b"\0")
    code, _, err = await _inspect(device, str(cut))
    assert code == 1
    assert "the bundle's payload is longer than its signed length" in _error(err)


async def test_check_payload_finds_a_flipped_byte(
    tmp_path: Path, device: list[str], bundle: Path
) -> None:
    data = bytearray(bundle.read_bytes())
    data[-1000] ^= 0x40
    flipped = tmp_path / "flipped.bundle"
    flipped.write_bytes(bytes(data))
    code, out, _ = await _inspect(device, str(flipped))
    assert code == 0  # the header alone cannot tell
    assert "chunk hashes not checked" in out
    code, report, err = await _inspect_json(device, str(flipped), "--check-payload")
    assert (code, report["verified"], report["trust"]["ok"]) == (1, False, True)
    assert re.search(r"chunk \d+ \(bytes \d+-\d+\) does not match its signed hash", _error(err))


async def test_expired(tmp_path: Path) -> None:
    old = make_repo(tmp_path / "old", "1.1.0", at=datetime(2020, 1, 1, tzinfo=UTC))
    stale = tmp_path / "stale.bundle"
    old.write_bundle("1.1.0", stale)
    device = _device(tmp_path, old.path / "metadata" / "1.root.json", "old")
    code, out, err = await _inspect(device, str(stale))
    assert code == 1
    assert "the bundle is not trusted: root metadata v1 has expired" in _error(err)
    assert "EXPIRED 2020-12-31" in out  # a year after it was signed


async def test_looking_changes_nothing_on_a_used_device(
    tmp_path: Path, device: list[str], bundle: Path, repo: ReleaseRepository
) -> None:
    rotated = tmp_path / "rotated.bundle"
    repo.rotate_key("root")
    repo.write_bundle("1.2.0", rotated)
    assert (await run_cli("boot", *device))[0] == 0
    assert (await run_cli("install", str(bundle), *device))[0] == 0
    state = Path(device[3])
    before = snapshot_tree(state)
    assert (state / "engine.json").exists()
    assert (state / "trust" / "root.json").exists()
    for args in ((str(rotated), "--check-payload"), (str(bundle), "--json"), (str(tmp_path),)):
        await run_cli("inspect", *args, *device)
    assert snapshot_tree(state) == before
