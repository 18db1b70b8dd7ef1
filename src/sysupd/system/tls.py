"""The service's TLS certificate: the configured one, or one made beside the state at first start.

A fresh appliance has no certificate of its own, yet its first administrator password must not
cross the network in clear text. So the first start makes a self-signed certificate (ECDSA P-256,
valid for ten years, named for this machine and loopback) and its key (mode 0600) in
``<state_dir>/tls``; every start reuses them, so the SHA-256 fingerprint that clients pin on first
use (as ssh does) stays the same. A certificate that exists but cannot be loaded is never replaced
silently: the service refuses to start and says how to make a new one.

Invariant: the key file is created with mode 0600 before any byte of the key is written to it.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sysupd.errors import ConfigError, StateError
from sysupd.fsutil import atomic_write

__all__ = [
    "Certificate",
    "certificate_names",
    "fingerprint",
    "fingerprint_hex",
    "load_certificate",
    "server_context",
]

_VALID_DAYS = 3650
_CERT_NAME = "cert.pem"
_KEY_NAME = "key.pem"


@dataclass(frozen=True, slots=True)
class Certificate:
    """The certificate the TLS listeners serve."""

    cert_file: Path
    key_file: Path
    fingerprint: str
    """SHA-256 of the DER certificate, as colon-separated upper-case hex (as browsers show it)."""
    generated: bool
    """Made by this start (a new fingerprint for clients to pin)."""


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, ``AB:CD:…``."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return fingerprint_hex(digest.finalize())


def fingerprint_hex(digest: bytes) -> str:
    """A digest written as a fingerprint, ``AB:CD:…``."""
    return ":".join(f"{byte:02X}" for byte in digest)


def load_certificate(
    directory: Path, cert_file: str = "", key_file: str = "", *, host: str = ""
) -> Certificate:
    """The configured certificate, or the generated one in ``directory`` (made on first use).

    Raises:
        ConfigError: the configured certificate or key cannot be read or does not match.
        StateError: the generated certificate exists but is unusable.
    """
    if cert_file:
        cert, key = Path(cert_file), Path(key_file)
        _check_loadable(cert, key, ConfigError, "the configured TLS certificate")
        return Certificate(cert, key, _fingerprint_file(cert, ConfigError), generated=False)
    cert, key = directory / _CERT_NAME, directory / _KEY_NAME
    if cert.exists() or key.exists():
        what = f"the generated TLS certificate in {directory}"
        _check_loadable(cert, key, StateError, what)
        return Certificate(cert, key, _fingerprint_file(cert, StateError), generated=False)
    try:
        der = _generate(cert, key, host)
    except OSError as exc:
        raise StateError(f"cannot write a TLS certificate into {directory}: {exc}") from exc
    return Certificate(cert, key, fingerprint(der), generated=True)


def certificate_names(certificate: Certificate) -> tuple[str, ...]:
    """The DNS names the certificate is for (its subject alternative names)."""
    try:
        cert = x509.load_pem_x509_certificate(certificate.cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return ()
    return tuple(names.value.get_values_for_type(x509.DNSName))


def server_context(certificate: Certificate) -> ssl.SSLContext:
    """A server-side TLS context serving ``certificate`` (TLS 1.2 and newer)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate.cert_file, certificate.key_file)
    return context


def _check_loadable(
    cert: Path, key: Path, error: type[ConfigError] | type[StateError], what: str
) -> None:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        missing = f"{what} is incomplete: {exc.filename} is missing"
        raise error(missing + _remedy(error, cert)) from exc
    except (OSError, ssl.SSLError) as exc:
        unusable = f"{what} cannot be used ({cert}, {key}): {exc}"
        raise error(unusable + _remedy(error, cert)) from exc


def _remedy(error: type[ConfigError] | type[StateError], cert: Path) -> str:
    if error is StateError:
        return (
            f"; remove {cert.parent} to make a new certificate at the next start "
            "(clients that pinned the old one will then refuse the new one until told)"
        )
    return ""


def _fingerprint_file(path: Path, error: type[ConfigError] | type[StateError]) -> str:
    try:
        pem = path.read_bytes()
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except (OSError, ValueError) as exc:
        raise error(f"cannot read the TLS certificate {path}: {exc}") from exc
    return fingerprint(der)


def _generate(cert_path: Path, key_path: Path, host: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname and hostname != "localhost":
        names.insert(0, x509.DNSName(hostname))
    addresses = {"127.0.0.1", "::1"}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            addresses.add(host)
    except ValueError:
        if host:
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sysupd on {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)
