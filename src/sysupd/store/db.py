"""The SQLite database: WAL mode, versioned schema migrations, short immediate transactions.

Invariant: the schema version (``PRAGMA user_version``) equals the number of migrations applied;
a database from a newer sysupd is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sysupd.errors import DiskFull, StateError

__all__ = ["MIGRATIONS", "Database"]

_REPAIR = (
    "restore sysupd.db from a backup, or start over on purpose with "
    "'sysupd reinit --state-dir {state}' (users and settings are lost; the identity and the "
    "slots are kept)"
)

MIGRATIONS: tuple[str, ...] = (
    # 1: identity, users, settings
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        uuid TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
        created TEXT NOT NULL
    );
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: login tokens kept across a restart (by digest)
    """
    CREATE TABLE tokens (
        digest TEXT PRIMARY KEY,
        user_uuid TEXT NOT NULL,
        stamp TEXT NOT NULL,
        idle_s REAL NOT NULL,
        saved_at TEXT NOT NULL
    );
    """,
)


class Database:
    """One connection to the state database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are explicit (``transaction``), never implicit.
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._check_pages(path)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if _is_full(exc):
                raise DiskFull(f"the disk holding {path} is full: free some space") from exc
            raise StateError(
                f"the state database {path} is unusable ({exc}): "
                + _REPAIR.format(state=path.parent)
            ) from exc
        except OSError as exc:
            raise StateError(f"cannot create the state directory {path.parent}: {exc}") from exc

    @property
    def schema_version(self) -> int:
        """The number of migrations applied."""
        row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate write transaction, committed on success and rolled back on error.

        Raises:
            DiskFull: the disk is full; nothing of the transaction was kept.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise DiskFull(f"the disk holding {self.path} is full") from exc

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only statement."""
        cursor = self._conn.execute(sql, params)
        cursor.row_factory = sqlite3.Row
        return list(cursor.fetchall())

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _check_pages(self, path: Path) -> None:
        """A database with damaged pages opens, then fails at some later query; find out now,
        while a clear message can still say what to do (``quick_check`` reads every page, which
        for a database of users and settings takes milliseconds)."""
        rows = self._conn.execute("PRAGMA quick_check(5)").fetchall()
        problems = [str(row[0]) for row in rows]
        if problems != ["ok"]:
            said = " ".join("; ".join(problems).split())[:300]  # one line, however SQLite says it
            raise StateError(
                f"the state database {path} is corrupt ({said}): "
                + _REPAIR.format(state=path.parent)
            )

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StateError(
                f"the state database has schema version {current}, newer than this sysupd "
                f"knows ({len(MIGRATIONS)}); refusing to touch it"
            )
        for version in range(current, len(MIGRATIONS)):
            # executescript commits on its own, so the version bump rides in the same script.
            self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\n"
                "COMMIT;"
            )


def _is_full(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
