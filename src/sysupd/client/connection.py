"""One connection to a sysupd service: calls matched to replies by id, events in order, logging
in, following events across reconnects, and uploads.

Invariants: a call never hangs once the socket is gone (it fails with ``ConnectionFailed``); events
are handed out in the order they arrived; after ``rpc/auth``/``rpc/auth_token`` the client holds
the session's token, and a reconnect spends it for a new one (``rpc/auth_token``), so a client
that follows events survives the service re-executing into a new slot. TLS goes through the
``ssl`` setting the caller hands in (a pinned fingerprint or a CA-checking context, see
``client.pinning``), for the WebSocket and the upload alike. An upload is sent under a name the
service accepts: a file's own name when it passes the service's rule, else ``upload.bundle``
(as the web page does), so an odd local name never makes an upload fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sysupd.client.address import Server
from sysupd.client.errors import ApiError, CertificateChanged, ConnectionFailed, NotLoggedIn
from sysupd.client.pinning import changed_certificate, not_tls
from sysupd.core.uploadnames import check_upload_name
from sysupd.system.tls import fingerprint_hex

__all__ = [
    "FALLBACK_UPLOAD_NAME",
    "Client",
    "Disconnected",
    "Event",
    "Login",
    "Reconnected",
    "SslSetting",
    "StreamItem",
    "probe",
    "upload_name",
]

SslSetting = ssl.SSLContext | aiohttp.Fingerprint | None
"""What aiohttp is given for TLS: ``None`` for plain http or the system's CAs."""

_MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEARTBEAT_S = 15.0
_UPLOAD_CHUNK_BYTES = 1024 * 1024
_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)
FALLBACK_UPLOAD_NAME = "upload.bundle"
"""What a file whose own name the service would refuse is sent as (the web page's choice too)."""


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login: the session's token, its idle lifetime and the user's id."""

    token: str
    ttl_s: int
    user_uuid: str


@dataclass(frozen=True, slots=True)
class Event:
    """A pushed event (``sys/update_now``, ``sys/reboot``)."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection broke while following events; the client is reconnecting."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The connection is back and logged in again."""

    attempts: int


StreamItem = Event | Disconnected | Reconnected


class Client:
    """An async client of one service."""

    def __init__(
        self,
        server: Server,
        *,
        ssl: SslSetting = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.server = server
        self.token: str | None = None
        """The session's token once logged in; a reconnect spends it for a new one."""
        self._ssl = ssl
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._closing = False

    async def __aenter__(self) -> Client:
        try:
            await self.connect()
        except BaseException:
            await self.close()  # the HTTP session is open already; __aexit__ will not run
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the WebSocket.

        Raises:
            ConnectionFailed: the service cannot be reached.
            CertificateChanged: the service's certificate is not the pinned one.
        """
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s)
            self._http = aiohttp.ClientSession(timeout=timeout)
        try:
            self._ws = await self._http.ws_connect(
                self.server.websocket_url,
                ssl=self._ssl if self._ssl is not None else True,
                heartbeat=_HEARTBEAT_S,
                max_msg_size=_MAX_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            raise self._changed(exc) from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectionFailed(
                f"{self.server.base_url} refused the WebSocket ({exc.status} {exc.message})"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if (plain := not_tls(self.server, exc)) is not None:
                raise plain from exc
            raise ConnectionFailed(f"cannot reach {self.server.base_url}: {_why(exc)}") from exc
        self._events = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))

    async def close(self) -> None:
        """Close the connection (the token lives on until it expires)."""
        self._closing = True
        await self._drop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._ws = None
        self._reader = None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(frame, dict):
                    continue
                if frame.get("namespace") == "event":
                    self._events.put_nowait(Event(str(frame.get("name")), frame.get("args") or {}))
                    continue
                future = self._pending.pop(str(frame.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(frame)
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionFailed(f"{self._where()} closed the connection"))
            self._pending.clear()
            self._events.put_nowait(None)

    # -- calls ---------------------------------------------------------------------------------

    async def request(
        self,
        namespace: str,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Send one call and return the whole reply frame (a response or an error).

        Raises:
            ConnectionFailed: not connected, the connection broke, or no reply in time.
        """
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionFailed(f"not connected to {self.server.base_url}")
        request_id = f"c{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame = {"namespace": namespace, "name": name, "id": request_id, "args": args or {}}
        try:
            await ws.send_str(json.dumps(frame))
            return await asyncio.wait_for(future, timeout_s or self._timeout_s)
        except TimeoutError as exc:
            raise ConnectionFailed(f"{self._where()} did not answer {namespace}/{name}") from exc
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            raise ConnectionFailed(f"{self._where()} closed the connection") from exc
        finally:
            self._pending.pop(request_id, None)

    async def call(
        self, call: str, args: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Make ``call`` (``"sys/info"``) and return the reply's ``args``.

        Raises:
            ApiError: the service answered with an error.
            ConnectionFailed: the connection broke or no reply came in time.
        """
        namespace, _, name = call.partition("/")
        frame = await self.request(namespace, name, args, timeout_s=timeout_s)
        if frame.get("namespace") == "error":
            raise ApiError(frame.get("args") or {})
        result = frame.get("args")
        return result if isinstance(result, dict) else {}

    # -- logging in ----------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> Login:
        """``rpc/auth``.

        Raises:
            ApiError: wrong credentials (401) or locked out (429).
            ConnectionFailed: the connection broke.
        """
        return self._logged_in(
            await self.call("rpc/auth", {"username": username, "password": password})
        )

    async def resume(self, token: str) -> Login:
        """``rpc/auth_token``: log in with a token, which is spent for a new one.

        Raises:
            NotLoggedIn: the token expired or was revoked.
            ConnectionFailed: the connection broke.
        """
        try:
            reply = await self.call("rpc/auth_token", {"token": token})
        except ApiError as exc:
            if exc.code in ("401", "400"):
                raise NotLoggedIn(f"the login has ended ({exc.details or exc.message})") from exc
            raise
        return self._logged_in(reply)

    async def spare_token(self) -> str:
        """``rpc/token`` (ext): another token, to log in with next time; the session goes on.

        Raises:
            ApiError: not logged in.
            ConnectionFailed: the connection broke.
        """
        args = (await self.call("rpc/token"))["args"]
        return str(args[0])

    def _logged_in(self, reply: dict[str, Any]) -> Login:
        token, ttl, user_uuid = reply["args"]
        self.token = str(token)
        return Login(self.token, int(ttl), str(user_uuid))

    # -- events --------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """The events of this connection, until it closes."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def follow(
        self, *, retry_for_s: float = 600.0, sleep: Callable[[float], Any] = asyncio.sleep
    ) -> AsyncIterator[StreamItem]:
        """Events, across reconnects: when the connection breaks, ``Disconnected``; then the
        client reconnects (backing off, for up to ``retry_for_s``), logs in again with its token
        and says ``Reconnected``.

        Raises:
            ConnectionFailed: the service stayed away for ``retry_for_s``.
            NotLoggedIn: the token was refused after the reconnect.
        """
        while True:
            async for event in self.events():
                yield event
            if self._closing:
                return
            yield Disconnected(f"{self._where()} closed the connection")
            attempts = await self.reconnect(retry_for_s=retry_for_s, sleep=sleep)
            yield Reconnected(attempts)

    async def reconnect(
        self, *, retry_for_s: float = 600.0, sleep: Callable[[float], Any] = asyncio.sleep
    ) -> int:
        """Connect again and log in with the session's token; returns the attempts it took.

        Raises:
            ConnectionFailed: still unreachable after ``retry_for_s``.
            NotLoggedIn: there is no token, or it was refused.
        """
        if self.token is None:
            raise NotLoggedIn("the connection broke before a login")
        await self._drop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for_s
        for attempt in itertools.count(1):
            try:
                await self.connect()
                await self.resume(self.token)
            except ConnectionFailed:
                if loop.time() >= deadline:
                    raise
                await self._drop()
                await sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S)) - 1])
                continue
            return attempt
        raise AssertionError("unreachable")  # pragma: no cover

    # -- uploads -------------------------------------------------------------------------------

    async def upload(
        self,
        path: Path,
        *,
        name: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a file for ``sys/update_now {"file_upload": name}``: ``sys/upload_file`` for
        one-time credentials, then ``POST /upload``, streamed from disk; ``progress(sent, size)``
        is called as it goes. Returns the upload's reply (``file_upload``, ``size``, ``sha256``).
        It is sent as ``name`` when given (as it is), else as ``upload_name(path.name)``.

        Raises:
            ApiError: the service refused it (401, 413, 400 with the reason).
            ConnectionFailed: the upload broke off.
            OSError: the file cannot be read.
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        grant = await self.call("sys/upload_file")
        assert self._http is not None
        report = progress or (lambda _sent, _size: None)

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            report(0, size)
            with path.open("rb") as handle:
                while chunk := await asyncio.to_thread(handle.read, _UPLOAD_CHUNK_BYTES):
                    sent += len(chunk)
                    yield chunk
                    report(sent, size)

        url = f"{self.server.base_url}/upload"
        headers = {
            "Authorization": _basic(str(grant["upload_user"]), str(grant["upload_pass"])),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
        }
        try:
            async with self._http.post(
                url,
                params={"filename": name if name is not None else upload_name(path.name)},
                data=body(),
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
            ) as reply:
                payload = await reply.json(content_type=None)
        except aiohttp.ServerFingerprintMismatch as exc:
            raise self._changed(exc) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if (plain := not_tls(self.server, exc)) is not None:
                raise plain from exc
            raise ConnectionFailed(f"the upload to {self._where()} broke off: {_why(exc)}") from exc
        if not isinstance(payload, dict):
            raise ConnectionFailed(f"{self._where()} answered the upload with no JSON object")
        if reply.status != 200:
            raise ApiError(payload.get("args") or {"code": str(reply.status)})
        return payload

    # -- helpers -------------------------------------------------------------------------------

    def _where(self) -> str:
        return self.server.base_url

    def _changed(self, exc: aiohttp.ServerFingerprintMismatch) -> CertificateChanged:
        expected, got = fingerprint_hex(exc.expected), fingerprint_hex(exc.got)
        return changed_certificate(self.server, expected, got)


def upload_name(name: str) -> str:
    """``name`` when the service takes it as an upload's name, else ``FALLBACK_UPLOAD_NAME``."""
    return name if check_upload_name(name) is None else FALLBACK_UPLOAD_NAME


async def probe(server: Server, *, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at ``server`` (a TCP connection, nothing sent), or ``None``."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(server.host, server.port), timeout_s
        )
    except (OSError, TimeoutError) as exc:
        return _why(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _basic(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error:
        exc = exc.os_error
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's own words ("Connect call failed ('127.0.0.1', 9999)") hide the reason.
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
