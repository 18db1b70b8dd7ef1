"""The release tool against real repositories, checked the way a device checks them.

Every repository here is built in ``tmp_path`` by ``ReleaseRepository`` (or the CLI) and then
verified with python-tuf itself: the Metadata API for the delegation chain and bundle contents,
and ``tuf.ngclient.Updater`` (with a fetcher that serves the repository directory, no network)
for the online path, starting from a device that trusts only ``1.root.json``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import DownloadHTTPError, UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from sysupd.cli.main import cli
from sysupd.core.bundle_format import (
    BUNDLE_PREFIX_BYTES,
    BundleHeader,
    decode_bundle_header,
    decode_bundle_prefix,
)
from sysupd.errors import ConfigError, StateError
from sysupd.release.keys import load_signer
from sysupd.release.repository import DEFAULT_CHUNK_SIZE, ReleaseRepository
from sysupd.system.clock import ManualClock

PRODUCT = "sysupd-demo"
BASE_URL = "https://repo.test"
ROLES = ("root", "targets", "releases", "snapshot", "timestamp")


# ------------------------------------------------------------------------------ fixtures


def make_tree(root: Path, seed: int = 1) -> dict[str, bytes]:
    """A small tree (a few hundred KiB); returns member name → content of the regular files."""
    files = {
        "bin/app": hashlib.sha256(b"app%d" % seed).digest() * 6000,
        "etc/app/app.conf": b"level = info\n",
        "etc/app/empty": b"",
        "lib/data.bin": os.urandom(100_000),
        "README": "r\u00e9sum\u00e9 of release\n".encode(),
        "share/caf\u00e9/\u00fcber-" + "long-name-" * 12: b"PAX headers carry this name\n",
    }
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "bin/app").chmod(0o755)
    (root / "var/empty-dir").mkdir(parents=True)
    return files


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tree = tmp_path / "src"
    make_tree(tree)
    return tree


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return ReleaseRepository.init(tmp_path / "repo", PRODUCT)


class DirectoryFetcher(FetcherInterface):
    """Serves ``BASE_URL/metadata/…`` and ``BASE_URL/targets/…`` from a repository directory."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir
        self.requested: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requested.append(url)
        relative = url.removeprefix(f"{BASE_URL}/")
        if relative == url or relative.split("/", 1)[0] not in ("metadata", "targets"):
            raise DownloadHTTPError(f"{url} is not served", 404)
        try:
            data = (self.repo_dir / relative).read_bytes()
        except FileNotFoundError:
            raise DownloadHTTPError(f"{url} not found", 404) from None
        return iter([data[i : i + 65536] for i in range(0, len(data), 65536)] or [b""])


def device_updater(repo_dir: Path, device_dir: Path, *, first_boot: bool = True) -> Updater:
    """An ngclient Updater as a device runs it; on first boot it trusts only 1.root.json."""
    metadata_dir = device_dir / "metadata"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = (repo_dir / "metadata" / "1.root.json").read_bytes() if first_boot else None
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{BASE_URL}/metadata/",
        target_dir=str(device_dir / "downloads"),
        target_base_url=f"{BASE_URL}/targets/",
        fetcher=DirectoryFetcher(repo_dir),
        bootstrap=bootstrap,
    )


def download(updater: Updater, target_path: str) -> tuple[TargetFile, bytes]:
    info = updater.get_targetinfo(target_path)
    assert info is not None, f"{target_path} not found by ngclient"
    return info, Path(updater.download_target(info)).read_bytes()


def load(path: Path) -> Metadata[Any]:
    return Metadata.from_bytes(path.read_bytes())


def current(repo_dir: Path) -> dict[str, Metadata[Any]]:
    """The repository's current metadata, found the way a client finds it."""
    meta = repo_dir / "metadata"
    timestamp: Metadata[Timestamp] = load(meta / "timestamp.json")
    snapshot: Metadata[Snapshot] = load(
        meta / f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
    )
    root: Metadata[Root] = load(meta / "root.json")
    return {
        "root": root,
        "targets": load(meta / f"{snapshot.signed.meta['targets.json'].version}.targets.json"),
        "releases": load(meta / f"{snapshot.signed.meta['releases.json'].version}.releases.json"),
        "snapshot": snapshot,
        "timestamp": timestamp,
    }


def verify_chain(repo_dir: Path) -> dict[str, Metadata[Any]]:
    """Check every delegation of the current metadata with the Metadata API; return it."""
    md = current(repo_dir)
    root: Root = md["root"].signed
    root.verify_delegate("root", md["root"].signed_bytes, md["root"].signatures)
    for role in ("targets", "snapshot", "timestamp"):
        root.verify_delegate(role, md[role].signed_bytes, md[role].signatures)
    targets: Targets = md["targets"].signed
    targets.verify_delegate("releases", md["releases"].signed_bytes, md["releases"].signatures)
    assert not any(m.signed.is_expired() for m in md.values())
    return md


def target_path_on_disk(repo_dir: Path, target: TargetFile) -> Path:
    directory, _, name = target.path.rpartition("/")
    return repo_dir / "targets" / directory / f"{target.hashes['sha256']}.{name}"


def chunk_digests(data: bytes, chunk_size: int) -> bytes:
    return b"".join(
        hashlib.sha256(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)
    )


def read_bundle(bundle: Path) -> tuple[BundleHeader, bytes]:
    with bundle.open("rb") as handle:
        length = decode_bundle_prefix(handle.read(BUNDLE_PREFIX_BYTES))
        header = decode_bundle_header(handle.read(length))
        return header, handle.read()


def verify_bundle_as_device(bundle: Path, trusted_root: bytes) -> tuple[TargetFile, bytes]:
    """Verify a bundle from a device's trust root with the Metadata API; return entry, payload."""
    header, payload = read_bundle(bundle)
    trusted: Metadata[Root] = Metadata.from_bytes(trusted_root)
    for text in header.roots:
        new: Metadata[Root] = Metadata.from_bytes(text.encode())
        if new.signed.version <= trusted.signed.version:
            continue
        assert new.signed.version == trusted.signed.version + 1
        trusted.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        trusted = new
    assert not trusted.signed.is_expired()
    targets: Metadata[Targets] = Metadata.from_bytes(header.targets.encode())
    trusted.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    releases: Metadata[Targets] = Metadata.from_bytes(header.releases.encode())
    targets.signed.verify_delegate("releases", releases.signed_bytes, releases.signatures)
    assert not targets.signed.is_expired()
    assert not releases.signed.is_expired()
    entry = releases.signed.targets[header.target]
    custom = entry.custom["sysupd"]
    releases.signed.targets[custom["chunks"]].verify_length_and_hashes(header.chunks)
    size = custom["chunk_size"]
    digests = [header.chunks[i : i + 32] for i in range(0, len(header.chunks), 32)]
    stream = io.BytesIO(payload)
    for digest in digests:  # what the device does while streaming: each chunk before use
        assert hashlib.sha256(stream.read(size)).digest() == digest
    assert stream.read() == b""
    entry.verify_length_and_hashes(payload)
    return entry, payload


def tar_members(payload: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
        return archive.getmembers()


def tar_contents(payload: bytes) -> dict[str, bytes]:
    contents = {}
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
        for member in archive.getmembers():
            if member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                contents[member.name] = extracted.read()
    return contents


# ---------------------------------------------------------------------------------- init


def test_init_creates_a_signed_repository(repo: ReleaseRepository) -> None:
    repo_dir = repo.path
    assert stat.S_IMODE((repo_dir / "keys").stat().st_mode) == 0o700
    for role in ROLES:
        key = repo_dir / "keys" / f"{role}.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for name in ("1.root.json", "root.json", "1.targets.json", "1.releases.json"):
        assert (repo_dir / "metadata" / name).is_file()
    assert (repo_dir / "metadata" / "1.snapshot.json").is_file()
    assert (repo_dir / "metadata" / "timestamp.json").is_file()
    assert (repo_dir / "targets" / "releases").is_dir()

    md = verify_chain(repo_dir)
    root: Root = md["root"].signed
    assert root.version == 1
    assert root.consistent_snapshot is True
    assert {name: r.threshold for name, r in root.roles.items()} == dict.fromkeys(
        ("root", "targets", "snapshot", "timestamp"), 1
    )
    assert all(key.keytype == "ed25519" for key in root.keys.values())
    delegations = md["targets"].signed.delegations
    assert delegations is not None
    assert delegations.roles is not None
    releases_role = delegations.roles["releases"]
    assert releases_role.paths == ["releases/*"]
    assert releases_role.terminating is True
    assert releases_role.threshold == 1
    assert md["targets"].signed.targets == {}
    assert md["releases"].signed.targets == {}

    now = datetime.now(UTC)
    for role, days in (("root", 365), ("targets", 365), ("releases", 365)):
        assert abs(md[role].signed.expires - (now + timedelta(days=days))) < timedelta(minutes=1)
    assert abs(md["snapshot"].signed.expires - (now + timedelta(days=7))) < timedelta(minutes=1)
    assert abs(md["timestamp"].signed.expires - (now + timedelta(days=1))) < timedelta(minutes=1)

    # the key files are the keys the metadata names, loadable by securesystemslib as well
    keyids = {
        role: load_signer(repo_dir / "keys" / f"{role}.pem").public_key.keyid for role in ROLES
    }
    assert keyids["root"] in root.roles["root"].keyids
    assert keyids["releases"] in releases_role.keyids
    pem = (repo_dir / "keys" / "timestamp.pem").read_bytes()
    private = load_pem_private_key(pem, None)
    signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))
    assert signer.public_key.keyid == keyids["timestamp"]
    notes = (repo_dir / "repo.json").read_text()
    assert PRODUCT in notes
    assert all(keyid in notes for keyid in keyids.values())
    assert ReleaseRepository.open(repo_dir).product == PRODUCT


def test_init_refuses_a_non_empty_directory_and_bad_products(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        ReleaseRepository.init(tmp_path / "busy", PRODUCT)
    for product in ("", "a/b", "../x", "-x", "x" * 65, "d\u00e9mo"):
        with pytest.raises(ConfigError, match="invalid product name"):
            ReleaseRepository.init(tmp_path / "new", product)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="not a release repository"):
        ReleaseRepository.open(tmp_path / "busy")


# ------------------------------------------------------------------------------ releases


def test_tree_release_verifies_through_the_delegation_chain(
    repo: ReleaseRepository, source: Path
) -> None:
    files = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    info = repo.add_release("1.2.0", tree=source, compress="zstd", notes="first release")
    assert info.target == f"releases/{PRODUCT}-1.2.0.tar.zst"
    assert info.chunks == f"releases/{PRODUCT}-1.2.0.tar.zst.chunks"

    md = verify_chain(repo.path)
    assert md["releases"].signed.version == 2
    assert md["targets"].signed.version == 1  # not touched: nothing in targets changed
    assert md["snapshot"].signed.meta["releases.json"].version == 2
    entries = md["releases"].signed.targets
    assert set(entries) == {info.target, info.chunks, info.index}
    assert md["targets"].signed.targets == {}
    entry: TargetFile = entries[info.target]
    payload_file = target_path_on_disk(repo.path, entry)
    compressed = payload_file.read_bytes()
    entry.verify_length_and_hashes(compressed)
    with payload_file.open("rb") as handle:
        entry.verify_length_and_hashes(handle)

    frame = zstandard.get_frame_parameters(compressed)
    assert frame.has_checksum
    assert frame.window_size <= 4 * 1024 * 1024
    decompressor = zstandard.ZstdDecompressor(max_window_size=4 * 1024 * 1024)
    tar = decompressor.stream_reader(io.BytesIO(compressed)).read()
    assert entry.custom == {
        "sysupd": {
            "product": PRODUCT,
            "version": "1.2.0",
            "payload": "tree",
            "compression": "zstd",
            "installed_size": sum(len(content) for content in files.values()),
            "entries": 14,  # the tar's members, listed below
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "chunks": info.chunks,
            "index": info.index,
            "notes": "first release",
        }
    }
    chunk_entry: TargetFile = entries[info.chunks]
    assert chunk_entry.custom is None
    chunk_list = target_path_on_disk(repo.path, chunk_entry).read_bytes()
    chunk_entry.verify_length_and_hashes(chunk_list)
    assert chunk_list == chunk_digests(compressed, DEFAULT_CHUNK_SIZE)

    members = tar_members(tar)
    names = [m.name for m in members]
    assert names == [
        "README",
        "bin",
        "bin/app",
        "etc",
        "etc/app",
        "etc/app/app.conf",
        "etc/app/empty",
        "lib",
        "lib/data.bin",
        "share",
        "share/caf\u00e9",
        "share/caf\u00e9/\u00fcber-" + "long-name-" * 12,
        "var",
        "var/empty-dir",
    ]
    assert info.entries == len(members)
    for member in members:
        assert member.isfile() or member.isdir()
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == 0
    assert next(m for m in members if m.name == "bin/app").mode == 0o755
    assert tar_contents(tar) == files


def test_tree_payloads_are_deterministic(tmp_path: Path, source: Path) -> None:
    first = ReleaseRepository.init(tmp_path / "one", PRODUCT)
    second = ReleaseRepository.init(tmp_path / "two", PRODUCT)
    a = first.add_release("1.0.0", tree=source)
    b = first.add_release("1.0.1", tree=source, compress="zstd")
    for path in source.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert second.add_release("1.0.0", tree=source).sha256 == a.sha256
    assert second.add_release("1.0.1", tree=source, compress="zstd").sha256 == b.sha256
    assert a.length % 10240 == 0  # whole tar records


def test_image_release_with_several_chunks(repo: ReleaseRepository, tmp_path: Path) -> None:
    image = tmp_path / "rootfs.img"
    data = os.urandom(300_000)
    image.write_bytes(data)
    info = repo.add_release("2.0.0-rc.1", image=image, chunk_size=64 * 1024)
    assert (info.payload, info.compression, info.installed_size) == ("raw", "none", len(data))
    assert info.target == f"releases/{PRODUCT}-2.0.0-rc.1.img"

    md = verify_chain(repo.path)
    entry: TargetFile = md["releases"].signed.targets[info.target]
    assert entry.custom["sysupd"]["chunk_size"] == 65536
    assert "notes" not in entry.custom["sysupd"]
    assert "entries" not in entry.custom["sysupd"]  # an image has no members
    assert info.entries is None
    assert target_path_on_disk(repo.path, entry).read_bytes() == data
    chunk_list = target_path_on_disk(repo.path, md["releases"].signed.targets[info.chunks])
    digests = chunk_list.read_bytes()
    assert len(digests) == 5 * 32  # 4 full chunks and a short one
    assert digests == chunk_digests(data, 65536)
    assert digests[-32:] == hashlib.sha256(data[4 * 65536 :]).digest()


def test_releases_are_listed_in_version_order(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x01" * 4096)
    repo.add_release("1.3.0", tree=source)
    repo.add_release("1.3.0-rc.1", tree=source)
    repo.add_release("1.10.0", image=image)
    repo.add_release("1.2.0", tree=source, compress="zstd")
    reopened = ReleaseRepository.open(repo.path)
    assert [r.version for r in reopened.releases()] == ["1.2.0", "1.3.0-rc.1", "1.3.0", "1.10.0"]
    assert reopened.release("1.10.0").length == 4096
    assert reopened.metadata_versions()["releases"] == 5
    verify_chain(repo.path)


# ------------------------------------------------------------------------- online (ngclient)


def test_ngclient_downloads_a_release_and_its_chunk_list(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    info = repo.add_release("1.2.0", tree=source, compress="zstd", chunk_size=50_000)
    updater = device_updater(repo.path, tmp_path / "device")
    updater.refresh()
    entry, payload = download(updater, info.target)
    assert entry.custom["sysupd"]["version"] == "1.2.0"
    _, chunk_list = download(updater, entry.custom["sysupd"]["chunks"])
    assert chunk_list == chunk_digests(payload, 50_000)
    assert len(chunk_list) // 32 == -(-len(payload) // 50_000)
    assert hashlib.sha256(payload).hexdigest() == info.sha256
    fetcher = updater._fetcher
    assert isinstance(fetcher, DirectoryFetcher)
    assert f"{BASE_URL}/targets/releases/{info.sha256}.{PRODUCT}-1.2.0.tar.zst" in (
        fetcher.requested
    )
    assert updater.get_targetinfo("releases/unknown-9.9.9.tar") is None


def test_publish_refreshes_snapshot_and_timestamp(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    repo.add_release("1.0.0", tree=source)
    before = repo.metadata_versions()
    clock = ManualClock(datetime.now(UTC))
    clock.advance(6 * 3600)
    versions = ReleaseRepository.open(repo.path, clock=clock).publish()
    assert versions == {
        **before,
        "snapshot": before["snapshot"] + 1,
        "timestamp": before["timestamp"] + 1,
    }
    md = current(repo.path)
    published = clock.utcnow().replace(microsecond=0)
    assert md["snapshot"].signed.expires == published + timedelta(days=7)
    assert md["timestamp"].signed.expires == published + timedelta(days=1)
    assert md["timestamp"].signed.snapshot_meta.version == versions["snapshot"]
    md["timestamp"].signed.snapshot_meta.verify_length_and_hashes(
        (repo.path / "metadata" / f"{versions['snapshot']}.snapshot.json").read_bytes()
    )
    device = tmp_path / "device"
    updater = device_updater(repo.path, device)
    download(updater, f"releases/{PRODUCT}-1.0.0.tar")
    # a device that has seen the old timestamp accepts the new one
    ReleaseRepository.open(repo.path).publish()
    download(device_updater(repo.path, device, first_boot=False), f"releases/{PRODUCT}-1.0.0.tar")


def test_publish_renews_metadata_close_to_expiry_and_bundles_refuse_expired(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    repo.add_release("1.0.0", tree=source)
    late = ManualClock(datetime.now(UTC) + timedelta(days=400))
    with pytest.raises(ConfigError, match="root metadata expired"):
        ReleaseRepository.open(repo.path, clock=late).write_bundle("1.0.0", tmp_path / "b")
    assert not (tmp_path / "b").exists()

    soon = ManualClock(datetime.now(UTC) + timedelta(days=340))
    versions = ReleaseRepository.open(repo.path, clock=soon).publish()
    assert (versions["root"], versions["targets"], versions["releases"]) == (2, 2, 3)
    md = current(repo.path)
    for role in ("root", "targets", "releases"):
        assert md[role].signed.expires == soon.utcnow().replace(microsecond=0) + timedelta(days=365)
    ReleaseRepository.open(repo.path, clock=soon).write_bundle("1.0.0", tmp_path / "b")
    assert (repo.path / "metadata" / "root.json").read_bytes() == (
        repo.path / "metadata" / "2.root.json"
    ).read_bytes()


# ------------------------------------------------------------------------------- rotation


def test_root_rotation_is_followed_by_a_device_that_trusts_only_1_root(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    repo.add_release("1.0.0", tree=source)
    old_root = load(repo.path / "metadata" / "1.root.json")
    old_keyid = load_signer(repo.path / "keys" / "root.pem").public_key.keyid
    # a device that has already followed the repository once
    seasoned = tmp_path / "seasoned"
    download(device_updater(repo.path, seasoned), f"releases/{PRODUCT}-1.0.0.tar")

    new_keyid = repo.rotate_key("root")
    assert new_keyid != old_keyid
    assert load_signer(repo.path / "keys" / "root.pem").public_key.keyid == new_keyid
    assert (repo.path / "keys" / "retired" / f"root-{old_keyid}.pem").is_file()
    new_root: Metadata[Root] = load(repo.path / "metadata" / "2.root.json")
    assert (repo.path / "metadata" / "root.json").read_bytes() == (
        repo.path / "metadata" / "2.root.json"
    ).read_bytes()
    assert new_root.signed.version == 2
    assert set(new_root.signatures) == {old_keyid, new_keyid}
    assert new_root.signed.roles["root"].keyids == [new_keyid]
    assert old_keyid not in new_root.signed.keys
    # signed by the old root (threshold of 1.root.json) and by the new one (its own threshold)
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    verify_chain(repo.path)

    repo.add_release("1.1.0", tree=source, compress="zstd")
    fresh = device_updater(repo.path, tmp_path / "fresh")
    download(fresh, f"releases/{PRODUCT}-1.0.0.tar")
    download(fresh, f"releases/{PRODUCT}-1.1.0.tar.zst")
    assert (tmp_path / "fresh" / "metadata" / "root_history" / "2.root.json").is_file()
    download(
        device_updater(repo.path, seasoned, first_boot=False), f"releases/{PRODUCT}-1.1.0.tar.zst"
    )

    # and again: 3.root.json is signed by the second and third root keys only
    third_keyid = repo.rotate_key("root")
    third: Metadata[Root] = load(repo.path / "metadata" / "3.root.json")
    assert set(third.signatures) == {new_keyid, third_keyid}
    download(device_updater(repo.path, tmp_path / "third"), f"releases/{PRODUCT}-1.1.0.tar.zst")


@pytest.mark.parametrize("role", ["targets", "releases", "snapshot", "timestamp"])
def test_rotating_a_role_key_keeps_devices_updating(
    repo: ReleaseRepository, source: Path, tmp_path: Path, role: str
) -> None:
    repo.add_release("1.0.0", tree=source)
    seasoned = tmp_path / "seasoned"
    download(device_updater(repo.path, seasoned), f"releases/{PRODUCT}-1.0.0.tar")
    old_keyid = load_signer(repo.path / "keys" / f"{role}.pem").public_key.keyid
    before = repo.metadata_versions()

    new_keyid = repo.rotate_key(role)
    md = verify_chain(repo.path)
    root: Root = md["root"].signed
    delegations = md["targets"].signed.delegations
    if role == "releases":
        assert md["root"].signed.version == before["root"]  # the targets role delegates it
        assert md["targets"].signed.version == before["targets"] + 1
        assert delegations.roles["releases"].keyids == [new_keyid]
        assert old_keyid not in delegations.keys
        assert set(md["targets"].signatures) == set(root.roles["targets"].keyids)
    else:
        root_keyids = set(root.roles["root"].keyids)
        assert root.version == before["root"] + 1
        assert set(md["root"].signatures) == root_keyids  # the root key signs, nothing else
        assert root.roles[role].keyids == [new_keyid]
        assert old_keyid not in root.keys
    assert list(md[role].signatures) == [new_keyid]
    assert (repo.path / "keys" / "retired" / f"{role}-{old_keyid}.pem").is_file()

    repo.add_release("1.1.0", tree=source)
    download(device_updater(repo.path, tmp_path / "fresh"), f"releases/{PRODUCT}-1.1.0.tar")
    download(device_updater(repo.path, seasoned, first_boot=False), f"releases/{PRODUCT}-1.1.0.tar")


def test_an_interrupted_rotation_is_finished_by_the_next_command(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    """The new key waits as ``.pem.next``; the next command that signs installs it."""
    repo.add_release("1.0.0", tree=source)
    old = load_signer(repo.path / "keys" / "targets.pem")
    new_keyid = repo.rotate_key("targets")
    keys_dir = repo.path / "keys"
    # back to the moment after the new root was written: old key file, old targets signature
    os.replace(keys_dir / "targets.pem", keys_dir / "targets.pem.next")
    os.replace(
        keys_dir / "retired" / f"targets-{old.public_key.keyid}.pem", keys_dir / "targets.pem"
    )
    md = current(repo.path)
    targets_file = repo.path / "metadata" / f"{md['targets'].signed.version}.targets.json"
    md["targets"].sign(old)
    targets_file.write_bytes(md["targets"].to_bytes())
    with pytest.raises(UnsignedMetadataError, match="targets was signed by 0/1 keys"):
        verify_chain(repo.path)

    ReleaseRepository.open(repo.path).publish()
    md = verify_chain(repo.path)
    assert list(md["targets"].signatures) == [new_keyid]
    assert load_signer(keys_dir / "targets.pem").public_key.keyid == new_keyid
    assert not (keys_dir / "targets.pem.next").exists()
    download(device_updater(repo.path, tmp_path / "device"), f"releases/{PRODUCT}-1.0.0.tar")


def test_a_missing_offline_key_is_named(repo: ReleaseRepository, source: Path) -> None:
    """Production keeps root and targets offline: adding and publishing still work."""
    for role in ("root", "targets"):
        (repo.path / "keys" / f"{role}.pem").rename(repo.path / f"{role}.offline.pem")
    repo.add_release("1.0.0", tree=source)
    ReleaseRepository.open(repo.path).publish()
    verify_chain(repo.path)
    with pytest.raises(ConfigError, match=r"the root key .*root\.pem is missing"):
        repo.rotate_key("snapshot")
    assert not (repo.path / "keys" / "snapshot.pem.next").exists()
    with pytest.raises(ConfigError, match="unknown role 'admin'"):
        repo.rotate_key("admin")
    verify_chain(repo.path)


def test_a_lost_role_key_can_be_replaced(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    repo.add_release("1.0.0", tree=source)
    (repo.path / "keys" / "releases.pem").unlink()
    with pytest.raises(ConfigError, match=r"the releases key .*releases\.pem is missing"):
        repo.add_release("1.1.0", tree=source)
    # nothing was packed: the payload, chunk list and chunk index of 1.0.0 only
    assert len(list((repo.path / "targets" / "releases").iterdir())) == 3
    new_keyid = repo.rotate_key("releases")
    assert not (repo.path / "keys" / "retired").exists()
    repo.add_release("1.1.0", tree=source)
    assert list(current(repo.path)["releases"].signatures) == [new_keyid]
    download(device_updater(repo.path, tmp_path / "device"), f"releases/{PRODUCT}-1.1.0.tar")


# -------------------------------------------------------------------------------- bundles


def test_bundle_carries_what_a_device_needs(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    info = repo.add_release("1.2.0", tree=source, compress="zstd", chunk_size=40_000)
    repo.add_release("1.3.0", tree=source)
    bundle = tmp_path / "update.sysupd"
    size = repo.write_bundle("1.2.0", bundle)
    assert bundle.stat().st_size == size
    header, payload = read_bundle(bundle)
    assert header.target == info.target
    assert header.roots == ((repo.path / "metadata" / "1.root.json").read_text(),)
    md = current(repo.path)
    assert (
        header.targets
        == (repo.path / "metadata" / f"{md['targets'].signed.version}.targets.json").read_text()
    )
    assert (
        header.releases
        == (repo.path / "metadata" / f"{md['releases'].signed.version}.releases.json").read_text()
    )
    assert hashlib.sha256(payload).hexdigest() == info.sha256
    assert header.chunks == chunk_digests(payload, 40_000)
    trusted = (repo.path / "metadata" / "1.root.json").read_bytes()
    entry, verified = verify_bundle_as_device(bundle, trusted)
    assert entry.custom["sysupd"]["version"] == "1.2.0"
    assert verified == payload


def test_bundle_after_rotations_carries_the_whole_root_chain(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    repo.add_release("1.0.0", tree=source)
    repo.rotate_key("root")
    repo.rotate_key("targets")
    repo.rotate_key("releases")
    image = tmp_path / "img"
    image.write_bytes(os.urandom(200_000))
    repo.add_release("1.1.0", image=image, chunk_size=32_768)
    bundle = tmp_path / "b.sysupd"
    for version in ("1.0.0", "1.1.0"):
        repo.write_bundle(version, bundle)
        header, _ = read_bundle(bundle)
        assert header.roots == tuple(
            (repo.path / "metadata" / f"{n}.root.json").read_text() for n in (1, 2, 3)
        )
        for n in (1, 2, 3):  # a device holding any of the roots verifies the bundle
            trusted = (repo.path / "metadata" / f"{n}.root.json").read_bytes()
            entry, payload = verify_bundle_as_device(bundle, trusted)
            assert entry.custom["sysupd"]["version"] == version
    assert payload == image.read_bytes()


def test_bundle_refuses_unknown_versions_and_damaged_payloads(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    info = repo.add_release("1.0.0", tree=source)
    with pytest.raises(ConfigError, match=r"no release 1\.0\.1"):
        repo.write_bundle("1.0.1", tmp_path / "b")
    with pytest.raises(ConfigError, match="invalid version"):
        repo.write_bundle("latest", tmp_path / "b")
    with pytest.raises(ConfigError, match="is a directory"):
        repo.write_bundle("1.0.0", tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        repo.write_bundle("1.0.0", tmp_path / "missing" / "b")
    payload_file = repo.path / "targets" / "releases" / f"{info.sha256}.{PRODUCT}-1.0.0.tar"
    data = bytearray(payload_file.read_bytes())
    data[-1] ^= 1
    payload_file.write_bytes(bytes(data))
    (tmp_path / "b").write_bytes(b"previous bundle")
    with pytest.raises(StateError, match="does not match its signed length and hash"):
        repo.write_bundle("1.0.0", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "repo", "src"]


def test_memory_does_not_grow_with_the_payload(repo: ReleaseRepository, tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    with image.open("wb") as handle:
        handle.truncate(48 * 1024 * 1024)  # sparse: cheap to make, 48 MiB to read
    tracemalloc.start()
    try:
        repo.add_release("1.0.0", image=image, chunk_size=256 * 1024)
        _, peak_add = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        repo.write_bundle("1.0.0", tmp_path / "big.sysupd")
        _, peak_bundle = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_add < 6 * 1024 * 1024
    assert peak_bundle < 6 * 1024 * 1024
    assert (tmp_path / "big.sysupd").stat().st_size > 48 * 1024 * 1024


# ------------------------------------------------------------------------------ bad inputs


def _snapshot_of(repo_dir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(repo_dir)): path.read_bytes()
        for path in sorted(repo_dir.rglob("*"))
        if path.is_file()
    }


def test_bad_inputs_are_refused_and_change_nothing(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    repo.add_release("1.0.0", tree=source)
    image = tmp_path / "ok.img"
    image.write_bytes(b"\x00" * 1000)
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    before = _snapshot_of(repo.path)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"version": "1.0.0", "tree": source}, "version 1.0.0 is already released"),
        ({"version": "1.0", "tree": source}, "invalid version '1.0'"),
        ({"version": "1.0.1"}, "exactly one of a tree"),
        ({"version": "1.0.1", "tree": source, "image": image}, "exactly one of a tree"),
        ({"version": "1.0.1", "tree": image}, f"the tree {image} is not a directory"),
        ({"version": "1.0.1", "tree": tmp_path / "nope"}, "is not a directory"),
        ({"version": "1.0.1", "image": source}, f"the image {source} is not a non-empty"),
        ({"version": "1.0.1", "image": tmp_path / "nope.img"}, "is not a non-empty regular"),
        ({"version": "1.0.1", "image": empty}, "is not a non-empty regular file"),
        ({"version": "1.0.1", "image": image, "compress": "zstd"}, "tree payloads only"),
        ({"version": "1.0.1", "tree": source, "compress": "gzip"}, "unknown compression"),
        ({"version": "1.0.1", "tree": source, "chunk_size": 0}, "chunk size 0"),
        ({"version": "1.0.1", "tree": source, "chunk_size": 64 * 2**20 + 1}, "not between 1"),
    ]
    for kwargs, problem in cases:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            repo.add_release(**kwargs)
    assert _snapshot_of(repo.path) == before
    assert [r.version for r in repo.releases()] == ["1.0.0"]


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "nested fifo"])
def test_trees_hold_only_regular_files_and_directories(
    repo: ReleaseRepository, source: Path, kind: str
) -> None:
    nested = source / "etc" / "app"
    if kind == "symlink":
        bad = nested / "link"
        bad.symlink_to(source / "README")
    elif kind == "dangling symlink":
        bad = source / "zzz"
        bad.symlink_to("/nonexistent")
    else:
        directory = nested / "run" if kind != "fifo" else source
        directory.mkdir(exist_ok=True)
        bad = directory / "pipe"
        os.mkfifo(bad)
    before = _snapshot_of(repo.path)
    with pytest.raises(ConfigError, match="regular files and directories only") as caught:
        repo.add_release("1.0.0", tree=source)
    assert str(bad) in str(caught.value)
    assert _snapshot_of(repo.path) == before  # no payload or temp file left behind


def test_the_tree_path_itself_may_be_a_symlink(
    repo: ReleaseRepository, source: Path, tmp_path: Path
) -> None:
    link = tmp_path / "release-tree"
    link.symlink_to(source)
    info = repo.add_release("1.0.0", tree=link)  # the operator's own path may be a link
    assert info.installed_size > 0


# ------------------------------------------------------------------------------------- CLI


def test_cli_release_workflow(tmp_path: Path, source: Path) -> None:
    runner = CliRunner()
    repo_dir = str(tmp_path / "repo")

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(cli, ["release", *args])
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = run("init", "--repo", repo_dir, "--product", PRODUCT)
    assert code == 0
    assert "1.root.json" in out
    code, out, _ = run(
        "add", "--repo", repo_dir, "--version", "1.2.0", "--tree", str(source), "--compress", "zstd"
    )
    assert code == 0
    assert f"releases/{PRODUCT}-1.2.0.tar.zst" in out
    image = tmp_path / "i.img"
    image.write_bytes(os.urandom(70_000))
    code, out, _ = run(
        "add", "--repo", repo_dir, "--version", "1.3.0-rc.1", "--image", str(image),
        "--notes", "candidate", "--chunk-size", "16384",
    )  # fmt: skip
    assert code == 0
    code, out, _ = run("list", "--repo", repo_dir)
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [(r[0], r[1], r[2], r[3]) for r in rows][1] == ("1.3.0-rc.1", "70000", "raw", "none")
    assert rows[0][0] == "1.2.0"
    assert rows[0][2:4] == ["tree", "zstd"]
    bundle = tmp_path / "out.sysupd"
    code, out, _ = run(
        "bundle", "--repo", repo_dir, "--version", "1.3.0-rc.1", "--output", str(bundle)
    )
    assert code == 0
    _, payload = verify_bundle_as_device(
        bundle, (tmp_path / "repo/metadata/1.root.json").read_bytes()
    )
    assert payload == image.read_bytes()
    code, out, _ = run("publish", "--repo", repo_dir)
    assert code == 0
    assert "timestamp v4" in out
    code, out, _ = run("rotate-key", "--repo", repo_dir, "--role", "root")
    assert code == 0
    assert "root is now version 2" in out
    download(device_updater(Path(repo_dir), tmp_path / "dev"), f"releases/{PRODUCT}-1.2.0.tar.zst")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["list", "--repo", "{tmp}/nowhere"], "is not a release repository"),
        (["add", "--repo", "{repo}", "--version", "1.0.0", "--tree", "{tmp}/x"], "not a directory"),
        (["add", "--repo", "{repo}", "--version", "1.0.0"], "exactly one of a tree"),
        (["add", "--repo", "{repo}", "--version", "v1", "--tree", "{tmp}"], "invalid version 'v1'"),
        (["bundle", "--repo", "{repo}", "--version", "3.0.0", "--output", "{tmp}/b"], "no release"),
        (["rotate-key", "--repo", "{repo}", "--role", "owner"], "unknown role 'owner'"),
        (["init", "--repo", "{repo}", "--product", PRODUCT], "not an empty directory"),
    ],
)
def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path, args: list[str], problem: str) -> None:
    repo_dir = tmp_path / "repo"
    ReleaseRepository.init(repo_dir, PRODUCT)
    argv = [a.format(tmp=tmp_path, repo=repo_dir) for a in args]
    result = CliRunner().invoke(cli, ["release", *argv])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
