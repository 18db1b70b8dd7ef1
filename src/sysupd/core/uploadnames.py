"""The rule for an uploaded file's name: bare and safe, or refused (never rewritten by the service).

Shared by the service, which refuses a bad name, and the client library, which sends a safe
stand-in for a local file whose own name breaks the rule.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_NAME_BYTES", "check_upload_name"]

MAX_NAME_BYTES = 255
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def check_upload_name(name: str) -> str | None:
    """``None`` when ``name`` is a bare, safe file name for an upload, else what is wrong."""
    if not name:
        return "is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"contains the control character U+{ord(char):04X}"
    if "/" in name or "\\" in name:
        return "contains a path separator; send a bare file name"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with a dot"
    if name != name.strip():
        return "starts or ends with white space"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None
