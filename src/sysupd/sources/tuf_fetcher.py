"""Fetching from the update server, for python-tuf's ngclient and for target payloads.

Responsibility: ``OriginFetcher`` is the ``FetcherInterface`` the online channel hands to
``tuf.ngclient.Updater``. It moves the bytes of one URL at a time from the configured update
server, within time and rate limits, resuming after a dropped connection; ``open_stream`` hands
the engine the same transfer as a blocking reader, so a payload flows chunk by chunk into its
verifier. What the bytes are is not checked here: ngclient checks metadata against the trust root
and the engine checks payload chunks against the signed hashes. The fetcher is synchronous and
runs in a worker thread.

Invariants:

- Origin-locked. Every URL, and every redirect ``Location``, must have the origin's scheme, host
  and port and no user-info, or it is refused before anything connects. Connections come from one
  urllib3 pool bound to the origin's host and port. Redirects are followed by hand, at most
  ``max_redirects``; a redirect elsewhere is a ``DownloadError`` naming the host.
- Nothing comes from the environment: no proxy variables (a connection pool never reads them), no
  netrc, no cookies. Content codings are declined (``Accept-Encoding: identity``) and a coded
  answer is refused, so the bytes handed out are the bytes the signed hashes cover.
- https always verifies the certificate and host name, against the system's CAs or the given
  context, which must require certificates.
- Limits per transfer: a total deadline (from the first request to the last byte, the consumer's
  own time included); connecting within ``socket_timeout_s``; and a stall rule over time spent
  waiting on the network only, so a slow consumer is not taken for a slow server: nothing for
  ``min(socket_timeout_s, min_rate_window_s)``, or under ``min_rate_bps`` across a full
  ``min_rate_window_s``. Breaking any of them is a ``SlowRetrievalError``.
- One continuous stream. After a drop mid-body the rest is asked for with ``Range`` (and
  ``If-Range``), at most ``resume_tries`` times, if the first answer offered a way
  (``Accept-Ranges: bytes``, an ``ETag`` or a ``Last-Modified``). Only a 206 starting exactly at
  the next byte of a file of the same size is used; a 200 has the bytes already handed out read
  and thrown away, provided it is still the same file (size, ``ETag``, ``Last-Modified``).
- Errors: only ``tuf.api.exceptions.DownloadError`` and its subclasses leave ``fetch`` and its
  iterator: ``DownloadHTTPError`` with the status for any final non-2xx answer (ngclient ends its
  root version probe on a 404), ``SlowRetrievalError`` for the time limits,
  ``DownloadLengthMismatchError`` beyond a length cap. Only ``AcquireError`` leaves a
  ``StreamReader``. Messages are plain sentences naming hosts and paths, never query strings.
- Memory per transfer is one read chunk (``CHUNK_BYTES``), whatever the size of the file.
"""

from __future__ import annotations

import http.client
import re
import ssl
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self
from urllib.parse import urljoin

import urllib3
from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)
from tuf.ngclient.fetcher import FetcherInterface
from urllib3.exceptions import (
    LocationParseError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import Url, parse_url

from sysupd import __version__
from sysupd.core.transfer import RateWatch
from sysupd.errors import AcquireError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["CHUNK_BYTES", "FetcherLimits", "OriginFetcher", "Progress", "StreamReader"]

CHUNK_BYTES: Final = 64 * 1024
"""The largest piece read from the network and handed out at once."""

Progress = Callable[[str, int, int | None], None]
"""``progress(url, received, total)``: the URL asked for, bytes handed out, size if known."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_PROGRESS_BYTES: Final = 1 << 20  # report progress when a MiB more has arrived …
_PROGRESS_S: Final = 1.0  # … or a second has passed, whichever comes first
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_BROKEN: Final = (ProtocolError, SSLError, http.client.HTTPException, OSError)


@dataclass(frozen=True, slots=True)
class FetcherLimits:
    """The bounds of each transfer: seconds, bytes per second, redirects and resumes."""

    socket_timeout_s: float = 30
    deadline_s: float = 3600
    min_rate_bps: int = 1024
    min_rate_window_s: float = 30
    max_redirects: int = 3
    resume_tries: int = 3

    def __post_init__(self) -> None:
        if min(self.min_rate_bps, self.max_redirects, self.resume_tries) < 0:
            raise ValueError("rate, redirect and resume limits must not be negative")
        if min(self.socket_timeout_s, self.deadline_s, self.min_rate_window_s) <= 0:
            raise ValueError("time limits must be positive")


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: Url) -> _Origin:
        scheme = (url.scheme or "").lower()
        return cls(scheme, (url.host or "").lower(), url.port or _DEFAULT_PORTS.get(scheme, 0))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.where}"


def _parse(url: str) -> Url:
    """``url`` parsed; raises ``ValueError`` with a plain reason."""
    try:
        parsed = parse_url(url)
    except LocationParseError as exc:
        raise ValueError(f"the URL cannot be parsed: {exc}") from exc
    if parsed.scheme is None or parsed.scheme.lower() not in _DEFAULT_PORTS:
        raise ValueError("only http and https URLs are fetched")
    if not parsed.host:
        raise ValueError("the URL has no host")
    if parsed.auth is not None:
        raise ValueError("a user name or password in the URL is not allowed")
    return parsed


class _Dropped(Exception):
    """The connection broke in a way a new request may cure. Never leaves this module."""


class OriginFetcher(FetcherInterface):
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
        limits: FetcherLimits,
        progress: Progress | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._origin = _Origin.of(_parse(origin))
        if ssl_context is not None and ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the TLS context must require and verify certificates")
        self._limits = limits
        self._progress = progress
        headers = {"User-Agent": f"sysupd/{__version__}", "Accept-Encoding": "identity"}
        host, port = self._origin.host, self._origin.port
        self._pool: urllib3.HTTPConnectionPool
        if self._origin.scheme == "https":
            self._pool = urllib3.HTTPSConnectionPool(
                host,
                port,
                maxsize=2,
                headers=headers,
                retries=False,
                cert_reqs="CERT_REQUIRED",
                ssl_context=ssl_context,
            )
        else:
            self._pool = urllib3.HTTPConnectionPool(
                host, port, maxsize=2, headers=headers, retries=False
            )

    @property
    def origin(self) -> str:
        """The only place fetched from, as ``scheme://host:port``."""
        return str(self._origin)

    def close(self) -> None:
        """Close the pooled connections; transfers still running fail."""
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        """The bytes of ``url``, a chunk at a time; the request is sent on the first ``next``.

        Raises:
            DownloadError: ``url`` is not on the origin (now, before any connection); later,
                from the iterator, any failure of the transfer (``DownloadHTTPError``,
                ``SlowRetrievalError`` and others, as the module docstring says).
        """
        return _guarded(self._transfer(url, None))

    def open_stream(self, url: str, max_length: int) -> StreamReader:
        """Request ``url`` and return its body as a blocking reader of at most ``max_length``.

        Raises:
            AcquireError: the URL is refused, the request failed, the server answered with an
                error, or it announced more than ``max_length`` bytes.
        """
        try:
            transfer = self._transfer(url, max_length)
        except DownloadError as exc:
            raise AcquireError(str(exc)) from exc
        try:
            transfer.open()
        except DownloadError as exc:
            transfer.close()
            raise AcquireError(str(exc)) from exc
        except Exception as exc:
            transfer.close()
            raise AcquireError(f"the download of {transfer.path} failed: {exc!r}") from exc
        return StreamReader(transfer)

    def _transfer(self, url: str, max_length: int | None) -> _Transfer:
        try:
            parsed = _parse(url)
        except ValueError as exc:
            raise DownloadError(f"refused to fetch a URL: {exc}") from exc
        found = _Origin.of(parsed)
        if found != self._origin:
            raise DownloadError(
                f"refused to fetch from {found}: only the update server {self._origin} is used"
            )
        return _Transfer(self, parsed, url, max_length)


def _guarded(transfer: _Transfer) -> Generator[bytes, None, None]:
    """``transfer``'s chunks, with every failure a ``DownloadError``; closes it at the end."""
    try:
        yield from transfer.chunks()
    except DownloadError:
        raise
    except Exception as exc:
        raise DownloadError(f"the download of {transfer.path} failed: {exc!r}") from exc
    finally:
        transfer.close()


class _Transfer:
    """One URL fetched as a single stream, across redirects and resumes."""

    def __init__(
        self, fetcher: OriginFetcher, url: Url, label: str, max_length: int | None
    ) -> None:
        self._pool = fetcher._pool
        self._origin = fetcher._origin
        self._limits = fetcher._limits
        self._progress = fetcher._progress
        self._url = url
        self._label = label
        self._max_length = max_length
        self.path = url.path or "/"
        self.size: int | None = None
        self._response: urllib3.BaseHTTPResponse | None = None
        self._opened = False
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._resumable = False
        self._received = 0
        self._skip = 0
        self._resumes = 0
        self._deadline = 0.0
        self._net_s = 0.0
        self._net_bytes = 0
        self._rate = RateWatch(self._limits.min_rate_window_s, self._limits.min_rate_bps)
        self._reported = (0, 0.0)

    def open(self) -> None:
        """Send the request and take its answer (after redirects); once only."""
        if self._opened:
            return
        self._opened = True
        now = time.monotonic()
        self._deadline = now + self._limits.deadline_s
        self._reported = (0, now)
        try:
            self._accept(self._request(0), 0)
        except _Dropped as exc:
            raise DownloadError(str(exc)) from exc

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes in order, each at most ``CHUNK_BYTES``."""
        self.open()
        while (response := self._response) is not None:
            try:
                data = self._read(response)
            except _Dropped as exc:
                self._resume(str(exc))
                continue
            if not data:
                if self.size is not None and self._received < self.size:
                    self._resume(
                        f"the connection ended after {self._received} of {self.size} bytes "
                        f"of {self.path}"
                    )
                    continue
                self._response = None
                response.release_conn()
                self._report(final=True)
                return
            self._received += len(data)
            if self._max_length is not None and self._received > self._max_length:
                raise DownloadLengthMismatchError(
                    f"{self.path} is longer than its signed length of {self._max_length} bytes"
                )
            self._report(final=False)
            yield data

    def close(self) -> None:
        """Drop the connection of an unfinished transfer."""
        response, self._response = self._response, None
        if response is not None:
            _discard(response)

    def _read(self, response: urllib3.BaseHTTPResponse) -> bytes:
        while True:
            data = self._read_some(response, min(self._skip, CHUNK_BYTES) or CHUNK_BYTES)
            if not self._skip:
                return data
            if not data:
                raise _Dropped(f"the connection ended {self._skip} bytes before the resume point")
            self._skip -= len(data)

    def _read_some(self, response: urllib3.BaseHTTPResponse, n: int) -> bytes:
        wait_s = self._wait_s(min(self._limits.socket_timeout_s, self._limits.min_rate_window_s))
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(wait_s)  # the pool set a timeout per request; this one is per read
        start = time.monotonic()
        try:
            data = response.read1(n, decode_content=False) or b""
        except ReadTimeoutError as exc:
            raise SlowRetrievalError(self._timed_out(wait_s)) from exc
        except _BROKEN as exc:
            raise _Dropped(
                f"the connection to {self._origin.where} broke after {self._received} bytes "
                f"of {self.path}: {_reason(exc)}"
            ) from exc
        finally:
            self._net_s += time.monotonic() - start
        self._net_bytes += len(data)
        if self._rate.stalled(self._net_s, self._net_bytes):
            raise SlowRetrievalError(
                f"the transfer of {self.path} stalled: less than {self._limits.min_rate_bps} "
                f"bytes/s over {self._limits.min_rate_window_s:g} s"
            )
        if time.monotonic() >= self._deadline:
            raise SlowRetrievalError(self._too_slow())
        return data

    def _resume(self, reason: str) -> None:
        self.close()
        if not self._resumable:
            raise DownloadError(f"{reason}; the server offers no way to resume")
        while True:
            if self._resumes >= self._limits.resume_tries:
                raise DownloadError(
                    f"{reason}; gave up after {self._resumes} of "
                    f"{self._limits.resume_tries} allowed resumes"
                )
            self._resumes += 1
            try:
                response = self._request(self._received)
            except _Dropped as exc:
                reason = str(exc)
                continue
            self._accept(response, self._received)
            return

    def _request(self, offset: int) -> urllib3.BaseHTTPResponse:
        """Ask for the file from byte ``offset``, following redirects; the answer is unchecked."""
        headers = dict(self._pool.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._etag is not None and not self._etag.startswith("W/"):
                headers["If-Range"] = self._etag
            elif self._last_modified is not None:
                headers["If-Range"] = self._last_modified
        redirects = 0
        while True:
            response = self._send(headers)
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location")
            _discard(response)
            if not location:
                raise DownloadError(
                    f"the server answered {response.status} for {self.path} without a Location"
                )
            redirects += 1
            if redirects > self._limits.max_redirects:
                raise DownloadError(
                    f"the server redirected {self.path} more than "
                    f"{self._limits.max_redirects} times"
                )
            self._follow(location)

    def _follow(self, location: str) -> None:
        try:
            url = _parse(urljoin(self._url.url, location))
        except ValueError as exc:
            raise DownloadError(f"a redirect of {self.path} was refused: {exc}") from exc
        found = _Origin.of(url)
        if found != self._origin:
            raise DownloadError(
                f"a redirect of {self.path} to {found.where} was refused: only the update "
                f"server {self._origin.where} is used"
            )
        self._url = url

    def _send(self, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        connect_s = self._wait_s(self._limits.socket_timeout_s)
        read_s = self._wait_s(min(self._limits.socket_timeout_s, self._limits.min_rate_window_s))
        start = time.monotonic()
        try:
            return self._pool.urlopen(
                "GET",
                self._url.request_uri,
                headers=headers,
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=connect_s, read=read_s),
                preload_content=False,
                decode_content=False,
                release_conn=False,
            )
        except NewConnectionError as exc:  # before TimeoutError: it is one in urllib3
            raise _Dropped(f"could not connect to {self._origin.where}: {_reason(exc)}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            if time.monotonic() >= self._deadline:
                raise SlowRetrievalError(self._too_slow()) from exc
            raise SlowRetrievalError(
                f"{self._origin.where} did not answer the request for {self.path} in time"
            ) from exc
        except SSLError as exc:
            raise DownloadError(f"TLS with {self._origin.where} failed: {_reason(exc)}") from exc
        except _BROKEN as exc:
            raise _Dropped(f"the connection to {self._origin.where} broke: {_reason(exc)}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise DownloadError(
                f"the request to {self._origin.where} failed: {_reason(exc)}"
            ) from exc
        finally:
            self._net_s += time.monotonic() - start

    def _accept(self, response: urllib3.BaseHTTPResponse, offset: int) -> None:
        """Take ``response`` as the source of bytes from ``offset`` on, or refuse it."""
        try:
            status, headers = response.status, response.headers
            if not 200 <= status < 300:
                reason = f"{status} {response.reason or ''}".rstrip()
                raise DownloadHTTPError(f"the server answered {reason} for {self.path}", status)
            coding = headers.get("Content-Encoding", "identity").strip().lower()
            if coding not in ("", "identity"):
                raise DownloadError(f"the server sent {self.path} with content coding {coding}")
            length = _content_length(headers.get("Content-Length"))
            self._skip = 0
            if not offset:
                if status == 206:
                    raise DownloadError(f"the server sent part of {self.path} unasked")
                self._etag = headers.get("ETag")
                self._last_modified = headers.get("Last-Modified")
                ranges = "bytes" in headers.get("Accept-Ranges", "").lower()
                self._resumable = (
                    ranges or self._etag is not None or self._last_modified is not None
                )
                self.size = length
            elif status == 206:
                total = self._content_range(headers.get("Content-Range", ""), offset)
                self.size = total if self.size is None else self.size
            elif self._same_file(headers.get("ETag"), headers.get("Last-Modified"), length):
                self._skip = offset  # the server ignored Range: throw away what was handed out
            else:
                raise DownloadError(self._changed())
            cap = self._max_length
            if cap is not None and self.size is not None and self.size > cap:
                raise DownloadLengthMismatchError(
                    f"{self.path} is {self.size} bytes, longer than its signed length of "
                    f"{cap} bytes"
                )
        except BaseException:
            _discard(response)
            raise
        self._response = response

    def _same_file(self, etag: str | None, last_modified: str | None, length: int | None) -> bool:
        checks = []
        if self.size is not None:
            checks.append(length == self.size)
        if self._etag is not None:
            checks.append(etag == self._etag)
        if self._last_modified is not None:
            checks.append(last_modified == self._last_modified)
        return bool(checks) and all(checks)

    def _content_range(self, value: str, offset: int) -> int | None:
        """The total size a 206 announces, once its range is shown to start at ``offset``."""
        match = _CONTENT_RANGE.fullmatch(value.strip())
        if match is None:
            raise DownloadError(f"the server's partial answer for {self.path} has no usable range")
        start, end = int(match[1]), int(match[2])
        total = None if match[3] == "*" else int(match[3])
        if start != offset:
            raise DownloadError(
                f"the server resumed {self.path} at byte {start} instead of byte {offset}"
            )
        if end < start or (total is not None and end >= total):
            raise DownloadError(f"the server's partial answer for {self.path} has no usable range")
        if self.size is not None and total != self.size:
            raise DownloadError(self._changed())
        return total

    def _changed(self) -> str:
        return f"the file changed on the server during the download of {self.path}"

    def _wait_s(self, limit_s: float) -> float:
        """``limit_s``, cut to the time left before the deadline.

        Raises:
            SlowRetrievalError: the deadline has passed.
        """
        left_s = self._deadline - time.monotonic()
        if left_s <= 0:
            raise SlowRetrievalError(self._too_slow())
        return min(limit_s, left_s)

    def _timed_out(self, wait_s: float) -> str:
        if time.monotonic() >= self._deadline:
            return self._too_slow()
        return f"the transfer of {self.path} stalled: nothing arrived for {wait_s:g} s"

    def _too_slow(self) -> str:
        return f"the download of {self.path} did not finish within {self._limits.deadline_s:g} s"

    def _report(self, *, final: bool) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        last_bytes, last_s = self._reported
        if final or self._received - last_bytes >= _PROGRESS_BYTES or now - last_s >= _PROGRESS_S:
            self._reported = (self._received, now)
            self._progress(self._label, self._received, self.size)


class StreamReader:
    """The body of one URL as a blocking byte stream; memory is one chunk whatever its size.

    ``read`` until it returns ``b""``. A reader that failed stays failed: every later ``read``
    raises again. ``close`` (or leaving ``with``) drops an unfinished transfer.
    """

    def __init__(self, transfer: _Transfer) -> None:
        self._transfer = transfer
        self._chunks = _guarded(transfer)
        self._pending = memoryview(b"")
        self._failed: AcquireError | None = None
        self._done = False

    @property
    def size(self) -> int | None:
        """The body's size in bytes as the server announced it; ``None`` if it did not."""
        return self._transfer.size

    def read(self, n: int, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at the end (or for ``n == 0``).

        Raises:
            AcquireError: the transfer failed, now or earlier, or the reader is closed.
            ValueError: ``n`` is negative (the body is never read whole).
        """
        if n < 0:
            raise ValueError("StreamReader.read needs a size")
        if not self._fill() or n == 0:
            return b""
        data = bytes(self._pending[:n])
        self._pending = self._pending[n:]
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` with up to its length of bytes; 0 only at the end.

        Raises:
            AcquireError: as ``read``.
        """
        view = memoryview(buffer).cast("B")
        if not self._fill() or not len(view):
            return 0
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        """Drop the transfer; later reads raise ``AcquireError``."""
        if not self._done and self._failed is None:
            self._failed = AcquireError("the download was closed")
        self._chunks.close()
        self._transfer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _fill(self) -> bool:
        """True when bytes are pending; false at the end."""
        if self._failed is not None:
            raise AcquireError(str(self._failed)) from self._failed
        while not self._pending and not self._done:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                self._done = True
            except DownloadError as exc:
                self._failed = AcquireError(str(exc))
                raise self._failed from exc
        return bool(self._pending)


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close ``response`` and its connection, handing the pool slot back."""
    response.close()
    response.release_conn()


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _reason(exc: BaseException) -> str:
    """The innermost plain reason of a urllib3 or socket error."""
    while isinstance(exc, urllib3.exceptions.HTTPError) and exc.__context__ is not None:
        exc = exc.__context__
    if isinstance(exc, http.client.IncompleteRead):
        return "it closed before the end of the body"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
