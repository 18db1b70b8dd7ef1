"""Benchmark of the web page: its first load, and the time from an event leaving the service to the
page showing it; each against a bare aiohttp baseline measured in the same run and browser.

Run: ``.venv/bin/python bench/web.py [--loads N] [--events M] [--keep]``

1. A fresh ``sysupd serve`` (127.0.0.1, kernel-chosen ports, TLS off: the loopback listener a
   browser on the machine itself uses) with an administrator. Debian's Chromium, headless, driven
   by Playwright, as in the browser tests.
2. First load, N times, each in a new browser context (an empty cache, as a first visit): from
   navigation start to the ``load`` event (the page's HTML, CSS and scripts), and to the login form
   being shown (the page's scripts ran). Baseline: the same HTML and files served as they are by a
   bare ``aiohttp.web`` route and static route, to its ``load`` event.
3. Events, M times: the page is logged in as the administrator; the benchmark schedules a reboot
   with a new delay (``sys/reboot`` over its own WebSocket session), the service pushes the
   ``sys/reboot`` event to every session, and a MutationObserver in the page stamps the moment the
   page's text changes (``performance.timeOrigin + performance.now()``, the same wall clock as
   this process). "Event to page" is that stamp minus the moment a second, bare subscriber session
   of this process received the same event (the event leaving the service, plus one loopback hop
   and Python's wake-up: so the figure slightly flatters the page); "call to page" is measured
   from the moment the call was sent. Baseline: a bare aiohttp WebSocket server that pushes a
   message to a bare page which sets an element's text, triggered the same way.
4. Median and p99 of each, and the ratios to the baselines. No target is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from _harness import HOST, run_main, workdir
from _report import machine, revision, table
from _service import ADMIN, KDF, start_serve, stop_serve
from _wsapi import WsApi
from sysupd.web.assets import PageAssets

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATIC = Path(__file__).resolve().parent.parent / "src" / "sysupd" / "web" / "static"
_TIME_LIMIT_S = 900

_STAMP_JS = """(id) => {
  window.__stamps = [];
  const target = document.getElementById(id);
  new MutationObserver(() => {
    window.__stamps.push(performance.timeOrigin + performance.now());
  }).observe(target, {childList: true, characterData: true, subtree: true});
}"""

_BARE_PAGE = """<!doctype html><html><body><p id="out">waiting</p><script>
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onmessage = (m) => { const e = JSON.parse(m.data); document.getElementById("out").textContent =
  `Reboot in ${e.args.reboot_delay_seconds} s`; };
ws.onopen = () => { document.body.dataset.ready = "1"; };
</script></body></html>"""


def p99(values: list[float]) -> float:
    """The 99th percentile (the largest value when there are fewer than 100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), p99(values)


async def navigation_ms(page: Page) -> float:
    """Navigation start to the end of the load event, from the page's own timing."""
    entry = await page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.loadEventEnd - n.startTime; }"
    )
    return float(entry)


async def first_loads(
    browser: Browser, url: str, runs: int, *, sysupd: bool
) -> dict[str, list[float]]:
    loads: list[float] = []
    shown: list[float] = []
    for _ in range(runs):
        context = await browser.new_context()
        page = await context.new_page()
        started = time.monotonic()
        await page.goto(url, wait_until="load")
        if sysupd:
            await page.locator("#login-form").wait_for(state="visible", timeout=30_000)
            shown.append((time.monotonic() - started) * 1000)
        loads.append(await navigation_ms(page))
        await context.close()
    return {"load": loads, "shown": shown}


@asynccontextmanager
async def bare_server() -> AsyncIterator[tuple[str, list[web.WebSocketResponse]]]:
    """The baseline: the page's files as they are, and a WebSocket that pushes what it is told."""
    sockets: list[web.WebSocketResponse] = []

    async def bare(request: web.Request) -> web.Response:
        return web.Response(text=_BARE_PAGE, content_type="text/html")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sockets.append(socket)
        async for _ in socket:
            pass
        return socket

    page = PageAssets().page.body  # the same HTML, its asset links filled in

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/bare", bare)
    app.router.add_get("/ws", ws)
    app.router.add_static("/static", STATIC)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{HOST}:{port}", sockets
    finally:
        await runner.cleanup()


async def page_events(
    browser: Browser, base: str, ws_port: int, runs: int
) -> tuple[list[float], list[float]]:
    """Event-to-page and call-to-page latencies (ms) of the sysupd page."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base + "/")
    await page.fill("#login-user", ADMIN[0])
    await page.fill("#login-pass", ADMIN[1])
    await page.click("#login-submit")
    await page.locator("#app-section").wait_for(state="visible", timeout=30_000)
    caller = await WsApi.open(ws_port)
    watcher = await WsApi.open(ws_port)
    await page.evaluate(_STAMP_JS, "reboot-live")
    from_event: list[float] = []
    from_call: list[float] = []
    try:
        for i in range(runs):
            await page.evaluate("() => { window.__stamps = []; }")
            sent = time.time() * 1000
            await caller.call("sys", "reboot", {"delay_seconds": 3600 + 7 * i})
            await watcher.next_event("sys/reboot", 10)
            received = time.time() * 1000
            await page.wait_for_function("() => window.__stamps.length > 0", timeout=10_000)
            shown = float(await page.evaluate("() => window.__stamps[0]"))
            from_event.append(shown - received)
            from_call.append(shown - sent)
            await caller.call("sys", "reboot_stop")
            await watcher.next_event("sys/reboot", 10)
            await page.wait_for_function("() => window.__stamps.length > 1", timeout=10_000)
    finally:
        await caller.close()
        await watcher.close()
        await context.close()
    return from_event, from_call


async def bare_events(
    browser: Browser, base: str, sockets: list[web.WebSocketResponse], runs: int
) -> list[float]:
    """Call-to-page latencies (ms) of the bare baseline."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base + "/bare")
    await page.wait_for_function("() => document.body.dataset.ready === '1'")
    await page.evaluate(_STAMP_JS, "out")
    latencies = []
    for i in range(runs):
        await page.evaluate("() => { window.__stamps = []; }")
        sent = time.time() * 1000
        frame = json.dumps({"name": "sys/reboot", "args": {"reboot_delay_seconds": 3600 + 7 * i}})
        for socket in list(sockets):
            await socket.send_str(frame)
        await page.wait_for_function("() => window.__stamps.length > 0", timeout=10_000)
        latencies.append(float(await page.evaluate("() => window.__stamps[0]")) - sent)
    await context.close()
    return latencies


async def measure(options: argparse.Namespace, work: Path) -> None:
    config = work / "sysupd.toml"
    values: dict[str, Any] = {**KDF, "update_check_interval_s": 0, "auto_reboot": False}
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    serve = await start_serve(config, work / "state", work, "web")
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                async with bare_server() as (bare, sockets):
                    page_url = f"http://{HOST}:{serve.http_port}/"
                    await first_loads(browser, page_url, 2, sysupd=True)  # warm the caches
                    ours = await first_loads(browser, page_url, options.loads, sysupd=True)
                    base = await first_loads(browser, bare + "/", options.loads, sysupd=False)
                    event, call = await page_events(
                        browser, f"http://{HOST}:{serve.http_port}", serve.ws_port, options.events
                    )
                    baseline = await bare_events(browser, bare, sockets, options.events)
            finally:
                await browser.close()
    finally:
        stop_serve(serve)
    report(options, ours, base, event, call, baseline)


def report(
    options: argparse.Namespace,
    ours: dict[str, list[float]],
    base: dict[str, list[float]],
    event: list[float],
    call: list[float],
    baseline: list[float],
) -> None:
    print(f"sysupd web page benchmark — {revision()}")
    print(f"  {machine()}")
    print(f"  Chromium headless (Playwright), {options.loads} first loads, {options.events} events")
    rows = [["metric", "median ms", "p99 ms", "baseline median", "ratio"]]
    load_med, load_p99 = summary(ours["load"])
    base_med, _ = summary(base["load"])
    rows.append(
        [
            "first load: to the load event",
            f"{load_med:.1f}",
            f"{load_p99:.1f}",
            f"{base_med:.1f}",
            f"{load_med / base_med:.2f}",
        ]
    )
    shown_med, shown_p99 = summary(ours["shown"])
    rows.append(["first load: login form shown", f"{shown_med:.1f}", f"{shown_p99:.1f}", "", ""])
    ev_med, ev_p99 = summary(event)
    rows.append(["event leaving the service to the page", f"{ev_med:.2f}", f"{ev_p99:.2f}", "", ""])
    call_med, call_p99 = summary(call)
    bare_med, _ = summary(baseline)
    rows.append(
        [
            "call sent to the page showing its event",
            f"{call_med:.2f}",
            f"{call_p99:.2f}",
            f"{bare_med:.2f}",
            f"{call_med / bare_med:.2f}",
        ]
    )
    table(rows)
    print(
        "  baselines: the same files from a bare aiohttp static route; a bare WebSocket push to a"
    )
    print("  bare page. 'event leaving the service' is stamped by a second loopback subscriber.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=20, help="first loads of each page")
    parser.add_argument("--events", type=int, default=200, help="events timed")
    parser.add_argument("--workdir", type=Path, help="parent of the work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit("bench/web.py needs Debian's chromium (scripts/system-deps installs it)")

    def body() -> None:
        with workdir(options.workdir, "sysupd-web-", options.keep) as work:
            asyncio.run(measure(options, work))

    return run_main("web", _TIME_LIMIT_S, body)


if __name__ == "__main__":
    sys.exit(main())
