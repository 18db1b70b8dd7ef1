"""The update server's chunk store, as the delta installer's ``ChunkSource``.

Chunks are plain files under ``<update server>/targets/chunks/``; each is fetched whole through
the online channel's origin-locked fetcher, capped at its signed stored length. What the bytes
are is checked by the delta fetcher, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sysupd.delta.fetch import MissingChunk
from sysupd.sources.connections import TransferError
from sysupd.sources.tuf_fetcher import OriginFetcher

__all__ = ["ServerChunks"]


@dataclass(frozen=True, slots=True)
class ServerChunks:
    """The chunk store under ``targets_url`` (``…/targets/``) of the update server."""

    fetcher: OriginFetcher
    targets_url: str

    @property
    def where(self) -> str:
        """The server's host and port."""
        return f"the update server {urlsplit(self.targets_url).netloc}"

    def fetch(self, path: str, max_bytes: int, deadline_s: float) -> bytes:
        """The stored chunk at ``path`` under the targets.

        Raises:
            MissingChunk: the server answered 404 or 410.
            AcquireError: any other failure.
        """
        try:
            return self.fetcher.fetch_bytes(f"{self.targets_url}{path}", max_bytes, deadline_s)
        except TransferError as exc:
            if exc.status in (404, 410):
                raise MissingChunk(str(exc)) from exc
            raise
