"""Trusting a service's TLS certificate: one a certificate authority vouches for, or the one seen
on first use, pinned by its SHA-256 fingerprint (as ssh pins host keys).

An appliance's certificate is self-signed (made at its first start, see ``system.tls``), so no CA
can vouch for it; the fingerprint it prints at start is what a person compares. The first
connection to a new address looks at the certificate without sending anything, pins it, and says
so; later connections accept exactly that certificate (``aiohttp.Fingerprint``) and refuse any
other before a byte of a password or token is sent. A person who replaced the certificate on
purpose pins the new one by giving its fingerprint (``--accept-certificate``), never by a prompt
that trains people to say yes.

The pins live in ``known_servers`` in the client's configuration directory, one line per server:
``https://HOST:PORT AB:CD:…``, replaced atomically and changed under an exclusive lock on
``known_servers.lock`` (two logins at once both keep their pin). A line that is not of that form
is refused, naming the file and the line, rather than guessed at. Only a login pins: the other
commands use the pin it made and never pin one themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from sysupd.client.address import Server
from sysupd.client.errors import CertificateChanged, ConnectionFailed, NotLoggedIn, NotTls
from sysupd.errors import ConfigError
from sysupd.fsutil import atomic_write
from sysupd.system.tls import fingerprint

__all__ = [
    "KnownServers",
    "TlsTrust",
    "changed_certificate",
    "establish",
    "normalize_fingerprint",
    "not_tls",
]

_HEX = re.compile(r"[0-9A-F]{64}")


@dataclass(frozen=True, slots=True)
class TlsTrust:
    """How the client trusts one service."""

    ssl: ssl.SSLContext | aiohttp.Fingerprint | None
    """What aiohttp is given: ``None`` for plain http or a CA-verified certificate."""
    fingerprint: str | None
    """The pinned fingerprint, if the certificate is pinned."""
    newly_pinned: bool = False
    """Pinned by this connection (first use): the person should compare the fingerprint."""


def normalize_fingerprint(text: str) -> str:
    """``AB:CD:…`` from a fingerprint written with or without colons, any case, ``SHA256:`` or not.

    Raises:
        ConfigError: it is not 32 bytes of hex.
    """
    bare = re.sub(r"[\s:]", "", text.strip().upper().removeprefix("SHA256"))
    if not _HEX.fullmatch(bare):
        raise ConfigError(
            f"{text!r} is not a SHA-256 fingerprint (64 hex digits, e.g. the 'AB:CD:…' that the "
            "service prints at start)"
        )
    return ":".join(bare[i : i + 2] for i in range(0, 64, 2))


class KnownServers:
    """The pinned fingerprints."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(f"{path.name}.lock")

    def get(self, server: Server) -> str | None:
        """The fingerprint pinned for ``server``, if any.

        Raises:
            ConfigError: the file cannot be read, or one of its lines is not a pin.
        """
        return self._read().get(server.base_url)

    def pin(self, server: Server, fingerprint: str) -> None:
        """Pin ``fingerprint`` for ``server``, replacing an older pin.

        Raises:
            ConfigError: the file cannot be read or written, or one of its lines is not a pin.
        """
        with self._locked():
            pins = self._read()
            pins[server.base_url] = normalize_fingerprint(fingerprint)
            lines = "".join(f"{key} {value}\n" for key, value in sorted(pins.items()))
            try:
                atomic_write(self.path, lines.encode(), mode=0o600)
            except OSError as exc:
                raise ConfigError(
                    f"cannot keep the pinned certificate in {self.path}: {exc}"
                ) from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One read-change-write of the file at a time, across processes (as ``tokens.lock``)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot use {self.path.parent} for pinned certificates: {exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor drops the lock

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the pinned certificates {self.path}: {exc}") from exc
        pins = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            key, _, value = line.strip().partition(" ")
            try:
                if not key.startswith("https://") or not value.strip():
                    raise ConfigError("it is not 'https://HOST:PORT FINGERPRINT'")
                pins[key] = normalize_fingerprint(value)
            except ConfigError as exc:
                raise ConfigError(
                    f"{self.path}, line {number}, is not a pinned certificate "
                    f"('https://HOST:PORT AB:CD:…'): {line.strip()[:120]!r}; remove that line "
                    "(the next sysupd login to that service pins its certificate again)"
                ) from exc
        return pins


def changed_certificate(server: Server, pinned: str, presented: str) -> CertificateChanged:
    """The refusal of a certificate that is not the pinned one, saying what to do."""
    return CertificateChanged(
        server.base_url,
        pinned,
        presented,
        f"the TLS certificate of {server.base_url} is not the one pinned when you first "
        f"connected.\n  pinned:    {pinned}\n  presented: {presented}\n"
        "Someone may be intercepting the connection, or the service's certificate was replaced; "
        "nothing was sent. If it was replaced on purpose, compare the presented fingerprint with "
        "the one the service prints at start ('TLS certificate SHA-256 fingerprint'), then run:\n"
        f"  sysupd login --server {server.base_url} --accept-certificate {presented}",
    )


async def establish(
    server: Server,
    known: KnownServers,
    *,
    accept: str | None = None,
    pin_first_use: bool = True,
    timeout_s: float = 10.0,
) -> TlsTrust:
    """How to trust ``server``: nothing to do for http; for https its pinned certificate, or
    (first use) one a CA vouches for, or else the one it presents, pinned now — only with
    ``pin_first_use``, which a login gives and nothing else does. With ``accept`` the presented
    certificate must have that fingerprint, and replaces any older pin.

    Raises:
        NotLoggedIn: without ``pin_first_use``, nothing is pinned and no CA vouches for it.
        CertificateChanged: ``accept`` does not match what the service presents.
        NotTls: the address answers in plain http.
        ConnectionFailed: the service cannot be reached.
        ConfigError: ``accept`` is not a fingerprint, or the pins cannot be read.
    """
    if not server.tls:
        return TlsTrust(None, None)
    wanted = normalize_fingerprint(accept) if accept is not None else None
    pinned = known.get(server)
    if pinned is not None and wanted is None:
        return TlsTrust(_pin(pinned), pinned)
    if not pin_first_use:
        if await _ca_verifies(server, timeout_s):
            return TlsTrust(None, None)
        raise NotLoggedIn(
            f"no certificate is pinned for {server.base_url} in {known.path} (a login pins it)"
        )
    presented = await _presented(server, timeout_s)
    if wanted is not None:
        if presented != wanted:
            raise CertificateChanged(
                server.base_url,
                wanted,
                presented,
                f"{server.base_url} presents the certificate {presented}, not {wanted}; "
                "nothing was pinned and nothing was sent",
            )
        known.pin(server, presented)
        return TlsTrust(_pin(presented), presented, newly_pinned=pinned != presented)
    if await _ca_verifies(server, timeout_s):
        return TlsTrust(None, None)
    known.pin(server, presented)
    return TlsTrust(_pin(presented), presented, newly_pinned=True)


def _pin(fingerprint_text: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(fingerprint_text.replace(":", "")))


async def _presented(server: Server, timeout_s: float) -> str:
    """The fingerprint of the certificate ``server`` presents; nothing is sent but the handshake."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # looked at, not trusted: the caller compares it
    der = await _handshake(server, context, timeout_s)
    if der is None:
        raise ConnectionFailed(f"{server.base_url} presented no certificate")
    return fingerprint(der)


async def _ca_verifies(server: Server, timeout_s: float) -> bool:
    try:
        await _handshake(server, ssl.create_default_context(), timeout_s)
    except ConnectionFailed as exc:
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
            return False
        raise
    return True


async def _handshake(server: Server, context: ssl.SSLContext, timeout_s: float) -> bytes | None:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                server.host, server.port, ssl=context, server_hostname=server.host
            ),
            timeout_s,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        if (plain := not_tls(server, exc)) is not None:
            raise plain from exc
        why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
        raise ConnectionFailed(f"cannot reach {server.base_url}: {why}") from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def not_tls(server: Server, exc: BaseException) -> NotTls | None:
    """The refusal of a TLS connection that a plain http listener answered, if ``exc`` (or what
    it wraps) is OpenSSL reading an HTTP reply as a TLS record; else ``None``."""
    seen: BaseException | None = exc
    for _ in range(4):  # aiohttp wraps the SSLError once (os_error) or twice (and __cause__)
        if seen is None:
            break
        if (
            isinstance(seen, ssl.SSLError)
            and getattr(seen, "reason", None) == "WRONG_VERSION_NUMBER"
        ):
            plain = f"http://{server.netloc}"
            return NotTls(f"the server at {server.base_url} does not speak TLS here; use {plain}")
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None
