"""The one HTTP client stack of every download: LAN URLs, the update server, payloads.

Responsibility: move the bytes of one URL as a single blocking stream (``Download``) across
redirects and resumes, within ``FetchLimits``, going only where a ``Policy`` allows. The rules of
the answers (status, ranges, same file, byte caps) are ``core.transfer``'s and the urllib3 calls
``sources.connections``'; this module is the loop between them and keeps the time. It is
synchronous and runs in the engine's worker thread. What the bytes are is checked by the reader.

Invariants:

- The policy decides where bytes come from: every redirect ``Location`` is passed to
  ``Policy.check`` before anything connects to it, and the connection goes to the endpoint (and
  pinned address) it returned. A refused redirect is a ``TransferError`` saying why.
- Time limits per transfer: a total deadline (from the first request to the last byte, the
  consumer's own time included); connecting within ``connect_timeout_s``; and a stall rule over
  time spent waiting on the network only, so a slow consumer is not taken for a slow server:
  nothing for ``min_rate_window_s``, or under ``min_rate_bps`` across a full window.
- Only ``TransferError`` (an ``AcquireError``) leaves a ``Download``, with the ``Fault`` for
  edges that speak another family (python-tuf's). A download that failed stays
  failed. Messages are plain sentences naming hosts and paths, never query strings.
- Memory per transfer is one read chunk (``CHUNK_BYTES``), whatever the size of the file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self, TypeVar
from urllib.parse import urljoin

from sysupd.core.transfer import (
    Fault,
    ProgressPace,
    RateWatch,
    Redirect,
    Refuse,
    Skip,
    TransferRules,
)
from sysupd.sources.connections import (
    Dropped,
    Endpoint,
    Policy,
    Pools,
    Response,
    TimedOut,
    TransferError,
    discard,
    peer,
    read_some,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "CHUNK_BYTES",
    "Closing",
    "Download",
    "Endpoint",
    "FetchLimits",
    "Policy",
    "Pools",
    "Progress",
    "TransferError",
]

_T = TypeVar("_T")

CHUNK_BYTES: Final = 64 * 1024
"""The largest piece read from the network and handed out at once."""

Progress = Callable[[int, int | None], None]
"""``progress(received, size)``: bytes handed out, and the file's size if known."""


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """The bounds of one transfer: bytes (``None``: the caller caps), seconds, bytes per second,
    redirects and resumes."""

    max_bytes: int | None = None
    deadline_s: float = 3600
    min_rate_bps: int = 1024
    min_rate_window_s: float = 30
    connect_timeout_s: float = 10
    max_redirects: int = 5
    resume_tries: int = 3

    def __post_init__(self) -> None:
        counts = (self.max_bytes or 0, self.min_rate_bps, self.max_redirects, self.resume_tries)
        if min(counts) < 0:
            raise ValueError("byte, rate, redirect and resume limits must not be negative")
        if min(self.deadline_s, self.min_rate_window_s, self.connect_timeout_s) <= 0:
            raise ValueError("time limits must be positive")


class Closing:
    """``with`` closes it."""

    def close(self) -> None:
        """Release what it holds."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Download(Closing):
    """The body of one URL as a blocking byte stream, across redirects and resumes: the one
    transfer loop. Memory is one chunk whatever the size of the file.

    ``open`` sends the request, follows redirects and takes the first answer, so ``size`` is
    known (or ``None``) after it; then ``read`` until it returns ``b""``. ``max_bytes`` (if given)
    replaces the limits' cap, called ``limit_name`` in messages. ``progress(received, size)`` is
    called from the reading thread at least every MiB or second and once at the end. Only
    ``TransferError`` leaves. A download that failed stays failed: every later read raises
    again. ``close`` (or leaving ``with``) drops an unfinished transfer, and closes ``pools``
    with ``own_pools``. Not thread-safe.
    """

    def __init__(
        self,
        policy: Policy,
        endpoint: Endpoint,
        limits: FetchLimits,
        pools: Pools,
        *,
        own_pools: bool = False,
        progress: Progress | None = None,
        max_bytes: int | None = None,
        limit_name: str = "the limit",
    ) -> None:
        self._endpoint = endpoint
        self._address = endpoint.address
        self._policy = policy
        self._limits = limits
        self._pools = pools
        self._own_pools = own_pools
        self._progress = progress
        self._rules = TransferRules(
            endpoint.path,
            max_bytes=limits.max_bytes if max_bytes is None else max_bytes,
            max_redirects=limits.max_redirects,
            resume_tries=limits.resume_tries,
            limit_name=limit_name,
            tolerance=policy.tolerance,
        )
        self._response: Response | None = None
        self._skip = 0
        self._deadline = math.inf
        self._net_s = 0.0
        self._net_bytes = 0
        self._rate = RateWatch(limits.min_rate_window_s, limits.min_rate_bps)
        self._pace = ProgressPace(0.0)
        self._pending = memoryview(b"")
        self._failed: TransferError | None = None
        self._done = False
        self._closed = False

    @property
    def size(self) -> int | None:
        """The file's size in bytes as the server announced it; ``None`` if it did not."""
        return self._rules.size

    @property
    def url(self) -> str:
        """The URL the bytes come from, after redirects."""
        return self._endpoint.url

    @property
    def host(self) -> str:
        """The host of ``url``."""
        return self._endpoint.host

    @property
    def address(self) -> str | None:
        """The IP address connected to, once known."""
        return self._address

    def open(self) -> Self:
        """Send the request, follow redirects and take the answer; once.

        Raises:
            TransferError: as the module docstring says; the download is closed.
        """
        if self._deadline != math.inf or self._closed:
            raise RuntimeError("a download is opened once")
        now = time.monotonic()
        self._deadline = now + self._limits.deadline_s
        self._pace = ProgressPace(now)
        self._guarded(lambda: self._request({}))
        return self

    def read(self, n: int, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at the end (or for ``n == 0``).

        Raises:
            TransferError: the transfer failed, now or earlier, or the download is closed.
            ValueError: ``n`` is negative (the body is never read whole).
        """
        if n < 0:
            raise ValueError("Download.read needs a size")
        if not self._fill() or n == 0:
            return b""
        data = bytes(self._pending[:n])
        self._pending = self._pending[n:]
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Fill ``buffer`` with up to its length of bytes; 0 only at the end.

        Raises:
            TransferError: as ``read``.
        """
        view = memoryview(buffer).cast("B")
        if not self._fill() or not len(view):
            return 0
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        """Drop the connection of an unfinished transfer; later reads raise ``TransferError``."""
        self._closed = True
        self._pending = memoryview(b"")
        self._drop()
        if self._own_pools:
            self._pools.close()

    def _fill(self) -> bool:
        """True when bytes are pending; false at the end."""
        if self._failed is not None:
            raise self._failed.again() from self._failed
        if self._closed:
            raise TransferError("the download was closed")
        while not self._pending and not self._done:
            chunk = self._guarded(self._next)
            self._done = not chunk
            self._pending = memoryview(chunk)
        return bool(self._pending)

    def _guarded(self, step: Callable[[], _T]) -> _T:
        """``step()``, with every failure a ``TransferError`` that closes the download."""
        try:
            return step()
        except Exception as exc:
            if isinstance(exc, TransferError):
                self._failed = exc
            elif isinstance(exc, Dropped):  # only a first request's: later ones are resumed
                self._failed = TransferError(str(exc))
            else:
                self._failed = TransferError(f"the download{self._rules.of_path} failed: {exc!r}")
            self.close()
            if self._failed is exc:
                raise
            raise self._failed from exc

    def _next(self) -> bytes:
        while (response := self._response) is not None:
            try:
                data = self._read_body(response)
            except Dropped as exc:
                self._resume(str(exc))
                continue
            if not data:
                if short := self._rules.ended():
                    self._resume(short)
                    continue
                self._response = None
                response.release_conn()
                self._report(final=True)
                return b""
            if refusal := self._rules.take(len(data)):
                raise TransferError.of(refusal)
            self._report(final=False)
            return data
        return b""

    def _read_body(self, response: Response) -> bytes:
        while True:
            data = self._read_some(response, min(self._skip, CHUNK_BYTES) or CHUNK_BYTES)
            if not self._skip:
                return data
            if not data:
                raise Dropped(f"the connection ended {self._skip} bytes before the resume point")
            self._skip -= len(data)

    def _read_some(self, response: Response, n: int) -> bytes:
        wait_s = self._wait_s(self._limits.min_rate_window_s)
        broke = (
            f"the connection to {self._endpoint.where} broke after {self._rules.received} bytes"
            f"{self._rules.of_path}"
        )
        start = time.monotonic()
        try:
            data = read_some(response, n, wait_s, broke)
        except TimedOut as exc:
            stalled = f"the transfer{self._rules.of_path} stalled: nothing arrived for {wait_s:g} s"
            raise self._timed_out(stalled) from exc
        finally:
            self._net_s += time.monotonic() - start
        self._net_bytes += len(data)
        if self._rate.stalled(self._net_s, self._net_bytes):
            limits = self._limits
            raise TransferError(
                f"the transfer{self._rules.of_path} stalled: less than {limits.min_rate_bps} "
                f"bytes/s over {limits.min_rate_window_s:g} s",
                Fault.TIME,
            )
        if time.monotonic() >= self._deadline:
            raise self._timed_out("")
        return data

    def _resume(self, reason: str) -> None:
        while True:
            self._drop()
            decision = self._rules.dropped(reason)
            if isinstance(decision, Refuse):
                raise TransferError.of(decision)
            try:
                self._request(decision.headers)
            except Dropped as exc:
                reason = str(exc)
                continue
            return

    def _request(self, headers: Mapping[str, str]) -> None:
        """Ask for the file with ``headers``, following redirects; take the answer or refuse it."""
        while True:
            response = self._send(headers)
            try:
                decision = self._rules.answer(response.status, response.headers)
                if isinstance(decision, Refuse | Redirect):
                    discard(response)
                if isinstance(decision, Refuse):
                    raise TransferError.of(decision)
                if not isinstance(decision, Redirect):
                    self._address = self._address or peer(response)
            except BaseException:
                discard(response)  # the pool's slot comes back whatever went wrong
                raise
            if isinstance(decision, Redirect):
                self._follow(decision.location)
                continue
            self._skip = decision.count if isinstance(decision, Skip) else 0
            self._response = response
            return

    def _follow(self, location: str) -> None:
        try:
            self._endpoint = self._policy.check(urljoin(self._endpoint.url, location))
        except ValueError as exc:
            raise TransferError(f"a redirect was refused{self._rules.for_path}: {exc}") from exc
        self._address = self._endpoint.address
        self._rules.redirected_to(self._endpoint.path)

    def _send(self, headers: Mapping[str, str]) -> Response:
        connect_s = self._wait_s(self._limits.connect_timeout_s)
        read_s = self._wait_s(self._limits.min_rate_window_s)
        start = time.monotonic()
        try:
            return self._pools.send(self._endpoint, headers, connect_s=connect_s, read_s=read_s)
        except TimedOut as exc:
            raise self._timed_out(
                f"{self._endpoint.where} did not answer the request{self._rules.for_path} in time "
                f"(connect within {connect_s:g} s, answer within {read_s:g} s)"
            ) from exc
        finally:
            self._net_s += time.monotonic() - start

    def _wait_s(self, limit_s: float) -> float:
        """``limit_s``, cut to the time left before the deadline (raises once it has passed)."""
        left_s = self._deadline - time.monotonic()
        if left_s <= 0:
            raise self._timed_out("")
        return min(limit_s, left_s)

    def _timed_out(self, reason: str) -> TransferError:
        """``reason`` as an error, unless the deadline passed: then that is the reason."""
        if not reason or time.monotonic() >= self._deadline:
            deadline_s = self._limits.deadline_s
            reason = f"the download{self._rules.of_path} did not finish within {deadline_s:g} s"
        return TransferError(reason, Fault.TIME)

    def _report(self, *, final: bool) -> None:
        received = self._rules.received
        if self._progress is not None and self._pace.due(received, time.monotonic(), final=final):
            self._progress(received, self.size)

    def _drop(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            discard(response)
