"""Fetching from the update server, for python-tuf's ngclient and for target payloads.

Responsibility: ``OriginFetcher`` is the ``FetcherInterface`` the online channel hands to
``tuf.ngclient.Updater``; ``open_stream`` hands the engine a payload as a blocking ``Download``,
so it flows chunk by chunk into its verifier. Both go through the one HTTP stack
(``sources.http``) with an origin lock as its policy. What the bytes are is not checked here:
ngclient checks metadata against the trust root and the engine checks payload chunks against the
signed hashes. The fetcher is synchronous and runs in a worker thread.

Invariants:

- Origin-locked. Every URL, and every redirect ``Location``, must have the update server's
  scheme, host and port and no user-info, or it is refused before anything connects; a redirect
  elsewhere is refused naming the host. Connections come from pools bound to the origin.
- Errors: only ``tuf.api.exceptions.DownloadError`` and its subclasses leave ``fetch`` and its
  iterator: ``DownloadHTTPError`` with the status for any final non-2xx answer (ngclient ends its
  root version probe on a 404), ``SlowRetrievalError`` for the time limits,
  ``DownloadLengthMismatchError`` beyond a length cap. Only ``AcquireError`` leaves
  ``open_stream`` and its ``Download``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)
from tuf.ngclient.fetcher import FetcherInterface
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from sysupd.core.transfer import STRICT, Fault, Tolerance
from sysupd.sources.connections import DEFAULT_PORTS
from sysupd.sources.http import (
    CHUNK_BYTES,
    Closing,
    Download,
    Endpoint,
    FetchLimits,
    Pools,
    TransferError,
)

__all__ = ["Download", "FetcherLimits", "OriginFetcher", "OriginLock", "Progress"]

Progress = Callable[[str, int, int | None], None]
"""``progress(url, received, total)``: the URL asked for, bytes handed out, size if known."""


@dataclass(frozen=True, slots=True)
class FetcherLimits(FetchLimits):
    """``FetchLimits`` with the update server's defaults: 30 s to connect, 3 redirects."""

    connect_timeout_s: float = 30
    max_redirects: int = 3


@dataclass(frozen=True, slots=True)
class OriginLock:
    """The policy of the update server: its scheme, host and port, nothing else; and, when
    ``address`` is set (a repository at a ``fetch_url`` whose host was checked and resolved
    once), the only address connected to."""

    scheme: str
    host: str
    port: int
    address: str | None = None

    @classmethod
    def of(cls, url: str, address: str | None = None) -> OriginLock:
        """The origin of ``url``; only its scheme, host and port count.

        Raises:
            ValueError: ``url`` is not an http(s) URL with a host, or has user-info.
        """
        endpoint = _endpoint(url)
        return cls(endpoint.scheme, endpoint.host, endpoint.port, address)

    def check(self, url: str) -> Endpoint:
        """``url`` as an endpoint, if it is on the origin.

        Raises:
            ValueError: ``url`` is elsewhere, or not a plain http(s) URL.
        """
        endpoint = _endpoint(url)
        if (endpoint.scheme, endpoint.host, endpoint.port) != (self.scheme, self.host, self.port):
            found = f"{endpoint.scheme}://{endpoint.where}"
            raise ValueError(f"{found} is not the update server {self}")
        return replace(endpoint, address=self.address)

    @property
    def tolerance(self) -> Tolerance:
        """Strict: python-tuf's fetcher contract, and update server paths are public names."""
        return STRICT

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _endpoint(url: str) -> Endpoint:
    """``url`` parsed into an endpoint that resolves its host; raises ``ValueError``."""
    try:
        parsed = parse_url(url)
    except LocationParseError as exc:
        raise ValueError(f"the URL cannot be parsed: {exc}") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("only http and https URLs are fetched")
    if not parsed.host:
        raise ValueError("the URL has no host")
    if parsed.auth is not None:
        raise ValueError("a user name or password in the URL is not allowed")
    host = parsed.host.strip("[]").lower()
    return Endpoint(url, host, parsed.port or DEFAULT_PORTS[scheme])


class OriginFetcher(FetcherInterface, Closing):
    """Fetches URLs of one update server (scheme, host and port) and nothing else.

    ``origin`` is the update server's URL; only its scheme, host and port count, so the
    ``update_server`` setting can be given as is. ``progress(url, received, total)`` is called
    from the fetching thread when a MiB more has arrived or a second has passed, and once at the
    end; it must be quick. ``ssl_context`` replaces the system's trust store for https.
    Safe to use from several threads; ``close`` when done.

    Raises:
        ValueError: ``origin`` is not an http(s) URL with a host, or ``ssl_context`` does not
            require certificates.
    """

    def __init__(
        self,
        origin: str,
        *,
        limits: FetchLimits,
        progress: Progress | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connections: int = 2,
        address: str | None = None,
    ) -> None:
        self._lock = OriginLock.of(origin, address)
        self._limits = limits
        self._progress = progress
        self._pools = Pools(ssl_context, maxsize=max(2, connections))

    @property
    def origin(self) -> str:
        """The only place fetched from, as ``scheme://host:port``."""
        return str(self._lock)

    def close(self) -> None:
        """Close the pooled connections; transfers still running fail."""
        self._pools.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        """The bytes of ``url``, a chunk at a time; the request is sent on the first ``next``.

        Raises:
            DownloadError: ``url`` is not on the origin (now, before any connection); later,
                from the iterator, any failure of the transfer (``DownloadHTTPError``,
                ``SlowRetrievalError`` and others, as the module docstring says).
        """
        endpoint = self._checked(url, DownloadError)
        return _chunks(self._download(url, endpoint, None))

    def open_stream(self, url: str, max_length: int) -> Download:
        """Request ``url`` and return its body as a blocking download of at most ``max_length``.

        Raises:
            AcquireError: the URL is refused, the request failed, the server answered with an
                error, or it announced more than ``max_length`` bytes.
        """
        return self._download(url, self._checked(url, TransferError), max_length).open()

    def _download(self, url: str, endpoint: Endpoint, max_length: int | None) -> Download:
        progress = self._progress
        return Download(
            self._lock,
            endpoint,
            self._limits,
            self._pools,
            progress=None if progress is None else lambda done, size: progress(url, done, size),
            max_bytes=max_length,
            limit_name="the limit" if max_length is None else "its signed length",
        )

    def _checked(self, url: str, error: type[Exception]) -> Endpoint:
        try:
            return self._lock.check(url)
        except ValueError as exc:
            raise error(f"refused to fetch a URL: {exc}") from exc


def _chunks(download: Download) -> Generator[bytes, None, None]:
    """``download``'s chunks, with every failure a ``DownloadError``; closes it at the end."""
    try:
        with download.open():
            while chunk := download.read(CHUNK_BYTES):
                yield chunk
    except TransferError as exc:
        raise _download_error(exc) from exc


def _download_error(exc: TransferError) -> DownloadError:
    """``exc`` in python-tuf's family, which ngclient acts on."""
    reason = str(exc)
    if exc.fault is Fault.STATUS and exc.status is not None:
        return DownloadHTTPError(reason, exc.status)
    if exc.fault is Fault.TIME:
        return SlowRetrievalError(reason)
    if exc.fault is Fault.LENGTH:
        return DownloadLengthMismatchError(reason)
    return DownloadError(reason)
