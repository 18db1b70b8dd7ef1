"""The logins a person keeps between commands: one token per service, never a password.

``tokens.json`` in the client's configuration directory (mode 0600, replaced atomically) maps a
service's address to the user name and a token. A token is spent when it is used
(``rpc/auth_token``), so every command hands the next one on (``rpc/token``) while holding an
exclusive lock on ``tokens.lock``: commands started together (``sysupd events`` in one terminal,
``sysupd update`` in another) take turns instead of spending each other's token.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sysupd.client.address import Server
from sysupd.errors import ConfigError
from sysupd.fsutil import atomic_write, read_capped

__all__ = ["StoredLogin", "TokenFile"]

_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredLogin:
    """A kept login."""

    user: str
    token: str


class TokenFile:
    """``tokens.json`` and its lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "tokens.json"
        self._lock_path = directory / "tokens.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[_Logins]:
        """The logins, changed by one command at a time; changes are written when it ends.

        Raises:
            ConfigError: the directory or the file cannot be used.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.path.parent} for logins: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            logins = _Logins(self._read())
            try:
                yield logins
            finally:  # a command that failed after a change (a refused token) keeps the change
                if logins.changed:
                    self._write(logins.entries)
        finally:
            os.close(fd)

    def _read(self) -> dict[str, StoredLogin]:
        try:
            data = json.loads(read_capped(self.path, _MAX_BYTES))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path} is unreadable ({exc}); remove it and log in again"
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path} is not a JSON object; remove it and log in again")
        logins = {}
        for key, value in data.items():
            if isinstance(value, dict) and {"user", "token"} <= set(value):
                logins[str(key)] = StoredLogin(str(value["user"]), str(value["token"]))
        return logins

    def _write(self, entries: dict[str, StoredLogin]) -> None:
        data = {k: {"user": v.user, "token": v.token} for k, v in sorted(entries.items())}
        try:
            atomic_write(self.path, json.dumps(data, indent=1).encode(), mode=0o600)
        except OSError as exc:
            raise ConfigError(f"cannot keep the login in {self.path}: {exc}") from exc


class _Logins:
    """The logins while the file is locked."""

    def __init__(self, entries: dict[str, StoredLogin]) -> None:
        self.entries = entries
        self.changed = False

    def get(self, server: Server) -> StoredLogin | None:
        """The login kept for ``server``."""
        return self.entries.get(server.base_url)

    def put(self, server: Server, login: StoredLogin) -> None:
        """Keep ``login`` for ``server``."""
        self.entries[server.base_url] = login
        self.changed = True

    def remove(self, server: Server) -> StoredLogin | None:
        """Forget the login for ``server``; returns it."""
        self.changed = True
        return self.entries.pop(server.base_url, None)
