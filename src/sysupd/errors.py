"""The exception families of sysupd, split by who is at fault.

- ``ApiError``: an answer on the wire. Each subclass maps to exactly one wire error code and
  carries ``details``, a plain sentence naming what was wrong; nothing was changed. Its two
  families: ``ClientError``, the caller sent something wrong (bad frame, bad args, bad
  credentials, no permission, the wrong HTTP method), and ``ServerError``, the device cannot do
  it now (its disk is full) or a bug.
- ``ConfigError``: the operator's configuration (file, flags, settings) is invalid. Nothing was
  changed.
- ``StateError``: the state directory or database is unusable (corrupt, newer schema, locked).
- ``UpdateError`` and its families, raised by the update engine:
  ``AcquireError`` (getting the bytes failed: transport, disk; may be retried),
  ``VerificationError`` (the content is not trusted: signatures, hashes, expiry, product,
  version floor, unsafe archive members; never retried blindly),
  ``InstallError`` (writing the inactive slot failed: full disk, I/O), and
  ``BootError`` (the bootloader adapter could not record or read the slot choice), with
  ``BootRecordUnusable`` (the stored record exists but is corrupt or incomplete) and
  ``BootRecordMissing`` (there is none) for the start-up that recreates a firmware's record.

Foreign exceptions (sqlite3, OSError, aiohttp) are translated at the edge with ``raise … from``.
Anything else reaching the dispatcher is a bug and is answered with a 500.
"""

from __future__ import annotations

__all__ = [
    "AcquireError",
    "ApiError",
    "BadRequest",
    "BootError",
    "BootRecordMissing",
    "BootRecordUnusable",
    "ClientError",
    "ConfigError",
    "DiskFull",
    "Forbidden",
    "IllegalTransition",
    "InstallError",
    "InsufficientStorage",
    "InternalError",
    "InvalidURL",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ServerError",
    "StateError",
    "SysupdError",
    "TooManyRequests",
    "TrustRefused",
    "Unauthorized",
    "UpdateBusy",
    "UpdateError",
    "VerificationError",
]


class SysupdError(Exception):
    """Root of every exception sysupd raises on purpose."""


class ApiError(SysupdError):
    """An error answered on the wire; maps to one wire error code."""

    code: str = "500"
    message: str = "Internal Server Error"

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class ClientError(ApiError):
    """The caller is at fault."""

    code = "400"
    message = "Bad Request"


class ServerError(ApiError):
    """The device is at fault: it cannot do it now, or a bug."""


class InternalError(ServerError):
    """A bug answered on the wire; the connection and the service go on."""

    code = "500"
    message = "Internal Server Error"


class IllegalTransition(ServerError):
    """A state change that the rules forbid: a bug in the caller, never a client's fault."""


class BadRequest(ClientError):
    """Malformed frame or arguments that break the call's schema."""

    code = "400"
    message = "Bad Request"


class Unauthorized(ClientError):
    """Not logged in, bad credentials or an expired token."""

    code = "401"
    message = "Unauthorized"


class Forbidden(ClientError):
    """A logged-in user without the administrator flag called an admin-only call."""

    code = "403"
    message = "Forbidden"


class NotFound(ClientError):
    """Unknown namespace/name."""

    code = "404"
    message = "Not Found"


class MethodNotAllowed(ClientError):
    """An HTTP method the call does not take (GET for a call that changes state)."""

    code = "405"
    message = "Method Not Allowed"


class InvalidURL(BadRequest):
    """A fetch URL refused before anything is sent; the message names the reason."""


class PayloadTooLarge(ClientError):
    """A request body or upload over the configured limit or the free space."""

    code = "413"
    message = "Payload Too Large"


class TooManyRequests(ClientError):
    """Logins from an address that is locked out."""

    code = "429"
    message = "Too Many Requests"


class InsufficientStorage(ServerError):
    """The state could not be written because the device's disk is full."""

    code = "507"
    message = "Insufficient Storage"


class ConfigError(SysupdError):
    """The operator's configuration is invalid; the message names the setting."""


class StateError(SysupdError):
    """The state directory or database cannot be used as it is."""


class DiskFull(StateError):
    """The state could not be written: the device's disk is full. Nothing was changed."""


class UpdateError(SysupdError):
    """An update could not be carried out; the running system is untouched."""


class AcquireError(UpdateError):
    """The update's bytes could not be obtained (network, source file); may be retried."""


class VerificationError(UpdateError):
    """The update is not trusted or not acceptable; never installed, never retried blindly."""


class TrustRefused(VerificationError):
    """Metadata refused by the TUF workflow: the newer roots that verified before the refusal
    are trusted all the same, as the workflow keeps each verified root (so rotated-out keys stop
    counting)."""

    def __init__(
        self,
        message: str,
        roots: tuple[bytes, ...],
        *,
        rollback: bool = False,
    ) -> None:
        super().__init__(message)
        self.roots = roots
        """The verified roots newer than the trusted one, oldest first."""
        self.rollback = rollback
        """The refusal is metadata older than what the device has seen."""


class UpdateBusy(UpdateError):
    """Another update holds the lock."""


class InstallError(UpdateError):
    """Writing the inactive slot failed (full disk, I/O error)."""


class BootError(UpdateError):
    """The bootloader adapter could not read or record the slot choice."""


class BootRecordUnusable(BootError):
    """The bootloader's stored record is there but cannot be used (corrupt, truncated,
    incomplete, invalid values); the message names the file and what is wrong with it. A
    firmware that cannot read it either boots as on a fresh device, so the start recreates it
    around the slot that really booted."""


class BootRecordMissing(BootRecordUnusable):
    """No record is stored, where the caller asked for one (``load(missing_ok=False)``)."""
