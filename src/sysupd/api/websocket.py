"""One WebSocket session: reading frames, answering them in order, and pushing events.

Outgoing frames go through a bounded queue drained by a writer task. Replies wait for room in it
(backpressure on the client that sent the requests, and on nobody else); events never wait: a
session whose queue is full is judged stuck and closed. The socket must log in within the login
deadline; its token must stay live, or its calls are refused with 401 and it gets no events.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from sysupd.api.calls import SERVICE_KEY, CallContext
from sysupd.core.envelope import EnvelopeError, encode_error, encode_reply, parse_request
from sysupd.core.sessions import SessionState, SessionStateMachine
from sysupd.errors import ClientError
from sysupd.store.users import User

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = ["WsSession", "handle_websocket"]

_CLOSE = object()  # queued by log_out: send what came before, then close


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
        self.user: User | None = None
        self._ws = ws
        self._state = SessionStateMachine()
        self._token: str | None = None
        self._queue: asyncio.Queue[str | object] = asyncio.Queue(
            service.config.session_queue_frames
        )
        self._writer: asyncio.Task[None] | None = None

    @property
    def state(self) -> SessionState:
        """Where the session stands."""
        return self._state.state

    def log_in(self, user: User, token: str) -> None:
        """Bind the session to ``user``; a previous token of the session dies."""
        if self._token is not None:
            self.service.auth.revoke(self._token)
        self._state.move(SessionState.AUTHENTICATED)
        self.user, self._token = user, token

    def log_out(self) -> None:
        """``rpc/auth_clear``: the token dies, and the socket closes once queued frames are out."""
        if self._token is not None:
            self.service.auth.revoke(self._token)
        self._token = None
        self.user = None
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_CLOSE)

    async def close(self, code: int) -> None:
        """Close the socket from the server's side (service shutdown)."""
        self._close_state()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(code=code), timeout=1.0)

    def wants_events(self) -> bool:
        """Logged in with a live token."""
        return (
            self._state.state is SessionState.AUTHENTICATED
            and self._token is not None
            and self.service.auth.is_live(self._token)
        )

    def offer(self, frame: str) -> None:
        """Queue an event; a full queue means the client is not reading: close it."""
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.service.log.warning(
                f"closing websocket from {self.address}: it fell "
                f"{self._queue.maxsize} frames behind"
            )
            self._abort()

    async def run(self) -> None:
        """Serve the socket until it closes."""
        self._writer = asyncio.create_task(self._write_loop())
        deadline = asyncio.get_running_loop().call_later(
            self.service.config.login_timeout_s, self._login_deadline
        )
        try:
            await self._read_loop()
        finally:
            deadline.cancel()
            self._close_state()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _read_loop(self) -> None:
        async for msg in self._ws:
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
        except ClientError as exc:
            await self._send(encode_error(request.id, exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not take the socket down
            await self._send(encode_error(request.id, self.service.internal_error(request, exc)))
            return
        if result is not None:
            await self._send(encode_reply(request.id, result))

    def _current_user(self) -> User | None:
        if self._token is None:
            return None
        user = self.service.auth.touch(self._token)
        if user is None:
            self._token = None
            self.user = None
        else:
            self.user = user
        return user

    async def _send(self, frame: str) -> None:
        if self._state.state is not SessionState.CLOSED:
            await self._queue.put(frame)

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                if frame is _CLOSE:
                    await self._ws.close()
                    return
                assert isinstance(frame, str)
                await self._ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            # The peer went away mid-send; the read loop sees the close and ends the session.
            return

    def _login_deadline(self) -> None:
        if self._state.state is SessionState.CONNECTED:
            self.service.log.info(f"closing websocket from {self.address}: no login in time")
            asyncio.get_running_loop().create_task(
                self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"login deadline")
            )

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        self._close_state()
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()

    def _close_state(self) -> None:
        if self._state.state is not SessionState.CLOSED:
            self._state.move(SessionState.CLOSED)
            # The token outlives the socket on purpose: a client that lost its connection
            # logs in again with rpc/auth_token. Only rpc/auth_clear kills it.
            self.service.events.unsubscribe(self)


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    """The WebSocket listener's handler for ``/`` and ``/websocket``."""
    service: Service = request.app[SERVICE_KEY]
    ws = web.WebSocketResponse(max_msg_size=service.config.max_frame_bytes, decode_text=False)
    await ws.prepare(request)
    address = request.remote or "unknown"
    session = WsSession(service, ws, address, request.transport)
    service.log.info(f"websocket opened from {address}")
    service.events.subscribe(session)
    service.sessions.add(session)
    try:
        await session.run()
    finally:
        service.sessions.discard(session)
        service.log.info(f"websocket closed from {address}")
    return ws
