"""``sysupd serve`` as a real process: first-start password, SIGTERM, and the exec reboot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.client import WsClient
from tests.procs import ServeProcess, run_cli, write_config

Spawn = Callable[..., ServeProcess]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    procs: list[ServeProcess] = []

    def make(**config: object) -> ServeProcess:
        proc = ServeProcess(tmp_path / "state", write_config(tmp_path / "sysupd.toml", **config))
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.kill()
        if proc.proc is not None:
            await proc.proc.wait()


async def _ws_login(http: aiohttp.ClientSession, port: int, password: str) -> WsClient:
    client = WsClient(await http.ws_connect(f"http://127.0.0.1:{port}/websocket"))
    await client.login("admin", password)
    return client


def _password(lines: list[str]) -> str:
    line = next(line for line in lines if "with password" in line)
    return line.rsplit(" ", 1)[1]


async def test_first_start_prints_admin_password_once_and_sigterm_stops(
    spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    serve = spawn()
    await serve.start()
    password = _password(serve.stdout_lines)
    reply = await http.post(
        f"http://127.0.0.1:{serve.http_port}/api/sys/info",
        headers={"Authorization": aiohttp.encode_basic_auth("admin", password)},
    )
    assert reply.status == 200
    system_id = (await reply.json())["args"]["system_id"]
    assert await serve.stop() == 0
    log = (serve.state_dir / "log" / "sysupd.log").read_text()
    assert "sysupd stopped" in log
    assert password not in log

    again = spawn()
    await again.start()
    assert not any("with password" in line for line in again.stdout_lines)
    reply = await http.get(
        f"http://127.0.0.1:{again.http_port}/api/sys/info",
        headers={"Authorization": aiohttp.encode_basic_auth("admin", password)},
    )
    assert (await reply.json())["args"]["system_id"] == system_id
    assert await again.stop() == 0


async def test_exec_reboot_re_executes_the_service(
    spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    serve = spawn(reboot_action="exec")
    await serve.start()
    assert serve.proc is not None
    pid = serve.proc.pid
    password = _password(serve.stdout_lines)
    client = await _ws_login(http, serve.ws_port, password)
    system_id = (await client.call("sys", "info"))["system_id"]
    await client.call("sys", "reboot", {"delay_seconds": 0})
    await asyncio.wait_for(client.closed.wait(), 10)
    assert client.ws.close_code == 1001  # going away
    await serve.wait_for_line("sysupd listening")  # the same process, started afresh
    assert serve.proc.returncode is None
    assert serve.proc.pid == pid
    again = await _ws_login(http, serve.ws_port, password)
    assert (await again.call("sys", "info"))["system_id"] == system_id
    log = (await again.call("sys", "middleware_log"))["log"]
    assert "restart: re-executing the service" in log
    await again.close()
    assert await serve.stop() == 0


async def test_exit_reboot_action_exits_zero(spawn: Spawn, http: aiohttp.ClientSession) -> None:
    serve = spawn(reboot_action="exit")
    await serve.start()
    client = await _ws_login(http, serve.ws_port, _password(serve.stdout_lines))
    await client.call("sys", "reboot", {"delay_seconds": 0})
    assert serve.proc is not None
    assert await asyncio.wait_for(serve.proc.wait(), 30) == 0


async def test_bad_config_file_is_refused_with_its_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", event_interval_s="soon")
    status, _, err = await run_cli("serve", "--config", str(config), "--state-dir", str(tmp_path))
    assert status == 1
    assert "event_interval_s" in err
    unknown = write_config(tmp_path / "unknown.toml", colour="blue")
    status, _, err = await run_cli("serve", "--config", str(unknown), "--state-dir", str(tmp_path))
    assert status == 1
    assert "colour" in err
