"""Upload credentials: the user name and password ``sys/upload_file`` issues for one upload.

Invariants:

- Credentials live ``UPLOAD_TTL_S`` seconds on the service's clock (checked when an upload
  starts, so an upload that started in time may finish later) and serve one *completed* upload:
  while an upload runs they are reserved (a second request with them is refused), a failed upload
  (refused, broken off) hands them back for a retry until they expire, and a completed one spends
  them. Each pair moves only along ``GrantState``'s checked transitions.
- Passwords are 256-bit random, compared with ``hmac.compare_digest`` (against a dummy for an
  unknown user, so that the time taken does not tell) and never logged; failed upload logins do
  not count towards the login lockout, as no password that long can be guessed.
- At most ``_MAX_GRANTS`` are kept: the oldest idle ones make room, and expired ones are
  forgotten one lifetime after they expired (until then a refusal can say "expired").
"""

from __future__ import annotations

import enum
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sysupd.errors import Unauthorized
from sysupd.system.clock import Clock

__all__ = ["UPLOAD_TTL_S", "GrantState", "UploadGrant", "UploadGrants"]

UPLOAD_TTL_S = 600.0
"""Seconds upload credentials stay valid."""

_MAX_GRANTS = 64
_EXPIRES_FORMAT = "%Y%m%d%H%M%S"


class GrantState(enum.Enum):
    """Where one pair of upload credentials is in its life."""

    ISSUED = "issued"
    UPLOADING = "uploading"
    USED = "used"


_MOVES = {
    GrantState.ISSUED: {GrantState.UPLOADING},
    GrantState.UPLOADING: {GrantState.ISSUED, GrantState.USED},
    GrantState.USED: set[GrantState](),
}


@dataclass(slots=True)
class UploadGrant:
    """One pair of upload credentials."""

    user: str
    password: str
    deadline_s: float
    """On the monotonic clock."""
    expires: str
    """``upload_expires`` as sent: UTC ``yyyyMMddHHmmss``."""
    state: GrantState = GrantState.ISSUED

    def move(self, to: GrantState) -> None:
        """Change state.

        Raises:
            RuntimeError: the move is not allowed (a bug).
        """
        if to not in _MOVES[self.state]:
            raise RuntimeError(f"upload grant {self.user}: {self.state.value} -> {to.value}")
        self.state = to


class UploadGrants:
    """The upload credentials of one service."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._grants: dict[str, UploadGrant] = {}
        self._dummy = secrets.token_urlsafe(32)

    def issue(self) -> dict[str, Any]:
        """New credentials for one upload: ``sys/upload_file``'s reply."""
        now = self._clock.monotonic()
        self._prune(now)
        user = f"upload-{secrets.token_hex(8)}"
        while user in self._grants:  # pragma: no cover - 64 random bits
            user = f"upload-{secrets.token_hex(8)}"
        expires = (self._clock.utcnow() + timedelta(seconds=UPLOAD_TTL_S)).strftime(_EXPIRES_FORMAT)
        grant = UploadGrant(user, secrets.token_urlsafe(32), now + UPLOAD_TTL_S, expires)
        self._grants[user] = grant
        return {"upload_user": grant.user, "upload_pass": grant.password, "upload_expires": expires}

    def begin(self, user: str, password: str) -> UploadGrant:
        """Reserve the credentials for an upload that starts now.

        Raises:
            Unauthorized: they are unknown, wrong, expired, used, or in use by another upload.
        """
        grant = self._grants.get(user)
        expected = (grant.password if grant is not None else self._dummy).encode()
        given = password.encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected, given) or grant is None:
            raise Unauthorized(
                "wrong upload user name or password; get credentials with sys/upload_file"
            )
        if self._clock.monotonic() >= grant.deadline_s:
            raise Unauthorized(f"the upload credentials expired at {grant.expires} UTC")
        if grant.state is GrantState.USED:
            raise Unauthorized("the upload credentials were used already; each serves one upload")
        if grant.state is GrantState.UPLOADING:
            raise Unauthorized("an upload with these credentials is in progress")
        grant.move(GrantState.UPLOADING)
        return grant

    def end(self, grant: UploadGrant, *, completed: bool) -> None:
        """Spend the credentials (``completed``) or hand them back for a retry."""
        grant.move(GrantState.USED if completed else GrantState.ISSUED)

    def _prune(self, now: float) -> None:
        """Forget credentials expired for a while (so refusals can still say "expired"), and
        the oldest idle ones beyond ``_MAX_GRANTS``."""
        for user, grant in list(self._grants.items()):
            if grant.state is not GrantState.UPLOADING and now >= grant.deadline_s + UPLOAD_TTL_S:
                del self._grants[user]
        idle = [u for u, g in self._grants.items() if g.state is not GrantState.UPLOADING]
        for user in idle[: max(0, len(self._grants) - _MAX_GRANTS + 1)]:
            del self._grants[user]
