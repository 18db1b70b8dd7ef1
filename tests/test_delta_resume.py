"""A delta update whose service is killed mid-way resumes after the restart from what the
inactive slot holds, re-verified by hash, instead of starting again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import wait_until
from tests.delta import MiB, chunk_requests, make_raw_releases, release_index
from tests.online import serve_repo
from tests.procs import PlainServe
from tests.releases import PRODUCT


async def _call(serve: PlainServe, call: str, args: dict[str, Any] | None = None) -> Any:
    auth = {"Authorization": aiohttp.encode_basic_auth("admin", serve.password)}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(
            f"http://127.0.0.1:{serve.http_port}/api/{call}", headers=auth, json=args or {}
        ) as reply,
    ):
        assert reply.status == 200, await reply.text()
        return (await reply.json())["args"]


async def _start_update(serve: PlainServe) -> None:
    before = (await _call(serve, "sys/updates_available")).get("last_checked")
    await _call(serve, "sys/update_check")

    async def checked() -> bool:
        return bool((await _call(serve, "sys/updates_available")).get("last_checked") != before)

    await wait_until(checked, 15, "the update check ends")
    assert (await _call(serve, "sys/updates_available"))["updates_available"] is True
    assert await _call(serve, "sys/update_now") == {"result": "success", "updates": "starting"}


async def test_a_killed_service_resumes_the_update_after_its_restart(tmp_path: Path) -> None:
    releases = make_raw_releases(tmp_path, size=8 * MiB, spans=160)
    index = release_index(releases.repo, "1.1.0")
    config: dict[str, Any] = {
        "product": PRODUCT,
        "trust_root": str(releases.repo.path / "metadata" / "1.root.json"),
        "slots": releases.slots,
        "factory_version": "1.0.0",
        "update_check_interval_s": 0,
        "auto_reboot": False,
        "delta_parallel": 1,
    }
    slow = "location /targets/chunks/ { limit_rate 500k; }"
    with serve_repo(releases.repo, tmp_path / "server", slow) as url:
        serve = PlainServe(tmp_path, **config, update_server=url)
        await serve.start()
        try:
            await _start_update(serve)
            await wait_until(
                lambda: (
                    releases.slot_b.read_bytes()[3 * MiB : 4 * MiB]
                    == releases.new[3 * MiB : 4 * MiB]
                ),
                60,
                "slot B holds its first 4 MiB",
            )
        finally:
            assert serve.proc is not None
            serve.proc.kill()  # SIGKILL: no clean-up of any kind
            await serve.proc.wait()
    written = releases.slot_b.read_bytes()
    assert written[: 3 * MiB] == releases.new[: 3 * MiB]  # nothing wiped it

    with serve_repo(releases.repo, tmp_path / "server2") as url:
        await serve.start()
        try:
            status = await _call(serve, "sys/update_status")
            assert status["update_running"] is False
            await _call(serve, "sys/set_config", {"update_server": url})
            await _start_update(serve)

            async def ended() -> bool:
                return not (await _call(serve, "sys/update_status"))["update_running"]

            await wait_until(ended, 60, "the resumed update ends")
            log = (await _call(serve, "sys/update_status"))["update_status"]
        finally:
            await serve.stop()
    assert "slot B will boot next" in log, log
    assert "of the release at its place already" in log
    assert releases.slot_b.read_bytes() == releases.new
    # The second run fetched only what the first had not written.
    second = chunk_requests(tmp_path / "server2")
    assert 0 < len(second) < index.count - (3 * MiB) // (256 * 1024)
    await asyncio.sleep(0)
