"""Delta updates against bad chunks, bad indexes, bad servers and bad slots: each is refused or
worked around with a message naming what was wrong, and the booted slot is never touched."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest

from sysupd.api.service import Service
from sysupd.release._metadata import RELEASES, RepositoryMetadata
from sysupd.system.clock import SystemClock
from tests.client import WsClient
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, wait_until
from tests.delta import (
    MiB,
    RawReleases,
    chunk_file,
    chunk_requests,
    make_raw_releases,
    release_index,
)
from tests.offline import wait_final
from tests.online import checked, online_overrides, serve_repo


@pytest.fixture
def releases(tmp_path: Path) -> RawReleases:
    return make_raw_releases(tmp_path)


async def _device(
    releases: RawReleases, url: str, start_service: ServiceFactory, **extra: object
) -> Service:
    return await start_service(
        **online_overrides(
            releases.repo, url, slots=releases.slots, factory_version="1.0.0", **extra
        )
    )


async def _run(service: Service, connect: ClientFactory) -> tuple[str, str]:
    """Check and update; the final event's result and log."""
    admin = await connect(service, login=ADMIN)
    user = await connect(service, login=USER)
    assert (await checked(admin, service))["updates_available"] is True
    assert await admin.call("sys", "update_now", {}) == {"result": "success", "updates": "starting"}
    _, final = await wait_final(user, 60)
    return str(final["result"]), str(final["details"])


def _booted_untouched(service: Service, releases: RawReleases) -> None:
    status = service.engine().status().to_json()
    assert status["next_boot"] == "A", status
    assert status["slots"]["B"]["bootable"] is not True
    assert releases.slot_a.read_bytes() == releases.old


def _new_chunks(releases: RawReleases) -> list[int]:
    index = release_index(releases.repo, "1.1.0")
    old = release_index(releases.repo, "1.0.0")
    held = {old.digest(n) for n in range(old.count)}
    return [n for n in range(index.count) if index.digest(n) not in held]


async def test_a_chunk_that_does_not_match_is_fetched_twice_then_refused_by_name(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    index = release_index(releases.repo, "1.1.0")
    number = _new_chunks(releases)[0]
    entry = index.entry(number)
    stored = chunk_file(releases.repo, entry.digest)
    stored.write_bytes(bytes(len(stored.read_bytes())))  # same length, other bytes
    with serve_repo(releases.repo, tmp_path / "server") as url:
        service = await _device(releases, url, start_service)
        result, details = await _run(service, connect)
    assert result == "failure"
    assert f"chunk {number} ({entry.address[:2]}" in details.replace("chunks/", "")
    assert "does not match its signed hash, fetched twice" in details
    path = f"/targets/chunks/{entry.address[:2]}/{entry.address}.zst"
    assert chunk_requests(tmp_path / "server").count(path) == 2
    _booted_untouched(service, releases)
    slot_b = releases.slot_b.read_bytes()
    assert (
        slot_b[entry.offset : entry.offset + entry.length]
        != releases.new[entry.offset : entry.offset + entry.length]
    )


async def test_missing_chunks_are_named(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    index = release_index(releases.repo, "1.1.0")
    gone = _new_chunks(releases)[:2]
    for number in gone:
        chunk_file(releases.repo, index.digest(number)).unlink()
    with serve_repo(releases.repo, tmp_path / "server") as url:
        service = await _device(releases, url, start_service, delta_parallel=1)
        result, details = await _run(service, connect)
    assert result == "failure"
    assert "lacks chunks of the release" in details
    assert f"{gone[0]} (chunks/{index.entry(gone[0]).address[:2]}/" in details
    _booted_untouched(service, releases)


async def test_an_index_the_releases_role_does_not_sign_is_refused(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    info = releases.repo.release("1.1.0")
    md = RepositoryMetadata(releases.repo.path, SystemClock())
    with md.locked():
        md.load()
        del md.releases.signed.targets[str(info.index)]
        md.commit(RELEASES, md.releases)
        md.commit_snapshot_and_timestamp()
    with serve_repo(releases.repo, tmp_path / "server") as url:
        service = await _device(releases, url, start_service)
        result, details = await _run(service, connect)
    assert result == "failure"
    assert f"names the chunk index {info.index}, which the releases metadata does not sign" in (
        details
    )
    assert chunk_requests(tmp_path / "server") == []
    _booted_untouched(service, releases)


async def test_an_index_that_does_not_match_its_signed_hash_is_refused(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    info = releases.repo.release("1.1.0")
    assert info.index is not None
    directory, _, name = info.index.rpartition("/")
    (stored,) = (releases.repo.path / "targets" / directory).glob(f"*.{name}")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with serve_repo(releases.repo, tmp_path / "server") as url:
        service = await _device(releases, url, start_service)
        result, details = await _run(service, connect)
    assert result == "failure"
    assert "the chunk index is not the signed one" in details
    assert chunk_requests(tmp_path / "server") == []
    _booted_untouched(service, releases)


async def test_a_slow_chunk_server_is_given_up_in_bounded_time(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    slow = "location /targets/chunks/ { limit_rate_after 1k; limit_rate 64; }"
    with serve_repo(releases.repo, tmp_path / "server", slow) as url:
        service = await _device(releases, url, start_service, fetch_stall_s=0.5)
        started = time.monotonic()
        result, details = await _run(service, connect)
        took = time.monotonic() - started
    assert result == "failure"
    assert re.search("stalled|slow|in time", details, re.IGNORECASE), details
    assert took < 15, f"the stalled chunk took {took:.1f} s to be given up"
    _booted_untouched(service, releases)


async def test_an_endless_chunk_is_cut_at_its_signed_length(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    index = release_index(releases.repo, "1.1.0")
    number = _new_chunks(releases)[0]
    stored = chunk_file(releases.repo, index.digest(number))
    stored.write_bytes(stored.read_bytes() + bytes(4 * MiB))
    with serve_repo(releases.repo, tmp_path / "server") as url:
        service = await _device(releases, url, start_service)
        result, details = await _run(service, connect)
    assert result == "failure"
    assert "signed length" in details, details
    _booted_untouched(service, releases)


async def test_a_corrupt_booted_slot_only_costs_its_chunks_fetched(
    tmp_path: Path, releases: RawReleases, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    index = release_index(releases.repo, "1.1.0")
    shared = [n for n in range(index.count) if n not in _new_chunks(releases)][:3]
    corrupt = bytearray(releases.old)
    for number in shared:
        entry = index.entry(number)
        corrupt[entry.offset + entry.length // 2] ^= 0xFF
    releases.slot_a.write_bytes(bytes(corrupt))
    with serve_repo(releases.repo, tmp_path / "server") as url:
        service = await _device(releases, url, start_service)
        result, details = await _run(service, connect)
    assert result == "success", details
    assert releases.slot_b.read_bytes() == releases.new
    fetched = chunk_requests(tmp_path / "server")
    for number in shared:
        address = index.entry(number).address
        assert f"/targets/chunks/{address[:2]}/{address}.zst" in fetched
    assert releases.slot_a.read_bytes() == bytes(corrupt)  # read, never repaired or written


async def test_a_partial_slot_tampered_between_runs_is_detected_and_refetched(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    releases = make_raw_releases(tmp_path, size=6 * MiB, spans=120)
    slow = "location /targets/chunks/ { limit_rate 400k; }"
    with serve_repo(releases.repo, tmp_path / "server", slow) as url:
        service = await _device(releases, url, start_service, delta_parallel=1)
        admin = await connect(service, login=ADMIN)
        user = await connect(service, login=USER)
        assert (await checked(admin, service))["updates_available"] is True
        await admin.call("sys", "update_now", {})
        await wait_until(lambda: _done(service) > 3 * MiB, 30, "3 MiB are written")
    _, final = await wait_final(user, 60)
    assert final["result"] == "failure"
    # Between the runs, someone changes bytes the first run wrote.
    partial = bytearray(releases.slot_b.read_bytes())
    assert partial[MiB : 2 * MiB] == releases.new[MiB : 2 * MiB]
    tampered = MiB + 1000
    partial[tampered] ^= 0xFF
    releases.slot_b.write_bytes(bytes(partial))
    with serve_repo(releases.repo, tmp_path / "server2") as url:
        await admin.call("sys", "set_config", {"update_server": url})
        result, details = await _rerun(admin, user, service)
    assert result == "success", details
    assert releases.slot_b.read_bytes() == releases.new
    index = release_index(releases.repo, "1.1.0")
    hit = next(
        n
        for n in range(index.count)
        if index.entry(n).offset <= tampered < index.entry(n).offset + index.entry(n).length
    )
    address = index.entry(hit).address
    assert f"/targets/chunks/{address[:2]}/{address}.zst" in chunk_requests(tmp_path / "server2")
    assert hashlib.sha256(releases.slot_b.read_bytes()).hexdigest() == releases.info.sha256


async def _rerun(admin: WsClient, user: WsClient, service: Service) -> tuple[str, str]:
    assert (await checked(admin, service))["updates_available"] is True
    assert await admin.call("sys", "update_now", {}) == {"result": "success", "updates": "starting"}
    _, final = await wait_final(user, 60)
    return str(final["result"]), str(final["details"])


def _done(service: Service) -> int:
    job = service.updates.job
    return job.bytes_done if job is not None else 0
