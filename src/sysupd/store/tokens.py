"""Login tokens kept across a restart, so that a reboot into a new slot logs no client out.

Only a clean stop saves them (``put_all``), and the next start takes them out again
(``take_all`` empties the table in the same transaction). So a token revoked while the service
ran can never come back: after a crash or a power cut there is nothing to restore, and clients log
in again. Tokens are kept by their SHA-256 digest only.
"""

from __future__ import annotations

from datetime import datetime

from sysupd.core.sessions import SavedToken
from sysupd.store.db import Database

__all__ = ["TokenStore"]


class TokenStore:
    """The ``tokens`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def take_all(self, now: datetime) -> list[SavedToken]:
        """The saved tokens, with the time since they were saved added to their idle time; the
        table is empty afterwards."""
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT digest, user_uuid, stamp, idle_s, saved_at FROM tokens"
            ).fetchall()
            conn.execute("DELETE FROM tokens")
        saved = []
        for digest, user_uuid, stamp, idle_s, saved_at in rows:
            try:
                since = (now - datetime.fromisoformat(saved_at)).total_seconds()
            except (TypeError, ValueError):
                continue
            # A clock that went back must not make a token younger than it was.
            saved.append(SavedToken(digest, user_uuid, stamp, float(idle_s) + max(0.0, since)))
        return saved

    def put_all(self, tokens: list[SavedToken], now: datetime) -> None:
        """Replace the saved tokens with ``tokens``, saved at ``now``."""
        stamp = now.isoformat()
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM tokens")
            conn.executemany(
                "INSERT INTO tokens (digest, user_uuid, stamp, idle_s, saved_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(t.digest, t.user_uuid, t.stamp, t.idle_s, stamp) for t in tokens],
            )
