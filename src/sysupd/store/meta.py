"""Small facts about this system kept in the database, such as its stable ``system_id``."""

from __future__ import annotations

import uuid

from sysupd.store.db import Database

__all__ = ["system_id"]


def system_id(db: Database) -> str:
    """This system's identity, generated on first use and stable from then on."""
    with db.transaction() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'system_id'").fetchone()
        if row is not None:
            return str(row[0])
        value = str(uuid.uuid4())
        conn.execute("INSERT INTO meta (key, value) VALUES ('system_id', ?)", (value,))
        return value
