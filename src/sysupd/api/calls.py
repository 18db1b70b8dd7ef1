"""The call table: which ``namespace/name`` exists, who may call it, its schema and handler.

``dispatch`` applies the contract's order of checks: not logged in (401) before unknown call
(404), then administrator (403), then the argument schema (400), then the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sysupd.core.envelope import Request
from sysupd.core.schema import Schema
from sysupd.errors import Forbidden, NotFound, Unauthorized
from sysupd.store.users import User

if TYPE_CHECKING:
    from sysupd.api.service import Service
    from sysupd.api.websocket import WsSession

__all__ = ["SERVICE_KEY", "Call", "CallContext", "CallTable", "Handler"]

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service")
"""Where both listeners' applications keep the service."""


@dataclass(slots=True)
class CallContext:
    """Who is calling, over what."""

    service: Service
    address: str
    user: User | None = None
    session: WsSession | None = None
    """The WebSocket session, or ``None`` for an HTTP request."""


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""Returns the reply's ``args``, or ``None`` for a call that sends no reply."""


@dataclass(frozen=True, slots=True)
class Call:
    """One API call."""

    namespace: str
    name: str
    handler: Handler
    schema: Schema = field(default_factory=Schema)
    admin: bool = False
    login: bool = True
    """False only for the ``rpc/auth*`` calls that log in."""
    changes: bool = False
    """It changes the device's state, so HTTP takes it by POST or PUT only: a browser sends a
    cross-site GET (an image, a link) with the credentials it has cached, and old browsers
    mark it with neither Origin nor Sec-Fetch-Site."""


class CallTable:
    """Every call the service answers."""

    def __init__(self, calls: list[Call]) -> None:
        self._calls = {(c.namespace, c.name): c for c in calls}

    def names_for(self, user: User) -> dict[str, list[str]]:
        """``rpc/query``'s answer: the calls ``user`` may make, by namespace."""
        names: dict[str, list[str]] = {}
        for call in self._calls.values():
            if user.is_admin or not call.admin:
                names.setdefault(call.namespace, []).append(call.name)
        return {ns: sorted(calls) for ns, calls in sorted(names.items())}

    def find(self, namespace: str, name: str) -> Call | None:
        """The call ``namespace/name``, if there is one."""
        return self._calls.get((namespace, name))

    async def dispatch(self, ctx: CallContext, request: Request) -> dict[str, Any] | None:
        """Check and run one call.

        Raises:
            ClientError: the call is refused (the subclass names the wire code).
        """
        call = self._calls.get((request.namespace, request.name))
        if call is None or call.login:
            if ctx.user is None:
                raise Unauthorized(f"log in with rpc/auth before calling {request.call}")
            if call is None:
                raise NotFound(f"there is no call {request.call}")
        if call.admin and (ctx.user is None or not ctx.user.is_admin):
            raise Forbidden(f"{request.call} is for administrators only")
        args = call.schema.validate(request.args)
        return await call.handler(ctx, args)
