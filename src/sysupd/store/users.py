"""Users: names, administrator flags and memory-hard (Argon2id) password hashes.

Passwords are never stored, logged or returned; ``authenticate`` spends the same hashing work
whether or not the user exists, so timing does not reveal user names.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import argon2

from sysupd.errors import ConfigError
from sysupd.store.db import Database

__all__ = ["MAX_NAME_CHARS", "MAX_PASSWORD_CHARS", "User", "UserStore", "make_hasher"]

MAX_NAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


@dataclass(frozen=True, slots=True)
class User:
    """A user as the service sees it."""

    uuid: str
    name: str
    is_admin: bool
    stamp: str = ""
    """Changes whenever the password does, so tokens issued before a change can be refused."""


def _user(row: sqlite3.Row) -> User:
    stamp = hashlib.sha256(str(row["password_hash"]).encode()).hexdigest()[:16]
    return User(row["uuid"], row["name"], bool(row["is_admin"]), stamp)


def make_hasher(time_cost: int, memory_kib: int, parallelism: int) -> argon2.PasswordHasher:
    """An Argon2id hasher with the given cost."""
    return argon2.PasswordHasher(
        time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
    )


class UserStore:
    """The ``users`` table."""

    def __init__(self, db: Database, hasher: argon2.PasswordHasher) -> None:
        self._db = db
        self._hasher = hasher
        self._dummy_hash = hasher.hash("not a password of anyone")

    def add(self, name: str, password: str, *, is_admin: bool) -> User:
        """Create a user.

        Raises:
            ConfigError: the name is invalid or taken, or the password is empty or too long.
        """
        _check_name(name)
        _check_password(password)
        user_uuid = str(uuid.uuid4())
        hashed = self._hasher.hash(password)
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"user {name!r} already exists")
            conn.execute(
                "INSERT INTO users (uuid, name, password_hash, is_admin, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_uuid, name, hashed, int(is_admin), datetime.now(UTC).isoformat()),
            )
        return self._require(name)

    def remove(self, name: str) -> User:
        """Delete a user.

        Raises:
            ConfigError: there is no such user.
        """
        user = self._require(name)
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM users WHERE uuid = ?", (user.uuid,))
        return user

    def set_password(self, name: str, password: str) -> User:
        """Replace a user's password.

        Raises:
            ConfigError: there is no such user, or the password is empty or too long.
        """
        _check_password(password)
        user = self._require(name)
        hashed = self._hasher.hash(password)
        with self._db.transaction() as conn:
            conn.execute("UPDATE users SET password_hash = ? WHERE uuid = ?", (hashed, user.uuid))
        return self._require(name)

    def list(self) -> list[User]:
        """Every user, by name."""
        return [
            _user(r)
            for r in self._db.query(
                "SELECT uuid, name, is_admin, password_hash FROM users ORDER BY name"
            )
        ]

    def count(self) -> int:
        """How many users there are."""
        return int(self._db.query("SELECT COUNT(*) AS n FROM users")[0]["n"])

    def get(self, user_uuid: str) -> User | None:
        """The user with ``user_uuid``, if it still exists."""
        rows = self._db.query(
            "SELECT uuid, name, is_admin, password_hash FROM users WHERE uuid = ?", (user_uuid,)
        )
        return _user(rows[0]) if rows else None

    def credentials(self, name: str) -> tuple[User | None, str]:
        """The user called ``name`` (or ``None``) and the hash to check a password against.

        For an unknown name the hash is a dummy one, so that checking it costs the same.
        """
        rows = self._db.query(
            "SELECT uuid, name, is_admin, password_hash FROM users WHERE name = ?", (name,)
        )
        if not rows:
            return None, self._dummy_hash
        return _user(rows[0]), str(rows[0]["password_hash"])

    def verify(self, stored_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash``. CPU- and memory-heavy, touches no
        database: safe to run in a worker thread."""
        try:
            return bool(self._hasher.verify(stored_hash, password))
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether the configured cost has changed since ``stored_hash`` was made."""
        return bool(self._hasher.check_needs_rehash(stored_hash))

    def hash(self, password: str) -> str:
        """A new hash of ``password`` (blocking and heavy: run it off the loop)."""
        return str(self._hasher.hash(password))

    def replace_hash(self, user: User, old_hash: str, new_hash: str) -> None:
        """Store a re-hash of the same password, unless the password changed meanwhile."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE users SET password_hash = ? WHERE uuid = ? AND password_hash = ?",
                (new_hash, user.uuid, old_hash),
            )

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else ``None`` (blocking; for the CLI and tests)."""
        user, stored = self.credentials(name)
        if not self.verify(stored, password) or user is None:
            return None
        if self.needs_rehash(stored):
            self.replace_hash(user, stored, self.hash(password))
        return user

    def _require(self, name: str) -> User:
        rows = self._db.query(
            "SELECT uuid, name, is_admin, password_hash FROM users WHERE name = ?", (name,)
        )
        if not rows:
            raise ConfigError(f"there is no user {name!r}")
        return _user(rows[0])


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise ConfigError(
            f"user name must be 1-{MAX_NAME_CHARS} letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )


def _check_password(password: str) -> None:
    if not password:
        raise ConfigError("the password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ConfigError(f"the password must be at most {MAX_PASSWORD_CHARS} characters")
