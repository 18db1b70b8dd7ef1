"""A damaged state: an empty or missing database, corrupt pages, a full disk, and a second
service on the same state directory (issue 9, findings 4 and 8). Each is refused with a message
that says what to do, and nothing is changed; the device's identity survives."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.config import build_config
from sysupd.errors import StateError
from tests.conftest import ADMIN, ServiceFactory, api_url, test_config_values
from tests.procs import ServeProcess, free_port, run_cli, write_config


def _serve_args(state: Path, config: Path) -> list[str]:
    ports = [str(free_port()) for _ in range(4)]
    return [
        "serve",
        "--config",
        str(config),
        "--state-dir",
        str(state),
        "--ws-port",
        ports[0],
        "--http-port",
        ports[1],
        "--wss-port",
        ports[2],
        "--https-port",
        ports[3],
    ]


async def _first_start(tmp_path: Path) -> tuple[Path, Path, str]:
    """A device started once by ``sysupd serve``: its state, config and system_id."""
    state, config = tmp_path / "state", write_config(tmp_path / "sysupd.toml")
    serve = ServeProcess(state, config)
    await serve.start()
    assert await serve.stop() == 0
    identity = json.loads((state / "identity.json").read_bytes())
    return state, config, identity["system_id"]


def _assert_one_line_error(code: int, out: str, err: str, *words: str) -> str:
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert "with password" not in out, "no new administrator was made"
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("damage", ["empty", "missing"])
async def test_a_lost_database_is_not_taken_as_a_first_start(tmp_path: Path, damage: str) -> None:
    state, config, system_id = await _first_start(tmp_path)
    db = state / "sysupd.db"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    if damage == "empty":
        db.write_bytes(b"")
    else:
        db.unlink()
    identity = (state / "identity.json").read_bytes()

    code, out, err = await run_cli(*_serve_args(state, config))
    _assert_one_line_error(
        code, out, err, str(db), "restore", "sysupd reinit --state-dir", system_id
    )
    assert (db.exists() and db.stat().st_size == 0) if damage == "empty" else not db.exists()
    assert (state / "identity.json").read_bytes() == identity


async def test_reinit_starts_over_on_purpose_with_the_same_identity(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state, config, system_id = await _first_start(tmp_path)
    (state / "sysupd.db").write_bytes(b"")

    code, out, err = await run_cli("reinit", "--state-dir", str(state), "--config", str(config))
    assert code == 1  # it asks first, and no answer is no
    assert (state / "sysupd.db").stat().st_size == 0
    code, out, err = await run_cli(
        "reinit", "--state-dir", str(state), "--config", str(config), "--yes"
    )
    assert code == 0, err
    assert system_id in out
    assert ".old" in out  # the old one is kept, not deleted
    assert list(state.glob("sysupd.db.*.old"))

    serve = ServeProcess(state, config)
    await serve.start()
    try:
        line = next(line for line in serve.stdout_lines if "with password" in line)
        password = line.rsplit(" ", 1)[1]
        assert not any("demo release repository" in ln for ln in serve.stdout_lines)
        reply = await http.post(
            f"http://127.0.0.1:{serve.http_port}/api/sys/info",
            headers={"Authorization": aiohttp.encode_basic_auth("admin", password)},
        )
        assert (await reply.json())["args"]["system_id"] == system_id
    finally:
        await serve.stop()


async def test_reinit_refuses_a_state_directory_without_a_device(tmp_path: Path) -> None:
    code, _, err = await run_cli("reinit", "--state-dir", str(tmp_path / "none"), "--yes")
    assert code == 1
    assert "no state directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = await run_cli("reinit", "--state-dir", str(tmp_path / "empty"), "--yes")
    assert code == 1
    assert "holds no device" in err
    assert list((tmp_path / "empty").iterdir()) == [tmp_path / "empty" / "service.lock"]


async def test_corrupt_pages_stop_the_start_with_one_line(tmp_path: Path) -> None:
    state, config, _ = await _first_start(tmp_path)
    db = state / "sysupd.db"
    with sqlite3.connect(db) as conn:  # fold the WAL in, so the pages are in the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page : 3 * page] = os.urandom(page)  # a table's page, not the header
    db.write_bytes(bytes(data))

    code, out, err = await run_cli(*_serve_args(state, config))
    _assert_one_line_error(code, out, err, str(db), "restore", "sysupd reinit")
    assert db.read_bytes() == bytes(data), "nothing was written to it"


async def test_an_older_state_directory_gets_its_identity_file_from_the_database(
    start_service: ServiceFactory,
) -> None:
    service = await start_service()
    state, system_id = service.config.state_dir, service.system_id
    await service.stop()
    (state / "identity.json").unlink()  # as a state directory from before the file
    again = await start_service(state_dir=state)
    assert again.system_id == system_id
    assert json.loads((state / "identity.json").read_bytes())["system_id"] == system_id


async def test_a_second_service_on_the_same_state_directory_is_refused(
    start_service: ServiceFactory,
) -> None:
    service = await start_service()
    config = build_config(test_config_values(service.config.state_dir))
    with pytest.raises(StateError, match=rf"another sysupd service \(pid {os.getpid()}\)"):
        Service(config)
    assert service.users.count() > 0  # the running one is untouched


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    for block in (65536, 512):  # then the last partial blocks too
        with contextlib.suppress(OSError), filler.open("ab") as out:
            while True:
                out.write(b"\0" * block)
                out.flush()
    return filler


async def test_set_config_on_a_full_disk_is_507_and_changes_nothing(
    small_disk: Path, start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    disk = small_disk  # this test's own tmpfs, unmounted after it
    service = await start_service(state_dir=disk / "state")
    filler = _fill(disk)
    auth = {"Authorization": aiohttp.encode_basic_auth(*ADMIN)}
    before = service.settings
    body = {"update_check_interval_s": 60, "auto_reboot": False, "event_interval_s": 2}
    for _ in range(3):  # the WAL may have had room for a page or two
        async with http.post(api_url(service, "sys/set_config"), json=body, headers=auth) as resp:
            envelope = await resp.json()
        if resp.status != 200:
            break
        body["update_check_interval_s"] += 1
        before = service.settings
    assert resp.status == 507, envelope
    args = envelope["args"]
    assert args["code"] == "507"
    assert args["message"] == "Insufficient Storage"
    assert "full" in args["details"]
    assert "changed nothing" in args["details"]
    assert service.settings == before
    async with http.post(api_url(service, "sys/info"), headers=auth) as resp:
        assert resp.status == 200, "the service goes on"

    filler.unlink()
    await service.stop()
    again = await start_service(state_dir=disk / "state")
    assert again.settings == before
    await again.stop()


async def test_reinit_keeps_the_identity_of_a_state_directory_from_before_identity_json(
    tmp_path: Path,
) -> None:
    state, config, system_id = await _first_start(tmp_path)
    (state / "identity.json").unlink()  # as a state directory made by an older version
    code, out, err = await run_cli(
        "reinit", "--state-dir", str(state), "--config", str(config), "--yes"
    )
    assert code == 0, err
    assert system_id in out
    assert json.loads((state / "identity.json").read_bytes())["system_id"] == system_id
