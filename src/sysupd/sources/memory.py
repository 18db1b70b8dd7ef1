"""An in-memory source for tests: a bundle (or a payload with a signed release) held as bytes.

It records what was asked of it, and can fail mid-stream the way a download does (an
``AcquireError`` after a given number of bytes), so a test asserts on records, not patches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from sysupd.errors import AcquireError
from sysupd.sources.base import Acquired, DeviceView, Log, SignedRelease

__all__ = ["MemorySource"]


@dataclass(slots=True)
class MemorySource:
    """``data`` as a source; ``release`` set: it plays a channel that verified it already.

    ``fail_at``: the read that would pass that byte offset raises ``AcquireError`` instead.
    """

    data: bytes
    release: SignedRelease | None = None
    fail_at: int | None = None
    label: str = "memory"
    local: bool = False
    opened: list[DeviceView] = field(default_factory=list)
    """The device view of each ``open``."""
    delivered: int = 0
    """Bytes handed out, over all opens."""
    closed: int = 0
    """How many opens were closed again."""

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        """The bytes as a stream; records the open and its close."""
        self.opened.append(device)
        log(f"reading {len(self.data)} bytes from {self.label}")
        try:
            yield Acquired(_Stream(self), self.label, self.release)
        finally:
            self.closed += 1


class _Stream:
    def __init__(self, source: MemorySource) -> None:
        self._source = source
        self._at = 0

    def read(self, size: int, /) -> bytes:
        source = self._source
        end = min(self._at + size, len(source.data))
        if source.fail_at is not None and end > source.fail_at:
            raise AcquireError(f"{source.label} broke off at byte {source.fail_at}")
        data = source.data[self._at : end]
        self._at = end
        source.delivered += len(data)
        return data
