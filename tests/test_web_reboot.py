"""The whole cycle in the browser against a real ``sysupd serve`` process: upload the demo bundle,
watch it install, let the service reboot itself (re-execute) into the new slot, and see the page
reconnect and log in again by itself, and say which version now runs."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.procs import ServeProcess, write_config
from tests.web import WEB, log_in, open_page, record, recorded

pytest_plugins = ["tests.web"]
pytestmark = WEB


async def test_the_page_follows_the_service_through_its_reboot(page: Page, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", event_interval_s=0.2, auto_reboot_delay_s=1)
    serve = ServeProcess(tmp_path / "state", config)
    await serve.start()
    try:
        password = next(line for line in serve.stdout_lines if "with password" in line).split()[-1]
        bundle = next(
            line.strip() for line in serve.stdout_lines if line.strip().endswith(".bundle")
        )
        assert Path(bundle).name == "sysupd-demo-1.1.0.bundle"
        await open_page(page, serve.http_port)
        await log_in(page, ("admin", password))
        await expect(page.locator("#info-version")).to_have_text("0.0.0")
        await expect(page.locator("#info-slot")).to_have_text("slot A")
        await record(page, "#conn-banner", "hidden")
        await record(page, "#reboot-countdown", "text")

        await page.set_input_files("#upload-file", bundle)
        await page.click("#upload-submit")
        await expect(page.locator("#update-result")).to_have_text("Installed; reboot to start it.")
        await serve.wait_for_line("sysupd listening")  # the process re-executed itself

        banner = page.locator("#new-version-banner")
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("Now running 1.1.0 in slot B")
        await expect(page.locator("#info-version")).to_have_text("1.1.0")
        await expect(page.locator("#info-slot")).to_have_text("slot B")
        await expect(page.locator("#info-boot")).to_have_attribute("data-status", "good")
        await expect(page.locator("#conn-state")).to_have_text("Connected")
        await expect(page.locator("#conn-banner")).to_be_hidden()
        await expect(page.locator("#login-section")).to_be_hidden()
        await expect(page.locator("#info-reboot-required")).to_have_text("no")
        await expect(page.locator("#update-result")).to_contain_text(
            "Update confirmed: version 1.1.0 booted in slot B"
        )
        assert False in await recorded(page, "#conn-banner"), "the reconnecting banner was shown"
        countdown = await recorded(page, "#reboot-countdown")
        assert any(text.startswith("Reboot in") for text in countdown), countdown
    finally:
        assert await serve.stop() == 0
        serve.kill()
