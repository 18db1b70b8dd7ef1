"""Attacks on online updates, each against the real service and a real nginx update server.

Modelled on python-tuf's own attack tests (``tests/test_updater_top_level_update.py`` over its
``RepositorySimulator``), but end to end: the repository is made by the project's release tool,
served by nginx, and read by the service through ``sys/update_check`` / ``sys/update_now {}``.
Each test asserts the refusal as a client sees it (an ``error`` and an ``updates_info`` naming the
reason, or a failed update job whose log names it), that the booted slot is untouched, and that
the device's trust store (``state_dir/trust``) did not move forward.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.api.serialization.json import JSONSerializer

from sysupd.api.service import Service
from sysupd.release import keys
from sysupd.release.repository import ReleaseRepository
from sysupd.system.clock import ManualClock
from tests.client import WsClient
from tests.conftest import ADMIN, ClientFactory, ServiceFactory, boot_settled
from tests.nginx import nginx_serving
from tests.offline import upload, wait_final
from tests.online import checked, copy_published, online_overrides, serve_repo
from tests.releases import PRODUCT, fast_forward, make_repo, make_tree

_SERIALIZER = JSONSerializer(compact=False)
_ROLLBACK = r"rollback|rolled back|older than|version \d+ must be >= \d+"
"""A refusal of metadata older than the device has seen (ngclient: "New timestamp version 1 must
be >= 2")."""


# ----------------------------------------------------------------------------------- helpers


async def _check_refused(client: WsClient, service: Service, reason: str) -> str:
    """A check that fails, reported as a failure naming ``reason`` (a regex); its error."""
    available = await checked(client, service)
    assert available["updates_available"] is False
    assert available["version"] is None
    error = str(available.get("error") or "")
    assert error, f"the refusal reads as no error: {available}"
    assert re.search(reason, error, re.IGNORECASE), error
    info = str(available["updates_info"])
    assert "failed" in info, info
    assert re.search(reason, info, re.IGNORECASE), info
    assert not info.startswith("No updates"), info
    return error


async def _update_now_refused(client: WsClient, reason: str) -> None:
    """``sys/update_now {}`` answers failure at once, naming ``reason``."""
    reply = await client.call("sys", "update_now", {})
    assert reply["result"] == "failure", reply
    assert re.search(reason, str(reply["error"]), re.IGNORECASE), reply


async def _install_fails(client: WsClient, reason: str, timeout: float = 20) -> str:
    """``sys/update_now {}`` starts, and its final event is a failure naming ``reason``."""
    reply = await client.call("sys", "update_now", {})
    assert reply == {"result": "success", "updates": "starting"}, reply
    _, final = await wait_final(client, timeout)
    details = str(final["details"])
    assert final["result"] == "failure", details
    assert final["reboot_required"] is False
    assert re.search(reason, details, re.IGNORECASE), details
    return details


async def _install_succeeds(client: WsClient) -> None:
    reply = await client.call("sys", "update_now", {})
    assert reply == {"result": "success", "updates": "starting"}, reply
    _, final = await wait_final(client)
    assert final["result"] == "success", final["details"]


def _trust(service: Service) -> dict[str, bytes]:
    """The device's trust store, file by file."""
    directory = service.config.state_dir / "trust"
    if not directory.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _as_provisioned(service: Service) -> dict[str, bytes]:
    """The trust store of a device that has trusted nothing but its provisioned root."""
    root = Path(service.settings.trust_root).read_bytes()
    return {"adopted.sha256": hashlib.sha256(root).hexdigest().encode(), "root.json": root}


def _trusted_root(service: Service) -> dict[str, Any]:
    """The signed part of the root the device's trust store holds."""
    root = json.loads((service.config.state_dir / "trust" / "root.json").read_bytes())
    signed: dict[str, Any] = root["signed"]
    return signed


def _assert_untouched(service: Service) -> None:
    """A booted slot A that boots next, and a slot B that cannot boot and holds nothing."""
    status = service.engine().status().to_json()
    assert status["booted"] == "A", status
    assert status["next_boot"] == "A", status
    assert status["trial"] is None, status
    assert status["job"] is None, status
    slot_b = status["slots"]["B"]
    assert slot_b["bootable"] is not True, slot_b
    assert slot_b["version"] is None, slot_b
    path = Path(slot_b["path"])
    assert not path.exists() or not any(path.iterdir()), sorted(p.name for p in path.iterdir())


def _payload_file(repo: ReleaseRepository, version: str) -> Path:
    """Where the repository (and so the server) keeps ``version``'s payload."""
    info = repo.release(version)
    directory, _, name = info.target.rpartition("/")
    return repo.path / "targets" / directory / f"{info.sha256}.{name}"


def _signed_root(
    repo: ReleaseRepository,
    version: int,
    root_keys: list[CryptoSigner],
    threshold: int,
    signers: list[CryptoSigner],
) -> bytes:
    """Root ``version`` of ``repo``, the previous one with ``root_keys`` for the root role at
    ``threshold``, signed by ``signers`` (with python-tuf's Metadata API)."""
    metadata = repo.path / "metadata"
    md: Metadata[Root] = Metadata.from_bytes((metadata / f"{version - 1}.root.json").read_bytes())
    root = md.signed
    root.version = version
    root.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)
    for keyid in list(root.roles["root"].keyids):
        root.revoke_key(keyid, "root")
    for signer in root_keys:
        root.add_key(signer.public_key, "root")
    root.roles["root"].threshold = threshold
    for index, signer in enumerate(signers):
        md.sign(signer, append=index > 0)
    return md.to_bytes(_SERIALIZER)


def _publish_root(repo: ReleaseRepository, data: bytes) -> None:
    """Put a root on the server as the release tool lays it out: ``N.root.json`` and root.json."""
    version = json.loads(data)["signed"]["version"]
    metadata = repo.path / "metadata"
    keys.write_file_atomically(metadata / f"{version}.root.json", data)
    keys.write_file_atomically(metadata / "root.json", data)


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    """A repository with releases 1.0.0 and 1.1.0 (releases v3, timestamp v3)."""
    repo = make_repo(tmp_path, "1.0.0", "1.1.0")
    repo.publish()
    return repo


# ----------------------------------------------------------------------------------- attacks


async def test_rollback_of_the_server_metadata_is_refused(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    # The repository as it was three days ago (no release yet: a device fooled by it would say
    # "no updates"), kept by the attacker ...
    clock = ManualClock(datetime.now(UTC) - timedelta(days=3))
    repo = ReleaseRepository.init(tmp_path / "repo", PRODUCT, clock=clock)
    old = tmp_path / "old-metadata"
    shutil.copytree(repo.path / "metadata", old, ignore=shutil.ignore_patterns(".*"))
    # ... and as it is today, with release 1.1.0.
    clock.advance(timedelta(days=3).total_seconds())
    repo.add_release("1.1.0", tree=make_tree(tmp_path / "tree", "1.1.0"), chunk_size=65536)

    with serve_repo(repo, tmp_path / "server") as url:
        state_dir = tmp_path / "device"
        service = await start_service(state_dir, **online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        seen = await checked(admin, service)
        assert seen["version"] == "1.1.0", seen
        trust = _trust(service)

        # The server is rolled back to the old copy: validly signed, but older than seen.
        shutil.move(repo.path / "metadata", tmp_path / "newer-metadata")
        shutil.copytree(old, repo.path / "metadata")
        await _check_refused(admin, service, _ROLLBACK)
        await _update_now_refused(admin, "The update check failed")
        _assert_untouched(service)
        assert _trust(service) == trust

        # After a restart the device still remembers what it saw.
        await service.stop()
        service = await start_service(state_dir, **online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        await _check_refused(admin, service, _ROLLBACK)
        _assert_untouched(service)
        assert _trust(service) == trust

        # A fresh device has seen nothing, but the old copy has expired: an error, never a
        # silent "no updates".
        fresh = await start_service(tmp_path / "fresh", **online_overrides(repo, url))
        fresh_admin = await connect(fresh, login=ADMIN)
        await _check_refused(fresh_admin, fresh, "expired")
        _assert_untouched(fresh)
        assert _trust(fresh) == _as_provisioned(fresh)


async def test_frozen_expired_timestamp_is_refused(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    # Published two days ago and never again: the 1-day timestamp has expired.
    repo = make_repo(tmp_path, "1.1.0", at=datetime.now(UTC) - timedelta(days=2))
    repo.publish()
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        await _check_refused(admin, service, "expired")
        await _update_now_refused(admin, "The update check failed.*expired")
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


@pytest.mark.parametrize("role", ["releases", "snapshot"])
async def test_mix_and_match_metadata_is_refused(
    tmp_path: Path,
    repo: ReleaseRepository,
    start_service: ServiceFactory,
    connect: ClientFactory,
    role: str,
) -> None:
    # The newest snapshot/timestamp, with the previous version of the role under the new name.
    metadata = repo.path / "metadata"
    newest = repo.metadata_versions()[role]
    (metadata / f"{newest}.{role}.json").write_bytes(
        (metadata / f"{newest - 1}.{role}.json").read_bytes()
    )
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        await _check_refused(admin, service, rf"{role}.*v\d|version|hash|length")
        await _update_now_refused(admin, "The update check failed")
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


async def test_arbitrary_payload_is_refused_and_slot_b_wiped(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    # Same length, other bytes, in the last chunk: the first chunks verify and reach slot B.
    payload = _payload_file(repo, "1.1.0")
    data = bytearray(payload.read_bytes())
    data[-100:] = bytes(b ^ 0xFF for b in data[-100:])
    payload.write_bytes(bytes(data))
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url, delta_updates=False))
        admin = await connect(service, login=ADMIN)
        assert (await checked(admin, service))["version"] == "1.1.0"
        await _install_fails(admin, "does not match")
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


async def test_endless_data_is_refused(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    payload = _payload_file(repo, "1.1.0")
    signed_length = payload.stat().st_size
    with payload.open("ab") as handle:
        handle.write(b"\0" * 100_000)
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url, delta_updates=False))
        admin = await connect(service, login=ADMIN)
        details = await _install_fails(admin, "length|longer")
    assert str(signed_length) in details
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


async def test_slow_retrieval_is_refused_in_bounded_time(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    # The payload's first 100 KiB quickly (chunks reach slot B), then 256 bytes/s: below the
    # fetcher's minimum rate (1 KiB/s by default; the service has no setting for it).
    slow = "location ~ \\.tar\\.zst$ { limit_rate_after 100k; limit_rate 256; }"
    with serve_repo(repo, tmp_path / "server", slow) as url:
        service = await start_service(
            **online_overrides(repo, url, delta_updates=False), fetch_stall_s=0.5
        )
        admin = await connect(service, login=ADMIN)
        started = time.monotonic()
        await _install_fails(admin, "stalled|slow|in time", timeout=15)
        took = time.monotonic() - started
    assert took < 10, f"the stalled download took {took:.1f} s to be given up"
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


async def test_release_for_another_product_is_not_offered_and_says_why(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url, product="another-box"))
        admin = await connect(service, login=ADMIN)
        available = await checked(admin, service)
        assert available["updates_available"] is False
        assert "error" not in available
        info = str(available["updates_info"])
        assert PRODUCT in info, info
        assert "another-box" in info, info
        reply = await admin.call("sys", "update_now", {})
        assert reply == {"result": "failure", "error": "No newer update is available"}
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


async def test_release_below_the_floor_is_not_offered_and_says_why(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url, factory_version="2.0.0"))
        # The boot trial confirms slot A, and 2.0.0 becomes the floor.
        assert await boot_settled(service) == "good"
        assert service.engine().status().to_json()["floor"] == "2.0.0"
        admin = await connect(service, login=ADMIN)
        available = await checked(admin, service)
        assert available["updates_available"] is False
        assert "error" not in available
        info = str(available["updates_info"])
        assert "2.0.0" in info, info
        # The server's newest release is below the floor: that is the reason, and it is named.
        assert "1.1.0" in info, f"the refused release 1.1.0 is not named: {info}"
        assert re.search("floor|older|downgrade", info), info
        reply = await admin.call("sys", "update_now", {})
        assert reply == {"result": "failure", "error": "No newer update is available"}
    _assert_untouched(service)
    assert _trust(service) == _as_provisioned(service)


async def test_key_rotation_is_followed_and_old_keys_are_refused(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo.rotate_key("root")  # root v2, signed by the v1 and v2 root keys
    repo.publish()
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        assert (await checked(admin, service))["version"] == "1.1.0"
        assert _trust(service) == _as_provisioned(service)  # a check alone trusts nothing new
        await _install_succeeds(admin)
        assert _trusted_root(service)["version"] == 2

        # The timestamp key is replaced (root v3); the device follows.
        old_timestamp_key = keys.load_signer(repo.path / "keys" / "timestamp.pem")
        repo.rotate_key("timestamp")
        repo.publish()
        assert (await checked(admin, service))["version"] == "1.1.0"
        status, trust = service.engine().status().to_json(), _trust(service)

        # A newer timestamp signed with the old, replaced key is refused.
        path = repo.path / "metadata" / "timestamp.json"
        forged: Metadata[Timestamp] = Metadata.from_bytes(path.read_bytes())
        forged.signed.version += 1
        forged.signed.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        forged.sign(old_timestamp_key)
        path.write_bytes(forged.to_bytes(_SERIALIZER))
        await _check_refused(admin, service, "timestamp.*sign|sign.*timestamp")
        await _update_now_refused(admin, "The update check failed")
    assert (
        service.engine().status().to_json() == status
    )  # slot B stays as installed, A still booted
    assert status["booted"] == "A"
    assert _trust(service) == trust
    assert _trusted_root(service)["version"] == 2


async def test_root_threshold_of_two_keys_is_enforced(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    v1_key = keys.load_signer(repo.path / "keys" / "root.pem")
    key_a, key_b = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)

        # Root v2 wants 2 of {a, b}: signed by v1's key and only one of them, it is refused ...
        _publish_root(repo, _signed_root(repo, 2, [key_a, key_b], 2, [v1_key, key_a]))
        await _check_refused(admin, service, "root.*sign|sign.*root")
        # ... as it is signed by both of them but not by the key v1 trusts.
        _publish_root(repo, _signed_root(repo, 2, [key_a, key_b], 2, [key_a, key_b]))
        await _check_refused(admin, service, "root.*sign|sign.*root")
        await _update_now_refused(admin, "The update check failed")
        _assert_untouched(service)
        assert _trust(service) == _as_provisioned(service)

        # Signed by the v1 key and both new keys, it is accepted, and kept with the install.
        _publish_root(repo, _signed_root(repo, 2, [key_a, key_b], 2, [v1_key, key_a, key_b]))
        available = await checked(admin, service)
        assert available["version"] == "1.1.0", available
        await _install_succeeds(admin)
    root = _trusted_root(service)
    assert root["version"] == 2
    assert root["roles"]["root"]["threshold"] == 2
    assert sorted(root["roles"]["root"]["keyids"]) == sorted(
        [key_a.public_key.keyid, key_b.public_key.keyid]
    )


async def test_stale_mirror_is_refused_after_newer_metadata(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    mirror = copy_published(repo, tmp_path / "mirror")  # stops following here: 1.0.0 only
    repo.add_release("1.1.0", tree=make_tree(tmp_path / "tree-1.1.0", "1.1.0"), chunk_size=65536)
    with (
        serve_repo(repo, tmp_path / "server") as url,
        nginx_serving(mirror, tmp_path / "mirror-nginx") as mirror_url,
    ):
        service = await start_service(**online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        assert (await checked(admin, service))["version"] == "1.1.0"

        assert await admin.call("sys", "set_config", {"update_server": mirror_url}) == {
            "result": "success"
        }
        await _check_refused(admin, service, _ROLLBACK)
        await _update_now_refused(admin, "The update check failed")
        _assert_untouched(service)
        assert _trust(service) == _as_provisioned(service)

        # The mirror itself is a valid (old) repository: a device that never saw newer metadata
        # is offered 1.0.0 there, so the refusal above is rollback protection at work.
        fresh = await start_service(tmp_path / "fresh", **online_overrides(repo, mirror_url))
        fresh_admin = await connect(fresh, login=ADMIN)
        assert (await checked(fresh_admin, fresh))["version"] == "1.0.0"


async def test_stale_mirror_is_refused_after_an_offline_install(
    tmp_path: Path,
    start_service: ServiceFactory,
    connect: ClientFactory,
    http: aiohttp.ClientSession,
) -> None:
    # The same stale mirror, for a device that saw the newer metadata in an offline bundle: the
    # versions its trust store recorded are the floor for the online path too.
    repo = make_repo(tmp_path, "1.0.0")
    mirror = copy_published(repo, tmp_path / "mirror")  # releases v2, not expired
    repo.add_release("1.1.0", tree=make_tree(tmp_path / "tree-1.1.0", "1.1.0"), chunk_size=65536)
    bundle = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", bundle)
    with nginx_serving(mirror, tmp_path / "mirror-nginx") as mirror_url:
        service = await start_service(**online_overrides(repo, mirror_url))
        admin = await connect(service, login=ADMIN)
        stored = await upload(http, admin, service.http_port, bundle.read_bytes(), "u.bundle")
        reply = await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]})
        assert reply == {"result": "success", "updates": "starting"}
        _, final = await wait_final(admin)
        assert final["result"] == "success", final["details"]
        status, trust = service.engine().status().to_json(), _trust(service)
        assert (
            json.loads(trust["versions.json"])["releases"] == repo.metadata_versions()["releases"]
        )

        error = await _check_refused(admin, service, _ROLLBACK)
        assert "timestamp" in error, error  # the first role the stale mirror serves older
        await _update_now_refused(admin, "The update check failed")
    after = service.engine().status().to_json()
    assert after == status, "the stale mirror's 1.0.0 replaced the pending 1.1.0"
    assert after["slots"]["B"]["version"] == "1.1.0"
    assert _trust(service) == trust


async def test_a_fast_forward_is_recovered_by_rotating_the_targets_key(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    """An attacker who held the targets key made the device see (and keep) targets and releases
    v999: every honest server reads as a rollback until the targets key is rotated; then the
    metadata that set those floors no longer verifies and they no longer bind (issue 11; the TUF
    specification's fast-forward recovery)."""
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url))
        trust = service.config.state_dir / "trust"
        trust.mkdir(parents=True, exist_ok=True)
        targets, releases = fast_forward(repo)  # verified and kept by the device back then
        (trust / "targets.json").write_bytes(targets)
        (trust / "releases.json").write_bytes(releases)
        (trust / "versions.json").write_text(json.dumps({"targets": 999, "releases": 999}))
        admin = await connect(service, login=ADMIN)
        await _check_refused(admin, service, _ROLLBACK)
        repo.rotate_key("targets")
        assert (await checked(admin, service))["version"] == "1.1.0"
        await _install_succeeds(admin)
    versions = json.loads((trust / "versions.json").read_bytes())
    kept = json.loads((trust / "releases.json").read_bytes())
    assert kept["signed"]["version"] == versions["releases"], "the online metadata is kept"
    assert versions == {
        role: version for role, version in repo.metadata_versions().items() if role != "root"
    }
    assert _trusted_root(service)["version"] == 2, "the rotated root is kept"
