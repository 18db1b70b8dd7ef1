"""Offline updates through the API: ``sys/upload_file`` credentials and ``POST /upload`` files.

``sys/upload_file`` (admin) issues a random user name and password for HTTP Basic; ``POST
/upload`` streams one file into the uploads directory, where ``sys/update_now {"file_upload":
name}`` finds it. This module is the HTTP edge and the call; its parts, each stating its own
invariants, are ``upload_grants`` (the credentials and their life), ``upload_bodies`` (reading
the body: raw or multipart, names, limits, the idle limit ``upload_idle_s``) and
``upload_store`` (the files: temp file, then atomic rename; budgets; clearing at start).

Invariants:

- Every request is answered, and nothing is lost either way: a refused or broken upload leaves
  no file behind and every earlier upload untouched, and hands its credentials back.
- Sizes are checked against ``max_upload_bytes``, read live from the settings when the upload
  starts.
- Refusals are answered with the error envelope of the HTTP API (``{"namespace": "error", ...,
  "args": {"code", "message", "details"}}``) and the error's HTTP status, a 401 with a Basic
  challenge; the success reply is the contract's body as it is: ``{"result": "success",
  "file_upload", "size", "sha256"}``. Passwords are never logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from sysupd.api.calls import SERVICE_KEY, Call, CallContext
from sysupd.api.http import parse_basic_auth, refuse_cross_site
from sysupd.api.upload_bodies import receive_upload
from sysupd.core.envelope import Request, error_args
from sysupd.errors import Unauthorized

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = [
    "UPLOAD_CALLS",
    "handle_upload",
    "upload_file",
]

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="sysupd-upload", charset="UTF-8"'}


async def handle_upload(request: web.Request) -> web.StreamResponse:
    """Answer one ``POST /upload``: store the file or refuse it, with nothing lost either way."""
    service: Service = request.app[SERVICE_KEY]
    address = request.remote or "unknown"
    store = service.uploads
    try:
        refuse_cross_site(request)
        user, password = parse_basic_auth(request.headers.get("Authorization"))
        grant = store.grants.begin(user, password)
        completed = False
        try:
            stored = await receive_upload(
                request, store, service.settings.max_upload_bytes, service.config.upload_idle_s
            )
            completed = True
        finally:
            store.grants.end(grant, completed=completed)
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


async def upload_file(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Credentials for one upload to ``POST /upload``, valid for ten minutes."""
    reply = ctx.service.uploads.grants.issue()
    who = ctx.user.name if ctx.user is not None else "?"
    ctx.service.log.info(
        f"upload credentials {reply['upload_user']} issued to {who!r} from {ctx.address}, "
        f"valid until {reply['upload_expires']} UTC"
    )
    return reply


UPLOAD_CALLS = [Call("sys", "upload_file", upload_file, admin=True, changes=True)]
