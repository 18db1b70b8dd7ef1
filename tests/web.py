"""The browser tests' fixtures and helpers: Debian's Chromium driven by Playwright's async API,
against real services (in-process on the test's event loop, or ``sysupd serve`` processes).

Test modules load this file as a plugin (``pytest_plugins = ["tests.web"]``) for its fixtures and
import its helpers; so that pytest does not warn about a plugin imported before it could rewrite
its asserts, it is left alone: PYTEST_DONT_REWRITE.

All browser tests run on the session's event loop (``pytestmark = WEB``), so that one browser
serves them all; each test gets a fresh browser context (no cookies, no sessionStorage).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.client import WsClient
from tests.conftest import started_services, wait_until
from tests.releases import PRODUCT, make_tree

__all__ = [
    "WEB",
    "ClientFactory",
    "ServiceFactory",
    "big_release",
    "browser",
    "clients",
    "http_client",
    "log_in",
    "open_page",
    "page",
    "page_until",
    "page_url",
    "record",
    "recorded",
    "services",
    "snap",
    "throttle_uploads",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = "SYSUPD_SCREENSHOTS"
"""When set to a directory, the tests save their screenshots there."""

WEB = pytest.mark.asyncio(loop_scope="session")
"""Every browser test runs on the session's loop, where the shared browser lives."""

expect.set_options(timeout=15_000)

ServiceFactory = Callable[..., Awaitable[Service]]
ClientFactory = Callable[..., Awaitable[WsClient]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the whole test run."""
    if not CHROMIUM.exists():
        pytest.fail("install Debian's chromium (scripts/test does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A tab in a fresh browser context; the test fails if the page's code raised or if the
    Content-Security-Policy refused anything of the page's own."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    tab = await context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    try:
        yield tab
    finally:
        await context.close()
    assert not problems, problems


@pytest_asyncio.fixture(loop_scope="session")
async def services(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start services (with users ADMIN and USER) on this loop; all stop at the end."""
    async with started_services(tmp_path) as start:
        yield start


@pytest_asyncio.fixture(loop_scope="session")
async def http_client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session on this loop."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def clients(http_client: aiohttp.ClientSession) -> AsyncIterator[ClientFactory]:
    """API clients next to the page (logged in as ``login`` when given)."""
    opened: list[WsClient] = []

    async def open_client(service: Service, login: tuple[str, str] | None = None) -> WsClient:
        ws = await http_client.ws_connect(f"http://127.0.0.1:{service.ws_port}/websocket")
        client = WsClient(ws)
        opened.append(client)
        if login is not None:
            await client.login(*login)
        return client

    yield open_client
    for client in opened:
        await client.close()


def page_url(http_port: int) -> str:
    """The page's address on the plain HTTP listener."""
    return f"http://127.0.0.1:{http_port}/"


async def open_page(page: Page, http_port: int) -> None:
    """Load the page and wait for its login form."""
    await page.goto(page_url(http_port))
    await expect(page.locator("#login-section")).to_be_visible()


async def log_in(page: Page, user: tuple[str, str]) -> None:
    """Log in through the form and wait until the system's version is shown."""
    await page.fill("#login-user", user[0])
    await page.fill("#login-pass", user[1])
    await page.click("#login-submit")
    await expect(page.locator("#app-section")).to_be_visible()
    await expect(page.locator("#info-version")).not_to_have_text("…")


async def snap(page: Page, name: str, selector: str | None = None) -> None:
    """Save a screenshot of what the window shows (or of the element ``selector``) as ``name``,
    when SYSUPD_SCREENSHOTS names a folder."""
    folder = os.environ.get(SCREENSHOTS)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    # Let the fonts and a progress bar's transition settle: the picture is for people.
    await page.evaluate("document.fonts.ready")
    await page.wait_for_timeout(300)
    path = str(Path(folder) / name)
    if selector is None:
        await page.screenshot(path=path)
    else:
        await page.locator(selector).screenshot(path=path)


async def record(page: Page, selector: str, reader: str) -> None:
    """Note what ``reader`` reads of ``selector`` (``children``: how many; ``fraction``: a
    progress bar's value/max, ``None`` while indeterminate; ``text``; ``hidden``) now and at every
    change of its subtree and attributes, in order, for ``recorded``: what the person saw, step by
    step. The readers are fixed in the page's script, as its CSP rightly forbids eval."""
    await page.evaluate(
        """([selector, reader]) => {
            const el = document.querySelector(selector);
            const read = {
                children: () => el.children.length,
                fraction: () => (el.hasAttribute("value") ? el.value / el.max : null),
                text: () => el.textContent,
                hidden: () => el.hidden,
            }[reader];
            window.__seen = window.__seen || {};
            const seen = (window.__seen[selector] = [read()]);
            new MutationObserver(() => seen.push(read())).observe(el, {
                subtree: true, childList: true, attributes: true, characterData: true,
            });
        }""",
        [selector, reader],
    )


async def recorded(page: Page, selector: str) -> list[Any]:
    """The values ``record`` noted for ``selector`` so far."""
    values: list[Any] = await page.evaluate("(s) => window.__seen[s]", selector)
    return values


async def page_until(page: Page, function: str, what: str, timeout_s: float = 30) -> None:
    """Poll a JavaScript function of no arguments until it returns true (``wait_for_function``
    would need eval, which the page's CSP forbids)."""
    await wait_until(lambda: page.evaluate(function), timeout_s, what)


async def throttle_uploads(page: Page, bytes_per_s: int) -> None:
    """Make the browser send request bodies at ``bytes_per_s`` (Chromium's network emulation)."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_s,
        },
    )


def big_release(directory: Path, version: str, size: int) -> ReleaseRepository:
    """A repository with one tree release whose payload is ``size`` random bytes (so that an
    update lasts long enough to be watched)."""
    repo = ReleaseRepository.init(directory / "repo", PRODUCT)
    tree = make_tree(directory / f"tree-{version}", version, size=size)
    repo.add_release(version, tree=tree, compress="zstd", chunk_size=65536)
    return repo
