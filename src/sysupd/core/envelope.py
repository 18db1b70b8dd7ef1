"""The ``namespace/name/id/args`` envelope: decoding requests, encoding replies, errors, events.

Invariants: a frame decodes to a ``Request`` or raises ``EnvelopeError`` carrying the request id
when one could be read (else ``""``); encoders always produce one JSON object per frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sysupd.errors import ApiError, BadRequest

__all__ = [
    "MAX_ID_CHARS",
    "EnvelopeError",
    "Request",
    "encode_error",
    "encode_event",
    "encode_reply",
    "error_args",
    "parse_request",
    "parse_request_object",
]

MAX_ID_CHARS = 256
"""Longer ids are refused, so that a reply never echoes a huge one."""


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded call."""

    namespace: str
    name: str
    id: str
    args: dict[str, Any]

    @property
    def call(self) -> str:
        """The call's ``namespace/name``."""
        return f"{self.namespace}/{self.name}"


class EnvelopeError(BadRequest):
    """A frame that is not a valid request; ``request_id`` is echoed in the error reply."""

    def __init__(self, details: str, request_id: str = "") -> None:
        super().__init__(details)
        self.request_id = request_id


def parse_request(frame: str | bytes) -> Request:
    """Decode one WebSocket frame.

    Raises:
        EnvelopeError: the frame is not UTF-8 JSON, not an object, or a field has the wrong type.
    """
    try:
        text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    except UnicodeDecodeError as exc:
        raise EnvelopeError("frame is not valid UTF-8 text") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError("frame is not valid JSON") from exc
    return parse_request_object(data)


def parse_request_object(data: object) -> Request:
    """Check a decoded JSON value against the envelope's shape.

    Raises:
        EnvelopeError: not an object, or a field is missing or of the wrong type.
    """
    if not isinstance(data, dict):
        raise EnvelopeError(f"frame must be a JSON object, not {_json_type(data)}")
    raw_id = data.get("id")
    request_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS else ""
    if raw_id is None and "id" not in data:
        raise EnvelopeError("'id' is missing")
    if not isinstance(raw_id, str):
        raise EnvelopeError(f"'id' must be a string, not {_json_type(raw_id)}")
    if len(raw_id) > MAX_ID_CHARS:
        raise EnvelopeError(f"'id' is longer than {MAX_ID_CHARS} characters")
    for key in ("namespace", "name"):
        if key not in data:
            raise EnvelopeError(f"'{key}' is missing", request_id)
        if not isinstance(data[key], str):
            raise EnvelopeError(
                f"'{key}' must be a string, not {_json_type(data[key])}", request_id
            )
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise EnvelopeError(f"'args' must be a JSON object, not {_json_type(args)}", request_id)
    return Request(data["namespace"], data["name"], request_id, args)


def encode_reply(request_id: str, args: dict[str, Any]) -> str:
    """A success reply for ``request_id``."""
    return _dumps({"namespace": "response", "name": "response", "id": request_id, "args": args})


def encode_error(request_id: str, error: ApiError) -> str:
    """An error reply: the error's code and message, with ``details`` saying what was wrong."""
    return _dumps(
        {
            "namespace": "error",
            "name": "error",
            "id": request_id,
            "args": error_args(error),
        }
    )


def error_args(error: ApiError) -> dict[str, str]:
    """The ``args`` of an error reply."""
    return {"code": error.code, "message": error.message, "details": error.details}


def encode_event(name: str, args: dict[str, Any]) -> str:
    """An event frame, as pushed to sessions."""
    return _dumps({"namespace": "event", "name": name, "id": "event", "args": args})


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__  # pragma: no cover - json.loads yields only the above
