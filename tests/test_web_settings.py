"""Settings on the web page: a change is saved (only what changed is sent), and a bad value is
refused with the service's reason next to the form, changing nothing."""

from __future__ import annotations

import dataclasses

from playwright.async_api import Page, expect

from tests.conftest import ADMIN, wait_until
from tests.web import WEB, ServiceFactory, log_in, open_page, snap

pytest_plugins = ["tests.web"]
pytestmark = WEB


async def test_settings_are_saved_and_a_bad_value_changes_nothing(
    page: Page, services: ServiceFactory
) -> None:
    service = await services()
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)
    field = page.locator("#setting-update_check_interval_s")
    await expect(field).to_have_value("86400")
    await expect(page.locator("#setting-auto_reboot")).to_be_checked()
    await expect(page.locator("#setting-fetch_networks")).to_have_value(
        "\n".join(service.settings.fetch_networks)
    )
    # What the device is comes from the configuration file: shown, not editable.
    for name in ("trust_root", "reboot_command", "slots", "fetch_networks"):
        await expect(page.locator(f"#setting-{name}")).to_be_disabled()
        await expect(page.locator(f"#setting-{name}-help")).to_contain_text("Read-only")
    await expect(field).to_be_enabled()

    await field.fill("3600")
    await page.click("#settings-save")
    await expect(page.locator("#settings-message")).to_have_text("Saved: update_check_interval_s.")
    await wait_until(lambda: service.settings.update_check_interval_s == 3600, 30, "it is saved")
    assert any(
        line.endswith("settings changed by root: update_check_interval_s")
        for line in service.log.lines()
    ), "only the changed setting was sent"
    await expect(field).to_have_value("3600")  # as the service lists it now

    before = dataclasses.asdict(service.settings)
    await page.fill("#setting-auto_reboot_delay_s", "-5")
    await page.locator("#setting-auto_reboot").uncheck()
    await page.click("#settings-save")
    details = "setting 'auto_reboot_delay_s' must be between 0 and 86400"
    await expect(page.locator("#settings-error")).to_contain_text(details)
    bad = page.locator("#setting-auto_reboot_delay_s")
    await expect(bad).to_have_attribute("aria-invalid", "true")
    await expect(bad).to_be_focused()
    await expect(page.locator("#setting-auto_reboot_delay_s-error")).to_contain_text(details)
    await expect(page.locator("#settings-message")).to_be_hidden()
    assert dataclasses.asdict(service.settings) == before, "nothing changed"
    await snap(page, "settings.png", "#settings-section")

    await page.click("#settings-undo")
    await expect(bad).to_have_value("10")
    await expect(page.locator("#setting-auto_reboot")).to_be_checked()
    await expect(page.locator("#settings-error")).to_be_hidden()
