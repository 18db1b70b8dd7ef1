"""The whole cycle as a new user sees it on the embedded default: the first start makes a demo
repository; an uploaded demo bundle installs with live events, the service reboots itself (exec)
into the new slot, confirms it, and reports the new version."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.client import WsClient
from tests.conftest import wait_until
from tests.offline import upload, wait_final
from tests.procs import ServeProcess, write_config


async def _login(http: aiohttp.ClientSession, serve: ServeProcess, password: str) -> WsClient:
    """Log in; the caller has read "sysupd listening", which the service prints once it listens."""
    client = WsClient(await http.ws_connect(f"http://127.0.0.1:{serve.ws_port}/websocket"))
    await client.login("admin", password)
    return client


async def test_demo_update_cycle(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    config = write_config(tmp_path / "c.toml", event_interval_s=0.2, auto_reboot_delay_s=1)
    serve = ServeProcess(tmp_path / "state", config)
    await serve.start()
    try:
        password = next(line for line in serve.stdout_lines if "with password" in line).split()[-1]
        bundles = [line.strip() for line in serve.stdout_lines if line.strip().endswith(".bundle")]
        assert [Path(b).name for b in bundles] == [
            "sysupd-demo-1.1.0.bundle",
            "sysupd-demo-1.2.0.bundle",
        ]
        admin = await _login(http, serve, password)
        info = await admin.call("sys", "info")
        assert (info["system_version"], info["slot"]) == ("0.0.0", "A")

        stored = await upload(
            http, admin, serve.http_port, Path(bundles[0]).read_bytes(), "demo.bundle"
        )
        assert (await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]}))[
            "result"
        ] == "success"
        _, final = await wait_final(admin)
        assert final["result"] == "success", final["details"]
        reboot = await admin.next_event("sys/reboot")
        assert reboot["args"]["reboot_delay_seconds"] == 1
        await asyncio.wait_for(admin.closed.wait(), 30)  # the service re-executes itself

        await serve.wait_for_line("sysupd listening")
        again = await _login(http, serve, password)
        latest: dict[str, Any] = {}

        async def trial_over() -> bool:
            latest.update(await again.call("sys", "info"))
            return bool(latest["boot_status"] != "trial")

        await wait_until(trial_over, 10, "the new slot's boot trial is over")
        assert (latest["system_version"], latest["slot"], latest["boot_status"]) == (
            "1.1.0",
            "B",
            "good",
        )
        status = await again.call("sys", "update_status")
        assert status["reboot_required"] is False
        assert "update installed" in status["update_status"]
        assert (
            status["update_status"]
            .split("<br>")[-1]
            .startswith("after the reboot: version 1.1.0 booted in slot B and is confirmed")
        ), "the status tells how the reboot went, not 'reboot required' any more"
        log = (await again.call("sys", "middleware_log"))["log"]
        assert "re-executing the service" in log
        assert "is confirmed (no health check is configured" in log
        await again.close()
    finally:
        assert await serve.stop() == 0
