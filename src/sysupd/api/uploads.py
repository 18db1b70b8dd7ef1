"""Offline updates through the API: ``sys/upload_file`` credentials and ``POST /upload`` files.

``sys/upload_file`` (admin) issues a random user name and password for HTTP Basic; ``POST
/upload`` streams one file (a raw ``application/octet-stream`` body named by ``?filename=``, or
the ``file`` part of a ``multipart/form-data`` body) into the uploads directory, where
``sys/update_now {"file_upload": name}`` finds it through ``UploadStore.path_of``.

Invariants:

- A body is never held in memory: it is read in chunks of at most ``_CHUNK_BYTES``, hashed and
  written to a temp file ``.<random>.part`` in the uploads directory (off the event loop), then
  fsynced and renamed over the final name. A name that exists is replaced only by a completed
  upload; on any failure (refusal, broken connection, full disk, service stop) the temp file is
  removed and every earlier upload is untouched.
- Stored names are bare, safe file names (``core.uploadnames``). Dangerous names are refused
  with a 400 that says why, never rewritten; that includes a form's ``filename="C:\\a\\b"``,
  whose backslashes the header's quoted-string rules would otherwise silently drop.
- Sizes are checked against the limit (``max_upload_bytes``, read live from the settings) and the
  free space of the uploads filesystem (less a small reserve for the database and the log) before
  any byte of the body is read, from ``Content-Length``, and again while streaming, for chunked
  bodies. A multipart body may exceed the limit by ``_MULTIPART_SLACK_BYTES`` of form overhead
  before it is refused unread; the file inside it is held to the limit exactly. A body that
  sends nothing for ``_READ_IDLE_S`` seconds is dropped like one that broke off.
- Credentials live ``UPLOAD_TTL_S`` seconds on the service's clock (checked when an upload
  starts, so an upload that started in time may finish later) and serve one *completed* upload:
  while an upload runs they are reserved (a second request with them is a 401), a failed upload
  (refused, broken off) hands them back for a retry until they expire, and a completed one spends
  them. Passwords are compared with ``hmac.compare_digest`` and never logged; failed upload logins
  do not count towards the login lockout, as the passwords are 256-bit random.
- Uploads are temporary: ``clear`` (called when the service starts) deletes them all.

Refusals are answered with the error envelope of the HTTP API (``{"namespace": "error", ...,
"args": {"code", "message", "details"}}``) and the error's HTTP status; the success reply is the
contract's body as it is: ``{"result": "success", "file_upload", "size", "sha256"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import hmac
import os
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import BodyPartReader, ClientPayloadError, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from sysupd.api.calls import SERVICE_KEY, Call, CallContext
from sysupd.api.http import parse_basic_auth, refuse_cross_site
from sysupd.core.envelope import Request, error_args
from sysupd.core.uploadnames import check_upload_name
from sysupd.errors import (
    BadRequest,
    PayloadTooLarge,
    StateError,
    Unauthorized,
)
from sysupd.fsutil import fsync_dir
from sysupd.servicelog import ServiceLog
from sysupd.system.clock import Clock

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = [
    "UPLOAD_CALLS",
    "UPLOAD_TTL_S",
    "GrantState",
    "UploadGrant",
    "UploadStore",
    "handle_upload",
    "upload_file",
]

_T = TypeVar("_T")

UPLOAD_TTL_S = 600.0
"""Seconds upload credentials stay valid."""

_CHUNK_BYTES = 256 * 1024
_MULTIPART_SLACK_BYTES = 64 * 1024
_RESERVE_MAX_BYTES = 16 * 1024 * 1024
_MAX_GRANTS = 64
_EXPIRES_FORMAT = "%Y%m%d%H%M%S"
_RAW_TYPE = "application/octet-stream"
_FORM_TYPE = "multipart/form-data"
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="sysupd-upload", charset="UTF-8"'}
_READ_IDLE_S = 60.0
_BROKEN_BODY = (ConnectionError, ClientPayloadError, HttpProcessingError, ValueError)


class GrantState(enum.Enum):
    """Where one pair of upload credentials is in its life."""

    ISSUED = "issued"
    UPLOADING = "uploading"
    USED = "used"


_MOVES = {
    GrantState.ISSUED: {GrantState.UPLOADING},
    GrantState.UPLOADING: {GrantState.ISSUED, GrantState.USED},
    GrantState.USED: set[GrantState](),
}


@dataclass(slots=True)
class UploadGrant:
    """One pair of upload credentials."""

    user: str
    password: str
    deadline_s: float
    """On the monotonic clock."""
    expires: str
    """``upload_expires`` as sent: UTC ``yyyyMMddHHmmss``."""
    state: GrantState = GrantState.ISSUED

    def move(self, to: GrantState) -> None:
        """Change state.

        Raises:
            RuntimeError: the move is not allowed (a bug).
        """
        if to not in _MOVES[self.state]:
            raise RuntimeError(f"upload grant {self.user}: {self.state.value} -> {to.value}")
        self.state = to


class _PartFile:
    """A temp file in the uploads directory that becomes an upload only by ``commit``.

    ``write`` and ``commit`` run on worker threads; the lock makes ``discard`` (from the event
    loop, e.g. after a cancellation) wait for a write in flight instead of racing it.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")
        self.path = Path(name)
        self.size = 0
        self._fd: int | None = fd
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self._committed = False

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise OSError(errno.EBADF, "the upload was abandoned", str(self.path))
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
            self._hash.update(chunk)
            self.size += len(chunk)

    def commit(self, target: Path) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                raise OSError(errno.EBADF, "the upload was abandoned", str(self.path))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.path, target)
            self._committed = True
        fsync_dir(target.parent)

    def discard(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if not self._committed:
                with contextlib.suppress(OSError):
                    self.path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Budget:
    """How many bytes one upload may store, and why no more."""

    limit: int
    reason: str


class UploadStore:
    """The upload credentials and the uploaded files of one service."""

    def __init__(self, directory: Path, clock: Clock, log: ServiceLog) -> None:
        self.directory = directory
        self._clock = clock
        self._log = log
        self._grants: dict[str, UploadGrant] = {}
        self._dummy = secrets.token_urlsafe(32)

    # -- credentials ---------------------------------------------------------------------

    def issue(self) -> dict[str, Any]:
        """New credentials for one upload: ``sys/upload_file``'s reply."""
        now = self._clock.monotonic()
        self._prune(now)
        user = f"upload-{secrets.token_hex(8)}"
        while user in self._grants:  # pragma: no cover - 64 random bits
            user = f"upload-{secrets.token_hex(8)}"
        expires = (self._clock.utcnow() + timedelta(seconds=UPLOAD_TTL_S)).strftime(_EXPIRES_FORMAT)
        grant = UploadGrant(user, secrets.token_urlsafe(32), now + UPLOAD_TTL_S, expires)
        self._grants[user] = grant
        return {"upload_user": grant.user, "upload_pass": grant.password, "upload_expires": expires}

    def begin(self, user: str, password: str) -> UploadGrant:
        """Reserve the credentials for an upload that starts now.

        Raises:
            Unauthorized: they are unknown, wrong, expired, used, or in use by another upload.
        """
        grant = self._grants.get(user)
        expected = (grant.password if grant is not None else self._dummy).encode()
        given = password.encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected, given) or grant is None:
            raise Unauthorized(
                "wrong upload user name or password; get credentials with sys/upload_file"
            )
        if self._clock.monotonic() >= grant.deadline_s:
            raise Unauthorized(f"the upload credentials expired at {grant.expires} UTC")
        if grant.state is GrantState.USED:
            raise Unauthorized("the upload credentials were used already; each serves one upload")
        if grant.state is GrantState.UPLOADING:
            raise Unauthorized("an upload with these credentials is in progress")
        grant.move(GrantState.UPLOADING)
        return grant

    def end(self, grant: UploadGrant, *, completed: bool) -> None:
        """Spend the credentials (``completed``) or hand them back for a retry."""
        grant.move(GrantState.USED if completed else GrantState.ISSUED)

    def _prune(self, now: float) -> None:
        """Forget credentials expired for a while (so refusals can still say "expired"), and
        the oldest idle ones beyond ``_MAX_GRANTS``."""
        for user, grant in list(self._grants.items()):
            if grant.state is not GrantState.UPLOADING and now >= grant.deadline_s + UPLOAD_TTL_S:
                del self._grants[user]
        idle = [u for u, g in self._grants.items() if g.state is not GrantState.UPLOADING]
        for user in idle[: max(0, len(self._grants) - _MAX_GRANTS + 1)]:
            del self._grants[user]

    # -- files ---------------------------------------------------------------------------

    def budget(self, max_upload_bytes: int) -> _Budget:
        """The most one upload may store now: the limit or the free space, whichever is less.

        Raises:
            OSError: the uploads filesystem cannot be asked.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fs = os.statvfs(self.directory)
        reserve = min(_RESERVE_MAX_BYTES, fs.f_blocks * fs.f_frsize // 100)
        free = max(0, fs.f_bavail * fs.f_frsize - reserve)
        if free < max_upload_bytes:
            return _Budget(free, f"only {free} bytes are free for uploads")
        return _Budget(max_upload_bytes, f"the upload limit is {max_upload_bytes} bytes")

    def open_part(self) -> _PartFile:
        """A new temp file for an upload in progress.

        Raises:
            OSError: it cannot be created.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _PartFile(self.directory)

    def path_of(self, name: str) -> Path:
        """The path of the uploaded file ``name``.

        Raises:
            ValueError: ``name`` is not a bare, safe file name, or no such file was uploaded.
        """
        problem = check_upload_name(name)
        if problem is not None:
            raise ValueError(f"the file name {name[:100]!r} {problem}")
        path = self.directory / name
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise ValueError(f"no file named {name!r} was uploaded") from exc
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"no file named {name!r} was uploaded")
        return path

    def remove(self, name: str) -> None:
        """Delete the uploaded file ``name`` if it is there.

        Raises:
            ValueError: ``name`` is not a bare, safe file name.
            OSError: it is there but cannot be deleted.
        """
        problem = check_upload_name(name)
        if problem is not None:
            raise ValueError(f"the file name {name[:100]!r} {problem}")
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()
            self._log.info(f"upload {name!r} deleted")

    def clear(self) -> None:
        """Delete every upload and temp file; leaves an empty uploads directory.

        Raises:
            StateError: the directory cannot be emptied or created.
        """
        try:
            count = len(self.names())
            if self.directory.is_symlink() or (
                self.directory.exists() and not self.directory.is_dir()
            ):
                self.directory.unlink()
            elif self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise StateError(f"cannot clear the uploads directory {self.directory}: {exc}") from exc
        if count:
            self._log.info(f"deleted {count} uploaded file(s) left from before the start")

    def names(self) -> list[str]:
        """The names of the uploaded files, sorted."""
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
        )


# -- the HTTP edge -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stored:
    name: str
    size: int
    sha256: str


class _BrokenBody(BadRequest):
    """The body ended early or was malformed (the client is usually gone)."""


async def handle_upload(request: web.Request) -> web.StreamResponse:
    """Answer one ``POST /upload``: store the file or refuse it, with nothing lost either way."""
    service: Service = request.app[SERVICE_KEY]
    address = request.remote or "unknown"
    store = service.uploads
    try:
        refuse_cross_site(request)
        user, password = parse_basic_auth(request.headers.get("Authorization"))
        grant = store.begin(user, password)
        completed = False
        try:
            stored = await _receive(request, store, service.settings.max_upload_bytes)
            completed = True
        finally:
            store.end(grant, completed=completed)
    except Exception as exc:  # noqa: BLE001 - every failure is answered, never a dropped request
        error = service.wire_error(
            Request("http", "upload", "", {}), exc, failed="the upload could not be stored"
        )
        service.log.warning(f"upload from {address} not stored ({error.code}): {error.details}")
        headers = _CHALLENGE if isinstance(error, Unauthorized) else None
        return _error_reply(error_args(error), headers)
    service.log.info(
        f"upload {stored.name!r} stored: {stored.size} bytes, sha256 {stored.sha256}, "
        f"from {address} with {user}"
    )
    return web.json_response(
        {
            "result": "success",
            "file_upload": stored.name,
            "size": stored.size,
            "sha256": stored.sha256,
        }
    )


def _error_reply(args: dict[str, str], headers: dict[str, str] | None = None) -> web.Response:
    body = {"namespace": "error", "name": "error", "id": "", "args": args}
    return web.json_response(body, status=int(args["code"]), headers=headers)


async def _receive(request: web.Request, store: UploadStore, max_upload_bytes: int) -> _Stored:
    """Check the request, then stream its file into the store.

    Raises:
        BadRequest: no file, a bad name, a malformed or broken body.
        PayloadTooLarge: over the limit or the free space.
    """
    if request.content_length == 0 or not request.body_exists:
        raise BadRequest("the request has no body: send the file")
    if request.content_type == _FORM_TYPE:
        budget = _check_declared(request, store, max_upload_bytes, _MULTIPART_SLACK_BYTES)
        reader = await _body_step(request.multipart(), "at its start")
        name, chunks = await _file_part(reader)
        return await _store(store, name, budget, chunks)
    if request.content_type != _RAW_TYPE:
        raise BadRequest(
            f"send the file as {_RAW_TYPE} (named by ?filename=NAME) or as {_FORM_TYPE} "
            f"(a part named 'file'), not {request.content_type}"
        )
    names = request.query.getall("filename", [])
    if len(names) != 1:
        raise BadRequest("name the file with one ?filename=NAME in the URL")
    name = _checked_name(names[0])
    budget = _check_declared(request, store, max_upload_bytes, 0)
    return await _store(store, name, budget, _read_stream(request.content.read))


def _check_declared(
    request: web.Request, store: UploadStore, max_upload_bytes: int, slack: int
) -> _Budget:
    """The upload's budget, refusing a declared body too large for it before reading any."""
    budget = store.budget(max_upload_bytes)
    declared = request.content_length
    if declared is not None and declared > budget.limit + slack:
        raise PayloadTooLarge(f"the body is {declared} bytes; {budget.reason}")
    return budget


def _checked_name(name: str) -> str:
    problem = check_upload_name(name)
    if problem is not None:
        raise BadRequest(f"the file name {name[:100]!r} {problem}")
    return name


async def _file_part(reader: MultipartReader) -> tuple[str, AsyncIterator[bytes]]:
    """The name and content of the form's ``file`` part; other parts are skipped."""
    skipped = 0
    while True:
        part = await _body_step(reader.next(), "between the parts of the form")
        if part is None:
            raise BadRequest("the form has no part named 'file'")
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart parts are not accepted")
        if part.name == "file":
            break
        async for chunk in _read_stream(part.read_chunk):
            skipped += len(chunk)
            if skipped > _MULTIPART_SLACK_BYTES:
                raise PayloadTooLarge(
                    f"form fields besides 'file' exceed {_MULTIPART_SLACK_BYTES} bytes"
                )
    encoding = part.headers.get("Content-Transfer-Encoding", "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        raise BadRequest(f"send the 'file' part as binary, not {encoding}")
    if "\\" in part.headers.get("Content-Disposition", ""):
        # The header's quoted-string rules would silently drop the backslashes of a path.
        raise BadRequest(
            "the file name of the 'file' part contains a backslash (a path separator); "
            "send a bare file name"
        )
    if not part.filename:
        raise BadRequest("the 'file' part has no filename")
    return _checked_name(part.filename), _read_stream(part.read_chunk)


async def _read_stream(read: Callable[[int], Awaitable[bytes]]) -> AsyncIterator[bytes]:
    """Chunks from ``read(size)`` until it returns ``b""``; a broken body is a ``_BrokenBody``."""
    total = 0
    while True:
        chunk = await _body_step(read(_CHUNK_BYTES), f"after {total} bytes")
        if not chunk:
            return
        total += len(chunk)
        yield chunk


async def _body_step(step: Awaitable[_T], where: str) -> _T:
    """One read from the network, with a body that stalls or breaks made a ``_BrokenBody``.

    A body that sends nothing for ``_READ_IDLE_S`` is dropped, so a dead or stalling client
    cannot hold its credentials and a temp file forever (aiohttp sets no such limit).
    """
    try:
        async with asyncio.timeout(_READ_IDLE_S):
            return await step
    except TimeoutError as exc:
        raise _BrokenBody(f"the body stalled {where}: no data for {_READ_IDLE_S:g} s") from exc
    except _BROKEN_BODY as exc:
        raise _BrokenBody(f"the body broke off or is malformed {where}: {exc!r}") from exc


async def _store(
    store: UploadStore, name: str, budget: _Budget, chunks: AsyncIterator[bytes]
) -> _Stored:
    """Stream ``chunks`` into a temp file, then make it the upload ``name``."""
    part = store.open_part()
    try:
        async for chunk in chunks:
            if part.size + len(chunk) > budget.limit:
                raise PayloadTooLarge(
                    f"the file is larger than {budget.limit} bytes; {budget.reason}"
                )
            await asyncio.to_thread(part.write, chunk)
        if part.size == 0:
            raise BadRequest("the file is empty")
        await asyncio.to_thread(part.commit, store.directory / name)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise PayloadTooLarge(f"the uploads filesystem is full: {exc.strerror}") from exc
        raise
    finally:
        part.discard()
    return _Stored(name, part.size, part.sha256)


# -- the call ----------------------------------------------------------------------------


async def upload_file(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Credentials for one upload to ``POST /upload``, valid for ten minutes."""
    reply = ctx.service.uploads.issue()
    who = ctx.user.name if ctx.user is not None else "?"
    ctx.service.log.info(
        f"upload credentials {reply['upload_user']} issued to {who!r} from {ctx.address}, "
        f"valid until {reply['upload_expires']} UTC"
    )
    return reply


UPLOAD_CALLS = [Call("sys", "upload_file", upload_file, admin=True, changes=True)]
