"""What a non-administrator's page shows: status and an update's progress, but no update, reboot,
settings or log controls; and when the page's code calls an administrator's call anyway, the
service's 403 is shown."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from playwright.async_api import Page, expect

from tests.conftest import ADMIN, USER
from tests.offline import device_overrides, upload
from tests.releases import make_repo
from tests.web import WEB, ClientFactory, ServiceFactory, log_in, open_page

pytest_plugins = ["tests.web"]
pytestmark = WEB


async def test_a_user_sees_progress_but_no_controls(
    page: Page,
    services: ServiceFactory,
    clients: ClientFactory,
    http_client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, "1.1.0")
    bundle = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", bundle)
    service = await services(**device_overrides(repo, auto_reboot=True, auto_reboot_delay_s=600))
    await open_page(page, service.http_port)
    await log_in(page, USER)
    await expect(page.locator("#user-name")).to_have_text(f"{USER[0]} (user)")
    for hidden in ("#update-controls", "#reboot-section", "#settings-section", "#log-section"):
        await expect(page.locator(hidden)).to_be_hidden()
    await expect(page.locator("#status-section")).to_be_visible()
    await expect(page.locator("#update-section")).to_be_visible()

    # An administrator updates through the API; the user's page follows it.
    admin = await clients(service, login=ADMIN)
    stored = await upload(http_client, admin, service.http_port, bundle.read_bytes(), "u.bundle")
    started = await admin.call("sys", "update_now", {"file_upload": stored["file_upload"]})
    assert started["result"] == "success"
    await expect(page.locator("#update-result")).to_have_text("Installed; reboot to start it.")
    await expect(page.locator("#update-numbers")).to_contain_text("(100 %)")
    job = service.updates.job
    assert job is not None
    await expect(page.locator("#update-log li")).to_have_count(len(job.lines))
    # The automatic reboot is counted down for the user too, who cannot cancel it.
    await expect(page.locator("#reboot-countdown")).to_contain_text("Reboot in")
    await expect(page.locator("#reboot-cancel")).to_be_hidden()
    for hidden in ("#update-controls", "#reboot-section", "#settings-section", "#log-section"):
        await expect(page.locator(hidden)).to_be_hidden()

    outcome = await page.evaluate("sysupd.call('sys', 'update_now', {})")
    assert outcome["ok"] is False
    notice = page.locator("#notice")
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("403 Forbidden: sys/update_now is for administrators only")
    assert service.reboots.plan is not None, "nothing the user did changed the plan"
