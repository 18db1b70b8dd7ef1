"""The ``sys`` namespace calls that need no update engine: identity, log, settings, reboots,
and the idle answers of the update status calls."""

from __future__ import annotations

from typing import Any

from sysupd.api.calls import Call, CallContext
from sysupd.core.schema import Arg, Schema
from sysupd.core.settings import DEVICE_SETTINGS, settings_to_wire
from sysupd.errors import BadRequest, ConfigError
from sysupd.system.reboot import RebootKind

__all__ = ["SYS_CALLS"]

_MAX_DELAY_S = 365 * 86400
_AUDIT_DEFAULT = 1000
_AUDIT_MAX = 10_000


async def info(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Identity and version."""
    return ctx.service.system_info()


async def middleware_log(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The service log, newest last."""
    return {"log": ctx.service.log.text()}


async def audit_log(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """(ext) The audit record, oldest first: logins, failures, lockouts, and every change."""
    return {"audit": ctx.service.audit.read(args.get("limit", _AUDIT_DEFAULT))}


async def list_config(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Every setting; (ext) ``readonly`` names the device's own, which the API cannot change."""
    return {
        "config": settings_to_wire(ctx.service.settings),
        "readonly": sorted(DEVICE_SETTINGS),
    }


async def set_config(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Change one or more settings, all or none."""
    if not args:
        raise BadRequest("give at least one setting to change")
    try:
        ctx.service.change_settings(args, by=ctx.user.name if ctx.user else "?")
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    return {"result": "success"}


async def reboot(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Schedule a reboot (or poweroff), replacing any scheduled one."""
    kind = RebootKind.POWEROFF if args.get("poweroff", False) else RebootKind.RESTART
    plan = ctx.service.reboots.schedule(args.get("delay_seconds", 300), kind, by=_who(ctx))
    return plan.to_wire()


async def reboot_time(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The scheduled reboot, if any."""
    timer = ctx.service.reboots
    if timer.plan is None:
        return {"reboot_scheduled": False}
    return {
        "reboot_scheduled": True,
        **timer.plan.to_wire(),
        "reboot_delay_seconds": timer.seconds_left(),
    }


async def reboot_stop(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Cancel the scheduled reboot."""
    if not ctx.service.reboots.cancel(by=_who(ctx)):
        return {"result": "No reboot timer to stop"}
    return {"result": "success"}


def _who(ctx: CallContext) -> str:
    return ctx.user.name if ctx.user is not None else "the service"


def _audit_limit(value: int) -> str | None:
    return None if 1 <= value <= _AUDIT_MAX else f"must be between 1 and {_AUDIT_MAX}"


def _delay(value: int) -> str | None:
    return None if 0 <= value <= _MAX_DELAY_S else f"must be between 0 and {_MAX_DELAY_S}"


SYS_CALLS = [
    Call("sys", "info", info),
    Call("sys", "middleware_log", middleware_log, admin=True),
    Call(
        "sys", "audit_log", audit_log, Schema({"limit": Arg(int, check=_audit_limit)}), admin=True
    ),
    Call("sys", "list_config", list_config, admin=True),
    Call("sys", "set_config", set_config, Schema(open=True), admin=True, changes=True),
    Call(
        "sys",
        "reboot",
        reboot,
        Schema({"delay_seconds": Arg(int, check=_delay), "poweroff": Arg(bool)}),
        admin=True,
        changes=True,
    ),
    Call("sys", "reboot_time", reboot_time),
    Call("sys", "reboot_stop", reboot_stop, admin=True, changes=True),
]
