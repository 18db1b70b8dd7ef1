"""Settings changed through the API, persisted so they outlive restarts.

Only changed values are stored; a stored value always wins over the configuration file's. A
stored value that this version no longer accepts is skipped with a warning instead of refusing to
start. The device's own settings come from the file alone: a stored one (from a version that let
the API change it) is dropped with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sysupd.core.settings import DEVICE_SETTINGS, Settings, apply_changes, settings_to_wire
from sysupd.errors import ConfigError
from sysupd.store.db import Database

__all__ = ["SettingsStore"]


class SettingsStore:
    """The ``settings`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def stored(self, name: str) -> Any:
        """The value stored for ``name``, or ``None``."""
        rows = self._db.query("SELECT value FROM settings WHERE name = ?", (name,))
        return json.loads(rows[0]["value"]) if rows else None

    def load(self, base: Settings) -> tuple[Settings, list[str]]:
        """``base`` with the stored values applied, and a warning for each one skipped."""
        settings, warnings = base, []
        for row in self._db.query("SELECT name, value FROM settings ORDER BY name"):
            if row["name"] in DEVICE_SETTINGS:
                warnings.append(
                    f"dropping stored setting {row['name']!r}: the device's own settings come "
                    "from the configuration file only"
                )
                with self._db.transaction() as conn:
                    conn.execute("DELETE FROM settings WHERE name = ?", (row["name"],))
                continue
            try:
                settings = apply_changes(settings, {row["name"]: json.loads(row["value"])})
            except (ConfigError, ValueError) as exc:
                warnings.append(f"ignoring stored setting {row['name']!r}: {exc}")
        return settings, warnings

    def save(self, settings: Settings, changed: Mapping[str, Any]) -> None:
        """Store the values of the settings named in ``changed``, all in one transaction."""
        wire = settings_to_wire(settings)
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [(name, json.dumps(wire[name])) for name in changed],
            )
