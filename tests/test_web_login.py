"""The web page's sessions: logging in (and the server's word when it fails), the token chain
across a service restart, a session that ends (expired token, changed password), and the page
on a phone-sized screen and by keyboard."""

from __future__ import annotations

from pathlib import Path

from aiohttp import WSCloseCode
from playwright.async_api import Page, expect

from sysupd.system.clock import ManualClock
from tests.conftest import ADMIN, USER, boot_settled
from tests.web import WEB, ServiceFactory, log_in, open_page, snap

pytest_plugins = ["tests.web"]
pytestmark = WEB

SESSION_ENDED = "Your session has ended; please log in again"


async def test_login_shows_the_servers_message_then_the_system(
    page: Page, services: ServiceFactory
) -> None:
    service = await services()
    await boot_settled(service)
    await open_page(page, service.http_port)
    await snap(page, "login.png")

    await page.fill("#login-user", ADMIN[0])
    await page.fill("#login-pass", "not-the-password")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("wrong user name or password")
    await expect(page.locator("#app-section")).to_be_hidden()

    await log_in(page, ADMIN)
    await expect(page.locator("#login-section")).to_be_hidden()
    await expect(page.locator("#info-version")).to_have_text("0.0.0")
    await expect(page.locator("#info-slot")).to_have_text("slot A")
    await expect(page.locator("#info-boot")).to_have_attribute("data-status", "good")
    await expect(page.locator("#info-system-id")).to_have_text(service.system_id)
    await expect(page.locator("#user-name")).to_have_text(f"{ADMIN[0]} (administrator)")
    await expect(page.locator("#conn-state")).to_have_text("Connected")

    # Another tab has a session of its own (sessionStorage is per tab); a reload keeps it.
    other = await page.context.new_page()
    await open_page(other, service.http_port)
    await other.close()
    await page.reload()
    await expect(page.locator("#app-section")).to_be_visible()
    await expect(page.locator("#conn-state")).to_have_text("Connected")
    await expect(page.locator("#user-name")).to_have_text(f"{ADMIN[0]} (administrator)")

    await page.click("#logout")
    await expect(page.locator("#login-notice")).to_have_text("You have logged out.")
    await expect(page.locator("#app-section")).to_be_hidden()
    await page.reload()
    await expect(page.locator("#login-section")).to_be_visible()


async def test_a_locked_out_address_is_told_so(page: Page, services: ServiceFactory) -> None:
    service = await services(lockout_loopback=True)
    await open_page(page, service.http_port)
    await page.fill("#login-user", USER[0])
    problem = page.locator("#login-error")
    for attempt in range(5):
        await page.fill("#login-pass", f"wrong-{attempt}")
        await page.click("#login-submit")
        await expect(problem).to_have_text("Login failed: wrong user name or password")
        await expect(page.locator("#login-submit")).to_be_enabled()
        await page.evaluate("document.getElementById('login-error').textContent = ''")
    await page.fill("#login-pass", USER[1])
    await page.click("#login-submit")
    await expect(problem).to_contain_text("Locked out: too many failed logins from 127.0.0.1")
    await expect(page.locator("#app-section")).to_be_hidden()


async def test_an_expired_token_shows_the_login_form(page: Page, services: ServiceFactory) -> None:
    clock = ManualClock()
    service = await services(clock=clock)
    await open_page(page, service.http_port)
    await log_in(page, USER)

    clock.advance(901)  # past the 900 s a token lives without a request
    await page.click("#status-refresh")
    await expect(page.locator("#login-section")).to_be_visible()
    await expect(page.locator("#login-notice")).to_have_text(f"{SESSION_ENDED}.")
    await expect(page.locator("#app-section")).to_be_hidden()
    # The user name is kept, so only the password is needed.
    await expect(page.locator("#login-user")).to_have_value(USER[0])
    await expect(page.locator("#login-pass")).to_be_focused()
    await page.fill("#login-pass", USER[1])
    await page.press("#login-pass", "Enter")
    await expect(page.locator("#app-section")).to_be_visible()
    await expect(page.locator("#login-notice")).to_be_hidden()


async def test_a_changed_password_ends_the_session_at_the_reconnect(
    page: Page, services: ServiceFactory
) -> None:
    service = await services()
    await open_page(page, service.http_port)
    await log_in(page, USER)

    service.users.set_password(USER[0], "a-new-secret-2")
    for session in list(service.sessions):  # the socket drops; the page logs in with its token
        await session.close(WSCloseCode.GOING_AWAY)
    await expect(page.locator("#login-notice")).to_have_text(f"{SESSION_ENDED}.")
    await expect(page.locator("#app-section")).to_be_hidden()
    await expect(page.locator("#conn-banner")).to_be_hidden()


async def test_the_page_comes_back_logged_in_after_a_service_restart(
    page: Page, services: ServiceFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    service = await services(state_dir=state)
    await open_page(page, service.http_port)
    await log_in(page, ADMIN)
    port = service.http_port

    await service.stop()
    banner = page.locator("#conn-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("The service is restarting or unreachable — reconnecting…")
    await expect(page.locator("#conn-state")).to_have_text("Reconnecting…")

    again = await services(state_dir=state, http_port=port)
    await expect(banner).to_be_hidden()
    await expect(page.locator("#conn-state")).to_have_text("Connected")
    await expect(page.locator("#app-section")).to_be_visible()
    await expect(page.locator("#login-section")).to_be_hidden()
    await expect(page.locator("#info-system-id")).to_have_text(again.system_id)
    # It is a new session on the new service: calls work.
    await page.click("#log-refresh")
    await expect(page.locator("#service-log")).to_contain_text("token login: user 'root'")


async def test_phone_sized_and_by_keyboard(page: Page, services: ServiceFactory) -> None:
    service = await services()
    await page.set_viewport_size({"width": 375, "height": 812})
    await open_page(page, service.http_port)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375

    # The first field has the focus, or the first Tab takes it there.
    if not await page.evaluate("document.activeElement?.id === 'login-user'"):
        await page.keyboard.press("Tab")
    await expect(page.locator("#login-user")).to_be_focused()
    await page.keyboard.type(ADMIN[0])
    await page.keyboard.press("Tab")
    await expect(page.locator("#login-pass")).to_be_focused()
    await page.keyboard.type(ADMIN[1])
    await page.keyboard.press("Enter")
    await expect(page.locator("#app-section")).to_be_visible()
    await expect(page.locator("#settings-fields .field").first).to_be_visible()
    await page.click("#log-refresh")
    await expect(page.locator("#service-log")).to_contain_text("login: user 'root'")

    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    # Every control the administrator has is on the screen's width, and can be reached.
    controls = page.locator("main button:visible, main input:visible, main textarea:visible")
    for index in range(await controls.count()):
        control = controls.nth(index)
        await control.scroll_into_view_if_needed()
        box = await control.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 375, await control.evaluate("e => e.outerHTML")
    await page.evaluate("window.scrollTo(0, 0)")
    await snap(page, "phone.png")
