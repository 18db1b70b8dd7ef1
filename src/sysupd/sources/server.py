"""The newest release on the update server (``sys/update_now {}``), through the online channel.

Opening refreshes the TUF metadata (python-tuf's ngclient, against the device's trust), picks the
newest release for the device's policy above its installed version, downloads and verifies the
chunk list, and streams the payload. The release's metadata is verified here; the payload is not.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from sysupd.errors import AcquireError
from sysupd.sources.base import Acquired, DeviceView, Log, SignedRelease
from sysupd.sources.online import OnlineChannel, Survey
from sysupd.sources.tuf_fetcher import FetcherLimits

__all__ = ["ServerSource"]


@dataclass(frozen=True, slots=True)
class ServerSource:
    """The update server at ``server``; ``cache_dir`` is ngclient's metadata cache, used by one
    channel at a time under ``cache_lock`` (shared with the update checks)."""

    server: str
    cache_dir: Path
    cache_lock: threading.Lock
    limits: FetcherLimits
    version: str = ""
    """The release the check found, for the label."""
    local: ClassVar[bool] = False
    """Downloaded: the job starts with the download phase."""

    @property
    def label(self) -> str:
        """The server's host and the release the check found."""
        found = f" (release {self.version})" if self.version else ""
        return f"the update server {urlsplit(self.server).netloc}{found}"

    def survey(self, device: DeviceView) -> Survey:
        """What the server offers this device now (an update check): the newest acceptable
        release, and why newer ones are passed over.

        Raises:
            AcquireError, VerificationError, ConfigError, StateError: as ``open``.
        """
        with self._channel(device) as channel:
            return channel.newest(device.policy, device.installed)

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        """The newest acceptable release, verified, and its payload's stream.

        Raises:
            AcquireError: the server cannot be read, or has no newer release any more.
            VerificationError: its metadata is not trusted.
            ConfigError, StateError: the device's trust cannot be read.
        """
        with self._channel(device) as channel:
            candidate = channel.newest(device.policy, device.installed).candidate
            if candidate is None:
                raise AcquireError("no newer release is available any more")
            manifest = candidate.manifest
            log(
                f"release {manifest.version} from {urlsplit(self.server).netloc}: "
                f"{manifest.length} bytes, metadata verified"
            )
            chunks = channel.chunk_list(candidate)
            root, metadata = channel.trusted()
            url, stream = channel.open_payload(candidate)
            with stream:
                release = SignedRelease(manifest, chunks, root, metadata)
                yield Acquired(stream, url, release)

    @contextlib.contextmanager
    def _channel(self, device: DeviceView) -> Iterator[OnlineChannel]:
        """One conversation with the server; ngclient's cache is used by one at a time."""
        with self.cache_lock:
            channel = OnlineChannel(self.server, self.cache_dir, device.trust, self.limits)
            try:
                yield channel
            finally:
                channel.close()
