"""WebSocket upgrades from another site's page are refused on every listener; the page's own
origin, and clients that send no Origin, work on both (``/websocket`` on the HTTP listener is
ext)."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from sysupd.api.service import Service
from tests.client import WsClient
from tests.conftest import ADMIN, ServiceFactory


def _listeners(service: Service) -> dict[str, int]:
    return {"ws": service.ws_port, "http": service.http_port}


@pytest.mark.parametrize("listener", ["ws", "http"])
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["other-site", "null", "other-port", "fetch-metadata"],
)
async def test_cross_site_upgrades_are_refused_with_a_reason(
    service: Service, http: aiohttp.ClientSession, listener: str, headers: dict[str, str]
) -> None:
    port = _listeners(service)[listener]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"http://127.0.0.1:{port}/websocket", headers=headers)
    assert refused.value.status == 403
    assert any("websocket from 127.0.0.1 refused" in line for line in service.log.lines())


@pytest.mark.parametrize("listener", ["ws", "http"])
async def test_the_pages_own_origin_works_on_both_listeners(
    service: Service, http: aiohttp.ClientSession, listener: str
) -> None:
    port = _listeners(service)[listener]
    page_origin = {"Origin": f"http://127.0.0.1:{service.http_port}"}
    ws = await http.ws_connect(f"http://127.0.0.1:{port}/websocket", headers=page_origin)
    client = WsClient(ws)
    await client.login(*ADMIN)
    assert (await client.call("sys", "info"))["system_id"] == service.system_id
    await client.close()


async def test_no_origin_is_a_command_line_client_and_passes(
    service: Service, http: aiohttp.ClientSession
) -> None:
    ws = await http.ws_connect(f"http://127.0.0.1:{service.http_port}/websocket")
    client = WsClient(ws)
    await client.login(*ADMIN)
    await client.close()


@pytest.mark.parametrize("listener", ["ws", "http"])
async def test_a_rebound_name_is_refused_though_it_matches_the_host_header(
    service: Service, http: aiohttp.ClientSession, listener: str
) -> None:
    """DNS rebinding: a page of evil.example, whose name now points at the device, opens a
    socket to "itself" and would guess passwords through the visitor's browser."""
    port = _listeners(service)[listener]
    headers = {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"http://127.0.0.1:{port}/websocket", headers=headers)
    assert refused.value.status == 403
    async with http.post(
        f"http://127.0.0.1:{service.http_port}/api/rpc/auth",
        json={"username": "admin", "password": "guess"},
        headers={**headers, "Host": f"evil.example:{service.http_port}"},
    ) as reply:
        assert reply.status == 403


async def test_the_page_by_the_devices_names_works(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    service = await start_service(server_names=["updates.lan"])
    port = service.http_port
    for name in ("localhost", "updates.lan", socket.gethostname()):
        headers = {"Origin": f"http://{name}:{port}", "Host": f"{name}:{port}"}
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/websocket", headers=headers)
        client = WsClient(ws)
        await client.login(*ADMIN)
        await client.close()
