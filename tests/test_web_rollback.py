"""A rolled-back update on the web page: the banner says so, and why."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from sysupd.api.service import Service
from sysupd.sources.bundlefile import BundleFile
from tests.conftest import ADMIN, boot_settled
from tests.engines import make_engine
from tests.releases import PRODUCT, make_repo
from tests.web import WEB, ServiceFactory, log_in, open_page, snap

pytest_plugins = ["tests.web"]
pytestmark = WEB


async def rolled_back(tmp_path: Path, services: ServiceFactory) -> Service:
    """A device that installed 1.1.0 into slot B, whose health check then failed there, and that
    is back in slot A (as tests/test_boot_trial_service.py makes it)."""
    repo = make_repo(tmp_path, "1.1.0")
    bundle = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", bundle)
    state = tmp_path / "state"
    engine = make_engine(state, repo)
    engine.start()
    engine.confirm(True, "")
    engine.install(BundleFile(bundle))
    settings = {
        "product": PRODUCT,
        "trust_root": str(repo.path / "metadata" / "1.root.json"),
        "health_check_command": "sh -c 'echo database unreachable; exit 3'",
        "auto_reboot_delay_s": 0,
        "reboot_action": "exit",
    }
    trial = await services(state_dir=state, **settings)
    assert await boot_settled(trial) == "failed"
    await trial.wait_exit_requested()  # the reboot it scheduled
    await trial.stop()
    after = await services(state_dir=state, **{**settings, "health_check_command": ""})
    assert await boot_settled(after) == "rolled back"
    return after


async def test_a_rolled_back_update_shows_the_banner_with_the_reason(
    page: Page, services: ServiceFactory, tmp_path: Path
) -> None:
    service = await rolled_back(tmp_path, services)
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)

    banner = page.locator("#rollback-banner")
    await expect(banner).to_be_visible()
    await expect(page.locator("#rollback-title")).to_have_text(
        "The update was rolled back: now running 0.0.0 in slot A."
    )
    last = service.updates.status()["last_result"]
    assert last is not None
    assert last["result"] == "rolled back"
    assert "failed its health check" in last["detail"]
    await expect(page.locator("#rollback-reason")).to_have_text(f"Why: {last['detail']}")
    await expect(page.locator("#info-boot")).to_have_attribute("data-status", "rolled back")
    await expect(page.locator("#info-version")).to_have_text("0.0.0")
    await expect(page.locator("#update-result")).to_have_text(
        f"The last update was rolled back: {last['detail']}"
    )
    await snap(page, "rolled-back.png")
