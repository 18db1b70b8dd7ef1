"""An online update from the web page: check the update server (real nginx serving a published
release repository), see what is available, and install it."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.conftest import ADMIN
from tests.online import online_overrides, serve_repo
from tests.releases import make_repo
from tests.web import WEB, ServiceFactory, log_in, open_page

pytest_plugins = ["tests.web"]
pytestmark = WEB


async def test_check_then_install_from_the_update_server(
    page: Page, services: ServiceFactory, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "1.1.0")
    repo.publish()
    with serve_repo(repo, tmp_path / "server") as url:
        service = await services(**online_overrides(repo, url))
        await open_page(page, service.http_port)
        await log_in(page, ADMIN)
        info = page.locator("#online-info")
        await expect(info).to_have_text("No update check has completed yet.")
        install = page.locator("#online-install")
        await expect(install).to_be_hidden()

        await page.click("#check-button")
        await expect(info).to_contain_text("Version 1.1.0 is available")
        await expect(page.locator("#online-checked")).to_contain_text("Last checked")
        await expect(install).to_be_visible()
        await expect(install).to_contain_text("Install version 1.1.0 (")
        await install.click()
        await expect(page.locator("#update-result")).to_have_text("Installed; reboot to start it.")
        await expect(page.locator("#update-log li").first).to_contain_text("the update server")
    slot = service.config.state_dir / "slots" / "B" / "etc" / "version"
    assert slot.read_text() == "1.1.0\n"
