"""The urllib3 edge of the HTTP stack: pools per endpoint, one request, one read.

Responsibility: connect to an ``Endpoint`` (its pinned address if it has one, else its host),
send one GET and read the body a piece at a time, turning urllib3's and the socket's exceptions
into three plain outcomes: ``Dropped`` (a new request may cure it), ``TimedOut`` (the wait given
ran out) and ``TransferError`` (it will not get better: TLS, a refused request). Which request
to send, how long to wait and what to make of the answer is ``sources.http``'s.

Invariants:

- Nothing comes from the environment: pools never read proxy variables or netrc, and keep no
  cookies. Every request says ``Accept-Encoding: identity`` and ``Host`` is the URL's host, also
  when the connection goes to a pinned address; content is never decoded.
- https always verifies the certificate and the URL's host name, against the system's CAs or the
  given context, which must require certificates. The caller's context is not changed to do so.
- Messages name hosts and ports, never URLs.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import urllib3
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError, SSLError
from urllib3.util import parse_url
from urllib3.util.ssl_match_hostname import CertificateError

from sysupd import __version__
from sysupd.core.transfer import Fault, Refuse, Tolerance
from sysupd.errors import AcquireError

__all__ = [
    "DEFAULT_PORTS",
    "Dropped",
    "Endpoint",
    "Policy",
    "Pools",
    "Response",
    "TimedOut",
    "TransferError",
    "discard",
    "peer",
    "read_some",
]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_BROKEN: Final = (ProtocolError, SSLError, http.client.HTTPException, OSError)

Response = urllib3.BaseHTTPResponse


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL allowed by a policy: its host and port, and the address to connect to (``None``:
    resolve the host when connecting)."""

    url: str
    host: str
    port: int
    address: str | None = None

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        return self.url.partition(":")[0].lower()

    @property
    def path(self) -> str:
        """The URL's path, the only part of it that error messages name."""
        return parse_url(self.url).path or "/"

    @property
    def where(self) -> str:
        """``host:port``, for messages."""
        return f"{self.host}:{self.port}"


class Policy(Protocol):
    """Where a transfer may go (an origin lock, allowed networks), and how lenient its rules are
    where leniency is safe (``tolerance``)."""

    @property
    def tolerance(self) -> Tolerance:
        """The rules' leniency for this policy's downloads."""
        ...

    def check(self, url: str) -> Endpoint:
        """Where ``url`` is fetched from.

        Raises:
            ValueError: ``url`` may not be fetched; the message says why.
        """
        ...


class TransferError(AcquireError):
    """A transfer failed; ``fault`` (and ``status``) say how, for edges with their own errors."""

    def __init__(
        self, reason: str, fault: Fault = Fault.TRANSFER, status: int | None = None
    ) -> None:
        super().__init__(reason)
        self.fault = fault
        self.status = status

    @classmethod
    def of(cls, refusal: Refuse) -> TransferError:
        """The error saying ``refusal``."""
        return cls(refusal.reason, refusal.fault, refusal.status)

    def again(self) -> TransferError:
        """A copy, raised by every read after the first failure."""
        return TransferError(str(self), self.fault, self.status)


class Dropped(Exception):
    """The connection broke, or could not be made; a new request may cure it."""


class TimedOut(Exception):
    """Nothing arrived within the wait given."""


class Pools:
    """urllib3 connection pools, one per endpoint, made on first use; thread-safe.

    Raises:
        ValueError: ``ssl_context`` does not require certificates.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, maxsize: int = 1) -> None:
        if ssl_context is not None and ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the TLS context must require and verify certificates")
        self._ssl_context = ssl_context
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, int, str | None], urllib3.HTTPConnectionPool] = {}

    def send(
        self, endpoint: Endpoint, headers: Mapping[str, str], *, connect_s: float, read_s: float
    ) -> Response:
        """GET ``endpoint`` with ``headers``; the answer's body is left unread.

        Raises:
            Dropped: the connection could not be made or broke.
            TimedOut: connecting, TLS or the answer took longer than allowed.
            TransferError: TLS failed (an untrusted certificate, …), or urllib3 refused.
        """
        try:
            return self._pool(endpoint).urlopen(
                "GET",
                parse_url(endpoint.url).request_uri,
                headers={**_headers(endpoint), **headers},
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=connect_s, read=read_s),
                preload_content=False,
                decode_content=False,
                release_conn=False,
            )
        except NewConnectionError as exc:  # before TimeoutError: it is one in urllib3
            raise Dropped(f"could not connect to {endpoint.where}: {_reason(exc)}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise TimedOut(str(exc)) from exc
        except SSLError as exc:
            raise TransferError(_tls_failure(endpoint, exc)) from exc
        except _BROKEN as exc:
            raise Dropped(f"the connection to {endpoint.where} broke: {_reason(exc)}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise TransferError(f"the request to {endpoint.where} failed: {_reason(exc)}") from exc

    def close(self) -> None:
        """Close every pool; transfers still running fail."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _pool(self, endpoint: Endpoint) -> urllib3.HTTPConnectionPool:
        key = (endpoint.scheme, endpoint.host, endpoint.port, endpoint.address)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = self._new(endpoint)
            return pool

    def _new(self, endpoint: Endpoint) -> urllib3.HTTPConnectionPool:
        connect_to = endpoint.address or endpoint.host
        if endpoint.scheme != "https":
            return urllib3.HTTPConnectionPool(
                connect_to, endpoint.port, maxsize=self._maxsize, retries=False
            )
        # server_hostname puts the URL's host into SNI and the certificate check when the
        # connection goes to a pinned address. (assert_hostname would do the same check, but in
        # urllib3 it also switches check_hostname off on the caller's context.)
        return urllib3.HTTPSConnectionPool(
            connect_to,
            endpoint.port,
            maxsize=self._maxsize,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ssl_context=self._ssl_context,
            server_hostname=endpoint.host,
        )


def read_some(response: Response, n: int, wait_s: float, broke: str) -> bytes:
    """Up to ``n`` bytes of the body, waiting at most ``wait_s`` for them; ``b""`` at its end.

    Raises:
        Dropped: the connection broke (``broke`` and the reason say so).
        TimedOut: nothing arrived within ``wait_s``.
    """
    sock = getattr(response.connection, "sock", None)
    if sock is not None:
        sock.settimeout(wait_s)  # the pool set a timeout per request; this one is per read
    try:
        return response.read1(n, decode_content=False) or b""
    except ReadTimeoutError as exc:
        raise TimedOut(str(exc)) from exc
    except _BROKEN as exc:
        raise Dropped(f"{broke}: {_reason(exc)}") from exc


def peer(response: Response) -> str | None:
    """The IP address ``response`` came from, if its socket still says."""
    sock = getattr(response.connection, "sock", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else None
    except OSError:
        return None


def discard(response: Response) -> None:
    """Close ``response`` and its connection, handing the pool slot back."""
    response.close()
    response.release_conn()


def _headers(endpoint: Endpoint) -> dict[str, str]:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    if endpoint.port != DEFAULT_PORTS.get(endpoint.scheme):
        host = f"{host}:{endpoint.port}"
    return {"Host": host, "User-Agent": f"sysupd/{__version__}", "Accept-Encoding": "identity"}


def _tls_failure(endpoint: Endpoint, exc: SSLError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or str(cause)
            return f"the certificate of {endpoint.host} is not trusted: {reason}"
        if isinstance(cause, CertificateError):  # urllib3's own check of the host name
            return f"the certificate of {endpoint.host} is not trusted: {cause}"
        cause = cause.__cause__ or cause.__context__
    return f"TLS with {endpoint.where} failed: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    """The innermost plain reason of a urllib3 or socket error."""
    while isinstance(exc, urllib3.exceptions.HTTPError) and exc.__context__ is not None:
        exc = exc.__context__
    if isinstance(exc, http.client.IncompleteRead):
        return "it closed before the end of the body"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
