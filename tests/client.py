"""A small real WebSocket/HTTP client for the tests: calls by id, events in a queue."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp

__all__ = ["ApiError", "WsClient"]


class ApiError(Exception):
    """An error reply."""

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(f"{args.get('code')} {args.get('message')}: {args.get('details')}")
        self.code: str = args["code"]
        self.message: str = args["message"]
        self.details: str = args.get("details", "")


class WsClient:
    """One WebSocket connection to the service."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unmatched: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.closed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame["namespace"] == "event":
                    self.events.put_nowait(frame)
                    continue
                future = self._pending.pop(frame["id"], None)
                if future is None:
                    self.unmatched.put_nowait(frame)
                else:
                    future.set_result(frame)
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("socket closed"))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as it is."""
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def request(
        self, namespace: str, name: str, args: dict[str, Any] | None = None, timeout: float = 10
    ) -> dict[str, Any]:
        """Send a call and return the whole reply frame."""
        request_id = f"t{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame: dict[str, Any] = {"namespace": namespace, "name": name, "id": request_id}
        if args is not None:
            frame["args"] = args
        await self.ws.send_str(json.dumps(frame))
        return await asyncio.wait_for(future, timeout)

    async def call(
        self, namespace: str, name: str, args: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send a call and return the reply's ``args``; raise ``ApiError`` on an error reply."""
        frame = await self.request(namespace, name, args)
        if frame["namespace"] == "error":
            raise ApiError(frame["args"])
        assert frame["namespace"] == "response"
        assert frame["name"] == "response"
        result: dict[str, Any] = frame["args"]
        return result

    async def login(self, username: str, password: str) -> str:
        """``rpc/auth``; returns the token."""
        reply = await self.call("rpc", "auth", {"username": username, "password": password})
        token: str = reply["args"][0]
        return token

    async def next_event(self, name: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """The next event (of ``name``, skipping others)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if name is None or event["name"] == name:
                return event

    async def close(self) -> None:
        """Close the socket."""
        await self.ws.close()
        await self._reader
