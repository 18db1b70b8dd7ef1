"""Fetching an update file from a URL on the local network (``sys/update_now {"fetch_url": …}``).

Responsibility: decide whether a URL may be fetched at all (``check_url``) and stream the file's
bytes (``LanDownload``) within size, time and rate limits, resuming after a dropped connection.
What the bytes are is not checked here; the update engine verifies them.

Invariants:

- Only ``http``/``https`` URLs without user-info reach the network, and only to addresses inside
  the allowed networks. A host name is resolved once, by ``check_url``, and every address it
  resolves to must be allowed (IPv4-mapped IPv6 addresses are judged as IPv4). The connection
  then goes to the address that was checked: the client's resolver knows only pinned addresses
  and never asks DNS, so a second DNS answer cannot move the fetch. TLS still verifies the
  certificate against the host name.
- Redirects are followed by hand, at most ``max_redirects``: each ``Location`` is checked like
  the first URL before anything connects to it. A refused first URL is an ``InvalidURL`` (the
  caller answers ``Invalid file or url``); a refused redirect is an ``AcquireError``, because by
  then the update has started and the failure belongs to its log.
- Nothing comes from the environment (no proxy variables, no netrc), no cookies are kept, and no
  content coding is undone: the bytes handed out are the bytes of the file.
- The consumer sees one continuous stream. After a drop the rest is asked for with ``Range``
  (and ``If-Range``); only a 206 starting exactly at the next byte of a file of the same size is
  used, and a 200 from a server that ignores ``Range`` has the bytes already handed out read and
  thrown away, provided it is still the same file. Never more than ``max_bytes`` are handed out.
- Every failure after the URL check is an ``AcquireError`` naming what happened, and a download
  that failed stays failed: every later ``read`` raises again. Error messages name hosts, never
  whole URLs, whose query strings may carry tokens.
- Time limits run on the event loop's clock: a total deadline (from entering the context to the
  end, the consumer's own time included), a connect timeout, and a stall rule (nothing for
  ``min_rate_window_s``, or less than ``min_rate_bps`` over that window) that counts only time
  spent waiting on the network, so a consumer that pauses is not taken for a stalled server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sysupd import __version__
from sysupd.core.transfer import RateWatch
from sysupd.errors import AcquireError, InvalidURL

__all__ = ["MAX_URL_CHARS", "FetchLimits", "LanDownload", "PinnedTarget", "check_url"]

MAX_URL_CHARS: Final = 2048
_RESOLVE_TIMEOUT_S: Final = 10.0
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_PROGRESS_BYTES: Final = 1 << 20  # report progress at least every MiB …
_PROGRESS_S: Final = 1.0  # … or every second, whichever comes first
_SKIP_BYTES: Final = 1 << 16  # read size while throwing away bytes already handed out
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Numeric host forms that getaddrinfo accepts but ipaddress does not (2130706433, 127.1, 0x7f.1).
_LEGACY_IPV4: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*\.?")
_BROKEN: Final = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError)

_T = TypeVar("_T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """The bounds of one download: bytes, seconds, bytes per second, redirects and resumes."""

    max_bytes: int
    deadline_s: float = 3600
    min_rate_bps: int = 1024
    min_rate_window_s: float = 30
    connect_timeout_s: float = 10
    max_redirects: int = 5
    resume_tries: int = 3

    def __post_init__(self) -> None:
        counts = (self.max_bytes, self.min_rate_bps, self.max_redirects, self.resume_tries)
        if min(counts) < 0:
            raise ValueError("byte, rate, redirect and resume limits must not be negative")
        if min(self.deadline_s, self.min_rate_window_s, self.connect_timeout_s) <= 0:
            raise ValueError("time limits must be positive")


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
    allowed = [ipaddress.ip_network(item, strict=False) for item in networks]
    parsed, host, port = _parse_url(url)
    literal = _ip(parsed.host or "")
    if literal is not None:
        if not _allowed(literal, allowed):
            raise InvalidURL(f"host {literal} is not on an allowed network")
        return PinnedTarget(str(parsed), host, port, str(literal))
    addresses = await _resolve(host, port)
    for address in addresses:
        if not _allowed(ipaddress.ip_address(address), allowed):
            raise InvalidURL(
                f"host {host} resolves to {address}, which is not on an allowed network"
            )
    return PinnedTarget(str(parsed), host, port, addresses[0])


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


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except TimeoutError as exc:
        raise InvalidURL(f"host {host} did not resolve within {_RESOLVE_TIMEOUT_S:g} s") from exc
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidURL(f"host {host} cannot be resolved: {reason}") from exc
    addresses: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) == 4 and sockaddr[3] and "%" not in address:
            address = f"{address}%{sockaddr[3]}"
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidURL(f"host {host} has no IP address")
    return addresses


def _host_key(host: str) -> str:
    return host.rstrip(".").lower()


class _PinnedResolver(AbstractResolver):
    """The client's resolver: answers only for checked hosts, with the checked address."""

    def __init__(self) -> None:
        self._pins: dict[str, str] = {}

    def pin(self, target: PinnedTarget) -> None:
        """Make ``target.host`` resolve to ``target.address`` from now on."""
        self._pins[_host_key(target.host)] = target.address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The pinned address of ``host``; never a DNS query."""
        address = self._pins.get(_host_key(host))
        if address is None:
            raise OSError(f"host {host} was not checked for fetching")
        ipv6 = ipaddress.ip_address(address).version == 6
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ipv6 else socket.AF_INET,
                "proto": socket.IPPROTO_TCP,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
        ]

    async def close(self) -> None:
        """Forget every pin."""
        self._pins.clear()


class _Dropped(Exception):
    """The connection broke; the message says how. Never leaves this module."""


class LanDownload:
    """One file fetched from a checked URL, read as a single byte stream.

    Use as ``async with LanDownload(target, networks, limits) as download:`` and call ``read``
    until it returns ``b""``. Entering sends the request, follows redirects and checks the first
    answer, so ``size`` is known (or ``None``) once inside. ``progress(received, size)`` is called
    on the event loop as bytes are handed out, at least every MiB or second and once at the end;
    it must be quick. ``ssl_context`` replaces the system's trust store for https (a LAN's own
    CA); certificates are always verified. ``read`` is not safe to call concurrently.

    Raises:
        AcquireError: from ``async with`` and from ``read``, naming what went wrong.
    """

    def __init__(
        self,
        target: PinnedTarget,
        networks: Sequence[str],
        limits: FetchLimits,
        *,
        progress: Callable[[int, int | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._target = target
        self._networks = tuple(networks)
        self._limits = limits
        self._progress = progress
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._resolver = _PinnedResolver()
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._size: int | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._received = 0
        self._skip = 0
        self._resumes = 0
        self._net_s = 0.0
        self._net_bytes = 0
        self._rate = RateWatch(limits.min_rate_window_s, limits.min_rate_bps)
        self._deadline = math.inf
        self._reported = (-1, -math.inf)
        self._failed: AcquireError | None = None

    @property
    def size(self) -> int | None:
        """The file's size in bytes, from Content-Length or Content-Range; ``None`` if unsaid."""
        return self._size

    @property
    def received(self) -> int:
        """Bytes handed out by ``read`` so far."""
        return self._received

    @property
    def url(self) -> str:
        """The URL the bytes come from, after redirects."""
        return self._target.url

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("a LanDownload can be entered only once")
        self._deadline = asyncio.get_running_loop().time() + self._limits.deadline_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=self._resolver, use_dns_cache=False, ssl=self._ssl
            ),
            trust_env=False,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._limits.connect_timeout_s,
                sock_connect=self._limits.connect_timeout_s,
            ),
            headers={"User-Agent": f"sysupd/{__version__}", "Accept-Encoding": "identity"},
        )
        try:
            self._check_pinned()
            try:
                self._accept(await self._open(0), 0)
            except _Dropped as exc:
                raise AcquireError(str(exc)) from exc
        except BaseException as exc:
            self._fail(exc)
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; later reads raise ``AcquireError``."""
        self._close_response()
        if self._session is not None:
            await self._session.close()

    async def read(self, n: int) -> bytes:
        """Up to ``n`` (at least 1) bytes; ``b""`` only once the whole file has been read.

        Raises:
            AcquireError: the transfer failed, now or earlier.
            ValueError: ``n`` is not positive.
        """
        if n < 1:
            raise ValueError("read() needs a positive size")
        if self._failed is not None:
            raise AcquireError(str(self._failed)) from self._failed
        if self._session is None or self._session.closed:
            raise AcquireError("the download is not open")
        try:
            return await self._read(n)
        except BaseException as exc:
            self._fail(exc)
            raise

    async def _read(self, n: int) -> bytes:
        while (response := self._response) is not None:
            try:
                data = await self._read_body(response, n)
            except _Dropped as exc:
                await self._resume(str(exc))
                continue
            if not data:
                if self._size is not None and self._received < self._size:
                    await self._resume(
                        f"the connection ended after {self._received} of {self._size} bytes"
                    )
                    continue
                self._close_response()
                self._report(final=True)
                break
            if self._received + len(data) > self._limits.max_bytes:
                raise AcquireError(
                    f"the server sent more than the limit of {self._limits.max_bytes} bytes"
                )
            self._received += len(data)
            self._report(final=False)
            return data
        return b""

    async def _read_body(self, response: aiohttp.ClientResponse, n: int) -> bytes:
        while True:
            data = await self._read_some(response, min(self._skip, _SKIP_BYTES) or n)
            if not self._skip:
                return data
            if not data:
                raise _Dropped(f"the connection ended {self._skip} bytes before the resume point")
            self._skip -= len(data)

    async def _read_some(self, response: aiohttp.ClientResponse, n: int) -> bytes:
        try:
            data = await self._guard(
                lambda: response.content.read(n), self._limits.min_rate_window_s
            )
        except _BROKEN as exc:
            raise _Dropped(
                f"the connection to {self._target.host} broke after {self._received} bytes: "
                f"{exc or type(exc).__name__}"
            ) from exc
        self._net_bytes += len(data)
        if self._rate.stalled(self._net_s, self._net_bytes):
            raise AcquireError(
                f"the transfer stalled: less than {self._limits.min_rate_bps} bytes/s over "
                f"{self._limits.min_rate_window_s:g} s"
            )
        return data

    async def _resume(self, reason: str) -> None:
        while True:
            self._close_response()
            if self._resumes >= self._limits.resume_tries:
                raise AcquireError(
                    f"{reason}; gave up after {self._resumes} of "
                    f"{self._limits.resume_tries} allowed resumes"
                )
            self._resumes += 1
            try:
                response = await self._open(self._received)
            except _Dropped as exc:
                reason = str(exc)
                continue
            self._accept(response, self._received)
            return

    async def _open(self, offset: int) -> aiohttp.ClientResponse:
        """Ask for the file from byte ``offset``, following redirects; the answer is unchecked."""
        headers: dict[str, str] = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._etag is not None and not self._etag.startswith("W/"):
                headers["If-Range"] = self._etag
            elif self._last_modified is not None:
                headers["If-Range"] = self._last_modified
        redirects = 0
        while True:
            response = await self._request(self._target, headers)
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location")
            response.close()
            if not location:
                raise AcquireError(f"the server answered {response.status} without a Location")
            redirects += 1
            if redirects > self._limits.max_redirects:
                raise AcquireError(
                    f"the server redirected more than {self._limits.max_redirects} times"
                )
            self._target = await self._follow(location)

    async def _request(
        self, target: PinnedTarget, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        session = self._session
        assert session is not None
        url = URL(target.url, encoded=True)
        self._resolver.pin(target)
        where = f"{target.host}:{target.port}"
        try:
            return await self._guard(
                lambda: session.get(url, headers=headers, allow_redirects=False),
                self._limits.connect_timeout_s + self._limits.min_rate_window_s,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AcquireError(
                f"the certificate of {target.host} is not trusted: {exc.certificate_error}"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise AcquireError(f"TLS with {where} failed: {exc.os_error}") from exc
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            raise _Dropped(f"could not connect to {where}: {reason}") from exc
        except _BROKEN as exc:
            raise _Dropped(f"the connection to {where} broke: {exc or type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            raise AcquireError(f"the request to {where} failed: {exc}") from exc

    async def _follow(self, location: str) -> PinnedTarget:
        try:
            url = URL(self._target.url).join(URL(location))
        except ValueError as exc:
            raise AcquireError(f"the server redirected to an unusable location: {exc}") from exc
        try:
            return await self._guard(lambda: check_url(str(url), self._networks), math.inf)
        except InvalidURL as exc:
            raise AcquireError(f"a redirect was refused: {exc}") from exc

    def _accept(self, response: aiohttp.ClientResponse, offset: int) -> None:
        """Take ``response`` as the source of bytes from ``offset`` on, or refuse it."""
        try:
            self._skip = 0
            if response.status == 200:
                total = response.content_length
                if offset:  # the server ignored Range, or If-Range found a changed file
                    self._check_same_file(response, total)
                    self._skip = offset
            elif response.status == 206:
                total = self._content_range(response, offset)
            else:
                reason = f"{response.status} {response.reason or ''}".rstrip()
                raise AcquireError(f"the server answered {reason}")
            if not offset:
                self._etag = response.headers.get("ETag")
                self._last_modified = response.headers.get("Last-Modified")
            if self._size is None:
                self._size = total
            if total is not None and total > self._limits.max_bytes:
                raise AcquireError(
                    f"the file is {total} bytes, more than the limit of "
                    f"{self._limits.max_bytes} bytes"
                )
        except BaseException:
            response.close()
            raise
        self._response = response

    def _check_same_file(self, response: aiohttp.ClientResponse, total: int | None) -> None:
        changed = (
            (self._size is not None and total is not None and total != self._size)
            or (self._etag is not None and response.headers.get("ETag") != self._etag)
            or (
                self._etag is None
                and self._last_modified is not None
                and response.headers.get("Last-Modified") != self._last_modified
            )
        )
        if changed:
            raise AcquireError("the file changed on the server during the download")

    def _content_range(self, response: aiohttp.ClientResponse, offset: int) -> int | None:
        """The total size a 206 announces, once its range is shown to start at ``offset``."""
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None:
            raise AcquireError("the server's partial answer has no usable Content-Range")
        start, end = int(match[1]), int(match[2])
        total = None if match[3] == "*" else int(match[3])
        if start != offset:
            raise AcquireError(f"the server resumed at byte {start} instead of byte {offset}")
        if end < start or (total is not None and end >= total):
            raise AcquireError("the server's partial answer has no usable Content-Range")
        if offset and total is not None and self._size is not None and total != self._size:
            raise AcquireError("the file changed on the server during the download")
        return total

    def _check_pinned(self) -> None:
        target = self._target
        try:
            url = URL(target.url, encoded=True)
        except ValueError as exc:
            raise AcquireError("the target's URL cannot be parsed") from exc
        if url.raw_host != target.host or url.port != target.port:
            raise AcquireError("the target's host and port do not match its URL")
        address = _ip(target.address)
        networks = [ipaddress.ip_network(item, strict=False) for item in self._networks]
        if address is None or not _allowed(address, networks):
            raise AcquireError(f"address {target.address} is not on an allowed network")

    async def _guard(self, step: Callable[[], Awaitable[_T]], limit_s: float) -> _T:
        """Await ``step()`` within ``limit_s`` and the deadline, counting the time as network time.

        Raises:
            AcquireError: the connect timeout, the deadline or ``limit_s`` ran out.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        budget = self._deadline - start
        if budget <= 0:
            raise AcquireError(self._too_slow())
        try:
            async with asyncio.timeout(min(limit_s, budget)):
                return await step()
        except aiohttp.ConnectionTimeoutError as exc:
            raise AcquireError(
                f"could not connect to {self._target.host}:{self._target.port} within "
                f"{self._limits.connect_timeout_s:g} s"
            ) from exc
        except TimeoutError as exc:
            if budget <= limit_s:
                raise AcquireError(self._too_slow()) from exc
            raise AcquireError(f"the transfer stalled: nothing arrived for {limit_s:g} s") from exc
        finally:
            self._net_s += loop.time() - start

    def _too_slow(self) -> str:
        return f"the download did not finish within {self._limits.deadline_s:g} s"

    def _report(self, *, final: bool) -> None:
        if self._progress is None:
            return
        now = asyncio.get_running_loop().time()
        last_bytes, last_s = self._reported
        if final or self._received - last_bytes >= _PROGRESS_BYTES or now - last_s >= _PROGRESS_S:
            self._reported = (self._received, now)
            self._progress(self._received, self._size)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            reason = str(exc) if isinstance(exc, AcquireError) else "the download was interrupted"
            self._failed = exc if isinstance(exc, AcquireError) else AcquireError(reason)
        self._close_response()

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
