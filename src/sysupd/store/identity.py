"""The device's identity, kept beside the database where losing the database cannot erase it.

``<state_dir>/identity.json`` holds the ``system_id`` and when the device was first set up. Its
presence is also the mark that the state directory has held a device: a missing or empty
database is then a loss to repair (restore a backup, or ``sysupd reinit`` on purpose), never a
first start that would silently make a new device with new users and a new identity.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sysupd.errors import StateError
from sysupd.fsutil import atomic_write

__all__ = ["Identity", "check_database_present", "identity_path"]

_FILE = "identity.json"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this device is."""

    system_id: str
    created: str

    @classmethod
    def load(cls, state_dir: Path) -> Identity | None:
        """The recorded identity, or ``None`` in a state directory that never held a device.

        Raises:
            StateError: the file exists but cannot be read.
        """
        path = identity_path(state_dir)
        try:
            record = json.loads(path.read_bytes())
            return cls(str(uuid.UUID(record["system_id"])), str(record["created"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the device's identity file {path} is unreadable ({exc}); restore it from a "
                "backup: it holds the system_id that clients know this device by"
            ) from exc

    @classmethod
    def create(cls, state_dir: Path, system_id: str | None = None) -> Identity:
        """Record a new identity (or ``system_id``, carried over from an older database)."""
        identity = cls(
            system_id or str(uuid.uuid4()), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        record = {"system_id": identity.system_id, "created": identity.created}
        atomic_write(identity_path(state_dir), json.dumps(record, indent=2).encode() + b"\n")
        return identity


def identity_path(state_dir: Path) -> Path:
    """Where the identity of the device in ``state_dir`` is kept."""
    return state_dir / _FILE


def check_database_present(state_dir: Path, db_path: Path) -> None:
    """Refuse to start on a missing or empty database in a state directory that held a device.

    Raises:
        StateError: saying how to restore the database, or to start over on purpose.
    """
    identity = Identity.load(state_dir)
    if identity is None:
        # Never held a device's database (the engine may have run already: an install or a boot
        # before the service's first start), or from before the identity file: a first start.
        return
    try:
        size = db_path.stat().st_size
    except FileNotFoundError:
        size = -1
    if size > 0:
        return
    what = "missing" if size < 0 else "empty (0 bytes)"
    raise StateError(
        f"the state database {db_path} is {what}, but {state_dir} has held device "
        f"{identity.system_id}: restore "
        f"sysupd.db from a backup, or start over on purpose with 'sysupd reinit --state-dir "
        f"{state_dir}' (users and settings are lost; the identity and the slots are kept)"
    )
