"""Limits the signed metadata states, and the device enforces (issue 9, finding 9).

A 276 KB signed bundle could create 100,000 files (the extractor's only cap was 1,000,000
members), and a raw file slot grew past its size for a larger image. Now the signed manifest
declares a tree's member count (``entries``) beside its installed size, the device refuses an
archive with more members than that, and a configured ``slot_capacity_bytes`` is checked before
anything changes.

Every release here is made and signed by the project's own release tool; a lying one is the
tool's release with its ``custom.sysupd`` edited and ``releases``, ``snapshot`` and ``timestamp``
re-signed with the repository's own keys, as a holder of the release key could do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from sysupd.core.job import JobState
from sysupd.core.manifest import parse_manifest
from sysupd.core.settings import DEVICE_SETTINGS, Settings, apply_changes, refuse_device_settings
from sysupd.engine.engine import Engine
from sysupd.errors import ConfigError, InstallError, VerificationError
from sysupd.release import keys
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.engines import make_engine, running_device, snapshot_tree
from tests.releases import make_repo, make_tree

LYING_FILES = 20_000  # members the lying archive holds (the finding's bundle had 100,000)
DECLARED = 10  # members its signed manifest admits to
CHUNK = 64 << 10


# -- helpers ----------------------------------------------------------------------------------


def resign_release(
    repo: ReleaseRepository, version: str, edit: Callable[[dict[str, Any]], None]
) -> ReleaseRepository:
    """Edit the ``custom.sysupd`` of ``version``'s payload entry; re-sign releases, snapshot and
    timestamp with the repository's own keys (python-tuf's Metadata API); the reopened repo."""
    metadata = repo.path / "metadata"
    keys_dir = repo.path / "keys"
    serializer = JSONSerializer(compact=False)
    timestamp: Metadata[Timestamp] = Metadata.from_file(str(metadata / "timestamp.json"))
    snapshot_version = timestamp.signed.snapshot_meta.version
    snapshot: Metadata[Snapshot] = Metadata.from_file(
        str(metadata / f"{snapshot_version}.snapshot.json")
    )
    releases_version = snapshot.signed.meta["releases.json"].version
    releases: Metadata[Targets] = Metadata.from_file(
        str(metadata / f"{releases_version}.releases.json")
    )
    target = repo.release(version).target
    edit(releases.signed.targets[target].unrecognized_fields["custom"]["sysupd"])
    releases.signed.version += 1
    releases.sign(keys.load_signer(keys.key_file(keys_dir, "releases")))
    releases_bytes = releases.to_bytes(serializer)
    (metadata / f"{releases.signed.version}.releases.json").write_bytes(releases_bytes)
    snapshot.signed.meta["releases.json"] = MetaFile.from_data(
        releases.signed.version, releases_bytes, ["sha256"]
    )
    snapshot.signed.version += 1
    snapshot.sign(keys.load_signer(keys.key_file(keys_dir, "snapshot")))
    data = snapshot.to_bytes(serializer)
    (metadata / f"{snapshot.signed.version}.snapshot.json").write_bytes(data)
    timestamp.signed.snapshot_meta = MetaFile.from_data(snapshot.signed.version, data, ["sha256"])
    timestamp.signed.version += 1
    timestamp.sign(keys.load_signer(keys.key_file(keys_dir, "timestamp")))
    (metadata / "timestamp.json").write_bytes(timestamp.to_bytes(serializer))
    return ReleaseRepository.open(repo.path)


def many_files(directory: Path, count: int) -> Path:
    """A tree of ``count`` one-byte files in one directory: ``count + 1`` members."""
    (directory / "d").mkdir(parents=True)
    for index in range(count):
        (directory / "d" / f"{index:06d}").write_bytes(b"x")
    return directory


def all_paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def signed_custom(repo: ReleaseRepository, version: str) -> dict[str, Any]:
    timestamp: Metadata[Timestamp] = Metadata.from_file(
        str(repo.path / "metadata" / "timestamp.json")
    )
    snapshot: Metadata[Snapshot] = Metadata.from_file(
        str(repo.path / "metadata" / f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    )
    number = snapshot.signed.meta["releases.json"].version
    releases: Metadata[Targets] = Metadata.from_file(
        str(repo.path / "metadata" / f"{number}.releases.json")
    )
    custom: dict[str, Any] = releases.signed.targets[repo.release(version).target].custom
    return custom


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


def device(tmp_path: Path, repo: ReleaseRepository, **changes: Any) -> Engine:
    """A started, confirmed device on directory slots; slot A holds the running system."""
    return running_device(tmp_path, repo, **changes)


# -- the release tool states the member count --------------------------------------------------


def test_the_release_tool_signs_the_member_count_of_a_tree(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    # make_tree: bin/, bin/app, etc/, etc/version
    assert signed_custom(repo, "1.1.0")["sysupd"]["entries"] == 4
    assert repo.release("1.1.0").entries == 4
    tree = many_files(tmp_path / "many", 250)
    info = repo.add_release("1.2.0", tree=tree, chunk_size=CHUNK)
    assert info.entries == 251
    assert signed_custom(repo, "1.2.0")["sysupd"]["entries"] == 251
    empty = tmp_path / "empty"
    empty.mkdir()
    assert repo.add_release("1.3.0", tree=empty).entries == 0


def test_a_raw_release_states_no_member_count(tmp_path: Path, repo: ReleaseRepository) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(os.urandom(4096))
    info = repo.add_release("2.0.0", image=image)
    assert info.entries is None
    assert "entries" not in signed_custom(repo, "2.0.0")["sysupd"]


# -- the manifest's entries field, parsed strictly ---------------------------------------------


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "product": "sysupd-demo",
        "version": "1.0.0",
        "payload": "tree",
        "compression": "none",
        "installed_size": 10,
        "entries": 3,
        "chunk_size": 4096,
        "chunks": "releases/x.tar.chunks",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def test_the_manifest_carries_the_member_count() -> None:
    manifest = parse_manifest("releases/x.tar", 100, {"sha256": "0" * 64}, {"sysupd": _fields()})
    assert manifest.entries == 3
    raw = _fields(payload="raw", installed_size=100, entries=None)
    assert (
        parse_manifest("releases/x.img", 100, {"sha256": "0" * 64}, {"sysupd": raw}).entries is None
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            _fields(entries=None), "made by an older release tool: add it again", id="tree-without"
        ),
        pytest.param(_fields(entries=-1), "negative member count", id="negative"),
        pytest.param(_fields(entries=True), "wrong type", id="bool"),
        pytest.param(_fields(entries="3"), "wrong type", id="text"),
        pytest.param(
            _fields(payload="raw", installed_size=100, entries=0),
            "a raw payload has no members",
            id="raw-with",
        ),
    ],
)
def test_a_bad_member_count_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        parse_manifest("releases/x", 100, {"sha256": "0" * 64}, {"sysupd": fields})


# -- the device enforces it --------------------------------------------------------------------


def test_an_archive_with_more_members_than_signed_is_refused_early(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    tree = many_files(tmp_path / "many", LYING_FILES)
    repo.add_release("1.2.0", tree=tree, compress="none", chunk_size=CHUNK)

    def lie(fields: dict[str, Any]) -> None:
        fields["entries"] = DECLARED

    repo = resign_release(repo, "1.2.0", lie)
    bundle = tmp_path / "lying.bundle"
    repo.write_bundle("1.2.0", bundle)
    engine = device(tmp_path, repo)
    state = tmp_path / "state"
    (state / "slots" / "B").mkdir()
    before = (snapshot_tree(state / "slots" / "A"), all_paths(tmp_path))
    done: list[int] = []

    def progress(stage: JobState, count: int, _total: int) -> None:
        if stage is JobState.INSTALLING:
            done.append(count)

    with pytest.raises(VerificationError, match=f"more than the {DECLARED} members"):
        engine.install(BundleFile(bundle), progress=progress)
    # Stopped at the 11th member: a few chunks of a 20 MB payload, not the whole archive.
    length = repo.release("1.2.0").length
    assert length > 10_000_000
    assert max(done) <= 3 * CHUNK
    assert list((state / "slots" / "B").iterdir()) == []
    assert snapshot_tree(state / "slots" / "A") == before[0]
    assert all_paths(tmp_path) == before[1]  # nothing written anywhere else
    status = engine.status().to_json()
    assert (status["booted"], status["next_boot"], status["job"]) == ("A", "A", None)
    assert status["last_result"]["result"] == "failed"
    good = tmp_path / "good.bundle"
    repo.write_bundle("1.1.0", good)
    assert str(engine.install(BundleFile(good)).version) == "1.1.0"  # the next update succeeds


def test_an_archive_with_exactly_the_signed_members_installs(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    tree = many_files(tmp_path / "many", 300)
    repo.add_release("1.2.0", tree=tree, compress="zstd", chunk_size=CHUNK)
    bundle = tmp_path / "many.bundle"
    repo.write_bundle("1.2.0", bundle)
    engine = device(tmp_path, repo)
    assert engine.install(BundleFile(bundle)).entries == 301
    assert len(list((tmp_path / "state" / "slots" / "B" / "d").iterdir())) == 300


def test_a_release_without_a_member_count_is_refused_clearly(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    def drop(fields: dict[str, Any]) -> None:
        del fields["entries"]

    repo = resign_release(repo, "1.1.0", drop)
    bundle = tmp_path / "old.bundle"
    repo.write_bundle("1.1.0", bundle)
    engine = device(tmp_path, repo)
    state = tmp_path / "state"
    before = (snapshot_tree(state / "slots" / "A"), (state / "bootenv.json").read_bytes())
    with pytest.raises(
        VerificationError,
        match=(
            r"made by an older release tool: add it again with this one "
            r"\('sysupd release add', as a new version\)"
        ),
    ):
        engine.install(BundleFile(bundle))
    assert (snapshot_tree(state / "slots" / "A"), (state / "bootenv.json").read_bytes()) == before
    assert not (state / "slots" / "B").exists() or not any((state / "slots" / "B").iterdir())
    assert engine.status().to_json()["job"] is None


# -- the configured slot capacity --------------------------------------------------------------


def test_slot_capacity_is_a_device_setting() -> None:
    assert "slot_capacity_bytes" in DEVICE_SETTINGS
    assert Settings().slot_capacity_bytes == 0
    assert (
        apply_changes(Settings(), {"slot_capacity_bytes": 1 << 30}).slot_capacity_bytes == 1 << 30
    )
    with pytest.raises(ConfigError, match="slot_capacity_bytes"):
        apply_changes(Settings(), {"slot_capacity_bytes": -1})
    with pytest.raises(ConfigError, match="read-only"):
        refuse_device_settings(["slot_capacity_bytes"])


@pytest.fixture
def raw_repo(tmp_path: Path) -> ReleaseRepository:
    repo = ReleaseRepository.init(tmp_path / "raw-repo", "sysupd-demo")
    for version, size in (("2.0.0", 2 << 20), ("2.1.0", 1 << 20)):
        image = tmp_path / f"image-{version}.img"
        image.write_bytes(os.urandom(size))
        repo.add_release(version, image=image, chunk_size=CHUNK)
    return repo


def test_an_image_larger_than_the_slot_capacity_is_refused_before_the_first_byte(
    tmp_path: Path, raw_repo: ReleaseRepository
) -> None:
    slot_a, slot_b = tmp_path / "slot-a.img", tmp_path / "slot-b.img"
    slot_a.write_bytes(b"running system" * 100)
    slot_b.write_bytes(b"previous image" * 10_000)  # 140,000 bytes
    capacity = 1 << 20
    engine = make_engine(
        tmp_path / "state",
        raw_repo,
        slots=[f"A:raw:{slot_a}", f"B:raw:{slot_b}"],
        slot_capacity_bytes=capacity,
    )
    engine.start()
    engine.confirm(True, "")
    state = tmp_path / "state"
    before = ((state / "bootenv.json").read_bytes(), engine.status().to_json()["slots"])
    large = tmp_path / "large.bundle"
    raw_repo.write_bundle("2.0.0", large)
    with pytest.raises(
        InstallError,
        match=(
            r"release 2\.0\.0 needs 2097152 bytes, more than the 1048576 bytes slot B holds "
            r"\(setting slot_capacity_bytes\)"
        ),
    ):
        engine.install(BundleFile(large))
    assert slot_b.read_bytes() == b"previous image" * 10_000  # not written, not grown
    assert slot_a.read_bytes() == b"running system" * 100
    assert ((state / "bootenv.json").read_bytes(), engine.status().to_json()["slots"]) == before
    assert engine.status().to_json()["job"] is None
    assert engine.status().to_json()["last_result"]["result"] == "failed"
    fits = tmp_path / "fits.bundle"
    raw_repo.write_bundle("2.1.0", fits)  # exactly the capacity
    assert str(engine.install(BundleFile(fits)).version) == "2.1.0"
    assert slot_b.stat().st_size == capacity


def test_a_tree_larger_than_the_slot_capacity_is_refused_before_the_slot_is_wiped(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    installed = repo.release("1.1.0").installed_size
    engine = device(tmp_path, repo, slot_capacity_bytes=installed - 1)
    state = tmp_path / "state"
    inactive = state / "slots" / "B"
    inactive.mkdir(parents=True)
    (inactive / "kept").write_text("what slot B held\n")
    before = (
        snapshot_tree(state / "slots"),
        (state / "bootenv.json").read_bytes(),
        engine.status().to_json()["slots"],
    )
    bundle = tmp_path / "tree.bundle"
    repo.write_bundle("1.1.0", bundle)
    with pytest.raises(
        InstallError, match=f"needs {installed} bytes, more than the {installed - 1} bytes slot B"
    ):
        engine.install(BundleFile(bundle))
    after = (
        snapshot_tree(state / "slots"),
        (state / "bootenv.json").read_bytes(),
        engine.status().to_json()["slots"],
    )
    assert after == before
    assert engine.status().to_json()["job"] is None
    roomy = make_engine(state, repo, slot_capacity_bytes=installed)
    assert str(roomy.install(BundleFile(bundle)).version) == "1.1.0"


def test_no_configured_capacity_leaves_the_slot_size_to_the_device(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    tree = make_tree(tmp_path / "big", "1.2.0", size=2 << 20)
    repo.add_release("1.2.0", tree=tree, chunk_size=CHUNK)
    bundle = tmp_path / "big.bundle"
    repo.write_bundle("1.2.0", bundle)
    assert str(device(tmp_path, repo).install(BundleFile(bundle)).version) == "1.2.0"
