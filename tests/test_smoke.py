"""The smallest end-to-end path: log in over WebSocket and ask who the system is."""

from __future__ import annotations

from sysupd.api.service import Service
from tests.conftest import ADMIN, ClientFactory


async def test_login_and_info(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    info = await client.call("sys", "info")
    assert info["system_id"] == service.system_id
    assert info["system_version"]
