"""Updating from the web page with real signed bundles: an upload with its progress, the update's
progress and log, the automatic reboot's countdown and its cancellation; a tab closed mid-upload;
and the failures the page must explain (not a bundle, another product, an update already
running)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.conftest import ADMIN, wait_until
from tests.offline import device_overrides, lan_server
from tests.releases import make_repo
from tests.web import (
    WEB,
    ServiceFactory,
    big_release,
    log_in,
    open_page,
    page_until,
    record,
    recorded,
    snap,
    throttle_uploads,
)

pytest_plugins = ["tests.web"]
pytestmark = WEB

MIB = 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.fixture
def bundle(repo: ReleaseRepository, tmp_path: Path) -> Path:
    out = tmp_path / "sysupd-demo-1.1.0.bundle"
    repo.write_bundle("1.1.0", out)
    return out


def last_line(service: Service) -> str:
    """The job's last log line as the page shows it: without its time stamp."""
    job = service.updates.job
    assert job is not None
    return job.lines[-1].split(" ", 1)[1]


async def test_upload_install_and_cancel_the_automatic_reboot(
    page: Page, services: ServiceFactory, tmp_path: Path
) -> None:
    repo = big_release(tmp_path, "1.1.0", size=3 * MIB)
    bundle = tmp_path / "big.bundle"
    repo.write_bundle("1.1.0", bundle)
    service = await services(**device_overrides(repo, auto_reboot=True, auto_reboot_delay_s=600))
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)
    await throttle_uploads(page, 4 * MIB)  # so that the upload takes long enough to be watched
    await record(page, "#upload-progress", "fraction")
    await record(page, "#upload-numbers", "text")
    await record(page, "#update-progress", "fraction")
    await record(page, "#update-log", "children")

    await page.set_input_files("#upload-file", str(bundle))
    await page.click("#upload-submit")
    result = page.locator("#update-result")
    await expect(result).to_have_text("Installed; reboot to start it.")
    await expect(page.locator("#update-phase")).to_have_text("Update installed")
    await expect(page.locator("#upload-numbers")).to_contain_text("(100 %)")
    await expect(page.locator("#update-numbers")).to_contain_text("(100 %)")

    uploaded = await recorded(page, "#upload-progress")
    assert uploaded[-1] == 1
    assert any(0 < p < 1 for p in uploaded), f"the upload bar did not move: {uploaded}"
    assert uploaded == sorted(uploaded)
    numbers = await recorded(page, "#upload-numbers")
    assert any("MiB/s" in text and " left" in text for text in numbers), numbers
    # A local file installs in a blink: how the bar and the log move on the way is watched in
    # test_a_second_update_while_one_runs, whose download is held halfway.
    progress = [p for p in await recorded(page, "#update-progress") if p is not None]
    assert progress[-1] == 1
    assert progress == sorted(progress)
    counts = await recorded(page, "#update-log")
    job = service.updates.job
    assert job is not None
    assert counts[-1] == len(job.lines)
    assert counts == sorted(counts), "the log only grows"
    log = page.locator("#update-log li")
    await expect(log.first).to_contain_text("update started from the uploaded file big.bundle")
    await expect(log.last).to_contain_text("update installed in")

    # The service schedules its own reboot; the page counts it down.
    countdown = page.locator("#reboot-countdown")
    await expect(page.locator("#reboot-banner")).to_be_visible()
    await expect(countdown).to_contain_text("Reboot in 9 min")
    first = await countdown.get_attribute("data-seconds-left")
    assert first is not None
    await expect(countdown).not_to_have_attribute("data-seconds-left", first)  # it ticks
    await expect(page.locator("#info-reboot-required")).to_contain_text("yes")
    await snap(page, "update-done-reboot-countdown.png")

    assert service.reboots.plan is not None
    await page.click("#reboot-cancel")
    await expect(page.locator("#reboot-banner")).to_be_hidden()
    await wait_until(lambda: service.reboots.plan is None, 30, "the reboot is cancelled")
    assert "scheduled reboot cancelled by root" in "\n".join(service.log.lines())


async def test_a_tab_closed_mid_upload_leaves_no_file(
    page: Page, services: ServiceFactory, tmp_path: Path
) -> None:
    big = tmp_path / "big.bundle"
    with big.open("wb") as out:  # sparse: 256 MiB that take no room here
        out.truncate(256 * MIB)
    service = await services()
    uploads = service.uploads.directory
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)
    await throttle_uploads(page, 4 * MIB)

    await page.set_input_files("#upload-file", str(big))
    await page.click("#upload-submit")
    await page_until(page, "() => document.getElementById('upload-progress').value > 0", "moved")
    await wait_until(lambda: any(uploads.iterdir()), 30, "the upload's temp file is there")
    assert not service.uploads.names(), "nothing is an upload before it completed"
    await page.close()
    await wait_until(lambda: not any(uploads.iterdir()), 60, "the uploads directory is empty")


async def test_the_page_says_why_an_update_failed(
    page: Page,
    services: ServiceFactory,
    repo: ReleaseRepository,
    bundle: Path,
    tmp_path: Path,
) -> None:
    # The device is another product than the releases it trusts are for.
    service = await services(**device_overrides(repo, product="acme-router"))
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)
    result = page.locator("#update-result")

    junk = tmp_path / ".holiday photo.jpg"  # a name the service would refuse: sent as another
    junk.write_bytes(os.urandom(200_000))
    await page.set_input_files("#upload-file", str(junk))
    await page.click("#upload-submit")
    await expect(page.locator("#update-phase")).to_have_text("Update failed")
    reason = last_line(service).removeprefix("update failed: ")
    assert "bundle" in reason, reason
    await expect(result).to_have_text(f"Update failed: {reason}")
    await expect(page.locator("#update-log li").first).to_contain_text(
        "the uploaded file upload.bundle"
    )
    sha256 = hashlib.sha256(junk.read_bytes()).hexdigest()
    await expect(page.locator("#upload-numbers")).to_contain_text(f"SHA-256 {sha256}")

    await page.set_input_files("#upload-file", str(bundle))
    await page.click("#upload-submit")
    await expect(page.locator("#update-log li").first).to_contain_text(bundle.name)
    await expect(page.locator("#update-phase")).to_have_text("Update failed")
    reason = last_line(service).removeprefix("update failed: ")
    assert "acme-router" in reason, reason
    await expect(result).to_have_text(f"Update failed: {reason}")
    await expect(page.locator("#update-progress")).to_have_class("failed")

    # A file over the limit is refused by /upload itself (413), with the reason.
    service.change_settings({"max_upload_bytes": 1000}, by="the test")
    await page.click("#upload-submit")
    await expect(page.locator("#upload-message")).to_have_text(
        f"The upload failed: 413 Payload Too Large: the body is {bundle.stat().st_size} bytes; "
        "the upload limit is 1000 bytes"
    )
    assert not any(service.uploads.directory.iterdir())


async def test_a_second_update_while_one_runs(
    page: Page, browser: Browser, services: ServiceFactory, tmp_path: Path
) -> None:
    repo = big_release(tmp_path, "1.1.0", size=3 * MIB)
    bundle = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", bundle)
    data = bundle.read_bytes()
    half = len(data) // 2
    go_on = asyncio.Event()

    async def slow_file(request: web.Request) -> web.StreamResponse:
        """Half the bundle, then nothing until the test says so."""
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[:half])
        await go_on.wait()
        await response.write(data[half:])
        await response.write_eof()
        return response

    service = await services(**device_overrides(repo))
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)
    await record(page, "#update-progress", "fraction")
    await record(page, "#update-log", "children")
    async with lan_server([web.get("/u.bundle", slow_file)]) as (base, _):
        await page.fill("#url-input", f"{base}/u.bundle")
        await page.click("#url-submit")
        message = page.locator("#url-message")
        await expect(message).to_contain_text("The update is starting")
        await expect(page.locator("#update-phase")).to_have_text("Installing into slot B…")
        await expect(page.locator("#update-numbers")).to_contain_text(" of 3.00 MiB")
        await expect(page.locator("#update-numbers")).to_contain_text(" left")
        # The service's progress line for people (ext `progress`), not the log's last line.
        await expect(page.locator("#update-details")).to_have_text(
            re.compile(r"^installing into slot B: .+ of 3\.0 MiB")
        )
        await page.locator("#url-input").blur()
        await snap(page, "update-progress.png")

        await page.click("#url-submit")
        await expect(message).to_have_text("Update procedure already running")

        # A page opened now shows the log so far, then follows the update.
        later = await (await browser.new_context()).new_page()
        await open_page(later, service.http_port)
        await log_in(later, ADMIN)
        await expect(later.locator("#update-phase")).to_contain_text("Installing into slot B")
        job = service.updates.job
        assert job is not None
        await expect(later.locator("#update-log li")).to_have_count(len(job.lines))
        go_on.set()
        await expect(later.locator("#update-result")).to_have_text("Installed; reboot to start it.")
        await later.context.close()
        await expect(page.locator("#update-result")).to_have_text("Installed; reboot to start it.")
        await expect(page.locator("#update-numbers")).to_contain_text("(100 %)")

    progress = [p for p in await recorded(page, "#update-progress") if p is not None]
    assert progress == sorted(progress)
    assert progress[-1] == 1
    assert any(0.3 < p < 0.7 for p in progress), f"the bar did not show the halfway: {progress}"
    counts = await recorded(page, "#update-log")
    job = service.updates.job
    assert job is not None
    assert counts == sorted(counts), "the log only grows"
    assert counts[-1] == len(job.lines)
    assert len(set(counts) - {0}) >= 3, f"the log came in one go, not line by line: {counts}"
