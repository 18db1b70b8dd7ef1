"""The listeners' guard: caps on connections, idle and slow connections closed, noise counted.

aiohttp takes whatever connects and waits for it as long as it likes; a few hundred idle sockets
then hold every descriptor the process has, and nothing works. Every listener's connections go
through one ``ConnectionGuard``:

- at most ``total`` connections, at most ``per_address`` from one address (an IPv6 /64 counts as
  one, as for the login throttle); over the total, the oldest connection that has not sent a
  request is dropped for the newcomer (an idle flood never locks out a client that talks), and
  only when every connection is busy is the newcomer refused;
- a connection must finish a request's headers within ``idle_timeout_s`` of its start or of the
  end of its previous answer (idle, slow headers, a stalled TLS handshake and keep-alive all
  end there); a request being handled follows its own rules, and its answer is written under a
  send deadline before the idle timer starts again;
- a WebSocket that has not logged in yet has no timer of its own (the session's login deadline
  applies) but may be dropped for a newcomer like an idle connection (``await_login``);
- refusals, drops and accept failures are logged once, then counted per interval, never a line
  (or a traceback) per attempt.

TLS is started here (``loop.start_tls``) rather than by the server, so the guard sees a
connection from its first byte, before the handshake.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseSite

from sysupd.api.auth import throttle_key
from sysupd.core.limits import ConnectionLimits
from sysupd.servicelog import ServiceLog

__all__ = ["ConnectionGuard", "GuardedSite"]

NOISE_INTERVAL_S = 60.0
"""How often counted connection noise is written to the log."""

ACCEPT_BURST = 16
"""Connections asyncio accepts in one go: each holds a descriptor until the guard has dropped
it, so a burst must fit in the descriptors kept in reserve (``core.limits``)."""

ACCEPT_QUEUE = 4096
"""The kernel's queue of connections waiting to be accepted: long, so that under a flood a
client's connection waits its turn instead of being dropped (and retried a second later)."""

MIN_SEND_S = 60.0
"""The least time an answer gets to be written to a slow reader (see ``send_deadline_s``)."""


class ConnectionGuard:
    """The caps and timers of every listener's connections."""

    def __init__(self, limits: ConnectionLimits, log: ServiceLog) -> None:
        self.limits = limits
        self._log = log
        self._open: dict[_GuardedProtocol, None] = {}
        self._waiting: dict[_GuardedProtocol, None] = {}
        """Open connections with no request in hand, oldest first."""
        self._per_address: Counter[str] = Counter()
        self._by_transport: dict[asyncio.BaseTransport, _GuardedProtocol] = {}
        self._noise: Counter[str] = Counter()
        self._noise_from: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    @property
    def send_deadline_s(self) -> float:
        """How long an answer may take to be written: long enough for a few MB to a slow reader,
        bounded so a client that reads nothing is dropped in the end."""
        return max(MIN_SEND_S, 4 * self.limits.idle_timeout_s)

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    def protocol_factory(
        self, server: Callable[[], asyncio.Protocol], tls: ssl.SSLContext | None
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that guards ``server``'s connections."""
        return lambda: _GuardedProtocol(self, server, tls)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks a connection busy while one of its requests is handled and its answer is
        written (under ``send_deadline_s``): only then does the idle timer start again."""
        guarded = self._by_transport.get(request.transport) if request.transport else None
        if guarded is not None:
            guarded.busy()
        try:
            response = await handler(request)
            if guarded is not None and not response.prepared:
                # aiohttp would write it after we return, with the idle timer already running
                # and the connection evictable; written here, it prepares nothing twice.
                try:
                    async with asyncio.timeout(self.send_deadline_s):
                        await response.prepare(request)
                        await response.write_eof()
                        await _drained(request)
                except (TimeoutError, ConnectionError):
                    self._count(
                        f"closed after {self.send_deadline_s:g} s writing an answer",
                        guarded.address,
                    )
                    guarded.abort()
            return response
        finally:
            if guarded is not None:
                guarded.idle()

    def await_login(self, transport: asyncio.BaseTransport | None) -> None:
        """A WebSocket on ``transport`` is open but not logged in: no idle timer (its login
        deadline applies), but it may be dropped for a newcomer like an idle connection."""
        guarded = self._by_transport.get(transport) if transport is not None else None
        if guarded is not None:
            self.set_waiting(guarded, True)

    def logged_in(self, transport: asyncio.BaseTransport | None) -> None:
        """The WebSocket on ``transport`` logged in: it is busy until it closes."""
        guarded = self._by_transport.get(transport) if transport is not None else None
        if guarded is not None:
            self.set_waiting(guarded, False)

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's: an accept that fails for want of descriptors is counted, not
        logged with a traceback each time the loop retries it."""
        if context.get("message") == "socket.accept() out of system resource":
            exc = context.get("exception")
            self._count("accept failed", getattr(exc, "strerror", None) or str(exc))
            return
        loop.default_exception_handler(context)

    def close(self) -> None:
        """Write out the counted noise."""
        if self._flush is not None:
            self._flush.cancel()
            self._write_noise()

    # -- what the protocols call ---------------------------------------------------------------

    def admit(self, guarded: _GuardedProtocol) -> bool:
        """Whether a new connection may stay (making room if an idle one can go)."""
        address = guarded.key
        if self._per_address[address] >= self.limits.per_address:
            self._count(f"refused over the {self.limits.per_address} per address", address)
            return False
        if len(self._open) >= self.limits.total:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self._count(f"refused over the {self.limits.total} in all", address)
                return False
            self._count("idle connections dropped for newer ones", victim.address)
            victim.abort()
        self._open[guarded] = None
        self._waiting[guarded] = None
        self._per_address[address] += 1
        return True

    def bind(self, transport: asyncio.BaseTransport, guarded: _GuardedProtocol) -> None:
        """``transport`` (plain or TLS) carries ``guarded``'s requests."""
        self._by_transport[transport] = guarded

    def set_waiting(self, guarded: _GuardedProtocol, waiting: bool) -> None:
        """A connection has a request in hand, or is waiting for its next one."""
        self._waiting.pop(guarded, None)
        if waiting and guarded in self._open:
            self._waiting[guarded] = None

    def timed_out(self, guarded: _GuardedProtocol) -> None:
        """A connection sent no complete request in time."""
        self._count(
            f"closed after {self.limits.idle_timeout_s:g} s without a request", guarded.address
        )

    def release(self, guarded: _GuardedProtocol) -> None:
        """A connection ended (said once or more)."""
        if self._open.pop(guarded, False) is None:
            self._waiting.pop(guarded, None)
            self._per_address[guarded.key] -= 1
            if self._per_address[guarded.key] <= 0:
                del self._per_address[guarded.key]
        for transport in guarded.transports():
            self._by_transport.pop(transport, None)

    # -- noise ---------------------------------------------------------------------------------

    def _count(self, what: str, source: str) -> None:
        if self._flush is None:  # the first of an interval is said at once
            self._log.warning(f"connections: {what}: {source}; more are counted for a minute")
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(NOISE_INTERVAL_S, self._write_noise)
            return
        self._noise[what] += 1
        self._noise_from[source] += 1

    def _write_noise(self) -> None:
        self._flush = None
        if not self._noise:
            return
        counts = ", ".join(f"{n} {what}" for what, n in self._noise.most_common())
        sources = ", ".join(f"{s}: {n}" for s, n in self._noise_from.most_common(5))
        self._log.warning(f"connections in the last minute: {counts} (from {sources})")
        self._noise.clear()
        self._noise_from.clear()


async def _drained(request: web.Request) -> None:
    """Until the answer has left the transport's buffer (``write_eof`` leaves up to its high-water
    mark there, which an idle timer's abort would throw away)."""
    transport = request.transport
    if not isinstance(transport, asyncio.WriteTransport) or not transport.get_write_buffer_size():
        return
    transport.set_write_buffer_limits(high=0, low=0)  # paused until the buffer is empty
    try:
        await request.writer.drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits()


class _GuardedProtocol(asyncio.Protocol):
    """One connection: admitted or not, timed, TLS started, then handed to aiohttp."""

    def __init__(
        self,
        guard: ConnectionGuard,
        server: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None,
    ) -> None:
        self._guard = guard
        self._server = server
        self._tls = tls
        self.address = "?"
        self.key = "?"
        """What the per-address cap counts: the address, or its IPv6 /64."""
        self._raw: asyncio.Transport | None = None
        self._app: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._early: list[bytes] = []

    def transports(self) -> list[asyncio.BaseTransport]:
        """The transports this connection is known by."""
        return [t for t in (self._raw, self._app) if t is not None]

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        self.key = throttle_key(self.address)
        if not self._guard.admit(self):
            self._ended = True
            transport.abort()
            return
        self._arm()
        if self._tls is None:
            self._hand_over(transport)
        else:
            # Not a byte may be read before the TLS layer is in place to take the ClientHello.
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self._start_tls(transport, self._tls))

    def data_received(self, data: bytes) -> None:
        if self._inner is None and self._app is not None:
            self._start_inner(self._app)
        if self._inner is not None:
            self._inner.data_received(data)
        else:  # the TLS layer hands over what came with its last handshake message at once
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None  # closes the transport: a connection that said nothing and left
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._end()

    # -- what the guard calls ------------------------------------------------------------------

    def busy(self) -> None:
        """A request's headers are in: its handler's rules apply until it ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.set_waiting(self, False)

    def idle(self) -> None:
        """The request is answered: the next one must come within the idle timeout."""
        if not self._ended:
            self._guard.set_waiting(self, True)
            self._arm()

    def abort(self) -> None:
        """Drop the connection now."""
        transport = self._app or self._raw
        if transport is not None:
            transport.abort()
        self._end()

    # -- inside --------------------------------------------------------------------------------

    async def _start_tls(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                raw,
                self,
                tls,
                server_side=True,
                ssl_handshake_timeout=self._guard.limits.idle_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, RuntimeError):
            # A failed handshake is the client's business; the socket is closed already.
            self._end()
            return
        if transport is None or self._ended:
            if transport is not None:
                transport.abort()
            self._end()
            return
        self._hand_over(transport)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        """Ready for requests; aiohttp's handler is made at the first byte, so an idle flood
        costs this small object per connection, not a whole HTTP protocol."""
        self._app = transport
        self._guard.bind(transport, self)
        if self._early:
            self._start_inner(transport)

    def _start_inner(self, transport: asyncio.Transport) -> None:
        self._inner = self._server()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.limits.idle_timeout_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self._ended:
            self._guard.timed_out(self)
            self.abort()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ended = True
        self._guard.release(self)  # idempotent


class GuardedSite(BaseSite):
    """A TCP listener whose connections go through a ``ConnectionGuard`` (TLS started there)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(runner, backlog=ACCEPT_BURST)
        self._host = host
        self._port = port
        self._guard = guard
        self._tls = tls

    @property
    def name(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.protocol_factory(server, self._tls),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )
        # asyncio gives listen() the burst size; the kernel's queue may be longer. listen()
        # again on a listening socket only resizes its queue.
        for listening in self._server.sockets:
            with socket.socket(fileno=os.dup(listening.fileno())) as same:
                same.listen(ACCEPT_QUEUE)
