"""A logged-in WebSocket session with ``sysupd serve``: calls matched by id, events queued."""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import time
from typing import Any

import aiohttp

from _harness import HOST, MIB, BenchError
from _service import ADMIN

__all__ = ["WsApi", "check_final", "job_lines"]

_CALL_TIMEOUT_S = 60.0


class WsApi:
    """One logged-in WebSocket session: calls matched by id, events in a queue."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int, user: tuple[str, str] = ADMIN) -> WsApi:
        """Connect to ``ws://127.0.0.1:PORT/websocket`` and log in as ``user``."""
        session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(_CALL_TIMEOUT_S):
                ws = await session.ws_connect(
                    f"ws://{HOST}:{port}/websocket", max_msg_size=64 * MIB, autoping=True
                )
        except BaseException:
            await session.close()
            raise
        api = cls(session, ws)
        try:
            await api.call("rpc", "auth", {"username": user[0], "password": user[1]})
        except BaseException:
            await api.close()
            raise
        return api

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame.get("namespace") == "event":
                    self.events.put_nowait(frame)
                    continue
                future = self._pending.pop(str(frame.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(frame)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BenchError("the WebSocket closed"))
            self._pending.clear()
            self.events.put_nowait({"namespace": "closed", "name": "", "args": {}})

    async def call(
        self,
        namespace: str,
        name: str,
        args: dict[str, Any] | None = None,
        timeout: float = _CALL_TIMEOUT_S,
    ) -> Any:
        """Send a call; its reply's ``args``.

        Raises:
            BenchError: an error reply, or none in time.
        """
        call_id = f"b{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        frame = {"namespace": namespace, "name": name, "id": call_id, "args": args or {}}
        await self._ws.send_str(json.dumps(frame))
        try:
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError as exc:
            self._pending.pop(call_id, None)
            raise BenchError(f"{namespace}/{name}: no reply within {timeout:g} s") from exc
        if reply.get("namespace") != "response":
            raise BenchError(f"{namespace}/{name} failed: {json.dumps(reply.get('args'))}")
        return reply["args"]

    async def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event called ``name`` (others are skipped): its ``args``.

        Raises:
            BenchError: none in time, or the socket closed.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self.events.get()
                    if event["namespace"] == "closed":
                        raise BenchError(f"the WebSocket closed while waiting for {name}")
                    if event.get("name") == name:
                        args: dict[str, Any] = event["args"]
                        return args
        except TimeoutError as exc:
            raise BenchError(f"no {name} event within {timeout:g} s") from exc

    async def wait_final(self, timeout: float) -> tuple[int, dict[str, Any]]:
        """How many running ``sys/update_now`` events came, then the final one's ``args``."""
        deadline = time.monotonic() + timeout
        running = 0
        while True:
            event = await self.next_event("sys/update_now", max(0.1, deadline - time.monotonic()))
            if event.get("update_running"):
                running += 1
            else:
                return running, event

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._session.close()


def job_lines(final: dict[str, Any]) -> list[str]:
    """The update job's log from its final event (HTML-escaped lines joined by ``<br>``)."""
    return [html.unescape(line) for line in str(final.get("details", "")).split("<br>")]


def check_final(final: dict[str, Any], what: str) -> None:
    """Raises BenchError unless the update succeeded."""
    if final.get("result") != "success":
        raise BenchError(f"{what} failed:\n  " + "\n  ".join(job_lines(final)))
