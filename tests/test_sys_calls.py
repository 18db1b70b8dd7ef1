"""sys/info, sys/middleware_log and the idle answers of the update status calls."""

from __future__ import annotations

from pathlib import Path

from sysupd import __version__
from sysupd.api.service import Service
from sysupd.servicelog import GENERATIONS, ServiceLog
from sysupd.system.clock import SystemClock
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, boot_settled


async def test_info_identity_is_stable_across_restarts(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    first = await start_service()
    client = await connect(first, login=USER)
    info = await client.call("sys", "info")
    assert info["system_version"] == "0.0.0"  # the factory slot, until an update
    assert info["middleware_version"] == __version__
    assert info["slot"] == "A"
    assert info["boot_status"] in ("trial", "good")
    await client.close()
    await first.stop()
    second = await start_service()
    again = await (await connect(second, login=USER)).call("sys", "info")
    assert again["system_id"] == info["system_id"]


async def test_websocket_answers_on_root_path_too(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=USER, path="/")
    assert (await client.call("sys", "info"))["system_id"] == service.system_id


async def test_middleware_log_records_sockets_and_logins(
    service: Service, connect: ClientFactory
) -> None:
    await boot_settled(service)  # the boot trial's lines come before ours
    watcher = await connect(service, login=USER)
    await watcher.close()
    admin = await connect(service, login=ADMIN)
    log = (await admin.call("sys", "middleware_log"))["log"]
    lines = log.split("<br>")
    assert any("websocket opened from 127.0.0.1" in line for line in lines)
    assert any("websocket closed from 127.0.0.1" in line for line in lines)
    assert any(f"login: user {USER[0]!r}" in line for line in lines)
    logins = [line for line in lines if "login: user" in line]
    assert f"login: user {ADMIN[0]!r}" in logins[-1]  # newest last
    assert f"login: user {USER[0]!r}" in logins[-2]
    assert "\n" not in log


async def test_middleware_log_escapes_markup(service: Service, connect: ClientFactory) -> None:
    admin = await connect(service, login=ADMIN)
    attacker = await connect(service)
    await attacker.request("rpc", "auth", {"username": "<img src=x>", "password": "x"})
    log = (await admin.call("sys", "middleware_log"))["log"]
    assert "<img" not in log
    assert "&lt;img src=x&gt;" in log


async def test_middleware_log_is_capped(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service(log_max_bytes=4096)
    await boot_settled(service)  # the boot trial's lines come before ours
    for n in range(500):
        service.log.info(f"filler line {n:04d} " + "y" * 40)
    admin = await connect(service, login=ADMIN)
    log = (await admin.call("sys", "middleware_log"))["log"]
    assert len(log.replace("<br>", "\n")) <= 4096
    assert "filler line 0000" not in log
    assert "login: user" in log.split("<br>")[-1]


async def test_log_survives_a_restart(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    first = await start_service()
    first.log.info("a line written before the restart")
    await first.stop()
    second = await start_service()
    admin = await connect(second, login=ADMIN)
    log = (await admin.call("sys", "middleware_log"))["log"]
    assert "a line written before the restart" in log


async def test_update_calls_answer_their_idle_shapes(
    service: Service, connect: ClientFactory
) -> None:
    user = await connect(service, login=USER)
    assert await user.call("sys", "update_status") == {
        "reboot_required": False,
        "update_running": False,
        "update_status": "",
        "last_result": None,  # ext: nothing installed or booted on trial yet
    }
    available = await user.call("sys", "updates_available")
    assert available["updates_available"] is False
    assert "no update check" in available["updates_info"].lower()


def test_the_log_file_rotates_with_generations(tmp_path: Path) -> None:
    log = ServiceLog(tmp_path / "sysupd.log", SystemClock(), 1000)
    for n in range(2000):
        log.info(f"line {n:05d} " + "x" * 40)
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["sysupd.log", *[f"sysupd.log.{n}" for n in range(1, GENERATIONS + 1)]]
    assert "line 01999" in (tmp_path / "sysupd.log").read_text()
    older = (tmp_path / f"sysupd.log.{GENERATIONS}").read_text()
    assert int(older.split("line ")[1][:5]) < int(
        (tmp_path / "sysupd.log.1").read_text().split("line ")[1][:5]
    )
