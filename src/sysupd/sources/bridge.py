"""A blocking reader over an asynchronous download, for the engine's worker thread.

The engine verifies and writes in a worker thread with ordinary blocking reads; downloads run on
the service's event loop. ``LoopReader.read`` hands each read to the loop and waits for it, so
the bytes flow straight from the socket through the chunk verifier into the slot, without
staging the bundle on disk. It must never be used from the loop's own thread.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

from sysupd.errors import AcquireError

__all__ = ["LoopReader"]


class LoopReader(io.RawIOBase):
    """``read(n)`` in a worker thread, served by ``read_async(n)`` on ``loop``."""

    def __init__(
        self, read_async: Callable[[int], Awaitable[bytes]], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self._read_async = read_async
        self._loop = loop

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` bytes (at least one unless at the end).

        Raises:
            AcquireError: the download failed.
        """
        if size is None or size < 0:
            raise ValueError("LoopReader reads need a size")
        if size == 0:
            return b""

        async def step() -> bytes:
            return await self._read_async(size)

        future = asyncio.run_coroutine_threadsafe(step(), self._loop)
        try:
            return future.result()
        except AcquireError:
            raise
        except (asyncio.CancelledError, RuntimeError) as exc:
            raise AcquireError("the download was stopped") from exc

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
