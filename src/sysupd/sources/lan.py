"""Fetching an update file from a URL on the local network (``sys/update_now {"fetch_url": …}``).

Responsibility: decide whether a URL may be fetched at all (``check_url``, and its blocking twin
``check_url_blocking`` for redirects) and open the file as a ``Download`` (``open_download``)
through the one HTTP stack (``sources.http``), with the allowed networks as its policy. What the
bytes are is not checked here; the update engine verifies them.

Invariants:

- Only ``http``/``https`` URLs without user-info reach the network, and only to addresses inside
  the allowed networks. A host name is resolved once, by the check, and every address it
  resolves to must be allowed (IPv4-mapped IPv6 addresses are judged as IPv4). The connection
  then goes to the address that was checked, never to a second DNS answer; TLS still verifies
  the certificate against the host name.
- Each redirect ``Location`` is checked like the first URL (resolved, every address allowed)
  before anything connects to it. A refused first URL is an ``InvalidURL`` (the caller answers
  ``Invalid file or url``); a refused redirect is an ``AcquireError``, because by then the update
  has started and the failure belongs to its log.
- Every failure after the URL check is an ``AcquireError`` naming what happened; messages name
  hosts and paths, never whole URLs, whose query strings may carry tokens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Final

from yarl import URL

from sysupd.core.transfer import Tolerance
from sysupd.errors import AcquireError, InvalidURL
from sysupd.sources.http import Download, Endpoint, FetchLimits, Pools

__all__ = [
    "MAX_URL_CHARS",
    "Download",
    "FetchLimits",
    "PinnedTarget",
    "check_url",
    "check_url_blocking",
    "open_download",
]

MAX_URL_CHARS: Final = 2048
_RESOLVE_TIMEOUT_S: Final = 10.0
# Numeric host forms that getaddrinfo accepts but ipaddress does not (2130706433, 127.1, 0x7f.1).
_LEGACY_IPV4: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*\.?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_AddrInfo = Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]]


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """A checked URL and the address its host resolved to, the only one it is fetched from."""

    url: str
    host: str
    port: int
    address: str


async def check_url(url: str, networks: Sequence[str]) -> PinnedTarget:
    """Check ``url`` for fetching and resolve its host, once.

    Raises:
        InvalidURL: not http/https, user-info, no host, a bad port, longer than
            ``MAX_URL_CHARS``, a host that does not resolve, or any address of the host outside
            ``networks``.
        ValueError: ``networks`` holds something that is not a network (settings prevent it).
    """
    check = _Check(url, networks)
    if check.target is not None:
        return check.target
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(
                check.host, check.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise check.unresolved(exc) from exc
    return check.resolved(infos)


def check_url_blocking(url: str, networks: Sequence[str]) -> PinnedTarget:
    """``check_url`` for a worker thread (a redirect's ``Location``), with the same rules.

    Raises:
        InvalidURL: as ``check_url``.
        ValueError: as ``check_url``.
    """
    check = _Check(url, networks)
    if check.target is not None:
        return check.target
    try:
        infos = _getaddrinfo_within(check.host, check.port, _RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise check.unresolved(exc) from exc
    return check.resolved(infos)


def open_download(
    target: PinnedTarget,
    networks: Sequence[str],
    limits: FetchLimits,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Download:
    """Request a checked target and return its body as a blocking ``Download``; from a worker
    thread. Sends the request, follows redirects (each checked against ``networks``) and checks
    the first answer, so ``size`` is known (or ``None``) on return. ``progress(received, size)``
    is called from the reading thread at least every MiB or second and once at the end; it must
    be quick. ``ssl_context`` replaces the system's trust store for https (a LAN's own CA);
    certificates are always verified.

    Raises:
        AcquireError: the target does not match its URL or is outside ``networks``, the request
            failed, or the answer was refused; later, from ``read``, any failure of the transfer.
        ValueError: ``ssl_context`` does not require certificates.
    """
    policy = _Networks(tuple(networks))
    endpoint = policy.pinned(target)
    pools = Pools(ssl_context)
    return Download(policy, endpoint, limits, pools, own_pools=True, progress=progress).open()


_LAN_TOLERANCE = Tolerance(
    name_paths=False, blind_resume=True, pass_codings=True, first_partial=True
)
"""A LAN URL is any web server an operator points at: its path may carry a token (never named),
and its answers are taken as leniently as is safe, since the engine verifies every byte."""


@dataclass(frozen=True, slots=True)
class _Networks:
    """The LAN policy: every URL checked and pinned by ``check_url_blocking``."""

    networks: tuple[str, ...]

    @property
    def tolerance(self) -> Tolerance:
        """Lenient where safe: see ``_LAN_TOLERANCE``."""
        return _LAN_TOLERANCE

    def check(self, url: str) -> Endpoint:
        """Raises ``ValueError`` saying why ``url`` may not be fetched."""
        try:
            return _endpoint(check_url_blocking(url, self.networks))
        except InvalidURL as exc:
            raise ValueError(str(exc)) from exc

    def pinned(self, target: PinnedTarget) -> Endpoint:
        """``target`` as an endpoint, once shown to match its URL and the networks."""
        try:
            url = URL(target.url, encoded=True)
        except ValueError as exc:
            raise AcquireError("the target's URL cannot be parsed") from exc
        if url.raw_host != target.host or url.port != target.port:
            raise AcquireError("the target's host and port do not match its URL")
        address = _ip(target.address)
        if address is None or not _allowed(address, _parse_networks(self.networks)):
            raise AcquireError(f"address {target.address} is not on an allowed network")
        return _endpoint(target)


def _endpoint(target: PinnedTarget) -> Endpoint:
    return Endpoint(target.url, target.host, target.port, target.address)


class _Check:
    """One URL check: parsed at once; a literal address judged at once (``target``), a host
    name judged on the addresses it resolves to (``resolved``)."""

    def __init__(self, url: str, networks: Sequence[str]) -> None:
        self._allowed = _parse_networks(networks)
        self._parsed, self.host, self.port = _parse_url(url)
        self.target: PinnedTarget | None = None
        literal = _ip(self._parsed.host or "")
        if literal is not None:
            if not _allowed(literal, self._allowed):
                raise InvalidURL(f"host {literal} is not on an allowed network")
            self.target = self._pinned(str(literal))

    def resolved(self, infos: _AddrInfo) -> PinnedTarget:
        """The target, if every address in ``infos`` is allowed."""
        addresses = _addresses(infos)
        if not addresses:
            raise InvalidURL(f"host {self.host} has no IP address")
        for address in addresses:
            if not _allowed(ipaddress.ip_address(address), self._allowed):
                raise InvalidURL(
                    f"host {self.host} resolves to {address}, which is not on an allowed network"
                )
        return self._pinned(addresses[0])

    def unresolved(self, exc: BaseException) -> InvalidURL:
        """The refusal of a host whose lookup failed with ``exc``."""
        if isinstance(exc, TimeoutError):
            return InvalidURL(f"host {self.host} did not resolve within {_RESOLVE_TIMEOUT_S:g} s")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return InvalidURL(f"host {self.host} cannot be resolved: {reason}")

    def _pinned(self, address: str) -> PinnedTarget:
        return PinnedTarget(str(self._parsed), self.host, self.port, address)


def _parse_networks(networks: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(item, strict=False) for item in networks]


def _getaddrinfo_within(host: str, port: int, timeout_s: float) -> _AddrInfo:
    """``socket.getaddrinfo`` on a helper thread, given up (not stopped) after ``timeout_s``."""
    result: Future[_AddrInfo] = Future()

    def run() -> None:
        try:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            result.set_exception(exc)
        else:
            result.set_result(infos)

    threading.Thread(target=run, name="sysupd-resolve", daemon=True).start()
    return result.result(timeout_s)


def _addresses(infos: _AddrInfo) -> list[str]:
    """The distinct IP addresses in ``infos``, in order, with IPv6 scopes."""
    addresses: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) == 4 and sockaddr[3] and "%" not in address:
            address = f"{address}%{sockaddr[3]}"
        if address not in addresses:
            addresses.append(address)
    return addresses


def _parse_url(url: str) -> tuple[URL, str, int]:
    """The URL without its fragment, its host as sent (IDNA-encoded) and its port."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidURL(f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parsed = URL(url)
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise InvalidURL("the port is outside 1-65535") from exc
        raise InvalidURL(f"the URL cannot be parsed: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        if not parsed.scheme:
            raise InvalidURL("the URL has no scheme; it must start with http:// or https://")
        raise InvalidURL(f"{parsed.scheme} is not allowed; only http and https are")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise InvalidURL("a user name or password in the URL is not allowed")
    host = parsed.raw_host
    if not host:
        raise InvalidURL("the URL has no host")
    port = parsed.port
    if port is None or not 1 <= port <= 65535:
        raise InvalidURL(f"port {port} is outside 1-65535")
    if _ip(parsed.host or "") is None and _LEGACY_IPV4.fullmatch(host):
        raise InvalidURL(f"host {host} is not a plain IP address or host name")
    return parsed.with_fragment(None), host, port


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _allowed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
