"""``sysupd update`` as a real process: upload, follow the events, the result, the reboot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.cli import Cli
from tests.conftest import ADMIN, USER, ServiceFactory, wait_until
from tests.offline import device_overrides, file_route, lan_server
from tests.procs import ServeProcess, write_config
from tests.releases import PRODUCT, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.fixture
def bundle(repo: ReleaseRepository, tmp_path: Path) -> Path:
    out = tmp_path / "sysupd-demo-1.1.0.bundle"
    repo.write_bundle("1.1.0", out)
    return out


async def _admin_cli(service: Service, tmp_path: Path) -> Cli:
    cli = Cli.for_service(service, tmp_path / "cfg")
    await cli.login(*ADMIN)
    return cli


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


async def test_update_from_a_file_as_json_lines(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    code, out, err = await cli.run("update", "--file", str(bundle), "--json")
    assert code == 0, err
    lines = _lines(out)
    assert lines[0]["upload"]["file_upload"] == bundle.name
    events = [line["args"] for line in lines if line.get("event") == "sys/update_now"]
    assert events[0]["update_running"] is True
    assert events[-1]["result"] == "success"
    assert lines[-1] == {"result": "success", "version": "1.1.0", "rebooted": False}
    assert (service.config.state_dir / "slots" / "B" / "etc" / "version").read_text() == "1.1.0\n"


async def test_update_for_people_shows_the_log_and_the_coming_reboot(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    service = await start_service(
        **device_overrides(repo, auto_reboot=True, auto_reboot_delay_s=600)
    )
    cli = await _admin_cli(service, tmp_path)
    code, out, err = await cli.run("update", "--file", str(bundle))
    assert code == 0, err
    assert out == ""
    assert f"uploaded {bundle.name} (sha256 " in err
    assert "verified the signed metadata of release 1.1.0" in err
    assert "update installed in" in err
    assert "installed 1.1.0; the service reboots into it in" in err
    assert "cancel with: sysupd reboot --cancel" in err
    assert service.reboots.plan is not None


async def test_no_reboot_cancels_the_automatic_reboot(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    service = await start_service(
        **device_overrides(repo, auto_reboot=True, auto_reboot_delay_s=600)
    )
    cli = await _admin_cli(service, tmp_path)
    code, _, err = await cli.run("update", "--file", str(bundle), "--no-reboot")
    assert code == 0, err
    assert "the automatic reboot is cancelled" in err
    assert service.reboots.plan is None


async def test_update_from_a_url(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    async with lan_server([file_route("/u.bundle", bundle)]) as (base, seen):
        code, _, err = await cli.run("update", "--url", f"{base}/u.bundle")
    assert code == 0, err
    assert "downloading from 127.0.0.1" in err
    assert seen == ["/u.bundle"]


async def test_a_file_that_is_not_a_bundle_fails_with_the_reason(
    start_service: ServiceFactory, repo: ReleaseRepository, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n")
    code, out, err = await cli.run("update", "--file", str(junk), "--json")
    assert code == 1
    final = _lines(out)[-1]
    assert final["result"] == "failure"
    assert final["error"] == "the file is not a sysupd bundle: it has only 6 bytes"
    code, _, err = await cli.run("update", "--file", str(junk))
    assert code == 1
    assert "error: the update failed: the file is not a sysupd bundle" in err
    assert service.uploads.names() == [], "the upload is gone with its update"


@pytest.mark.parametrize("name", [".hidden.bundle", "odd..name.bundle"])
async def test_a_file_name_the_service_refuses_is_sent_as_upload_bundle(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path, name: str
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    odd = bundle.rename(tmp_path / name)
    code, out, err = await cli.run("update", "--file", str(odd))
    assert code == 0, err
    assert f"uploaded {name} (sha256 " in err
    assert "sent as upload.bundle)" in err
    assert "update started from the uploaded file upload.bundle" in err
    code, out, err = await cli.run("update", "--file", str(odd), "--json")
    assert code == 0, err
    assert _lines(out)[0]["upload"]["file_upload"] == "upload.bundle"


async def test_an_empty_file_is_refused_before_uploading(
    start_service: ServiceFactory, repo: ReleaseRepository, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    empty = tmp_path / "empty.bundle"
    empty.write_bytes(b"")
    code, _, err = await cli.run("update", "--file", str(empty))
    assert code == 2
    assert f"--file {empty} is empty, not an update bundle" in err
    assert not any("upload" in line for line in service.log.lines()), "nothing was sent"
    assert service.uploads.names() == []


async def test_a_bundle_for_another_product_fails_with_the_reason(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    other = make_repo(tmp_path / "other", "1.1.0", product="fridge")
    bundle = tmp_path / "fridge.bundle"
    other.write_bundle("1.1.0", bundle)
    service = await start_service(
        product=PRODUCT,
        trust_root=str(other.path / "metadata" / "1.root.json"),
        auto_reboot=False,
    )
    cli = await _admin_cli(service, tmp_path)
    code, _, err = await cli.run("update", "--file", str(bundle))
    assert code == 1
    assert "error: the update failed:" in err
    assert "fridge" in err.splitlines()[-1]
    assert "sysupd-demo" in err.splitlines()[-1]


async def test_a_second_update_while_one_runs_is_refused(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    gate = asyncio.Event()
    data = bundle.read_bytes()

    async def held(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[:100])
        await gate.wait()
        await response.write(data[100:])
        return response

    async with lan_server([web.get("/held", held)]) as (base, _):
        first = asyncio.create_task(cli.run("update", "--url", f"{base}/held"))
        await wait_until(lambda: service.updates.running, 10, "the first update runs")
        code, _, err = await cli.run("update", "--file", str(bundle))
        assert code == 1
        assert "error: Update procedure already running" in err
        gate.set()
        code, _, err = await first
    assert code == 0, err


async def test_online_without_an_update_server_says_so(
    start_service: ServiceFactory, repo: ReleaseRepository, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = await _admin_cli(service, tmp_path)
    code, _, err = await cli.run("update", "--online")
    assert code == 1
    assert "error: No update server is configured" in err


async def test_a_user_may_not_update(
    start_service: ServiceFactory, repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    service = await start_service(**device_overrides(repo))
    cli = Cli.for_service(service, tmp_path / "cfg")
    await cli.login(*USER)
    code, _, err = await cli.run("update", "--file", str(bundle))
    assert code == 1
    assert "403 Forbidden: sys/upload_file is for administrators only" in err


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ((), "give exactly one of --file BUNDLE, --url URL, --online"),
        (("--online", "--url", "http://x/b"), "give exactly one of"),
        (("--online", "--no-reboot", "--wait"), "--wait follows the reboot that --no-reboot"),
        (("--file", "/nonexistent.bundle"), "there is no such file"),
    ],
)
async def test_usage_errors(tmp_path: Path, args: tuple[str, ...], why: str) -> None:
    code, _, err = await Cli(tmp_path / "cfg", "https://127.0.0.1:1").run("update", *args)
    assert code == 2
    assert why in err


async def test_wait_follows_the_reboot_into_the_new_version(
    repo: ReleaseRepository, bundle: Path, tmp_path: Path
) -> None:
    """A real ``sysupd serve`` re-executes itself into slot B; the client reconnects with its
    token and reports what booted."""
    config = write_config(
        tmp_path / "device.toml",
        product=PRODUCT,
        trust_root=str(repo.path / "metadata" / "1.root.json"),
        auto_reboot_delay_s=1,
    )
    serve = ServeProcess(tmp_path / "state", config)
    await serve.start()
    try:
        password = next(ln for ln in serve.stdout_lines if "with password" in ln).rsplit(" ", 1)[1]
        cli = Cli(tmp_path / "cfg", f"https://127.0.0.1:{serve.https_port}")
        await cli.login("admin", password)
        code, _, err = await cli.run("update", "--file", str(bundle), "--wait", timeout=120)
        assert code == 0, err
        assert "the service is rebooting; waiting for it to come back" in err
        assert err.splitlines()[-1] == "now running 1.1.0 in slot B (boot status: good)"
        info = await cli.json("info")
        assert (info["system_version"], info["slot"]) == ("1.1.0", "B")
    finally:
        assert await serve.stop() == 0
