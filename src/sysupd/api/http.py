"""The HTTP listener's ``/api/<namespace>/<name>``: the same calls, one request each.

Every request carries HTTP Basic credentials (except the ``rpc/auth*`` calls, whose body carries
them), checked before the body is read; the body is the call's ``args`` and must arrive within
the idle timeout; the reply is the WebSocket envelope, with the HTTP status set to 200 or the
error's code.
"""

from __future__ import annotations

import asyncio
import binascii
import json
from base64 import b64decode
from typing import TYPE_CHECKING, Any

from aiohttp import ClientPayloadError, web

from sysupd.api.calls import SERVICE_KEY, CallContext
from sysupd.core.envelope import EnvelopeError, Request, error_args, parse_request_object
from sysupd.core.origins import is_own_origin
from sysupd.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthorized,
)

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = [
    "ALLOWED_METHODS",
    "connection_closed",
    "error_response",
    "handle_api",
    "parse_basic_auth",
    "refuse_cross_site",
]

ALLOWED_METHODS = ("GET", "POST", "PUT", "HEAD", "OPTIONS")
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="sysupd", charset="UTF-8"'}
_BODY_CREDENTIALS = ("auth", "auth_token")
"""The ``rpc`` calls whose body carries the credentials."""


async def handle_api(request: web.Request) -> web.StreamResponse:
    """Answer one ``/api/<namespace>/<name>`` request."""
    if request.method in ("HEAD", "OPTIONS"):
        return web.Response(status=200, headers={"Allow": ", ".join(ALLOWED_METHODS)})
    service: Service = request.app[SERVICE_KEY]
    address = request.remote or "unknown"
    namespace, call_name = request.match_info["namespace"], request.match_info["name"]
    try:
        refuse_cross_site(request)
        found = service.calls.find(namespace, call_name)
        if request.method == "GET" and found is not None and found.changes:
            raise MethodNotAllowed(
                f"{namespace}/{call_name} changes the device's state: "
                "send it with POST or PUT, not GET"
            )
        ctx = CallContext(service, address)
        # The credentials before the body: a client that cannot log in must not hold a
        # connection (busy, so never dropped for a newcomer) while it dribbles a body in.
        if namespace != "rpc" or call_name not in _BODY_CREDENTIALS:
            name, password = parse_basic_auth(request.headers.get("Authorization"))
            ctx.user = await service.auth.check_basic(name, password, address)
        call = await _read_call(request, service.guard.limits.idle_timeout_s)
        result = await service.calls.dispatch(ctx, call)
    except Exception as exc:  # noqa: BLE001 - every failure is answered, never a dropped request
        failed = Request(namespace, call_name, "", {})
        response = error_response(service.wire_error(failed, exc))
        if not request.content.is_eof():
            response.force_close()  # the rest of the body is not waited for
        return response
    return _envelope("response", result or {}, 200)


def error_response(exc: ApiError) -> web.Response:
    """The error envelope of ``exc`` with its HTTP status (and a Basic challenge for a 401)."""
    headers = _CHALLENGE if isinstance(exc, Unauthorized) else None
    if isinstance(exc, MethodNotAllowed):
        headers = {"Allow": "POST, PUT, HEAD, OPTIONS"}
    return _envelope("error", error_args(exc), int(exc.code), headers)


def refuse_cross_site(request: web.Request) -> None:
    """Browsers attach cached Basic credentials to requests any page makes, and let any page open
    a WebSocket; refuse those that another site started, so a web page elsewhere cannot reboot
    or reconfigure the appliance (see ``core.origins``).

    Raises:
        Forbidden: the request came from another site's page.
    """
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        raise Forbidden("cross-site requests are refused")
    origin = request.headers.get("Origin")
    service = request.app[SERVICE_KEY]
    ports, names = service.listening_ports(), service.known_names
    if origin is not None and not is_own_origin(origin, request.host, ports, names):
        raise Forbidden(f"requests from origin {origin[:100]!r} are refused")


def parse_basic_auth(header: str | None) -> tuple[str, str]:
    """User name and password from an ``Authorization: Basic`` header.

    Raises:
        Unauthorized: the header is missing or malformed.
    """
    if not header:
        raise Unauthorized("send HTTP Basic credentials in the Authorization header")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Unauthorized("the Authorization header must use the Basic scheme")
    try:
        decoded = b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise Unauthorized("the Authorization header is not valid base64 of UTF-8") from exc
    name, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("the Basic credentials must be 'user:password'")
    return name, password


def connection_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is aiohttp's body reader finding its connection already closed (the
    client, or the connection guard dropping a slow body, closed it): the client's doing, not a
    bug. aiohttp says so with a plain ``RuntimeError``."""
    return isinstance(exc, RuntimeError) and str(exc) == "Connection closed."


async def _read_call(request: web.Request, deadline_s: float) -> Request:
    """The call the request makes, its body read within ``deadline_s``.

    Raises:
        BadRequest: the body is late, cut short or not a call's arguments.
        PayloadTooLarge: the body is over the frame limit.
    """
    try:
        async with asyncio.timeout(deadline_s):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SERVICE_KEY].config.max_frame_bytes
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from exc
    except TimeoutError as exc:
        raise BadRequest(f"the request body did not arrive within {deadline_s:g} s") from exc
    except (ConnectionError, ClientPayloadError) as exc:
        raise BadRequest("the client went away before its request was complete") from exc
    except RuntimeError as exc:
        if not connection_closed(exc):
            raise
        raise BadRequest("the client went away before its request was complete") from exc
    if body.strip():
        try:
            args = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadRequest("the request body is not valid UTF-8 JSON") from exc
    else:
        args = {}
    try:
        return parse_request_object(
            {
                "namespace": request.match_info["namespace"],
                "name": request.match_info["name"],
                "id": "",
                "args": args,
            }
        )
    except EnvelopeError as exc:
        raise BadRequest(exc.details.replace("'args'", "the request body")) from exc


def _envelope(
    kind: str, args: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"namespace": kind, "name": kind, "id": "", "args": args}
    return web.json_response(body, status=status, headers=headers)
