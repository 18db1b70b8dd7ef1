"""Verifying a bundle's metadata against the device's trust: each way a bundle can lie."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sysupd.core.trustchain import (
    ReleasePolicy,
    TrustState,
    VerifiedBundle,
    verify_bundle,
    verify_metadata,
)
from sysupd.core.versions import parse_version
from sysupd.errors import RefusedAfterRoots, VerificationError
from sysupd.release import keys
from sysupd.release._metadata import RepositoryMetadata
from sysupd.release.repository import ReleaseRepository
from sysupd.system.clock import SystemClock
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
    assert verified.trust.releases_version >= 1
    assert not verified.downgrade


def test_bundle_signed_by_another_repository(tmp_path: Path) -> None:
    ours = make_repo(tmp_path / "ours", "1.0.0")
    theirs = make_repo(tmp_path / "theirs", "1.1.0")
    header = read_header(_bundle(theirs, "1.1.0", tmp_path))
    with pytest.raises(VerificationError, match="targets metadata is not signed by the keys"):
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
    seen = dataclasses.replace(_trust(repo), releases_version=999)
    with pytest.raises(VerificationError, match=r"rollback.*'sysupd release bundle'"):
        verify_bundle(header, seen, POLICY, NOW)


def test_tampered_metadata_text(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    releases = json.loads(header.releases)
    entry = releases["signed"]["targets"][header.target]
    entry["custom"]["sysupd"]["product"] = "evil"
    forged = dataclasses.replace(header, releases=json.dumps(releases))
    with pytest.raises(VerificationError, match="releases metadata is not signed"):
        verify_bundle(forged, _trust(repo), POLICY, NOW)


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
    with pytest.raises(VerificationError, match="cannot be parsed"):
        verify_bundle(dataclasses.replace(header, targets="{]"), _trust(repo), POLICY, NOW)
    swapped = dataclasses.replace(header, targets=header.roots[0])
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


def test_a_fast_forward_is_recovered_by_rotating_the_targets_key(tmp_path: Path) -> None:
    """An attacker who stole the targets key made the device see (and keep) targets and releases
    v999: every honest bundle reads as a rollback until the targets key is rotated; then the
    metadata that set those floors no longer verifies, and they no longer bind (the TUF
    specification's fast-forward recovery)."""
    repo = make_repo(tmp_path, "1.0.0")
    targets, releases = fast_forward(repo)
    forwarded = TrustState(_trust(repo).root, 999, 999, targets, releases)
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    with pytest.raises(VerificationError, match="was withdrawn"):
        verify_bundle(header, forwarded, POLICY, NOW)
    repo.rotate_key("targets")
    recovered = verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), forwarded, POLICY, NOW)
    assert recovered.trust.targets_version < 999
    assert recovered.trust.releases_version < 999
    assert [json.loads(r)["signed"]["version"] for r in recovered.new_roots] == [2]


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
    across a targets key rotation (conservative)."""
    repo = make_repo(tmp_path, "1.0.0")
    numbers = dataclasses.replace(_trust(repo), targets_version=999, releases_version=999)
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
        _trust(repo), releases_version=999, releases=md.releases.to_bytes()
    )
    with pytest.raises(VerificationError, match="was withdrawn"):
        verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), device, POLICY, NOW)
    repo.rotate_key("releases")
    recovered = verify_bundle(read_header(_bundle(repo, "1.0.0", tmp_path)), device, POLICY, NOW)
    assert recovered.trust.releases_version < 999


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
    assert verified.trust.releases_version == device.releases_version, "versions never go back"
    assert verified.trust.releases == device.releases
    # Without the kept copy, only the version numbers: a rollback, as before.
    numbers_only = dataclasses.replace(device, targets=None, releases=None)
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
    with pytest.raises(RefusedAfterRoots, match="another-box") as refused:
        verify_bundle(header, _trust(repo), ReleasePolicy("another-box", None), NOW)
    assert [json.loads(r)["signed"]["version"] for r in refused.value.roots] == [2, 3]
    broken_v3 = json.loads(header.roots[2])
    broken_v3["signatures"] = []
    half = dataclasses.replace(header, roots=(*header.roots[:2], json.dumps(broken_v3)))
    with pytest.raises(RefusedAfterRoots, match="root v3 is not signed") as cut:
        verify_bundle(half, _trust(repo), POLICY, NOW)
    assert [json.loads(r)["signed"]["version"] for r in cut.value.roots] == [2]
    unrotated = make_repo(tmp_path / "plain", "1.0.0")
    plain = read_header(_bundle(unrotated, "1.0.0", tmp_path / "plain"))
    with pytest.raises(VerificationError) as nothing_new:
        verify_bundle(plain, _trust(unrotated), ReleasePolicy("another-box", None), NOW)
    assert not isinstance(nothing_new.value, RefusedAfterRoots)


def test_metadata_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    """Two parsers may keep different copies of a repeated key: refused before anything else."""
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    text = header.releases
    doubled = text.replace('"signed": {', '"signed": {"_type": "targets", ', 1)
    assert doubled != text
    with pytest.raises(VerificationError, match=r"releases metadata cannot be parsed: .*'_type'"):
        verify_bundle(dataclasses.replace(header, releases=doubled), _trust(repo), POLICY, NOW)


def test_unknown_fields_are_kept_under_the_signature(tmp_path: Path) -> None:
    """The TUF specification lets metadata carry fields a client does not know. Under "signed"
    they count for the signature (one added after signing breaks it); outside it they are
    ignored."""
    repo = make_repo(tmp_path, "1.0.0")
    header = read_header(_bundle(repo, "1.0.0", tmp_path))
    releases = json.loads(header.releases)
    releases["signed"]["x-sysupd-future"] = {"anything": [1, 2]}
    forged = dataclasses.replace(header, releases=json.dumps(releases))
    with pytest.raises(VerificationError, match="releases metadata is not signed"):
        verify_bundle(forged, _trust(repo), POLICY, NOW)
    releases["x-outside-signed"] = True  # outside "signed": not covered, and ignored
    del releases["signed"]["x-sysupd-future"]
    tolerated = dataclasses.replace(header, releases=json.dumps(releases))
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
    them: no product, no floor, no target."""
    repo = make_repo(tmp_path, "1.1.0")
    header = read_header(_bundle(repo, "1.1.0", tmp_path))
    verified = verify_metadata(_trust(repo), header.roots, header.targets, header.releases, NOW)
    assert verified.root.signed.version == 1
    assert verified.new_roots == ()
    assert not verified.kept_releases
    kept = verified.trust(_trust(repo))
    assert kept.releases_version == verified.releases.signed.version
    repo.add_release("1.2.0", tree=tmp_path / "tree-1.1.0", compress="none", chunk_size=65536)
    newer = read_header(_bundle(repo, "1.2.0", tmp_path))
    seen = verify_metadata(kept, newer.roots, newer.targets, newer.releases, NOW).trust(kept)
    again = verify_metadata(seen, header.roots, header.targets, header.releases, NOW)
    assert again.kept_releases, "the older offered releases gave way to the kept newer copy"
    assert again.releases.signed.version == seen.releases_version


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
