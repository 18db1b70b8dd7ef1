"""Small facts about this system kept in the database: the ``system_id`` it was made with."""

from __future__ import annotations

from sysupd.store.db import Database

__all__ = ["record_system_id", "stored_system_id"]


def stored_system_id(db: Database) -> str | None:
    """The identity the database was made with, if it records one."""
    rows = db.query("SELECT value FROM meta WHERE key = 'system_id'")
    return str(rows[0]["value"]) if rows else None


def record_system_id(db: Database, value: str) -> None:
    """Record ``value`` as the identity the database belongs to."""
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('system_id', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (value,),
        )
