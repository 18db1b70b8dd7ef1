"""The state database: WAL, versioned migrations, and refusing a newer schema untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sysupd.errors import StateError
from sysupd.store.db import MIGRATIONS, Database


def test_fresh_database_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    assert db.schema_version == len(MIGRATIONS)
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    db.close()
    again = Database(tmp_path / "s.db")  # re-opening applies nothing twice
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Database(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = path.read_bytes()
    with pytest.raises(StateError, match="newer than this sysupd"):
        Database(path)
    assert path.read_bytes() == before


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"is unusable.*sysupd reinit"):
        Database(path)
    assert path.read_bytes() == b"this is not a database" * 100


def test_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")

    def insert_then_fail() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert db.query("SELECT * FROM meta WHERE key = 'k'") == []
    db.close()
