"""Helpers for offline updates through the API: a trusted device service, uploads, a LAN server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sysupd.release.repository import ReleaseRepository
from tests.client import WsClient
from tests.releases import PRODUCT

__all__ = ["device_overrides", "lan_server", "upload", "wait_final"]


def device_overrides(repo: ReleaseRepository, **extra: Any) -> dict[str, Any]:
    """Settings of a device trusting ``repo``, with quick events and no automatic reboot."""
    return {
        "product": PRODUCT,
        "trust_root": str(repo.path / "metadata" / "1.root.json"),
        "event_interval_s": 0.1,
        "auto_reboot": False,
        **extra,
    }


async def upload(
    http: aiohttp.ClientSession, client: WsClient, http_port: int, data: bytes, name: str
) -> dict[str, Any]:
    """``sys/upload_file`` then ``POST /upload`` of ``data`` as ``name``."""
    grant = await client.call("sys", "upload_file")
    auth = aiohttp.encode_basic_auth(grant["upload_user"], grant["upload_pass"])
    async with http.post(
        f"http://127.0.0.1:{http_port}/upload?filename={name}",
        data=data,
        headers={"Authorization": auth, "Content-Type": "application/octet-stream"},
    ) as reply:
        assert reply.status == 200, await reply.text()
        result: dict[str, Any] = await reply.json()
        return result


async def wait_final(
    client: WsClient, timeout: float = 30
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The running ``sys/update_now`` events, then the final one."""
    running = []
    while True:
        event = (await client.next_event("sys/update_now", timeout))["args"]
        if event["update_running"]:
            running.append(event)
        else:
            return running, event


@asynccontextmanager
async def lan_server(routes: list[web.RouteDef]) -> AsyncIterator[tuple[str, list[str]]]:
    """A web server on 127.0.0.1; yields its base URL and the paths it was asked for."""
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def file_route(path: str, file: Path) -> web.RouteDef:
    """Serve ``file`` at ``path`` (with Range support, as static servers do)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(file)

    return web.get(path, handler)


__all__ += ["file_route"]
