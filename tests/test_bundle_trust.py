"""Verifying a bundle's metadata against the device's trust: each way a bundle can lie."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from sysupd.core.bundle_format import BundleHeader
from sysupd.core.bundletrust import BundleMetadata, ReleasePolicy, VerifiedBundle, verify_bundle
from sysupd.core.trustchain import ROLES, TrustState, verify_metadata
from sysupd.core.versions import parse_version
from sysupd.errors import TrustRefused, VerificationError
from sysupd.release import keys
from sysupd.release._metadata import RepositoryMetadata
from sysupd.release.repository import ReleaseRepository
from sysupd.system.clock import ManualClock, SystemClock
from tests.releases import PRODUCT, fast_forward, make_repo, read_header

NOW = datetime.now(UTC)
POLICY = ReleasePolicy(PRODUCT, None)


def _trust(repo: ReleaseRepository) -> TrustState:
    return TrustState((repo.path / "metadata" / "1.root.json").read_bytes())


def _bundle(repo: ReleaseRepository, version: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{version}.bundle"
    repo.write_bundle(version, out)
    return out


def test_good_bundle(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.1.0")
    verified = verify_bundle(
        read_header(_bundle(repo, "1.1.0", tmp_path)), _trust(repo), POLICY, NOW
    )
    manifest = verified.manifest
    assert manifest.version == parse_version("1.1.0")
    assert manifest.product == PRODUCT
    assert manifest.payload == "tree"
    assert manifest.compression == "zstd"
    assert manifest.chunk_size == 65536
    assert verified.new_roots == ()
    assert verified.trust.version("releases") >= 1
    assert set(verified.trust.kept) == set(ROLES)
    assert not verified.downgrade


def test_bundle_signed_by_another_repository(tmp_path: Path) -> None:
    ours = make_repo(tmp_path / "ours", "1.0.0")
    theirs = make_repo(tmp_path / "theirs", "1.1.0")
    header = read_header(_bundle(theirs, "1.1.0", tmp_path))
    with pytest.raises(VerificationError, match="timestamp metadata is not signed by the keys"):
        verify_bundle(header, _trust(ours), POLICY, NOW)


def test_expired_releases_metadata(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.1.0", at=datetime(2024, 1, 1, tzinfo=UTC))
    header = read_header(_bundle(repo, "1.1.0", tmp_path))
    later = datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(VerificationError, match="expired"):
        verify_bundle(header, _trust(repo), POLICY, later)


def test_another_product(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.1.0", product="other-appliance")
    header = read_header(_bundle(repo, "1.1.0", tmp_path))
    with pytest.raises(VerificationError, match="for product 'other-appliance'"):
        verify_bundle(header, _trust(repo), POLICY, NOW)


def test_downgrade_refused_unless_allowed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.1.0")
    header = read_header(_bundle(repo, "1.1.0", tmp_path))
    floor = ReleasePolicy(PRODUCT, parse_version("1.2.0"))
    with pytest.raises(VerificationError, match=r"older than the installed floor 1\.2\.0"):
        verify_bundle(header, _trust(repo), floor, NOW)
    allowed = dataclasses.replace(floor, allow_downgrade=True)
    assert verify_bundle(header, _trust(repo), allowed, NOW).downgrade


def test_key_rotation_is_followed_from_the_first_root(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    trust = _trust(repo)
    repo.rotate_key("root")
    repo.rotate_key("targets")
    repo.add_release("1.1.0", tree=tmp_path / "tree-1.0.0", compress="none", chunk_size=65536)
    header = read_header(_bundle(repo, "1.1.0", tmp_path))
    assert len(header.roots) == 3
    verified = verify_bundle(header, trust, POLICY, NOW)
    assert [json.loads(r)["signed"]["version"] for r in verified.new_roots] == [2, 3]
    assert verified.trust.root == verified.new_roots[-1]


def test_root_chain_with_a_missing_version(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    repo.rotate_key("root")
    repo.rotate_key("root")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    gapped = dataclasses.replace(header, roots=(header.roots[0], header.roots[2]))
    with pytest.raises(VerificationError, match="missing version 2"):
        verify_bundle(gapped, _trust(repo), POLICY, NOW)


def test_metadata_rollback_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    for role in ROLES:
        seen = dataclasses.replace(_trust(repo), seen={role: 999})
        with pytest.raises(VerificationError, match=rf"{role} .*rollback.*'sysupd release bundle'"):
            verify_bundle(header, seen, POLICY, NOW)


def test_tampered_metadata_text(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    releases = json.loads(header.releases)
    entry = releases["signed"]["targets"][header.target]
    entry["custom"]["sysupd"]["product"] = "evil"
    forged = dataclasses.replace(header, releases=json.dumps(releases))
    with pytest.raises(VerificationError, match="releases metadata does not match the length"):
        verify_bundle(forged, _trust(repo), POLICY, NOW)
    # with the online snapshot and timestamp keys as well, the releases signature still stops it
    with pytest.raises(VerificationError, match="releases metadata is not signed"):
        verify_bundle(_repinned(repo, forged), _trust(repo), POLICY, NOW)


def _repinned(repo: ReleaseRepository, header: BundleHeader) -> BundleHeader:
    """``header`` with a snapshot and timestamp re-signed (with the repository's online keys)
    to name its ``targets`` and ``releases`` texts by hash, at the versions they named before:
    what a thief of those keys could make, so that the checks after the hashes are reached."""
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    snapshot = Metadata[Snapshot].from_bytes(header.snapshot.encode())
    for role in ("targets", "releases"):
        old = snapshot.signed.meta[f"{role}.json"]
        text = getattr(header, role).encode()
        snapshot.signed.meta[f"{role}.json"] = MetaFile.from_data(old.version, text, ["sha256"])
    snapshot.sign(md.signer("snapshot"))
    snapshot_bytes = snapshot.to_bytes()
    timestamp = Metadata[Timestamp].from_bytes(header.timestamp.encode())
    timestamp.signed.snapshot_meta = MetaFile.from_data(
        snapshot.signed.version, snapshot_bytes, ["sha256"]
    )
    timestamp.sign(md.signer("timestamp"))
    return dataclasses.replace(
        header, snapshot=snapshot_bytes.decode(), timestamp=timestamp.to_bytes().decode()
    )


def test_tampered_chunk_list(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    bad = bytes([header.chunks[0] ^ 1]) + header.chunks[1:]
    with pytest.raises(VerificationError, match="chunk list does not match"):
        verify_bundle(dataclasses.replace(header, chunks=bad), _trust(repo), POLICY, NOW)


def test_target_not_listed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    other = dataclasses.replace(header, target="releases/sysupd-demo-9.9.9.tar")
    with pytest.raises(VerificationError, match="does not list"):
        verify_bundle(other, _trust(repo), POLICY, NOW)


def test_garbage_metadata(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    garbage = dataclasses.replace(header, targets="{]")
    with pytest.raises(VerificationError, match="targets metadata does not match the length"):
        verify_bundle(garbage, _trust(repo), POLICY, NOW)
    with pytest.raises(VerificationError, match="cannot be parsed"):
        verify_bundle(_repinned(repo, garbage), _trust(repo), POLICY, NOW)
    swapped = _repinned(repo, dataclasses.replace(header, targets=header.roots[0]))
    with pytest.raises(VerificationError, match="expected targets metadata"):
        verify_bundle(swapped, _trust(repo), POLICY, NOW)


def test_a_trusted_root_not_signed_by_its_own_keys_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    root = json.loads((repo.path / "metadata" / "1.root.json").read_bytes())
    root["signatures"] = []
    unsigned = TrustState(json.dumps(root).encode())
    with pytest.raises(VerificationError, match="trusted root v1 is not signed by a threshold"):
        verify_bundle(header, unsigned, POLICY, NOW)
    other = make_repo(tmp_path / "other", "1.0.0")
    foreign = json.loads((other.path / "metadata" / "1.root.json").read_bytes())
    root["signatures"] = foreign["signatures"]  # signed, but by another repository's key
    with pytest.raises(VerificationError, match="trusted root v1 is not signed by a threshold"):
        verify_bundle(header, TrustState(json.dumps(root).encode()), POLICY, NOW)


def test_roots_at_or_below_the_trusted_one_are_not_parsed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    repo.rotate_key("root")
    repo.rotate_key("root")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    trusted = TrustState(header.roots[1].encode())  # the device has v2 already
    unreadable_v1 = json.dumps({"signed": {"version": 1, "_type": "root", "spec_version": "99"}})
    for old in (unreadable_v1, "{]", "not json at all"):
        odd = dataclasses.replace(header, roots=(old, *header.roots[1:]))
        verified = verify_bundle(odd, trusted, POLICY, NOW)
        assert [json.loads(r)["signed"]["version"] for r in verified.new_roots] == [3]


def test_two_different_roots_of_one_version_are_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    repo.rotate_key("root")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    v2 = json.loads(header.roots[1])
    v2["signed"]["expires"] = "2099-01-01T00:00:00Z"  # another text of version 2
    doubled = dataclasses.replace(header, roots=(*header.roots, json.dumps(v2)))
    with pytest.raises(VerificationError, match="two different roots of version 2"):
        verify_bundle(doubled, _trust(repo), POLICY, NOW)
    again = dataclasses.replace(header, roots=(*header.roots, header.roots[1]))
    assert verify_bundle(again, _trust(repo), POLICY, NOW).new_roots  # the same text twice: fine


def test_a_fast_forward_is_recovered_by_rotating_the_keys_it_used(tmp_path: Path) -> None:
    """An attacker who stole the targets key and the online snapshot and timestamp keys made
    the device see (and keep) every role at v999: every honest bundle reads as a rollback
    until those keys are rotated; then the metadata that set the floors no longer verifies, and
    they no longer bind (the TUF specification's fast-forward recovery)."""
    repo = make_repo(tmp_path, "1.0.0")
    forwarded = TrustState(_trust(repo).root, dict.fromkeys(ROLES, 999), _forwarded(repo))
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    with pytest.raises(VerificationError, match="was withdrawn"):
        verify_bundle(header, forwarded, POLICY, NOW)
    repo.rotate_key("targets")
    with pytest.raises(VerificationError, match=r"timestamp metadata v\d+ is older than v999"):
        verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), forwarded, POLICY, NOW)
    repo.rotate_key("snapshot")
    repo.rotate_key("timestamp")
    recovered = verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), forwarded, POLICY, NOW)
    assert all(recovered.trust.version(role) < 999 for role in ROLES), recovered.trust.seen
    assert [json.loads(r)["signed"]["version"] for r in recovered.new_roots] == [2, 3, 4]


def _forwarded(repo: ReleaseRepository) -> dict[str, bytes]:
    """Every role at v999 as ``fast_forward`` makes them, with a snapshot and timestamp that
    name them, signed with the repository's own (stolen) snapshot and timestamp keys."""
    targets, releases = fast_forward(repo)
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    snapshot, timestamp = md.snapshot, md.timestamp
    for name in ("targets.json", "releases.json"):
        snapshot.signed.meta[name] = MetaFile(999)
    snapshot.signed.version = 999
    snapshot.sign(md.signer("snapshot"))
    timestamp.signed.snapshot_meta = MetaFile(999)
    timestamp.signed.version = 999
    timestamp.sign(md.signer("timestamp"))
    return {
        "timestamp": timestamp.to_bytes(),
        "snapshot": snapshot.to_bytes(),
        "targets": targets,
        "releases": releases,
    }


def test_a_floor_set_by_kept_metadata_binds_while_it_still_verifies(tmp_path: Path) -> None:
    """A root that only adds a targets key (the old one stays) is no rotation: the floors and
    the kept copy still bind, so a withdrawn release stays refused (review of issue 11)."""
    repo = make_repo(tmp_path, "1.1.0", "1.2.0")
    old = read_header(_bundle(repo, "1.1.0", tmp_path))
    _withdraw(repo, "1.1.0")
    device = verify_bundle(
        read_header(_bundle(repo, "1.2.0", tmp_path)), _trust(repo), POLICY, NOW
    ).trust
    md = RepositoryMetadata(repo.path, SystemClock())
    with md.locked():
        md.load()
        md.root.signed.add_key(keys.generate_signer().public_key, "targets")
        md.commit("root", md.root, signers=[md.signer("root")])
        md.commit_snapshot_and_timestamp()
    roots = tuple((repo.path / "metadata" / f"{v}.root.json").read_text() for v in (1, 2))
    with pytest.raises(VerificationError, match="was withdrawn"):
        verify_bundle(dataclasses.replace(old, roots=roots), device, POLICY, NOW)


def test_a_floor_of_a_version_number_alone_always_binds(tmp_path: Path) -> None:
    """Without the metadata that set it there is nothing to re-verify: the floor binds, even
    across a key rotation (conservative)."""
    repo = make_repo(tmp_path, "1.0.0")
    numbers = dataclasses.replace(_trust(repo), seen={"targets": 999, "releases": 999})
    repo.rotate_key("targets")
    with pytest.raises(VerificationError, match=r"older than v999"):
        verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), numbers, POLICY, NOW)


def test_a_fast_forward_of_releases_is_recovered_by_rotating_the_releases_key(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    md.releases.signed.version = 999
    md.releases.signed.targets.clear()  # lists nothing: every honest release reads as withdrawn
    md.releases.sign(md.signer("releases"))  # with the stolen releases key
    device = dataclasses.replace(
        _trust(repo), seen={"releases": 999}, kept={"releases": md.releases.to_bytes()}
    )
    with pytest.raises(VerificationError, match=r"releases metadata v\d+ is older than v999"):
        verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), device, POLICY, NOW)
    repo.rotate_key("releases")
    recovered = verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), device, POLICY, NOW)
    assert recovered.trust.version("releases") < 999


def _withdraw(repo: ReleaseRepository, version: str) -> None:
    """Take ``version`` out of the repository's releases metadata (a release pulled back), as
    the release tool's own signing steps would publish it."""
    md = RepositoryMetadata(repo.path, SystemClock())
    with md.locked():
        md.load()
        gone = [path for path in md.releases.signed.targets if f"-{version}." in path]
        assert gone, f"{version} is not in the repository"
        for path in gone:
            del md.releases.signed.targets[path]
        md.commit("releases", md.releases)
        md.commit_snapshot_and_timestamp()


def _seen(verified: VerifiedBundle) -> TrustState:
    """The trust a device keeps after installing ``verified`` (what the trust store commits)."""
    return verified.trust


def test_an_older_bundle_verifies_against_the_newer_metadata_the_device_kept(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, "1.1.0")
    old = read_header(_bundle(repo, "1.1.0", tmp_path))  # made now: releases vN
    repo.add_release("1.2.0", tree=tmp_path / "tree-1.1.0", compress="none", chunk_size=65536)
    newer = verify_bundle(read_header(_bundle(repo, "1.2.0", tmp_path)), _trust(repo), POLICY, NOW)
    device = _seen(newer)  # the device installed 1.2.0: it has seen releases vN+1, and kept it
    verified = verify_bundle(old, device, POLICY, NOW)
    assert str(verified.manifest.version) == "1.1.0"
    assert verified.trust.seen == device.seen, "versions never go back"
    assert verified.trust.kept == device.kept
    # Without the kept copy, only the version numbers: a rollback, as before.
    numbers_only = dataclasses.replace(device, kept={})
    with pytest.raises(VerificationError, match="rollback"):
        verify_bundle(old, numbers_only, POLICY, NOW)


def test_a_bundle_of_a_withdrawn_release_is_refused_saying_so(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.1.0", "1.2.0")
    old = read_header(_bundle(repo, "1.1.0", tmp_path))
    _withdraw(repo, "1.1.0")
    device = _seen(
        verify_bundle(read_header(_bundle(repo, "1.2.0", tmp_path)), _trust(repo), POLICY, NOW)
    )
    with pytest.raises(VerificationError, match=r"1\.1\.0\.tar.* was withdrawn: the releases"):
        verify_bundle(old, device, POLICY, NOW)


def test_verified_roots_are_kept_when_the_bundle_is_refused_later(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    repo.rotate_key("root")
    repo.rotate_key("root")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    with pytest.raises(TrustRefused, match="another-box") as refused:
        verify_bundle(header, _trust(repo), ReleasePolicy("another-box", None), NOW)
    assert [json.loads(r)["signed"]["version"] for r in refused.value.roots] == [2, 3]
    broken_v3 = json.loads(header.roots[2])
    broken_v3["signatures"] = []
    half = dataclasses.replace(header, roots=(*header.roots[:2], json.dumps(broken_v3)))
    with pytest.raises(TrustRefused, match="root v3 is not signed") as cut:
        verify_bundle(half, _trust(repo), POLICY, NOW)
    assert [json.loads(r)["signed"]["version"] for r in cut.value.roots] == [2]
    unrotated = make_repo(tmp_path / "plain", "1.0.0")
    plain = read_header(_bundle(unrotated, "1.0.0", tmp_path / "plain"))
    with pytest.raises(TrustRefused) as nothing_new:
        verify_bundle(plain, _trust(unrotated), ReleasePolicy("another-box", None), NOW)
    assert nothing_new.value.roots == ()


def test_metadata_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    """Two parsers may keep different copies of a repeated key: refused before anything else."""
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    text = header.releases
    doubled = text.replace('"signed": {', '"signed": {"_type": "targets", ', 1)
    assert doubled != text
    repinned = _repinned(repo, dataclasses.replace(header, releases=doubled))
    with pytest.raises(VerificationError, match=r"releases metadata cannot be parsed: .*'_type'"):
        verify_bundle(repinned, _trust(repo), POLICY, NOW)


def test_unknown_fields_are_kept_under_the_signature(tmp_path: Path) -> None:
    """The TUF specification lets metadata carry fields a client does not know. Under "signed"
    they count for the signature (one added after signing breaks it); outside it they are
    ignored."""
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    releases = json.loads(header.releases)
    releases["signed"]["x-sysupd-future"] = {"anything": [1, 2]}
    forged = _repinned(repo, dataclasses.replace(header, releases=json.dumps(releases)))
    with pytest.raises(VerificationError, match="releases metadata is not signed"):
        verify_bundle(forged, _trust(repo), POLICY, NOW)
    releases["x-outside-signed"] = True  # outside "signed": not covered, and ignored
    del releases["signed"]["x-sysupd-future"]
    tolerated = _repinned(repo, dataclasses.replace(header, releases=json.dumps(releases)))
    assert verify_bundle(tolerated, _trust(repo), POLICY, NOW).manifest.version


def _resigned_root(repo: ReleaseRepository, header_root: str, *, keep: str) -> str:
    """Root v2 (signed by the old and the new root key) with only one of its signatures left:
    ``keep`` is "old" or "new"."""
    v1 = json.loads((repo.path / "metadata" / "1.root.json").read_bytes())
    old_ids = set(v1["signed"]["roles"]["root"]["keyids"])
    v2 = json.loads(header_root)
    v2["signatures"] = [
        sig for sig in v2["signatures"] if (sig["keyid"] in old_ids) == (keep == "old")
    ]
    assert v2["signatures"], "the rotation signed with both keys"
    return json.dumps(v2)


@pytest.mark.parametrize("keep", ["old", "new"])
def test_a_new_root_needs_the_old_keys_and_its_own(tmp_path: Path, keep: str) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    repo.rotate_key("root")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    half = _resigned_root(repo, header.roots[1], keep=keep)
    bad = dataclasses.replace(header, roots=(header.roots[0], half))
    with pytest.raises(VerificationError, match="root v2 is not signed by the keys of v1 and its"):
        verify_bundle(bad, _trust(repo), POLICY, NOW)


def test_an_expired_newest_root_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0", at=datetime(2024, 1, 1, tzinfo=UTC))
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    with pytest.raises(VerificationError, match="root metadata v1 has expired"):
        verify_bundle(header, _trust(repo), POLICY, datetime(2026, 1, 2, tzinfo=UTC))
    assert verify_bundle(header, _trust(repo), POLICY, datetime(2024, 6, 1, tzinfo=UTC))


def test_verify_metadata_is_the_policy_free_seam(tmp_path: Path) -> None:
    """The offline path's TUF checks alone, as the conformance client and the bundle check use
    them: no product, no floor, no target; and an older set is a rollback there (only the
    bundle check lets the device's kept copies stand in)."""
    repo = make_repo(tmp_path, "1.1.0")
    header = read_header(_bundle(repo, "1.1.0", tmp_path))
    verified = verify_metadata(_trust(repo), BundleMetadata(header), NOW)
    assert verified.root.signed.version == 1
    assert verified.new_roots == ()
    assert verified.releases is not None
    kept = verified.trust()
    assert kept.version("releases") == verified.releases.signed.version
    assert kept.kept["releases"] == header.releases.encode(), "the exact bytes are kept"
    repo.add_release("1.2.0", tree=tmp_path / "tree-1.1.0", compress="none", chunk_size=65536)
    newer = read_header(_bundle(repo, "1.2.0", tmp_path))
    seen = verify_metadata(kept, BundleMetadata(newer), NOW).trust()
    with pytest.raises(TrustRefused, match=r"timestamp metadata v.* older") as older:
        verify_metadata(seen, BundleMetadata(header), NOW)
    assert older.value.rollback
    top = verify_metadata(_trust(repo), BundleMetadata(header), NOW, delegated=False)
    assert top.releases is None
    assert "releases" not in top.trust().kept


class _Recording(BundleMetadata):
    """A bundle's metadata that records what the walker asks for."""

    def __init__(self, header: BundleHeader) -> None:
        super().__init__(header)
        self.asked: list[str] = []

    def root(self, version: int) -> bytes | None:
        self.asked.append(f"{version}.root")
        return super().root(version)

    def timestamp(self) -> bytes | None:
        self.asked.append("timestamp")
        return super().timestamp()

    def role(self, role: str, version: int) -> bytes | None:
        self.asked.append(f"{version}.{role}")
        return super().role(role, version)


def test_the_walker_asks_in_the_workflow_order_for_only_what_it_needs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    repo.rotate_key("root")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    versions = repo.metadata_versions()
    source = _Recording(header)
    trust = verify_metadata(_trust(repo), source, NOW).trust()
    assert source.asked == [
        "2.root",
        "3.root",
        "timestamp",
        f"{versions['snapshot']}.snapshot",
        f"{versions['targets']}.targets",
        f"{versions['releases']}.releases",
    ]
    again = _Recording(header)
    verify_metadata(trust, again, NOW)
    assert again.asked == ["3.root", "timestamp"], "the kept copies the snapshot names are reused"
    forged = json.loads(header.timestamp)
    forged["signatures"] = []
    stopped = _Recording(dataclasses.replace(header, timestamp=json.dumps(forged)))
    with pytest.raises(TrustRefused, match="timestamp metadata is not signed") as refused:
        verify_metadata(_trust(repo), stopped, NOW)
    assert stopped.asked == ["2.root", "3.root", "timestamp"], "nothing asked after a refusal"
    assert len(refused.value.roots) == 1


def test_a_snapshot_that_is_not_the_one_the_timestamp_names_is_refused(tmp_path: Path) -> None:
    """Mix and match: metadata of another moment in the repository's history."""
    repo = make_repo(tmp_path, "1.0.0")
    then = read_header(_bundle(repo, "1.0.0", tmp_path))
    repo.add_release("1.1.0", tree=tmp_path / "tree-1.0.0", compress="none", chunk_size=65536)
    now = read_header(_bundle(repo, "1.1.0", tmp_path))
    for mixed, problem in (
        (dataclasses.replace(now, snapshot=then.snapshot), "snapshot metadata does not match"),
        (dataclasses.replace(now, releases=then.releases), "releases metadata does not match"),
        (_repinned(repo, dataclasses.replace(now, releases=then.releases)), "is version"),
        (_repinned(repo, dataclasses.replace(then, releases=now.releases)), "is version"),
    ):
        with pytest.raises(VerificationError, match=problem):
            verify_bundle(mixed, _trust(repo), POLICY, NOW)


def test_a_snapshot_that_rolls_back_a_role_is_refused(tmp_path: Path) -> None:
    """A newer timestamp and snapshot that name an older releases than the device's kept
    snapshot does: a rollback, signed or not (here: signed with the repository's keys)."""
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    device = verify_bundle(header, _trust(repo), POLICY, NOW).trust
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    releases_v = md.snapshot.signed.meta["releases.json"].version
    md.snapshot.signed.meta["releases.json"] = MetaFile(releases_v - 1)
    md.snapshot.signed.version += 1
    md.snapshot.sign(md.signer("snapshot"))
    md.timestamp.signed.snapshot_meta = MetaFile(md.snapshot.signed.version)
    md.timestamp.signed.version += 1
    md.timestamp.sign(md.signer("timestamp"))
    rolled = dataclasses.replace(
        header, snapshot=md.snapshot.to_bytes().decode(), timestamp=md.timestamp.to_bytes().decode()
    )
    with pytest.raises(TrustRefused, match=rf"names releases.json v{releases_v - 1}, older"):
        verify_metadata(device, BundleMetadata(rolled), NOW)


def _bundle_now(repo: ReleaseRepository, version: str, tmp_path: Path) -> BundleHeader:
    """The header of a bundle of ``version`` made from what the repository holds now."""
    out = tmp_path / f"{version}-now.bundle"
    repo.write_bundle(version, out)
    return read_header(out)


def test_the_freshness_roles_expiry_is_not_enforced_offline(tmp_path: Path) -> None:
    """Timestamp (a day) and snapshot (a week) are signed for the online channel; an offline
    bundle outlives them. Root, targets and releases (a year) bound it."""
    made = datetime(2024, 1, 1, tzinfo=UTC)
    repo = make_repo(tmp_path, "1.0.0", at=made)
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    a_month_later = datetime(2024, 2, 1, tzinfo=UTC)
    verified = verify_metadata(_trust(repo), BundleMetadata(header), a_month_later)
    assert verified.timestamp.signed.is_expired(a_month_later)
    assert verified.snapshot.signed.is_expired(a_month_later)
    assert verify_bundle(header, _trust(repo), POLICY, a_month_later).manifest


def test_an_expired_kept_copy_does_not_stand_in_for_an_older_bundle(tmp_path: Path) -> None:
    """The device's newer releases expired (the root is still valid): an older bundle cannot
    lean on it, and says why; the device's floors still bind."""
    made = datetime(2024, 1, 1, tzinfo=UTC)
    repo = make_repo(tmp_path, "1.1.0", at=made)
    old = read_header(_bundle(repo, "1.1.0", tmp_path))
    # signed "335 days before": a releases that expires 30 days after the bundle was made
    md = RepositoryMetadata(repo.path, ManualClock(made - timedelta(days=335)))
    with md.locked():
        md.load()
        md.commit("releases", md.releases)
        md.commit_snapshot_and_timestamp()
    newer = _bundle_now(repo, "1.1.0", tmp_path)
    device = verify_bundle(newer, _trust(repo), POLICY, made + timedelta(days=1)).trust
    later = made + timedelta(days=60)
    with pytest.raises(
        TrustRefused, match=r"cannot stand in for it: releases metadata v.* expired"
    ):
        verify_bundle(old, device, POLICY, later)
    with pytest.raises(TrustRefused, match=r"releases metadata v.* expired"):
        verify_bundle(newer, device, POLICY, later)


def test_a_signed_unknown_field_survives_the_kept_copy(tmp_path: Path) -> None:
    """Metadata may carry fields this device does not know; kept as the exact bytes, the copy
    still verifies later and an older bundle can lean on it."""
    repo = make_repo(tmp_path, "1.1.0")
    old = read_header(_bundle(repo, "1.1.0", tmp_path))
    md = RepositoryMetadata(repo.path, SystemClock())
    with md.locked():
        md.load()
        md.releases.signed.unrecognized_fields["x-future"] = {"nested": [1, "two"]}
        md.commit("releases", md.releases)
        md.commit_snapshot_and_timestamp()
    newer = _bundle_now(repo, "1.1.0", tmp_path)
    assert "x-future" in newer.releases
    device = verify_bundle(newer, _trust(repo), POLICY, NOW).trust
    assert device.kept["releases"] == newer.releases.encode()
    verified = verify_bundle(old, device, POLICY, NOW)
    assert str(verified.manifest.version) == "1.1.0"
    assert b"x-future" in verified.trust.kept["releases"]


def test_a_root_below_its_threshold_is_refused(tmp_path: Path) -> None:
    """Root v2 asks two signatures for root; v3 signed by only one of those keys is refused."""
    repo = make_repo(tmp_path, "1.0.0")
    md = RepositoryMetadata(repo.path, SystemClock())
    second = keys.generate_signer()
    with md.locked():
        md.load()
        first = md.signer("root")
        md.root.signed.add_key(second.public_key, "root")
        md.root.signed.roles["root"].threshold = 2
        md.commit("root", md.root, signers=[first, second])
        md.root.signed.version += 1
        md.root.sign(first)  # v3 with one of the two signatures v2 requires
        v3 = md.root.to_bytes()
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    v2 = (repo.path / "metadata" / "2.root.json").read_text()
    short = dataclasses.replace(header, roots=(header.roots[0], v2, v3.decode()))
    with pytest.raises(VerificationError, match="root v3 is not signed by the keys of v2"):
        verify_bundle(short, _trust(repo), POLICY, NOW)
    assert verify_bundle(
        dataclasses.replace(header, roots=(header.roots[0], v2)), _trust(repo), POLICY, NOW
    )


def test_a_snapshot_left_behind_by_an_older_sysupd_does_not_lift_the_floors(
    tmp_path: Path,
) -> None:
    """An older sysupd (the other slot) keeps no snapshot: committing, it leaves the newer
    code's one behind, stale. That snapshot names less than the device has seen since, so it
    does not govern: the withdrawn release stays refused (review of issue 11)."""
    repo = make_repo(tmp_path, "1.1.0")
    old = read_header(_bundle(repo, "1.1.0", tmp_path))
    first = verify_bundle(old, _trust(repo), POLICY, NOW).trust
    repo.add_release("1.2.0", tree=tmp_path / "tree-1.1.0", compress="none", chunk_size=65536)
    _withdraw(repo, "1.1.0")
    newer = verify_bundle(_bundle_now(repo, "1.2.0", tmp_path), _trust(repo), POLICY, NOW).trust
    kept = {**newer.kept, "timestamp": first.kept["timestamp"], "snapshot": first.kept["snapshot"]}
    store = TrustState(newer.root, {r: newer.version(r) for r in ("targets", "releases")}, kept)
    with pytest.raises(TrustRefused, match="older than v"):
        verify_bundle(old, store, POLICY, NOW)


def _flip_signature(data: bytes) -> bytes:
    document = json.loads(data)
    sig = document["signatures"][0]["sig"]
    document["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    return json.dumps(document).encode()


def test_a_damaged_kept_copy_is_not_a_key_rotation(tmp_path: Path) -> None:
    """A kept copy whose signature no longer verifies while the keys that made it are still
    trusted is damage: its floor binds (only a rotation lifts one; review of issue 11)."""
    repo = make_repo(tmp_path, "1.1.0", "1.2.0")
    old = read_header(_bundle(repo, "1.1.0", tmp_path))
    _withdraw(repo, "1.1.0")
    device = verify_bundle(_bundle_now(repo, "1.2.0", tmp_path), _trust(repo), POLICY, NOW).trust
    for damaged_roles in (("timestamp", "snapshot"), ROLES):
        kept = dict(device.kept)
        for role in damaged_roles:
            kept[role] = _flip_signature(kept[role])
        damaged = TrustState(device.root, device.seen, kept)
        with pytest.raises(TrustRefused, match="older than v"):
            verify_bundle(old, damaged, POLICY, NOW)


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_metadata_nested_too_deeply_is_refused(tmp_path: Path, role: str) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    deep = "[" * 100_000
    if role == "snapshot":  # else the timestamp's hash of it refuses it first
        offered = _repinned_snapshot(repo, dataclasses.replace(header, snapshot=deep))
    else:
        offered = dataclasses.replace(header, timestamp=deep)
    with pytest.raises(TrustRefused, match=f"{role} metadata cannot be parsed"):
        verify_bundle(offered, _trust(repo), POLICY, NOW)
    with_root = dataclasses.replace(header, roots=(*header.roots, deep))
    assert verify_bundle(with_root, _trust(repo), POLICY, NOW).manifest, "an unreadable extra"
    damaged = dataclasses.replace(_trust(repo), kept={role: deep.encode()})
    assert verify_bundle(header, damaged, POLICY, NOW).manifest, "a damaged copy: as none"


def test_a_bundle_whose_snapshot_names_releases_by_version_only_is_refused(
    tmp_path: Path,
) -> None:
    """Offline the snapshot's expiry is not enforced, so it must pin targets and releases by
    hash: else a thief of the releases key pairs an old snapshot with a forged releases."""
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    for name in ("targets.json", "releases.json"):
        md.snapshot.signed.meta[name] = MetaFile(md.snapshot.signed.meta[name].version)
    md.snapshot.sign(md.signer("snapshot"))
    snapshot = md.snapshot.to_bytes()
    md.timestamp.signed.snapshot_meta = MetaFile.from_data(
        md.snapshot.signed.version, snapshot, ["sha256"]
    )
    md.timestamp.sign(md.signer("timestamp"))
    unpinned = dataclasses.replace(
        header, snapshot=snapshot.decode(), timestamp=md.timestamp.to_bytes().decode()
    )
    assert verify_metadata(_trust(repo), BundleMetadata(unpinned), NOW), "TUF allows it"
    with pytest.raises(TrustRefused, match="does not name targets by hash"):
        verify_bundle(unpinned, _trust(repo), POLICY, NOW)


def _repinned_snapshot(repo: ReleaseRepository, header: BundleHeader) -> BundleHeader:
    """``header`` with its timestamp re-signed to name its snapshot text by hash."""
    md = RepositoryMetadata(repo.path, SystemClock())
    md.load()
    timestamp = Metadata[Timestamp].from_bytes(header.timestamp.encode())
    old = timestamp.signed.snapshot_meta
    timestamp.signed.snapshot_meta = MetaFile.from_data(
        old.version, header.snapshot.encode(), ["sha256"]
    )
    timestamp.sign(md.signer("timestamp"))
    return dataclasses.replace(header, timestamp=timestamp.to_bytes().decode())
