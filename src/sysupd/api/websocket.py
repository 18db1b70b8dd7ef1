"""One WebSocket session: reading frames, answering them in order, and pushing events.

Outgoing frames go through a bounded queue drained by a writer task. Replies wait for room in it
(backpressure on the client that sent the requests, and on nobody else); events never wait: a
session whose queue is full, or whose socket accepts nothing for ``send_timeout_s``, is judged
stuck and aborted — its transport dropped and its handler cancelled, so nothing of it lingers.
The socket must log in within the login deadline; its token must stay live, or its calls are
refused with 401 and it gets no events. After ``rpc/auth_clear`` no further frame is read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from sysupd.api.calls import SERVICE_KEY, CallContext
from sysupd.api.http import error_response, refuse_cross_site
from sysupd.core.envelope import EnvelopeError, encode_error, encode_reply, parse_request
from sysupd.core.sessions import SessionState, SessionStateMachine
from sysupd.errors import Forbidden, Unauthorized
from sysupd.store.users import User

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = ["WsSession", "handle_websocket"]

_CLOSE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class _Close:
    """Queued after the last frame to send: then close with ``code``."""

    code: int
    message: bytes = b""


class WsSession:
    """The server side of one WebSocket connection."""

    def __init__(
        self,
        service: Service,
        ws: web.WebSocketResponse,
        address: str,
        transport: asyncio.BaseTransport | None,
    ) -> None:
        self.service = service
        self.address = address
        self._transport = transport
        self._ws = ws
        self._state = SessionStateMachine()
        self._token: str | None = None
        self._queue: asyncio.Queue[str | _Close] = asyncio.Queue(
            service.config.session_queue_frames
        )
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.ever_logged_in = False
        self._minted: list[str] = []

    @property
    def state(self) -> SessionState:
        """Where the session stands."""
        return self._state.state

    def log_in(self, user: User, token: str) -> None:
        """Bind the session to ``user``'s new ``token``; a previous token of the session dies.

        Raises:
            Unauthorized: the session closed while the login was being checked.
        """
        if self._state.state is SessionState.CLOSED:
            self.service.auth.revoke(token)
            raise Unauthorized("the session closed before the login completed")
        if self._token is not None:
            self.service.auth.revoke(self._token)
        self._state.move(SessionState.AUTHENTICATED)
        self._token = token
        self.ever_logged_in = True
        # No longer one the guard may drop for a newcomer.
        self.service.guard.logged_in(self._transport)

    def minted(self, token: str) -> None:
        """A spare token this session made (``rpc/token``): it dies with ``rpc/auth_clear``."""
        self._minted.append(token)

    def log_out(self) -> None:
        """``rpc/auth_clear``: the token dies, no further frame is read, the socket closes."""
        if self._token is not None:
            self.service.auth.revoke(self._token)
            self._token = None
        for spare in self._minted:
            self.service.auth.revoke(spare)
        self._minted.clear()
        self._finish(_Close(WSCloseCode.OK))

    async def close(self, code: int) -> None:
        """Close from the server's side (shutdown): queued frames first, briefly, then abort."""
        self._finish(_Close(code))
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), _CLOSE_GRACE_S)
        self._abort()

    def wants_events(self) -> bool:
        """Logged in with a live token."""
        return (
            self._state.state is SessionState.AUTHENTICATED
            and self._token is not None
            and self.service.auth.is_live(self._token)
        )

    def offer(self, frame: str) -> None:
        """Queue an event; a full queue means the client is not reading: abort it."""
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._stuck(f"it fell {self._queue.maxsize} frames behind")

    async def run(self) -> None:
        """Serve the socket until it closes."""
        self._task = asyncio.current_task()
        self._writer = asyncio.create_task(self._write_loop())
        deadline = asyncio.get_running_loop().call_later(
            self.service.config.login_timeout_s, self._login_deadline
        )
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            if self._state.state is not SessionState.CLOSED:
                raise  # cancelled from outside (shutdown), not by _abort
        finally:
            deadline.cancel()
            self._close_state()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _read_loop(self) -> None:
        async for msg in self._ws:
            if self._state.state is SessionState.CLOSED:
                break
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._handle(msg.data)
                # Yield after every frame, so a client sending a burst cannot starve the others.
                await asyncio.sleep(0)
            elif msg.type is WSMsgType.ERROR:
                break

    async def _handle(self, frame: str | bytes) -> None:
        try:
            request = parse_request(frame)
        except EnvelopeError as exc:
            await self._send(encode_error(exc.request_id, exc))
            return
        ctx = CallContext(self.service, self.address, self._current_user(), self)
        try:
            result = await self.service.calls.dispatch(ctx, request)
        except Exception as exc:  # noqa: BLE001 - a failure, even a bug, must not take the socket down
            await self._send(encode_error(request.id, self.service.wire_error(request, exc)))
            return
        if result is not None:
            await self._send(encode_reply(request.id, result))

    def _current_user(self) -> User | None:
        if self._token is None:
            return None
        user = self.service.auth.touch(self._token)
        if user is None:
            self._token = None
        return user

    async def _send(self, frame: str) -> None:
        if self._state.state is not SessionState.CLOSED:
            await self._queue.put(frame)

    async def _write_loop(self) -> None:
        timeout = self.service.config.send_timeout_s
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self._queue.get()
                # A timer handle, not wait_for: no extra task per frame on the hot path.
                guard = loop.call_later(
                    timeout, self._stuck, f"it accepted nothing for {timeout:g} s"
                )
                try:
                    if isinstance(frame, _Close):
                        await self._ws.close(code=frame.code, message=frame.message)
                        return
                    await self._ws.send_str(frame)
                finally:
                    guard.cancel()
        except (ConnectionError, RuntimeError):
            # The peer went away mid-send; the read loop sees the close and ends the session.
            return

    def _login_deadline(self) -> None:
        if self._state.state is SessionState.CONNECTED:
            # Said on the budget: an anonymous client can open many sockets that never log in.
            self.service.anonymous_line(
                self.address, f"closing websocket from {self.address}: no login in time"
            )
            self._finish(_Close(WSCloseCode.POLICY_VIOLATION, b"login deadline"))
            self._closer = asyncio.get_running_loop().create_task(self._abort_later())

    async def _abort_later(self) -> None:
        await asyncio.sleep(_CLOSE_GRACE_S)
        self._abort()

    def _finish(self, close: _Close) -> None:
        """Stop reading and queue the close frame; a session with no room for it is aborted."""
        self._close_state()
        try:
            self._queue.put_nowait(close)
        except asyncio.QueueFull:
            self._abort()

    def _stuck(self, why: str) -> None:
        self.service.log.warning(f"closing websocket from {self.address}: {why}")
        self._abort()

    def _abort(self) -> None:
        self._close_state()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _close_state(self) -> None:
        if self._state.state is not SessionState.CLOSED:
            self._state.move(SessionState.CLOSED)
            # The token outlives the socket on purpose: a client that lost its connection
            # logs in again with rpc/auth_token. Only rpc/auth_clear kills it.
            self.service.events.unsubscribe(self)


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    """The handler for ``/`` and ``/websocket`` on the WebSocket listener, and ``/websocket`` on
    the HTTP listener (ext): an upgrade from another site's page is refused before it opens."""
    service = request.app[SERVICE_KEY]
    address = request.remote or "unknown"
    try:
        refuse_cross_site(request)
    except Forbidden as exc:
        # On the budget too: any page can make a browser try this again and again.
        service.anonymous_line(
            address, f"websocket from {address} refused: {exc.details}", warning=True
        )
        return error_response(exc)
    ws = web.WebSocketResponse(max_msg_size=service.config.max_frame_bytes, decode_text=False)
    await ws.prepare(request)
    session = WsSession(service, ws, address, request.transport)
    # Until it logs in, the socket may be dropped for a newcomer like an idle connection (its
    # login deadline, not the idle timer, closes it otherwise).
    service.guard.await_login(request.transport)
    # Every socket is said while they come few; past a budget a minute, one that never logs in
    # is only counted, so anonymous open/close cycles cannot flush the log.
    # (A socket past the budget is counted when it closes, if it never logged in.)
    said = service.anonymous_line(address, f"websocket opened from {address}", count=False)
    service.events.subscribe(session)
    service.sessions.add(session)
    try:
        await session.run()
    finally:
        service.sessions.discard(session)
        if said or session.ever_logged_in:
            service.log.info(f"websocket closed from {address}")
        else:
            service.socket_lines.count(address)
    return ws
