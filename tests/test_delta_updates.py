"""Delta updates end to end: a real service fetches from real nginx only the chunks it lacks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from sysupd.api.service import Service
from sysupd.core.versions import parse_version
from sysupd.engine.engine import Engine
from sysupd.errors import AcquireError
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.server import ServerSource
from sysupd.sources.tuf_fetcher import FetcherLimits
from tests.client import WsClient
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, wait_until
from tests.delta import (
    MiB,
    RawReleases,
    changed,
    chunk_file,
    chunk_requests,
    copy_tree,
    make_raw_releases,
    release_index,
    requests,
)
from tests.engines import booted_engine
from tests.offline import wait_final
from tests.online import checked, online_overrides, serve_repo
from tests.releases import PRODUCT, make_tree


async def _update(
    service: Service, admin: WsClient, watcher: WsClient
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Check, start the update, and wait for its final event."""
    assert (await checked(admin, service))["updates_available"] is True
    reply = await admin.call("sys", "update_now", {})
    assert reply == {"result": "success", "updates": "starting"}
    return await wait_final(watcher, 60)


async def _clients(service: Service, connect: ClientFactory) -> tuple[WsClient, WsClient]:
    return await connect(service, login=ADMIN), await connect(service, login=USER)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_raw_update_downloads_only_the_changed_chunks(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    releases = make_raw_releases(tmp_path)
    index = release_index(releases.repo, "1.1.0")
    old_chunks = {release_index(releases.repo, "1.0.0").digest(n) for n in range(index.count)}
    new_chunks = [n for n in range(index.count) if index.digest(n) not in old_chunks]
    with serve_repo(releases.repo, tmp_path / "server") as url:
        overrides = online_overrides(
            releases.repo, url, slots=releases.slots, factory_version="1.0.0"
        )
        service = await start_service(**overrides)
        admin, user = await _clients(service, connect)
        _, final = await _update(service, admin, user)
    assert final["result"] == "success", final["details"]
    assert releases.slot_b.read_bytes() == releases.new
    assert releases.slot_a.read_bytes() == releases.old  # the booted slot is only read
    fetched = chunk_requests(tmp_path / "server")
    assert 0 < len(fetched) == len(new_chunks) < index.count // 4
    assert not [path for path in requests(tmp_path / "server") if path.endswith(".img")]
    # The events say where the bytes came from: most from the device.
    assert final["bytes_from_device"] + final["bytes_from_network"] == len(releases.new)
    assert final["bytes_from_network"] == sum(index.entry(n).length for n in new_chunks)
    assert 0 < final["bytes_downloaded"] < len(releases.new) // 4
    assert "from this device" in final["details"]
    assert service.engine().status().to_json()["next_boot"] == "B"


async def test_with_delta_updates_off_the_whole_payload_is_downloaded(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    releases = make_raw_releases(tmp_path)
    with serve_repo(releases.repo, tmp_path / "server") as url:
        overrides = online_overrides(
            releases.repo,
            url,
            slots=releases.slots,
            factory_version="1.0.0",
            delta_updates=False,
        )
        service = await start_service(**overrides)
        admin, user = await _clients(service, connect)
        _, final = await _update(service, admin, user)
    assert final["result"] == "success", final["details"]
    assert releases.slot_b.read_bytes() == releases.new
    assert chunk_requests(tmp_path / "server") == []
    assert [path for path in requests(tmp_path / "server") if path.endswith(".img")]
    assert "bytes_from_device" not in final


async def test_a_tree_update_reuses_the_booted_trees_files(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo = ReleaseRepository.init(tmp_path / "repo", PRODUCT)
    old = make_tree(tmp_path / "tree-1.0.0", "1.0.0", size=2 * MiB)
    for n in range(20):
        (old / "lib").mkdir(exist_ok=True)
        (old / "lib" / f"lib{n}.so").write_bytes(hashlib.sha512(str(n).encode()).digest() * 2000)
    repo.add_release("1.0.0", tree=old, compress="zstd", chunk_size=65536)
    new = tmp_path / "tree-1.1.0"
    copy_tree(old, new)
    (new / "etc" / "version").write_text("1.1.0\n")
    (new / "lib" / "lib7.so").write_bytes(b"changed" * 20_000)
    repo.add_release("1.1.0", tree=new, compress="zstd", chunk_size=65536)
    repo.publish()
    state = tmp_path / "state"
    copy_tree(old, state / "slots" / "A")  # the factory slot holds 1.0.0
    index = release_index(repo, "1.1.0")
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(state, **online_overrides(repo, url, factory_version="1.0.0"))
        admin, user = await _clients(service, connect)
        _, final = await _update(service, admin, user)
    assert final["result"] == "success", final["details"]
    slot_b = state / "slots" / "B"
    for path in new.rglob("*"):
        if path.is_file():
            assert (slot_b / path.relative_to(new)).read_bytes() == path.read_bytes()
    assert (slot_b / "etc" / "version").read_text() == "1.1.0\n"
    assert len(chunk_requests(tmp_path / "server")) < index.count // 4
    assert final["bytes_downloaded"] < index.length // 4


async def test_an_update_cut_off_from_the_network_resumes_from_what_the_slot_holds(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    # A new image sharing nothing with the booted one: every chunk is fetched, slowly.
    releases = make_raw_releases(tmp_path, size=6 * MiB, spans=120)
    slow = "location /targets/chunks/ { limit_rate 400k; }"
    server = tmp_path / "server"
    with serve_repo(releases.repo, server, slow) as url:
        overrides = online_overrides(
            releases.repo, url, slots=releases.slots, factory_version="1.0.0", delta_parallel=1
        )
        service = await start_service(**overrides)
        admin, user = await _clients(service, connect)
        assert (await checked(admin, service))["updates_available"] is True
        await admin.call("sys", "update_now", {})
        await wait_until(lambda: _done(service) > 3 * MiB, 30, "3 MiB are written")
    # nginx is gone: the update fails, slot B keeps what it wrote (but its first MiB).
    running, final = await wait_final(user, 60)
    assert any(event.get("bytes_from_network") for event in running)
    assert final["result"] == "failure"
    first_run = final["bytes_done"]
    with serve_repo(releases.repo, tmp_path / "server2") as url:
        await admin.call("sys", "set_config", {"update_server": url})
        _, final = await _update(service, admin, user)
    assert final["result"] == "success", final["details"]
    assert releases.slot_b.read_bytes() == releases.new
    assert "of the release at its place already" in final["details"]
    # Kept in place: at least what the first run wrote after the zeroed first MiB.
    assert final["bytes_from_device"] >= first_run - 2 * MiB
    assert final["bytes_downloaded"] < len(releases.new) - 2 * MiB


def test_the_next_update_finds_the_booted_slots_chunks_by_the_index_it_kept(
    tmp_path: Path,
) -> None:
    releases = make_raw_releases(tmp_path)
    newest = changed(releases.new, 3, 2, 50_000)
    image = tmp_path / "image-1.2.0.img"
    image.write_bytes(newest)
    releases.repo.add_release("1.2.0", image=image, chunk_size=256 * 1024)
    releases.repo.publish()
    settings = {"slots": releases.slots, "factory_version": "1.0.0"}
    state = tmp_path / "device"
    with serve_repo(releases.repo, tmp_path / "server") as url:
        engine = booted_engine(state, releases.repo, **settings)
        lines: list[str] = []
        source = ServerSource.configured(
            url, state, threading.Lock(), engine.settings, FetcherLimits()
        )
        assert str(engine.install(source, log=lines.append).version) == "1.2.0"
        # No index kept for the factory's 1.0.0: the server's, not a cut of the booted slot.
        assert any("the chunk index of 1.0.0, which slot A holds, came from" in x for x in lines)
        assert not any("cut and hashed" in line for line in lines), lines
        assert any("by the index of the release it holds" in line for line in lines), lines
        engine = booted_engine(state, releases.repo, **settings)  # power on: B, on trial, good
        assert engine.status().booted == "B"
        third = changed(newest, 4, 1, 50_000)
        image.write_bytes(third)
        releases.repo.add_release("1.3.0", image=image, chunk_size=256 * 1024)
        releases.repo.publish()
        lines.clear()
        assert str(engine.install(source, log=lines.append).version) == "1.3.0"
    assert any("by the index of the release it holds" in line for line in lines), lines
    assert releases.slot_a.read_bytes() == third
    assert releases.slot_b.read_bytes() == newest


@pytest.mark.parametrize("why", ["not on the server", "not as signed"])
def test_without_the_booted_releases_index_the_booted_slot_is_cut(tmp_path: Path, why: str) -> None:
    """The server lacks the release the booted slot holds (a factory version it never had), or
    serves its index damaged: the booted slot is cut and hashed instead, and the update works."""
    releases = make_raw_releases(tmp_path)
    factory = "0.9.0" if why == "not on the server" else "1.0.0"
    if why == "not as signed":
        info = releases.repo.release("1.0.0")
        assert info.index is not None
        directory, _, name = info.index.rpartition("/")
        (path,) = (releases.repo.path / "targets" / directory).glob(f"*.{name}")
        path.write_bytes(path.read_bytes()[:-56])  # one chunk's entry less than signed
    settings = {"slots": releases.slots, "factory_version": factory}
    state = tmp_path / "device"
    with serve_repo(releases.repo, tmp_path / "server") as url:
        engine = booted_engine(state, releases.repo, **settings)
        lines: list[str] = []
        source = ServerSource.configured(
            url, state, threading.Lock(), engine.settings, FetcherLimits()
        )
        assert str(engine.install(source, log=lines.append).version) == "1.1.0"
    assert any("slot A (booted): " in line and "cut and hashed" in line for line in lines)
    assert not any("came from the update server" in line for line in lines), lines
    if why == "not as signed":
        assert any(
            "the chunk index of 1.0.0, which slot A holds, was not had" in line
            and "not the signed one" in line
            for line in lines
        ), lines
    assert releases.slot_b.read_bytes() == releases.new
    assert releases.slot_a.read_bytes() == releases.old


@dataclass
class _KeptIndexDevice:
    """Slot B booted, holding 1.1.0 (its index kept by the install), 1.2.0 published."""

    releases: RawReleases
    engine: Engine
    source: ServerSource
    newest: bytes
    work: Path

    def new_chunks(self) -> list[int]:
        """Chunks of 1.2.0 found on neither slot."""
        index = release_index(self.releases.repo, "1.2.0")
        held = {
            old.digest(n)
            for version in ("1.0.0", "1.1.0")
            for old in [release_index(self.releases.repo, version)]
            for n in range(old.count)
        }
        return [n for n in range(index.count) if index.digest(n) not in held]


@contextlib.contextmanager
def _kept_index_device(tmp_path: Path) -> Iterator[_KeptIndexDevice]:
    releases = make_raw_releases(tmp_path)
    settings = {"slots": releases.slots, "factory_version": "1.0.0"}
    state = tmp_path / "device"
    with serve_repo(releases.repo, tmp_path / "server") as url:
        engine = booted_engine(state, releases.repo, **settings)
        source = ServerSource.configured(
            url, state, threading.Lock(), engine.settings, FetcherLimits()
        )
        assert str(engine.install(source).version) == "1.1.0"
        engine = booted_engine(state, releases.repo, **settings)  # B, holding 1.1.0
        assert engine.status().booted == "B"
        newest = changed(releases.new, 5, 2, 50_000)
        image = tmp_path / "image-1.2.0.img"
        image.write_bytes(newest)
        releases.repo.add_release("1.2.0", image=image, chunk_size=256 * 1024)
        releases.repo.publish()
        yield _KeptIndexDevice(releases, engine, source, newest, tmp_path / "server")


def test_chunks_a_kept_index_places_wrongly_are_fetched_after_the_seed_pass(
    tmp_path: Path,
) -> None:
    """With a kept index the missing chunks are fetched while the booted slot is read; chunks
    the index places there that do not match (the slot was changed behind its back) are
    fetched after, and the booted slot is only read."""
    with _kept_index_device(tmp_path) as device:
        repo = device.releases.repo
        index, held = release_index(repo, "1.2.0"), release_index(repo, "1.1.0")
        old = release_index(repo, "1.0.0")  # what slot A holds, kept in place
        in_b = {held.digest(n) for n in range(held.count)}
        in_a = {old.digest(n) for n in range(old.count)}
        shared = [n for n in range(index.count) if index.digest(n) in in_b - in_a][:3]
        assert len(shared) == 3
        slot_b = device.releases.slot_b
        corrupt = bytearray(slot_b.read_bytes())
        for number in shared:
            entry = index.entry(number)
            corrupt[entry.offset + entry.length // 3] ^= 0x10
        slot_b.write_bytes(bytes(corrupt))
        before = len(chunk_requests(device.work))
        lines: list[str] = []
        assert str(device.engine.install(device.source, log=lines.append).version) == "1.2.0"
        fetched = chunk_requests(device.work)[before:]
    assert any("placed by the seeds' kept indexes" in line for line in lines), lines
    assert any(
        f"{len(shared)} chunks were not where the seeds' kept indexes put them" in line
        for line in lines
    ), lines
    assert device.releases.slot_a.read_bytes() == device.newest
    assert slot_b.read_bytes() == bytes(corrupt)  # read, never repaired or written
    for number in shared:
        address = index.entry(number).address
        assert f"/targets/chunks/{address[:2]}/{address}.zst" in fetched


def test_a_chunk_missing_while_the_booted_slot_is_read_fails_the_update_naming_it(
    tmp_path: Path,
) -> None:
    """The fetch beside the seed pass fails the update as the fetch after it does: the chunk
    named, the booted slot untouched, the target's start zeroed."""
    with _kept_index_device(tmp_path) as device:
        index = release_index(device.releases.repo, "1.2.0")
        gone = device.new_chunks()[0]
        chunk_file(device.releases.repo, index.digest(gone)).unlink()
        booted = device.releases.slot_b.read_bytes()
        with pytest.raises(AcquireError, match=rf"lacks chunks of the release: {gone} \(chunks/"):
            device.engine.install(device.source)
    assert device.releases.slot_b.read_bytes() == booted
    assert device.releases.slot_a.read_bytes()[:4096] == bytes(4096)


async def test_fetch_url_of_a_published_repository_updates_from_its_chunks(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    releases = make_raw_releases(tmp_path)
    with serve_repo(releases.repo, tmp_path / "server") as url:
        overrides = online_overrides(
            releases.repo, "", slots=releases.slots, factory_version="1.0.0"
        )
        service = await start_service(**overrides)
        admin, user = await _clients(service, connect)
        reply = await admin.call("sys", "update_now", {"fetch_url": f"{url}/"})
        assert reply == {"result": "success", "updates": "starting"}
        _, final = await wait_final(user, 60)
    assert final["result"] == "success", final["details"]
    assert "the release repository at 127.0.0.1:" in final["details"]
    assert releases.slot_b.read_bytes() == releases.new
    assert 0 < final["bytes_downloaded"] < len(releases.new) // 4
    assert not [path for path in requests(tmp_path / "server") if path.endswith(".img")]


async def test_a_tree_update_cut_off_resumes_from_the_files_it_wrote(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo = ReleaseRepository.init(tmp_path / "repo", PRODUCT)
    tree = tmp_path / "tree-1.1.0"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "version").write_text("1.1.0\n")
    for n in range(24):
        (tree / "lib").mkdir(exist_ok=True)
        (tree / "lib" / f"lib{n:02}.so").write_bytes(os.urandom(256 * 1024))
    repo.add_release("1.1.0", tree=tree, compress="zstd", chunk_size=65536)
    repo.publish()
    index = release_index(repo, "1.1.0")
    state = tmp_path / "state"
    slow = "location /targets/chunks/ { limit_rate 400k; }"
    with serve_repo(repo, tmp_path / "server", slow) as url:
        service = await start_service(state, **online_overrides(repo, url, delta_parallel=1))
        admin, user = await _clients(service, connect)
        assert (await checked(admin, service))["updates_available"] is True
        await admin.call("sys", "update_now", {})
        await wait_until(lambda: _done(service) > 3 * MiB, 30, "3 MiB are written")
    _, final = await wait_final(user, 60)
    assert final["result"] == "failure"
    slot_b = state / "slots" / "B"
    stash = state / "slots" / "B.delta-seed"
    assert not any(slot_b.iterdir())  # nothing in the slot looks installed
    assert (stash / "lib" / "lib00.so").read_bytes() == (tree / "lib" / "lib00.so").read_bytes()
    with serve_repo(repo, tmp_path / "server2") as url:
        await admin.call("sys", "set_config", {"update_server": url})
        _, final = await _update(service, admin, user)
    assert final["result"] == "success", final["details"]
    for path in tree.rglob("*"):
        if path.is_file():
            assert (slot_b / path.relative_to(tree)).read_bytes() == path.read_bytes()
    assert "slot B (what it held): " in final["details"]
    assert final["bytes_from_device"] >= 2 * MiB
    assert len(chunk_requests(tmp_path / "server2")) < index.count - 20
    assert not stash.exists()


def _done(service: Service) -> int:
    job = service.updates.job
    return job.bytes_done if job is not None else 0


def test_install_from_a_server_can_pick_a_release_other_than_the_newest(
    tmp_path: Path,
) -> None:
    releases = make_raw_releases(tmp_path)
    state = tmp_path / "device"
    with serve_repo(releases.repo, tmp_path / "server") as url:
        engine = booted_engine(state, releases.repo, slots=releases.slots, factory_version="0.9.0")
        source = ServerSource.configured(
            url, state, threading.Lock(), engine.settings, FetcherLimits()
        )
        pinned = replace(source, wanted=parse_version("1.0.0"))
        assert str(engine.install(pinned).version) == "1.0.0"
        assert releases.slot_b.read_bytes() == releases.old
        missing = replace(source, wanted=parse_version("7.0.0"))
        with pytest.raises(AcquireError, match=r"release 7\.0\.0 is not on the server"):
            engine.install(missing)


async def test_a_chunk_repeated_in_the_image_is_fetched_once_and_copied_after(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    releases = make_raw_releases(tmp_path)
    block = os.urandom(150_000)
    repeated = releases.new[: 2 * MiB] + block * 8 + releases.new[2 * MiB + len(block) * 8 :]
    image = tmp_path / "image-1.2.0.img"
    image.write_bytes(repeated)
    releases.repo.add_release("1.2.0", image=image, chunk_size=256 * 1024)
    releases.repo.publish()
    index = release_index(releases.repo, "1.2.0")
    booted = release_index(releases.repo, "1.0.0")
    held = {booted.digest(n) for n in range(booted.count)}
    new = {index.digest(n) for n in range(index.count)} - held
    with serve_repo(releases.repo, tmp_path / "server") as url:
        overrides = online_overrides(
            releases.repo, url, slots=releases.slots, factory_version="1.0.0"
        )
        service = await start_service(**overrides)
        admin, user = await _clients(service, connect)
        _, final = await _update(service, admin, user)
    assert final["result"] == "success", final["details"]
    assert releases.slot_b.read_bytes() == repeated
    assert len(chunk_requests(tmp_path / "server")) == len(new)
    assert "does not match its hash" not in final["details"]
