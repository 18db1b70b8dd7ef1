"""Content-defined chunking of a stream: the same bytes give the same chunks wherever they lie.

``StreamCutter`` is fed a stream piece by piece and hands out whole chunks as soon as their end is
certain. It uses FastCDC (the ``fastcdc`` package's compiled gear-hash loop) on a window of the
stream. A cut point depends only on the bytes from the chunk's start to at most ``max_bytes`` on,
so a chunk is final once that many bytes after its start have been seen (or the stream ended);
the rest waits for the next piece. So the chunks of a stream are the same however it is split
into pieces, which is what lets a device cut its booted slot into the chunks of a release.

Invariants: chunks are handed out in order, cover the stream exactly, and are at most
``max_bytes`` long; memory is the window (a few ``max_bytes`` plus the largest piece fed).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastcdc.fastcdc_cy import fastcdc_cy

from sysupd.core.chunkindex import ChunkerParams

__all__ = ["DEFAULT_PARAMS", "StreamCutter"]

DEFAULT_PARAMS = ChunkerParams(min_bytes=8 * 1024, avg_bytes=32 * 1024, max_bytes=128 * 1024)
"""Why these: see ``docs/design/release-format.md``, "Choosing the chunk size" (measured)."""


class StreamCutter:
    """Cuts a stream fed in pieces into content-defined chunks."""

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self._window = bytearray()
        self.offset = 0
        """Stream bytes handed out as chunks so far."""

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Take the next piece of the stream; yield the chunks whose end is now certain."""
        self._window += data
        yield from self._cut(final=False)

    def finish(self) -> Iterator[bytes]:
        """The stream ended: yield the chunks left."""
        yield from self._cut(final=True)

    def _cut(self, *, final: bool) -> Iterator[bytes]:
        params = self.params
        window = self._window
        if not window or (not final and len(window) < 2 * params.max_bytes):
            return
        used = 0
        view = memoryview(window)
        try:
            for chunk in fastcdc_cy(view, params.min_bytes, params.avg_bytes, params.max_bytes):
                start, length = chunk.offset, chunk.length
                if not final and start + params.max_bytes > len(view):
                    break  # its cut may still move: wait for more of the stream
                used = start + length
                self.offset += length
                yield bytes(view[start:used])
        finally:
            view.release()
            del window[:used]
