"""Logging in: passwords (for ``rpc/auth`` and HTTP Basic), tokens and the lockout, together.

Every attempt is logged with the user name, the address and the outcome — never the password or
a token. Password checks run in a worker thread, so a login never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

from sysupd.core.sessions import LoginThrottle, TokenTable
from sysupd.errors import TooManyRequests, Unauthorized
from sysupd.servicelog import ServiceLog
from sysupd.store.users import User, UserStore
from sysupd.system.clock import Clock

__all__ = ["Authenticator"]


class Authenticator:
    """Credentials in, a user (and a token) out."""

    def __init__(
        self,
        users: UserStore,
        tokens: TokenTable,
        throttle: LoginThrottle,
        clock: Clock,
        log: ServiceLog,
        lockout_loopback: Callable[[], bool],
    ) -> None:
        self._users = users
        self._tokens = tokens
        self._throttle = throttle
        self._clock = clock
        self._log = log
        self._lockout_loopback = lockout_loopback

    @property
    def token_ttl_s(self) -> float:
        """Seconds a token lives without use."""
        return self._tokens.ttl_s

    async def check_password(self, name: str, password: str, address: str, via: str) -> User:
        """The user whose credentials these are.

        Raises:
            TooManyRequests: ``address`` is locked out.
            Unauthorized: the name or password is wrong.
        """
        self._check_lockout(address)
        user, stored = self._users.credentials(name)
        ok = await asyncio.to_thread(self._users.verify, stored, password)
        if not ok or user is None:
            self._log.info(f"login failed: user {name!r} from {address} via {via}")
            if self._throttled(address) and self._throttle.record_failure(
                address, self._clock.monotonic()
            ):
                self._log.warning(f"login lockout: {address} after repeated failures")
            raise Unauthorized("wrong user name or password")
        self._users.rehash_if_needed(user, stored, password)
        return user

    async def login(self, name: str, password: str, address: str, via: str) -> tuple[User, str]:
        """Check a password and issue a token.

        Raises:
            TooManyRequests: ``address`` is locked out.
            Unauthorized: the name or password is wrong.
        """
        user = await self.check_password(name, password, address, via)
        self._log.info(f"login: user {user.name!r} from {address} via {via}")
        return user, self._tokens.issue(user.uuid, self._clock.monotonic())

    def exchange(self, token: str, address: str) -> tuple[User, str]:
        """Trade a live token for a new one (``rpc/auth_token``); the old one dies.

        Raises:
            TooManyRequests: ``address`` is locked out.
            Unauthorized: the token is unknown or expired, or its user is gone.
        """
        self._check_lockout(address)
        now = self._clock.monotonic()
        grant = self._tokens.redeem(token, now)
        user = self._users.get(grant.user_uuid) if grant is not None else None
        if user is None:
            self._log.info(f"token login failed from {address}")
            if self._throttled(address):
                self._throttle.record_failure(address, now)
            raise Unauthorized("the token is unknown or has expired")
        self._log.info(f"token login: user {user.name!r} from {address}")
        return user, self._tokens.issue(user.uuid, now)

    def touch(self, token: str) -> User | None:
        """The user of a live token, extending it; ``None`` if it died or its user is gone."""
        grant = self._tokens.touch(token, self._clock.monotonic())
        return self._users.get(grant.user_uuid) if grant is not None else None

    def is_live(self, token: str) -> bool:
        """Whether ``token`` still lives (without extending it)."""
        return self._tokens.is_live(token, self._clock.monotonic())

    def revoke(self, token: str) -> None:
        """Invalidate ``token``."""
        self._tokens.revoke(token)

    def sweep(self) -> None:
        """Forget dead tokens and old failures."""
        now = self._clock.monotonic()
        self._tokens.sweep(now)
        self._throttle.sweep(now)

    def _check_lockout(self, address: str) -> None:
        left = self._throttle.locked_for(address, self._clock.monotonic())
        if left > 0:
            raise TooManyRequests(
                f"too many failed logins from {address}; try again in {int(left // 60) + 1} min"
            )

    def _throttled(self, address: str) -> bool:
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            loopback = False
        return not loopback or self._lockout_loopback()
