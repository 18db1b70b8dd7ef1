"""A bundle at a URL on the local network (``sys/update_now {"fetch_url": …}``).

The URL was checked and its host resolved once, before the job started (``lan.check_url``); the
download goes to that checked address only, within the allowed networks and the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sysupd.core.units import human_size
from sysupd.sources.base import Acquired, DeviceView, Log
from sysupd.sources.bridge import LoopReader
from sysupd.sources.lan import FetchLimits, LanDownload, PinnedTarget

__all__ = ["UrlSource"]


@dataclass(frozen=True, slots=True)
class UrlSource:
    """The bundle at the checked ``target``."""

    target: PinnedTarget
    networks: tuple[str, ...]
    limits: FetchLimits
    loop: asyncio.AbstractEventLoop

    @property
    def label(self) -> str:
        """The host, never the whole URL (its query may carry a token)."""
        return f"{self.target.host} (fetch_url)"

    @property
    def local(self) -> bool:
        """Downloaded."""
        return False

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        """The download, streamed as it arrives.

        Raises:
            AcquireError: the request failed or was refused (redirects, status, size).
        """
        download = LanDownload(self.target, self.networks, self.limits)
        asyncio.run_coroutine_threadsafe(download.__aenter__(), self.loop).result()
        try:
            size = human_size(download.size) if download.size is not None else "size unknown"
            log(f"downloading from {self.target.host} ({self.target.address}), {size}")
            yield Acquired(LoopReader(download.read, self.loop), self.target.url)
        finally:
            asyncio.run_coroutine_threadsafe(download.aclose(), self.loop).result()
