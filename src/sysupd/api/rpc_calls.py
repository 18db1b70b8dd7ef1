"""The ``rpc`` namespace: logging in, token exchange, logging out, and listing calls."""

from __future__ import annotations

from typing import Any

from sysupd.api.calls import Call, CallContext
from sysupd.core.schema import Arg, Schema
from sysupd.store.users import MAX_NAME_CHARS, MAX_PASSWORD_CHARS

__all__ = ["RPC_CALLS"]

_TOKEN_CHARS = 256


def _max_chars(limit: int) -> Any:
    def check(value: str) -> str | None:
        if len(value) > limit:
            return f"is longer than {limit} characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode text"
        return None

    return check


async def auth(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Log in with a user name and password."""
    via = "websocket" if ctx.session is not None else "http"
    user, token = await ctx.service.auth.login(args["username"], args["password"], ctx.address, via)
    if ctx.session is not None:
        ctx.session.log_in(user, token)
    return {"args": [token, int(ctx.service.auth.token_ttl_s), user.uuid]}


async def auth_token(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Log in with a token from an earlier login; that token is spent."""
    user, token = ctx.service.auth.exchange(args["token"], ctx.address)
    if ctx.session is not None:
        ctx.session.log_in(user, token)
    return {"args": [token, int(ctx.service.auth.token_ttl_s), user.uuid]}


async def auth_clear(ctx: CallContext, args: dict[str, Any]) -> None:
    """Log out: the session's token dies and the socket closes; no reply."""
    if ctx.session is not None:
        ctx.session.log_out()


async def token(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """(ext) Another token for the logged-in user, leaving the session's own token alone: a
    command-line client keeps it to log in with next time, while this session goes on."""
    assert ctx.user is not None
    new = ctx.service.auth.mint(ctx.user, ctx.address)
    if ctx.session is not None:
        ctx.session.minted(new)
    return {"args": [new, int(ctx.service.auth.token_ttl_s), ctx.user.uuid]}


async def query(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The calls this user may make."""
    assert ctx.user is not None
    return ctx.service.calls.names_for(ctx.user)


RPC_CALLS = [
    Call(
        "rpc",
        "auth",
        auth,
        Schema(
            {
                "username": Arg(str, required=True, check=_max_chars(MAX_NAME_CHARS * 4)),
                "password": Arg(str, required=True, check=_max_chars(MAX_PASSWORD_CHARS)),
            }
        ),
        login=False,
    ),
    Call(
        "rpc",
        "auth_token",
        auth_token,
        Schema({"token": Arg(str, required=True, check=_max_chars(_TOKEN_CHARS))}),
        login=False,
    ),
    # Like the other rpc/auth* calls it needs no login: on any socket it ends the session.
    Call("rpc", "auth_clear", auth_clear, login=False),
    Call("rpc", "query", query),
    Call("rpc", "token", token, changes=True),
]
