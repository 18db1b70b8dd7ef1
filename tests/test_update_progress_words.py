"""What a person reads while an update runs: the phase, progress in words, the log line by line;
and that the events keep to the contract meanwhile (``details`` is the last log line, ``phase``
one of the four)."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sysupd.core.units import human_duration, human_size
from sysupd.release.repository import ReleaseRepository
from tests.cli import Cli
from tests.conftest import ADMIN, ClientFactory, ServiceFactory
from tests.offline import device_overrides, lan_server, upload, wait_final
from tests.releases import make_repo

PHASES = {"download", "verify", "install", "switch"}
BYTES = r"installing into slot B: [\d.]+ (bytes|KiB|MiB) of [\d.]+ (KiB|MiB)"
PROGRESS = BYTES + r", .+/s, .+ left"
STAMPED = r"\d\d:\d\d:\d\d .+"


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[ReleaseRepository, Path]:
    repo = make_repo(tmp_path, "1.1.0")
    out = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", out)
    return repo, out


async def test_an_upload_is_verified_not_downloaded(
    start_service: ServiceFactory,
    connect: ClientFactory,
    http: aiohttp.ClientSession,
    bundle: tuple[ReleaseRepository, Path],
) -> None:
    repo, path = bundle
    service = await start_service(**device_overrides(repo))
    admin = await connect(service, login=ADMIN)
    stored = await upload(http, admin, service.http_port, path.read_bytes(), "u.bundle")
    await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]})
    running, final = await wait_final(admin)
    assert running[0]["phase"] == "verify"
    assert all(event["phase"] in PHASES - {"download"} for event in running)
    assert "phase" not in final, "the final event has no phase outside the contract's four"
    assert final["log"] == final["details"]
    assert "0.0 MiB" not in final["details"]
    assert final["details"].split("<br>")[-1].endswith("reboot to start it")


def _trickle(data: bytes) -> web.RouteDef:
    """The bundle at /u.bundle, 8 KiB every 20 ms: slow enough to be watched on its way."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), 8192):
            await response.write(data[start : start + 8192])
            await asyncio.sleep(0.02)  # a slow server is the point: progress to be watched
        return response

    return web.get("/u.bundle", handler)


async def test_progress_says_how_far_the_install_is_and_details_stay_the_last_log_line(
    start_service: ServiceFactory,
    connect: ClientFactory,
    bundle: tuple[ReleaseRepository, Path],
) -> None:
    repo, path = bundle
    service = await start_service(**device_overrides(repo, event_interval_s=0.1))
    admin = await connect(service, login=ADMIN)
    async with lan_server([_trickle(path.read_bytes())]) as (base, _):
        await admin.call("sys", "update_now", {"fetch_url": f"{base}/u.bundle"})
        running, final = await wait_final(admin)
    assert final["result"] == "success", final["details"]
    assert "phase" not in final
    for event in running:
        assert event["phase"] in PHASES, event["phase"]
        assert event["details"] == event["log"].split("<br>")[-1], "the last line of the log"
        assert re.fullmatch(STAMPED, event["details"]), event["details"]
    flowing = [e for e in running if e["phase"] == "install" and e["bytes_done"] > 0]
    flowing = [e for e in flowing if e["bytes_done"] < e["bytes_total"]]
    assert len(flowing) >= 2, running
    for event in flowing:
        assert re.fullmatch(PROGRESS, event["progress"]), event["progress"]
        assert event["slot"] == "B"
        assert event["rate_bytes_s"] > 0
        assert event["seconds_left"] >= 0
    assert len({e["progress"] for e in flowing}) > 1, "progress moves with the bytes"
    assert all(e["progress"] is None for e in running if e["phase"] != "install")
    logs = [event["log"].split("<br>") for event in running]
    assert all(len(b) >= len(a) for a, b in itertools.pairwise(logs))
    assert len(logs[0]) == 1
    assert any("verified the signed metadata" in line for line in logs[-1]), "line by line"


async def test_the_command_line_piped_prints_the_progress_lines(
    start_service: ServiceFactory, bundle: tuple[ReleaseRepository, Path], tmp_path: Path
) -> None:
    repo, path = bundle
    service = await start_service(**device_overrides(repo, event_interval_s=0.1))
    cli = Cli.for_service(service, tmp_path / "cfg")
    await cli.login(*ADMIN)
    async with lan_server([_trickle(path.read_bytes())]) as (base, _):
        code, _, err = await cli.run("update", "--url", f"{base}/u.bundle")
    assert code == 0, err
    said = [line for line in err.splitlines() if line.startswith("installing into slot B: ")]
    assert all(re.fullmatch(f"{BYTES}(, .+/s, .+ left)?", line) for line in said), said
    assert len([line for line in said if re.fullmatch(PROGRESS, line)]) >= 2, err
    assert len(set(said)) == len(said), "a line is said once"
    log_lines = [line for line in err.splitlines() if re.fullmatch(STAMPED, line)]
    assert any("update installed in" in line for line in log_lines), err


@pytest.mark.parametrize(
    ("size", "words"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (20_000, "19.5 KiB"),
        (300_000, "293 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (2**30, "1.0 GiB"),
    ],
)
def test_sizes_are_never_rounded_to_nothing(size: int, words: str) -> None:
    assert human_size(size) == words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0.2, "less than 1 s"), (3.4, "3 s"), (125, "2 min 5 s"), (7200, "2 h"), (7260, "2 h 1 min")],
)
def test_durations(seconds: float, words: str) -> None:
    assert human_duration(seconds) == words
