"""The update server's chunk store, as the delta installer's ``ChunkSource``: aiohttp's client.

Chunks are plain files under ``<update server>/targets/chunks/``; each is fetched whole, capped at
its signed stored length. What the bytes are is checked by the delta fetcher, not here. The
fetcher runs its requests as coroutines on one thread (see ``sysupd.delta.fetch`` for why), so
this is the one client of the project that is not ``sources.http``'s blocking stack; it keeps
that stack's rules for the only URLs it fetches, which it makes itself from the signed index.

Invariants:

- Origin-locked by construction: every URL is the store's base (the update server's, from the
  online channel) plus a store path made from a signed digest (``chunks/ab/<hex>.zst``); a
  redirect is refused, not followed. With a pinned ``address`` (a ``fetch_url`` repository whose
  host was checked and resolved once) only that address is connected to, while the URL's host
  still names the server in ``Host``, TLS's SNI and the certificate check.
- Nothing comes from the environment (no proxy variables, no netrc), no cookies are kept, every
  request says ``Accept-Encoding: identity`` and nothing is decoded.
- Limits per request, as the update server's other transfers have them: connecting within
  ``connect_timeout_s``; a stall (nothing for ``min_rate_window_s``, or under ``min_rate_bps``
  over a window); the deadline the fetcher gives; at most the chunk's signed stored length (a
  longer body is refused at once, not read on). A connection that breaks is asked again, up to
  ``resume_tries`` times.
- Errors: ``MissingChunk`` for 404 and 410, ``AcquireError`` for anything else, naming the host
  and the chunk's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from sysupd import __version__
from sysupd.delta.fetch import ChunkGet, MissingChunk
from sysupd.errors import AcquireError
from sysupd.sources.http import FetchLimits

__all__ = ["ServerChunks"]

_READ_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerChunks:
    """The chunk store under ``targets_url`` (``…/targets/``) of the update server."""

    targets_url: str
    limits: FetchLimits
    address: str | None = None
    """The only address connected to, if set."""
    ssl_context: ssl.SSLContext | None = None
    """Replaces the system's trust store for https; it must require certificates."""

    @property
    def where(self) -> str:
        """The server's host and port."""
        return f"the update server {urlsplit(self.targets_url).netloc}"

    @contextlib.asynccontextmanager
    async def open(self, parallel: int) -> AsyncIterator[ChunkGet]:
        """A client for the running event loop, for up to ``parallel`` requests at a time."""
        if self.ssl_context is not None and self.ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise AcquireError("the TLS context for the chunk store must require certificates")
        resolver = None if self.address is None else _Pinned(self.address)
        connector = aiohttp.TCPConnector(
            limit=max(1, parallel),
            resolver=resolver,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            headers={"User-Agent": f"sysupd/{__version__}", "Accept-Encoding": "identity"},
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.limits.connect_timeout_s,
                sock_read=self.limits.min_rate_window_s,
            ),
        )
        async with session:
            yield lambda path, max_bytes, deadline_s: self._get(
                session, path, max_bytes, deadline_s
            )

    async def _get(
        self, session: aiohttp.ClientSession, path: str, max_bytes: int, deadline_s: float
    ) -> bytes:
        """The stored chunk at ``path`` under the targets, asked again when the connection
        breaks.

        Raises:
            MissingChunk: the server answered 404 or 410.
            AcquireError: any other failure.
        """
        url = f"{self.targets_url}{path}"
        where = urlsplit(url).netloc
        deadline = time.monotonic() + deadline_s
        tries = 0
        while True:
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    return await self._once(session, url, path, max_bytes)
            except aiohttp.ConnectionTimeoutError as exc:
                raise AcquireError(
                    f"could not connect to {where} within {self.limits.connect_timeout_s:g} s"
                ) from exc
            except aiohttp.ClientConnectorCertificateError as exc:
                host = urlsplit(url).hostname
                raise AcquireError(
                    f"the certificate of {host} is not trusted: {exc.certificate_error}"
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                raise AcquireError(f"could not connect to {where}: {exc.os_error}") from exc
            except TimeoutError as exc:
                if time.monotonic() >= deadline:
                    raise AcquireError(
                        f"chunk {path} did not arrive from {where} within the time limit"
                    ) from exc
                raise AcquireError(
                    f"the transfer of chunk {path} from {where} stalled: nothing arrived for "
                    f"{self.limits.min_rate_window_s:g} s"
                ) from exc
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, OSError) as exc:
                tries += 1
                if tries > self.limits.resume_tries:
                    raise AcquireError(
                        f"the connection to {where} broke while fetching chunk {path}: {exc}"
                    ) from exc
            except aiohttp.ClientError as exc:
                raise AcquireError(f"fetching chunk {path} from {where} failed: {exc}") from exc

    async def _once(
        self, session: aiohttp.ClientSession, url: str, path: str, max_bytes: int
    ) -> bytes:
        where = urlsplit(url).netloc
        async with session.get(url, allow_redirects=False) as response:
            status = response.status
            if status in (404, 410):
                raise MissingChunk(f"{where} has no chunk {path} (HTTP {status})")
            if status != 200:
                raise AcquireError(
                    f"{where} answered HTTP {status} for chunk {path}"
                    + (" (redirects are not followed)" if 300 <= status < 400 else "")
                )
            announced = response.content_length
            if announced is not None and announced > max_bytes:
                raise AcquireError(
                    f"chunk {path} from {where} is {announced} bytes, more than its signed "
                    f"length ({max_bytes})"
                )
            return await self._body(response, path, where, max_bytes)

    async def _body(
        self, response: aiohttp.ClientResponse, path: str, where: str, max_bytes: int
    ) -> bytes:
        """The body, refused as soon as it passes ``max_bytes`` or goes under the minimum
        rate over a full window."""
        limits = self.limits
        parts: list[bytes] = []
        received = 0
        started = time.monotonic()
        while piece := await response.content.read(_READ_BYTES):
            received += len(piece)
            if received > max_bytes:
                raise AcquireError(
                    f"chunk {path} from {where} is longer than its signed length ({max_bytes})"
                )
            parts.append(piece)
            elapsed = time.monotonic() - started
            if elapsed >= limits.min_rate_window_s and received < limits.min_rate_bps * elapsed:
                raise AcquireError(
                    f"the transfer of chunk {path} from {where} stalled: less than "
                    f"{limits.min_rate_bps} bytes/s over {limits.min_rate_window_s:g} s"
                )
        return b"".join(parts)


class _Pinned(AbstractResolver):
    """Resolves every host to the one pinned address."""

    def __init__(self, address: str) -> None:
        self._address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        kind = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        return [
            {
                "hostname": host,
                "host": self._address,
                "port": port,
                "family": kind,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        """Nothing to release."""


def _loop_time(deadline: float) -> float:
    """``deadline`` (``time.monotonic``) on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
