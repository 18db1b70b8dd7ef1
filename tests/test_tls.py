"""With a certificate configured, both listeners speak TLS (wss and https)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sysupd.config import build_config
from tests.client import WsClient
from tests.conftest import ADMIN, ServiceFactory, test_config_values


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_defaults_to_the_contract_ports(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    values = test_config_values(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key))
    del values["ws_port"], values["http_port"]
    config = build_config(values)
    assert (config.ws_port, config.http_port) == (5184, 5185)


async def test_wss_and_https(
    start_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
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
