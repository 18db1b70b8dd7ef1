"""Session rules: the socket session's states, login tokens and the login lockout.

Everything here is fed the current monotonic time (``now``, seconds) instead of reading a clock,
so the 30-second, 900-second and 60-minute rules are tested by moving a number.

Invariants: a token is redeemable once; a token unused for ``ttl_s`` is dead; tokens are kept by
their digest only; an address with ``max_failures`` failed logins inside ``window_s`` is refused
for ``lockout_s``.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections import deque
from dataclasses import dataclass, field

from sysupd.errors import IllegalTransition

__all__ = [
    "LoginThrottle",
    "SavedToken",
    "SessionState",
    "SessionStateMachine",
    "TokenGrant",
    "TokenTable",
    "token_digest",
]


class SessionState(enum.Enum):
    """Where one WebSocket session stands."""

    CONNECTED = "connected"
    """Open, not logged in: only ``rpc/auth*`` is allowed, and the login deadline runs."""
    AUTHENTICATED = "authenticated"
    """Logged in with a live token: calls are allowed and events are delivered."""
    CLOSED = "closed"
    """Closed by either side; terminal."""


_ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    SessionState.CONNECTED: frozenset({SessionState.AUTHENTICATED, SessionState.CLOSED}),
    SessionState.AUTHENTICATED: frozenset({SessionState.AUTHENTICATED, SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


@dataclass(slots=True)
class SessionStateMachine:
    """The checked state of one session."""

    state: SessionState = SessionState.CONNECTED

    def move(self, target: SessionState) -> None:
        """Change state.

        Raises:
            IllegalTransition: the rules do not allow ``state → target``.
        """
        if target not in _ALLOWED[self.state]:
            raise IllegalTransition(f"session cannot go from {self.state.value} to {target.value}")
        self.state = target


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a live token stands for."""

    user_uuid: str
    stamp: str
    """The user's credential stamp at login; a password change makes it stale."""
    last_used: float


@dataclass(frozen=True, slots=True)
class SavedToken:
    """A live token as kept across a restart: its digest, never the token itself."""

    digest: str
    user_uuid: str
    stamp: str
    idle_s: float
    """Seconds it had been unused when it was saved."""


def token_digest(token: str) -> str:
    """The key a token is kept under: its SHA-256, so a copy of the table logs nobody in."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class TokenTable:
    """Login tokens: issued at login, extended by use, replaced by ``rpc/auth_token``.

    At most ``max_per_user`` tokens live for one user: issuing another forgets that user's least
    recently used one, so no client can grow the table without bound.
    """

    ttl_s: float
    max_per_user: int = 4096
    _tokens: dict[str, TokenGrant] = field(default_factory=dict)
    _per_user: dict[str, int] = field(default_factory=dict)

    def issue(self, user_uuid: str, stamp: str, now: float) -> str:
        """Create a token for ``user_uuid`` whose credentials carry ``stamp``."""
        if self._per_user.get(user_uuid, 0) >= self.max_per_user:
            mine = (d for d, g in self._tokens.items() if g.user_uuid == user_uuid)
            self._drop(min(mine, key=lambda d: self._tokens[d].last_used))
        token = secrets.token_urlsafe(32)
        self._put(token_digest(token), TokenGrant(user_uuid, stamp, now))
        return token

    def touch(self, token: str, now: float) -> TokenGrant | None:
        """Extend a live token; ``None`` (and the token forgotten) if it is unknown or expired."""
        digest = token_digest(token)
        grant = self._tokens.get(digest)
        if grant is None:
            return None
        if now - grant.last_used > self.ttl_s:
            self._drop(digest)
            return None
        grant = TokenGrant(grant.user_uuid, grant.stamp, now)
        self._tokens[digest] = grant
        return grant

    def is_live(self, token: str, now: float) -> bool:
        """Whether ``token`` is known and unexpired, without extending it."""
        grant = self._tokens.get(token_digest(token))
        return grant is not None and now - grant.last_used <= self.ttl_s

    def redeem(self, token: str, now: float) -> TokenGrant | None:
        """Invalidate a live token and return what it stood for (``rpc/auth_token``)."""
        grant = self.touch(token, now)
        if grant is not None:
            self._drop(token_digest(token))
        return grant

    def revoke(self, token: str) -> None:
        """Forget ``token`` (logout, socket closed)."""
        self._drop(token_digest(token))

    def sweep(self, now: float) -> int:
        """Forget expired tokens; returns how many."""
        dead = [t for t, g in self._tokens.items() if now - g.last_used > self.ttl_s]
        for digest in dead:
            self._drop(digest)
        return len(dead)

    def export(self, now: float) -> list[SavedToken]:
        """The live tokens, to keep across a restart."""
        return [
            SavedToken(digest, g.user_uuid, g.stamp, now - g.last_used)
            for digest, g in self._tokens.items()
            if now - g.last_used <= self.ttl_s
        ]

    def restore(self, saved: list[SavedToken], now: float) -> None:
        """Take back tokens saved by ``export``; ``idle_s`` includes the time in between."""
        for token in saved:
            if 0 <= token.idle_s <= self.ttl_s and token.digest not in self._tokens:
                grant = TokenGrant(token.user_uuid, token.stamp, now - token.idle_s)
                self._put(token.digest, grant)

    def _put(self, digest: str, grant: TokenGrant) -> None:
        self._tokens[digest] = grant
        self._per_user[grant.user_uuid] = self._per_user.get(grant.user_uuid, 0) + 1

    def _drop(self, digest: str) -> None:
        grant = self._tokens.pop(digest, None)
        if grant is None:
            return
        left = self._per_user[grant.user_uuid] - 1
        if left:
            self._per_user[grant.user_uuid] = left
        else:
            del self._per_user[grant.user_uuid]

    def __len__(self) -> int:
        return len(self._tokens)


@dataclass(slots=True)
class LoginThrottle:
    """Failed logins per address, and the lockout they earn."""

    max_failures: int = 5
    window_s: float = 600.0
    lockout_s: float = 3600.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def locked_for(self, address: str, now: float) -> float:
        """Seconds left of ``address``'s lockout, 0 when it may try to log in."""
        until = self._locked_until.get(address)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked_until[address]
            return 0.0
        return until - now

    def failures(self, address: str, now: float) -> int:
        """Failed logins from ``address`` inside the window."""
        times = self._failures.get(address)
        return sum(1 for t in times if now - t <= self.window_s) if times else 0

    def record_failure(self, address: str, now: float) -> bool:
        """Count a failed login; returns whether it has just locked ``address`` out."""
        times = self._failures.setdefault(address, deque())
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) >= self.max_failures:
            del self._failures[address]
            self._locked_until[address] = now + self.lockout_s
            return True
        return False

    def sweep(self, now: float) -> None:
        """Forget failures and lockouts that no longer matter, so memory stays bounded."""
        for address in [a for a, t in self._failures.items() if now - t[-1] > self.window_s]:
            del self._failures[address]
        for address in [a for a, u in self._locked_until.items() if now >= u]:
            del self._locked_until[address]
