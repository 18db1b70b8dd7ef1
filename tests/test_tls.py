"""TLS by default: a certificate made at the first start (or the configured one) serves wss and
https on the network, while the plain listeners stay on loopback."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.config import build_config
from sysupd.errors import ConfigError, StateError
from sysupd.system.tls import fingerprint
from tests.certs import write_self_signed
from tests.client import WsClient
from tests.conftest import ADMIN, ServiceFactory, test_config_values

AUTH = {"Authorization": aiohttp.encode_basic_auth(*ADMIN)}


def _pin(service: Service) -> aiohttp.Fingerprint:
    assert service.certificate is not None
    return aiohttp.Fingerprint(bytes.fromhex(service.certificate.fingerprint.replace(":", "")))


def test_defaults_are_the_contract_ports_with_plain_on_loopback(tmp_path: Path) -> None:
    values = test_config_values(tmp_path)
    for port in ("ws_port", "http_port", "wss_port", "https_port"):
        del values[port]
    del values["host"]
    config = build_config(values)
    assert (config.ws_port, config.http_port, config.wss_port, config.https_port) == (
        5182,
        5183,
        5184,
        5185,
    )
    assert config.tls is True
    assert config.host == "0.0.0.0"  # noqa: S104 - the default, not a bind
    assert config.plain_host == "127.0.0.1"


def test_each_listener_needs_its_own_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'http_port' and 'https_port' are both 8443"):
        build_config(test_config_values(tmp_path, http_port=8443, https_port=8443))
    # With TLS off its ports are not used, so they cannot clash.
    build_config(test_config_values(tmp_path, tls=False, http_port=8443, https_port=8443))


async def test_first_start_makes_a_certificate_that_later_starts_keep(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    first = await start_service()
    certificate = first.certificate
    assert certificate is not None
    assert certificate.generated
    assert certificate.key_file.stat().st_mode & 0o777 == 0o600
    assert certificate.cert_file.parent == tmp_path / "state" / "tls"
    await first.stop()
    again = await start_service()
    assert again.certificate is not None
    assert not again.certificate.generated
    assert again.certificate.fingerprint == certificate.fingerprint


async def test_wss_and_https_with_the_generated_certificate(
    service: Service, http: aiohttp.ClientSession
) -> None:
    pin = _pin(service)
    ws = await http.ws_connect(f"wss://127.0.0.1:{service.wss_port}/websocket", ssl=pin)
    client = WsClient(ws)
    await client.login(*ADMIN)
    assert (await client.call("sys", "info"))["system_id"] == service.system_id
    await client.close()
    for path in ("/api/sys/info", "/"):
        async with http.get(
            f"https://127.0.0.1:{service.https_port}{path}", headers=AUTH, ssl=pin
        ) as reply:
            assert reply.status == 200
    # The HTTPS listener carries the WebSocket too (ext), so the page needs one address.
    ws = await http.ws_connect(f"wss://127.0.0.1:{service.https_port}/websocket", ssl=pin)
    client = WsClient(ws)
    await client.login(*ADMIN)
    await client.close()


async def test_a_wrong_fingerprint_is_refused_before_anything_is_sent(
    service: Service, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ServerFingerprintMismatch):
        await http.get(
            f"https://127.0.0.1:{service.https_port}/api/sys/info",
            headers=AUTH,
            ssl=aiohttp.Fingerprint(bytes(32)),
        )


async def test_a_configured_certificate_replaces_the_generated_one(
    start_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cert, key = write_self_signed(tmp_path)
    service = await start_service(tls_cert_file=str(cert), tls_key_file=str(key))
    assert not (tmp_path / "state" / "tls").exists()
    context = ssl.create_default_context(cafile=str(cert))
    async with http.get(
        f"https://127.0.0.1:{service.https_port}/api/sys/info", headers=AUTH, ssl=context
    ) as reply:
        assert reply.status == 200
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert service.certificate is not None
    assert service.certificate.fingerprint == fingerprint(der)


async def test_tls_off_serves_plain_only_and_makes_no_certificate(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start_service(tls=False)
    assert service.certificate is None
    assert (service.wss_port, service.https_port) == (0, 0)
    assert service.listening_ports() == {service.ws_port, service.http_port}
    assert not (tmp_path / "state" / "tls").exists()


async def test_plain_listeners_bind_loopback_while_tls_binds_the_host(
    start_service: ServiceFactory,
) -> None:
    everywhere = "0.0.0.0"  # noqa: S104 - on a kernel-chosen port, for this check only
    service = await start_service(host=everywhere, plain_host="127.0.0.1")
    bound = {
        int(address[1]): address[0] for runner in service._runners for address in runner.addresses
    }
    assert bound[service.ws_port] == bound[service.http_port] == "127.0.0.1"
    assert bound[service.wss_port] == bound[service.https_port] == everywhere


async def test_an_unusable_generated_certificate_stops_the_start_and_is_kept(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    tls_dir = tmp_path / "state" / "tls"
    tls_dir.mkdir(parents=True)
    (tls_dir / "cert.pem").write_text("not a certificate\n")
    (tls_dir / "key.pem").write_text("not a key\n")
    with pytest.raises(StateError, match=r"remove .*tls to make a new certificate"):
        await start_service()
    assert (tls_dir / "cert.pem").read_text() == "not a certificate\n"


@pytest.mark.parametrize("broken", ["missing-key", "mismatched-key"])
async def test_a_broken_configured_certificate_is_a_config_error(
    start_service: ServiceFactory, tmp_path: Path, broken: str
) -> None:
    cert, key = write_self_signed(tmp_path)
    if broken == "missing-key":
        key.unlink()
    else:
        other = tmp_path / "other"
        other.mkdir()
        key = write_self_signed(other)[1]
    with pytest.raises(ConfigError, match="configured TLS certificate"):
        await start_service(tls_cert_file=str(cert), tls_key_file=str(key))
