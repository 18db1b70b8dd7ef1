"""Argument schemas: strict checks of a call's ``args`` object before any handler runs.

A schema rejects unknown keys, missing required keys, wrong JSON types (a boolean is never an
integer) and keys that exclude each other; every refusal names the key at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sysupd.errors import BadRequest

__all__ = ["Arg", "Schema", "is_json_type", "json_type_name"]

Check = Callable[[Any], str | None]
"""Returns ``None`` when the value is acceptable, else what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: its JSON type, whether it must be present, and an optional extra check."""

    kind: type
    required: bool = False
    check: Check | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    """The arguments one call accepts."""

    args: Mapping[str, Arg] = field(default_factory=dict)
    exclusive: tuple[frozenset[str], ...] = ()
    open: bool = False
    """An open schema (e.g. ``sys/set_config``) leaves unknown keys to its handler."""

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``args`` unchanged if it fits.

        Raises:
            BadRequest: naming the first key at fault.
        """
        if not self.open:
            unknown = sorted(set(args) - set(self.args))
            if unknown:
                raise BadRequest(f"unknown argument {unknown[0]!r}")
        for group in self.exclusive:
            present = sorted(group & set(args))
            if len(present) > 1:
                raise BadRequest(f"arguments {' and '.join(map(repr, present))} exclude each other")
        for name, spec in self.args.items():
            if name not in args:
                if spec.required:
                    raise BadRequest(f"argument {name!r} is required")
                continue
            value = args[name]
            if not is_json_type(value, spec.kind):
                raise BadRequest(
                    f"argument {name!r} must be {json_type_name(spec.kind)}, "
                    f"not {json_type_name(type(value))}"
                )
            if spec.check is not None and (problem := spec.check(value)) is not None:
                raise BadRequest(f"argument {name!r} {problem}")
        return dict(args)


def is_json_type(value: object, kind: type) -> bool:
    """Whether ``value`` is of JSON type ``kind``, keeping booleans and numbers apart."""
    if kind is bool or isinstance(value, bool):
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def json_type_name(kind: type) -> str:
    """The JSON name of a Python type, for error messages."""
    names: dict[type, str] = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(kind, kind.__name__)
