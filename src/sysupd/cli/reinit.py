"""``sysupd reinit``: start over with a new database on purpose, keeping who the device is."""

from __future__ import annotations

import contextlib
import sqlite3
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
        carried = None if identity is not None else _old_system_id(config.db_path)
        kept = _move_aside(config.db_path)
        if identity is None:
            # A state directory from before identity.json: the identity is the old database's,
            # when it can still be read.
            identity = Identity.create(state, carried)
            if carried is None:
                click.echo(
                    "The old database's system_id could not be read: the device gets a new one."
                )
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


def _old_system_id(db_path: Path) -> str | None:
    """The system_id a (perhaps damaged) database recorded, read without changing it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'system_id'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


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
