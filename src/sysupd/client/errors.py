"""What can go wrong on the client's side, split by who is at fault.

- ``ApiError``: the service answered with an error reply (it names the code and why).
- ``NotLoggedIn``: there is no usable login (no token stored, or it expired or was revoked, or no
  certificate is pinned to use it with): the person logs in again.
- ``ConnectionFailed``: the service could not be reached, or the connection broke (may retry).
  ``NotTls`` is the one that no retry mends: the address answers, but in plain http, not TLS
  (the person gave https for a plain listener).
- ``CertificateChanged``: the service presented another certificate than the one pinned on first
  use: someone may be in the middle, so nothing was sent.
"""

from __future__ import annotations

from typing import Any

from sysupd.errors import SysupdError

__all__ = [
    "ApiError",
    "CertificateChanged",
    "ClientFailure",
    "ConnectionFailed",
    "NotLoggedIn",
    "NotTls",
]


class ClientFailure(SysupdError):
    """Root of the client's errors."""


class ApiError(ClientFailure):
    """An error reply: ``code`` (``"401"``…), ``message`` and ``details`` as the service sent."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.code = str(args.get("code", ""))
        self.message = str(args.get("message", ""))
        self.details = str(args.get("details", ""))
        super().__init__(
            f"{self.code} {self.message}" + (f": {self.details}" if self.details else "")
        )


class NotLoggedIn(ClientFailure):
    """No usable login: log in again."""


class ConnectionFailed(ClientFailure):
    """The service could not be reached, or the connection broke."""


class NotTls(ConnectionFailed):
    """The address answered a TLS handshake in plain text: it is an http listener."""


class CertificateChanged(ClientFailure):
    """The service's TLS certificate is not the one pinned for it."""

    def __init__(self, server: str, pinned: str, presented: str, message: str) -> None:
        super().__init__(message)
        self.server = server
        self.pinned = pinned
        self.presented = presented
