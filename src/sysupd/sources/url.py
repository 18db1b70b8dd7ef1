"""A bundle at a URL on the local network (``sys/update_now {"fetch_url": …}``).

The URL was checked and its host resolved once, before the job started (``lan.check_url``); the
download goes to that checked address only, within the allowed networks and the limits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from sysupd.core.units import human_size
from sysupd.sources.base import Acquired, DeviceView, Log
from sysupd.sources.lan import FetchLimits, PinnedTarget, open_download

__all__ = ["UrlSource"]


@dataclass(frozen=True, slots=True)
class UrlSource:
    """The bundle at the checked ``target``."""

    target: PinnedTarget
    networks: tuple[str, ...]
    limits: FetchLimits
    local: ClassVar[bool] = False
    """Downloaded: the job starts with the download phase."""

    @property
    def label(self) -> str:
        """The host, never the whole URL (its query may carry a token)."""
        return f"{self.target.host} (fetch_url)"

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        """The download, streamed as it arrives.

        Raises:
            AcquireError: the request failed or was refused (redirects, status, size).
        """
        with open_download(self.target, self.networks, self.limits) as download:
            size = human_size(download.size) if download.size is not None else "size unknown"
            log(f"downloading from {self.target.host} ({self.target.address}), {size}")
            yield Acquired(download, self.target.url)
