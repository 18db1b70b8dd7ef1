"""``sysupd reinit``: start over with a new database on purpose, keeping who the device is."""

from __future__ import annotations

import time
from pathlib import Path

import click

from sysupd.cli.options import config_options, fail, load
from sysupd.errors import SysupdError
from sysupd.store.db import Database
from sysupd.store.identity import Identity
from sysupd.store.meta import record_system_id
from sysupd.system.statelock import StateLock

__all__ = ["reinit"]


@click.command()
@config_options
@click.option("--yes", is_flag=True, help="Do it without asking first.")
def reinit(config_file: Path | None, state_dir: Path | None, yes: bool) -> None:
    """Give the device a new, empty database: users, settings and logins are lost.

    For a database that is lost, empty or corrupt and has no backup. The device's identity
    (system_id), its trust and its slots are kept; the old database is moved aside, not
    deleted. The next 'sysupd serve' creates the administrator 'admin' and prints its password.
    """
    config = load(config_file, state_dir)
    state = config.state_dir
    if not state.is_dir():
        fail(f"no state directory at {state} (give --state-dir)")
    try:
        lock = StateLock(state)
    except SysupdError as exc:
        fail(str(exc))
    try:
        identity = Identity.load(state)
        if identity is None and not config.db_path.exists():
            fail(f"{state} holds no device: nothing to re-initialise (a first start makes one)")
        if not yes:
            click.confirm(
                f"Replace the database in {state} with an empty one (users and settings are lost)?",
                abort=True,
            )
        kept = _move_aside(config.db_path)
        if identity is None:
            identity = Identity.create(state)
        db = Database(config.db_path)
        try:
            record_system_id(db, identity.system_id)
        finally:
            db.close()
    except (SysupdError, OSError) as exc:
        fail(f"cannot re-initialise {state}: {exc}")
    finally:
        lock.release()
    click.echo(f"Re-initialised {state}: device {identity.system_id}, with a new database.")
    if kept:
        click.echo(f"The old database is kept as {kept}.")
    click.echo("The next 'sysupd serve' creates the administrator 'admin' and prints its password.")


def _move_aside(db_path: Path) -> Path | None:
    """Move the database and its WAL files aside under one time stamp; the moved database."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    moved = None
    for suffix in ("", "-wal", "-shm"):
        path = db_path.with_name(db_path.name + suffix)
        if path.exists():
            target = db_path.with_name(f"{db_path.name}.{stamp}.old{suffix}")
            path.rename(target)
            moved = moved or target
    return moved
