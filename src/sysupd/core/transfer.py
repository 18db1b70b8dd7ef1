"""The rules of one HTTP download, shared by every fetch (LAN URL, update server, payloads).

Responsibility: ``TransferRules`` is fed the status and headers of each answer and the byte counts
of the body, and decides what to do next: take the body (``Accept``), take it after throwing away
bytes already handed out (``Skip``), ask again for the rest (``Resume``), follow a redirect
(``Redirect``) or give up (``Refuse``). ``RateWatch`` and ``ProgressPace`` judge times the caller
measures. Pure: no sockets, no clock, no URL checks; ``sources.http`` does the I/O around it.

Invariants:

- Only a 200, or a 206 answering our own ``Range``, is read. Redirects (301, 302, 303, 307, 308)
  need a ``Location`` and are followed at most ``max_redirects`` times per request; whether the
  location may be fetched is the caller's policy. Any other final status is refused with it.
- No content coding is undone: the bytes handed out are the bytes sent. A coded answer is refused
  unless the policy's ``Tolerance`` lets it through as is (its bytes are verified downstream).
- One continuous stream. A drop is resumed at most ``resume_tries`` times, and only if the first
  answer offered a way (``Accept-Ranges: bytes``, an ``ETag`` or a ``Last-Modified``), unless the
  policy's ``Tolerance`` says to try anyway. The rest is
  asked for with ``Range`` and ``If-Range`` (a strong ``ETag``, else ``Last-Modified``). A 206 is
  used only if its ``Content-Range`` starts at exactly the next byte, is well formed and belongs
  to a file of the same size (and the same ``ETag``, if it names one); a 200 to a resume is the
  file again from its start, used with the bytes already handed out skipped only if it is provably
  the same file (every known size and validator equal, at least one known; with a tolerant policy,
  none known is taken as the same file).
- Never more than ``max_bytes`` bytes, nor more than the announced size, are handed out; an
  announced size over ``max_bytes`` is refused before the body is read.
- Refusals are plain sentences naming the path (or, where the policy says a path may carry a
  token, only "the file"), never the query string, with a ``Fault`` so each edge can raise its own
  error family.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

__all__ = [
    "REDIRECTS",
    "STRICT",
    "Accept",
    "Answer",
    "Fault",
    "ProgressPace",
    "RateWatch",
    "Redirect",
    "Refuse",
    "Resume",
    "Skip",
    "Tolerance",
    "TransferRules",
]

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Fault(enum.Enum):
    """What a refusal blames, for the edge to pick its exception."""

    STATUS = "status"
    """The server answered with an error status (``Refuse.status`` says which)."""
    LENGTH = "length"
    """The file is longer than the limit."""
    TIME = "time"
    """A time limit ran out (decided by the edge, which measures time)."""
    TRANSFER = "transfer"
    """Anything else: a broken connection, a malformed or inconsistent answer, a refused URL."""


@dataclass(frozen=True, slots=True)
class Accept:
    """Read the body: its bytes follow on from those handed out."""

    size: int | None


@dataclass(frozen=True, slots=True)
class Skip:
    """Read the body, but throw its first ``count`` bytes away: they were handed out already."""

    count: int
    size: int | None


@dataclass(frozen=True, slots=True)
class Resume:
    """Ask for the rest of the file, from byte ``offset``, sending ``headers``."""

    offset: int
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Redirect:
    """Check ``location`` (relative to the URL asked for) and, if allowed, ask there."""

    location: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Give up, saying ``reason``."""

    reason: str
    fault: Fault = Fault.TRANSFER
    status: int | None = None


Answer = Accept | Skip | Redirect | Refuse


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How lenient a policy's downloads are, where the strict rule is not needed for safety
    because every byte is verified downstream against signed hashes.

    The default is strict (the update server: its answers are what python-tuf expects).
    """

    name_paths: bool = True
    """Reasons name the URL's path; false: "the file" (a LAN URL's path may carry a token)."""
    blind_resume: bool = False
    """Resume after a drop even when the first answer offered no validator, and take a 200 to a
    resume with no validator known as the same file (a different one fails verification)."""
    pass_codings: bool = False
    """Hand a content-coded body out as sent, undecoded, instead of refusing it."""
    first_partial: bool = False
    """Take a 206 whose range starts at byte 0 as the answer to the first request."""


STRICT: Final = Tolerance()


class TransferRules:
    """The state of one download across its answers: validators, size, counters.

    ``path`` names the file in reasons; ``limit_name`` names ``max_bytes`` in them ("the limit",
    "its signed length"). Call ``answer`` for each answer, ``take`` before handing out body bytes,
    ``dropped`` when a connection broke (or a body ended short), ``redirected_to`` when a redirect
    was followed.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int | None,
        max_redirects: int,
        resume_tries: int,
        limit_name: str = "the limit",
        tolerance: Tolerance = STRICT,
    ) -> None:
        self.path = path
        self._tolerance = tolerance
        self.size: int | None = None
        self.received = 0
        """Bytes handed out so far."""
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._resume_tries = resume_tries
        self._limit_name = limit_name
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._resumable = False
        self._redirects = 0
        self._resumes = 0
        self._offset = 0
        """Where the body of the answer asked for starts."""

    def redirected_to(self, path: str) -> None:
        """A redirect was followed to ``path``: later reasons name it."""
        self.path = path

    @property
    def subject(self) -> str:
        """The file as reasons name it: its path, or "the file"."""
        return self.path if self._tolerance.name_paths else "the file"

    @property
    def of_path(self) -> str:
        """ " of PATH" after a phrase, where paths are named; else nothing."""
        return f" of {self.path}" if self._tolerance.name_paths else ""

    @property
    def for_path(self) -> str:
        """ " for PATH" after a phrase, where paths are named; else nothing."""
        return f" for {self.path}" if self._tolerance.name_paths else ""

    def answer(self, status: int, headers: Mapping[str, str]) -> Answer:
        """What to do with an answer of ``status`` with ``headers`` to the last request."""
        fields = {name.lower(): value for name, value in headers.items()}
        if status in REDIRECTS:
            return self._redirect(status, fields.get("location"))
        self._redirects = 0
        if not 200 <= status < 300:
            return Refuse(
                f"the server answered {_status(status)}{self.for_path}", Fault.STATUS, status
            )
        if status not in (200, 206):
            return Refuse(f"the server answered {_status(status)}{self.for_path}")
        coding = fields.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity") and not self._tolerance.pass_codings:
            return Refuse(f"the server sent {self.subject} with content coding {coding}")
        length = _content_length(fields.get("content-length"))
        decision: Answer
        if not self._offset:
            decision = self._first(status, fields, length)
        elif status == 206:
            decision = self._partial(fields)
        else:
            decision = self._again(fields, length)
        if isinstance(decision, Refuse):
            return decision
        return self._over_limit() or decision

    def take(self, count: int) -> Refuse | None:
        """``count`` more bytes are to be handed out; a refusal if that would be too many."""
        if self._max_bytes is not None and self.received + count > self._max_bytes:
            return Refuse(
                f"{self.subject} is longer than {self._limit_name} of {self._max_bytes} bytes",
                Fault.LENGTH,
            )
        if self.size is not None and self.received + count > self.size:
            return Refuse(
                f"the server sent more of {self.subject} than the {self.size} bytes it announced"
            )
        self.received += count
        return None

    def ended(self) -> str | None:
        """The body ended; why that is a drop (the file is not complete), or ``None`` if done."""
        if self.size is not None and self.received < self.size:
            return f"the connection ended after {self.received} of {self.size} bytes{self.of_path}"
        return None

    def dropped(self, reason: str) -> Resume | Refuse:
        """The connection broke for ``reason``: ask for the rest, or give up."""
        if not self._resumable and not self._tolerance.blind_resume:
            return Refuse(f"{reason}; the server offers no way to resume")
        if self._resumes >= self._resume_tries:
            return Refuse(
                f"{reason}; gave up after {self._resumes} of {self._resume_tries} allowed resumes"
            )
        self._resumes += 1
        self._redirects = 0
        self._offset = self.received
        return Resume(self._offset, self._range_headers())

    def _redirect(self, status: int, location: str | None) -> Redirect | Refuse:
        if not location:
            return Refuse(
                f"the server answered {_status(status)}{self.for_path} without a Location"
            )
        self._redirects += 1
        if self._redirects > self._max_redirects:
            return Refuse(
                f"the server redirected{self.of_path[3:]} more than {self._max_redirects} times"
            )
        return Redirect(location)

    def _first(self, status: int, fields: Mapping[str, str], length: int | None) -> Answer:
        if status == 206:
            return self._first_partial(fields)
        self._etag = fields.get("etag")
        self._last_modified = fields.get("last-modified")
        ranges = "bytes" in fields.get("accept-ranges", "").lower()
        self._resumable = ranges or self._etag is not None or self._last_modified is not None
        self.size = length
        return Accept(length)

    def _first_partial(self, fields: Mapping[str, str]) -> Answer:
        """A 206 to the first request: refused, or (if tolerated) read as from byte 0."""
        if not self._tolerance.first_partial:
            return Refuse(f"the server sent part of {self.subject} unasked")
        self._etag = fields.get("etag")
        self._last_modified = fields.get("last-modified")
        self._resumable = True  # it answers ranges
        return self._partial(fields)

    def _partial(self, fields: Mapping[str, str]) -> Answer:
        match = _CONTENT_RANGE.fullmatch(fields.get("content-range", "").strip())
        if match is None:
            return Refuse(f"the server's partial answer{self.for_path} has no usable range")
        start, end = int(match[1]), int(match[2])
        total = None if match[3] == "*" else int(match[3])
        if start != self._offset:
            return Refuse(
                f"the server resumed{self.of_path[3:]} at byte {start} instead of byte "
                f"{self._offset}"
            )
        if end < start or (total is not None and end >= total):
            return Refuse(f"the server's partial answer{self.for_path} has no usable range")
        etag = fields.get("etag")
        if self.size is not None and total != self.size:
            return self._changed()
        if etag is not None and self._etag is not None and etag != self._etag:
            return self._changed()
        if self.size is None:
            self.size = total
        return Accept(self.size)

    def _again(self, fields: Mapping[str, str], length: int | None) -> Answer:
        checks = []
        if self.size is not None:
            checks.append(length == self.size)
        if self._etag is not None:
            checks.append(fields.get("etag") == self._etag)
        if self._last_modified is not None:
            checks.append(fields.get("last-modified") == self._last_modified)
        if not all(checks) or not (checks or self._tolerance.blind_resume):
            return self._changed()
        if self.size is None:
            self.size = length
        return Skip(self._offset, self.size)

    def _over_limit(self) -> Refuse | None:
        if self._max_bytes is not None and self.size is not None and self.size > self._max_bytes:
            return Refuse(
                f"{self.subject} is {self.size} bytes, more than {self._limit_name} of "
                f"{self._max_bytes} bytes",
                Fault.LENGTH,
            )
        return None

    def _range_headers(self) -> dict[str, str]:
        headers = {"Range": f"bytes={self._offset}-"}
        if self._etag is not None and not self._etag.startswith("W/"):
            headers["If-Range"] = self._etag
        elif self._last_modified is not None:
            headers["If-Range"] = self._last_modified
        return headers

    def _changed(self) -> Refuse:
        return Refuse(f"the file changed on the server during the download{self.of_path}")


def _status(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


class RateWatch:
    """The minimum-rate rule over network time: at least ``min_bps`` across every full window."""

    def __init__(self, window_s: float, min_bps: int) -> None:
        self._window_s = window_s
        self._min_bps = min_bps
        self._samples: deque[tuple[float, int]] = deque([(0.0, 0)])

    def stalled(self, now_s: float, total: int) -> bool:
        """Record ``total`` bytes at ``now_s``; true when the last window fell below the rate."""
        if now_s - self._samples[-1][0] >= self._window_s / 32:  # bounds the samples kept
            self._samples.append((now_s, total))
        edge = now_s - self._window_s
        while len(self._samples) >= 2 and self._samples[1][0] <= edge:
            self._samples.popleft()
        start_s, start_total = self._samples[0]
        if start_s > edge:
            return False  # not a full window of history yet
        return total - start_total < self._min_bps * (now_s - start_s)


class ProgressPace:
    """When to report progress: after ``every_bytes`` more bytes or ``every_s`` seconds, and at
    the end, so a fast transfer is not reported once per read."""

    def __init__(self, now_s: float, every_bytes: int = 1 << 20, every_s: float = 1.0) -> None:
        self._every_bytes = every_bytes
        self._every_s = every_s
        self._last = (0, now_s)

    def due(self, received: int, now_s: float, *, final: bool = False) -> bool:
        """Whether to report ``received`` bytes at ``now_s``; if so, counted as reported."""
        last_bytes, last_s = self._last
        if final or received - last_bytes >= self._every_bytes or now_s - last_s >= self._every_s:
            self._last = (received, now_s)
            return True
        return False
