"""With a certificate configured, both listeners speak TLS (wss and https)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from sysupd.config import build_config
from tests.certs import write_self_signed
from tests.client import WsClient
from tests.conftest import ADMIN, ServiceFactory, test_config_values


def test_tls_defaults_to_the_contract_ports(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    values = test_config_values(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key))
    del values["ws_port"], values["http_port"]
    config = build_config(values)
    assert (config.ws_port, config.http_port) == (5184, 5185)


async def test_wss_and_https(
    start_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cert, key = write_self_signed(tmp_path)
    service = await start_service(tls_cert_file=str(cert), tls_key_file=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    ws = await http.ws_connect(f"wss://127.0.0.1:{service.ws_port}/websocket", ssl=context)
    client = WsClient(ws)
    await client.login(*ADMIN)
    assert (await client.call("sys", "info"))["system_id"] == service.system_id
    await client.close()
    reply = await http.get(
        f"https://127.0.0.1:{service.http_port}/api/sys/info",
        headers={"Authorization": aiohttp.encode_basic_auth(*ADMIN)},
        ssl=context,
    )
    assert reply.status == 200
