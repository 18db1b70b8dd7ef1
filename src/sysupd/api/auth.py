"""Logging in: passwords (for ``rpc/auth`` and HTTP Basic), tokens and the lockout, together.

Every attempt is logged with the user name, the address and the outcome — never the password or
a token. Password checks run on a small pool of their own, so logins never stall the event loop
nor starve other work of threads; attempts from one address are checked one at a time, so a
burst cannot outrun the lockout. IPv6 addresses are counted by their /64, the unit one host
controls. Verified HTTP Basic credentials are remembered briefly (keyed by a keyed hash, never the
password), so a client making many calls does not pay the memory-hard hash on each one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sysupd.core.sessions import LoginThrottle, SavedToken, TokenTable
from sysupd.errors import TooManyRequests, Unauthorized
from sysupd.servicelog import ServiceLog
from sysupd.store.audit import AuditLog
from sysupd.store.users import User, UserStore
from sysupd.system.clock import Clock

__all__ = ["Authenticator", "throttle_key"]

_KDF_THREADS = 2
_BASIC_CACHE_S = 60.0
_BASIC_CACHE_MAX = 1024


def throttle_key(address: str) -> str:
    """The unit the lockout counts: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Authenticator:
    """Credentials in, a user (and a token) out."""

    def __init__(
        self,
        users: UserStore,
        tokens: TokenTable,
        throttle: LoginThrottle,
        clock: Clock,
        log: ServiceLog,
        audit: AuditLog,
        lockout_loopback: Callable[[], bool],
    ) -> None:
        self._users = users
        self._tokens = tokens
        self._throttle = throttle
        self._clock = clock
        self._log = log
        self._audit = audit
        self._lockout_loopback = lockout_loopback
        self._pool = ThreadPoolExecutor(_KDF_THREADS, thread_name_prefix="sysupd-kdf")
        self._address_locks: dict[str, asyncio.Lock] = {}
        self._cache_key = secrets.token_bytes(32)
        self._basic_cache: dict[bytes, tuple[str, str, float]] = {}

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
        key = throttle_key(address)
        lock = self._address_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._check_password(name, password, address, key, via)
        finally:
            if not lock.locked() and self._address_locks.get(key) is lock:
                del self._address_locks[key]

    async def _check_password(
        self, name: str, password: str, address: str, key: str, via: str
    ) -> User:
        self._check_lockout(address, key)
        user, stored = self._users.credentials(name)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, self._users.verify, stored, password)
        if not ok or user is None:
            self._log.info(f"login failed: user {name[:64]!r} from {address} via {via}")
            self._audit.access(
                "login", user=name[:64], address=address, outcome="failure", details=f"via {via}"
            )
            if self._throttled(address) and self._throttle.record_failure(
                key, self._clock.monotonic()
            ):
                self._log.warning(f"login lockout: {key} after repeated failures")
                self._audit.access("lockout", user="", address=key, outcome="locked out")
            raise Unauthorized("wrong user name or password")
        if self._users.needs_rehash(stored):
            new_hash = await loop.run_in_executor(self._pool, self._users.hash, password)
            self._users.replace_hash(user, stored, new_hash)
        return user

    async def check_basic(self, name: str, password: str, address: str) -> User:
        """``check_password`` for HTTP Basic, remembering verified credentials briefly.

        Raises:
            TooManyRequests: ``address`` is locked out.
            Unauthorized: the name or password is wrong.
        """
        digest = hmac.new(self._cache_key, f"{name}\0{password}".encode(), hashlib.sha256)
        cache_key = digest.digest()
        now = self._clock.monotonic()
        cached = self._basic_cache.get(cache_key)
        if cached is not None and cached[2] > now:
            user = self._users.get(cached[0])
            if user is not None and user.stamp == cached[1]:
                return user
            del self._basic_cache[cache_key]
        user = await self.check_password(name, password, address, "http")
        if len(self._basic_cache) >= _BASIC_CACHE_MAX:
            self._basic_cache.clear()
        self._basic_cache[cache_key] = (user.uuid, user.stamp, now + _BASIC_CACHE_S)
        return user

    async def login(self, name: str, password: str, address: str, via: str) -> tuple[User, str]:
        """Check a password and issue a token.

        Raises:
            TooManyRequests: ``address`` is locked out.
            Unauthorized: the name or password is wrong.
        """
        user = await self.check_password(name, password, address, via)
        self._log.info(f"login: user {user.name!r} from {address} via {via}")
        self._audit.access(
            "login", user=user.name, address=address, outcome="success", details=f"via {via}"
        )
        return user, self._tokens.issue(user.uuid, user.stamp, self._clock.monotonic())

    def exchange(self, token: str, address: str) -> tuple[User, str]:
        """Trade a live token for a new one (``rpc/auth_token``); the old one dies.

        Raises:
            TooManyRequests: ``address`` is locked out.
            Unauthorized: the token is unknown or expired, or its user is gone or changed.
        """
        key = throttle_key(address)
        self._check_lockout(address, key)
        now = self._clock.monotonic()
        grant = self._tokens.redeem(token, now)
        user = self._users.get(grant.user_uuid) if grant is not None else None
        if user is None or grant is None or user.stamp != grant.stamp:
            self._log.info(f"token login failed from {address}")
            self._audit.access("token login", user="", address=address, outcome="failure")
            if self._throttled(address):
                self._throttle.record_failure(key, now)
            raise Unauthorized("the token is unknown or has expired")
        self._log.info(f"token login: user {user.name!r} from {address}")
        self._audit.access("token login", user=user.name, address=address, outcome="success")
        return user, self._tokens.issue(user.uuid, user.stamp, now)

    def mint(self, user: User, address: str) -> str:
        """Another token for a logged-in ``user`` (``rpc/token``, ext), for a client that keeps
        one to log in with later while its session goes on."""
        self._log.info(f"token issued: user {user.name!r} from {address}")
        return self._tokens.issue(user.uuid, user.stamp, self._clock.monotonic())

    def export_tokens(self) -> list[SavedToken]:
        """The live tokens, to keep across a restart."""
        return self._tokens.export(self._clock.monotonic())

    def restore_tokens(self, saved: list[SavedToken]) -> None:
        """Take back tokens kept across a restart."""
        self._tokens.restore(saved, self._clock.monotonic())

    def touch(self, token: str) -> User | None:
        """The user of a live token, extending it; ``None`` if it died, or its user is gone or
        changed password since (the token is then forgotten)."""
        grant = self._tokens.touch(token, self._clock.monotonic())
        if grant is None:
            return None
        user = self._users.get(grant.user_uuid)
        if user is None or user.stamp != grant.stamp:
            self._tokens.revoke(token)
            return None
        return user

    def is_live(self, token: str) -> bool:
        """Whether ``token`` still lives (without extending it)."""
        return self._tokens.is_live(token, self._clock.monotonic())

    def revoke(self, token: str) -> None:
        """Invalidate ``token``."""
        self._tokens.revoke(token)

    def sweep(self) -> None:
        """Forget dead tokens, stale credentials and old failures."""
        now = self._clock.monotonic()
        self._tokens.sweep(now)
        self._throttle.sweep(now)
        for key in [k for k, v in self._basic_cache.items() if v[2] <= now]:
            del self._basic_cache[key]

    def close(self) -> None:
        """Stop the hashing pool."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _check_lockout(self, address: str, key: str) -> None:
        left = self._throttle.locked_for(key, self._clock.monotonic())
        if left > 0 and self._throttled(address):
            raise TooManyRequests(
                f"too many failed logins from {address}; try again in {int(left // 60) + 1} min"
            )

    def _throttled(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not ip.is_loopback or self._lockout_loopback()
