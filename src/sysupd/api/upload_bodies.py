"""The body of a ``POST /upload``: which file it carries, under what name, read as it comes.

A raw ``application/octet-stream`` body is named by ``?filename=``; a ``multipart/form-data``
body carries the file in its part named ``file``. Either is streamed into the ``UploadStore``.

Invariants:

- A body is never held in memory: it is read in chunks of at most ``_CHUNK_BYTES``.
- Dangerous names are refused with a 400 that says why, never rewritten; that includes a form's
  ``filename="C:\\a\\b"``, whose backslashes the header's quoted-string rules would otherwise
  silently drop.
- A body declared larger than the upload's budget (``Content-Length``) is refused before any of
  it is read; a multipart body may exceed the budget by ``_MULTIPART_SLACK_BYTES`` of form
  overhead, the file inside it is held to the budget exactly, as is a chunked body.
- A body that sends nothing for ``idle_s`` seconds (the service's ``upload_idle_s``) is dropped
  like one that broke off, so a dead or stalling client cannot hold its credentials and a temp
  file forever (aiohttp sets no such limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from aiohttp import BodyPartReader, ClientPayloadError, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from sysupd.api.http import connection_closed
from sysupd.api.upload_store import Budget, StoredUpload, UploadStore
from sysupd.core.uploadnames import check_upload_name
from sysupd.errors import BadRequest, PayloadTooLarge

__all__ = ["receive_upload"]

_T = TypeVar("_T")

_CHUNK_BYTES = 256 * 1024
_MULTIPART_SLACK_BYTES = 64 * 1024
_RAW_TYPE = "application/octet-stream"
_FORM_TYPE = "multipart/form-data"
_BROKEN_BODY = (ConnectionError, ClientPayloadError, HttpProcessingError, ValueError)


class _BrokenBody(BadRequest):
    """The body ended early, stalled or was malformed (the client is usually gone)."""


async def receive_upload(
    request: web.Request, store: UploadStore, max_upload_bytes: int, idle_s: float
) -> StoredUpload:
    """Check the request, then stream its file into ``store``.

    Raises:
        BadRequest: no file, a bad name, a malformed, broken or stalled body (``_BrokenBody``).
        PayloadTooLarge: over the limit or the free space.
    """
    body = _Body(idle_s)
    if request.content_length == 0 or not request.body_exists:
        raise BadRequest("the request has no body: send the file")
    if request.content_type == _FORM_TYPE:
        budget = _check_declared(request, store, max_upload_bytes, _MULTIPART_SLACK_BYTES)
        reader = await body.step(request.multipart(), "at its start")
        name, chunks = await _file_part(body, reader)
        return await store.save(name, budget, chunks)
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
    return await store.save(name, budget, body.chunks(request.content.read))


def _check_declared(
    request: web.Request, store: UploadStore, max_upload_bytes: int, slack: int
) -> Budget:
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


async def _file_part(body: _Body, reader: MultipartReader) -> tuple[str, AsyncIterator[bytes]]:
    """The name and content of the form's ``file`` part; other parts are skipped."""
    skipped = 0
    while True:
        part = await body.step(reader.next(), "between the parts of the form")
        if part is None:
            raise BadRequest("the form has no part named 'file'")
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart parts are not accepted")
        if part.name == "file":
            break
        async for chunk in body.chunks(part.read_chunk):
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
    return _checked_name(part.filename), body.chunks(part.read_chunk)


class _Body:
    """Reads from one request's body, each read bounded by the idle limit."""

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s

    async def chunks(self, read: Callable[[int], Awaitable[bytes]]) -> AsyncIterator[bytes]:
        """Chunks from ``read(size)`` until it returns ``b""``; a broken body is a
        ``_BrokenBody``."""
        total = 0
        while True:
            chunk = await self.step(read(_CHUNK_BYTES), f"after {total} bytes")
            if not chunk:
                return
            total += len(chunk)
            yield chunk

    async def step(self, step: Awaitable[_T], where: str) -> _T:
        """One read from the network, with a body that stalls or breaks made a ``_BrokenBody``."""
        try:
            async with asyncio.timeout(self._idle_s):
                return await step
        except TimeoutError as exc:
            raise _BrokenBody(f"the body stalled {where}: no data for {self._idle_s:g} s") from exc
        except _BROKEN_BODY as exc:
            raise _BrokenBody(f"the body broke off or is malformed {where}: {exc!r}") from exc
        except RuntimeError as exc:
            if not connection_closed(exc):
                raise
            raise _BrokenBody(f"the body broke off {where}: the connection closed") from exc
