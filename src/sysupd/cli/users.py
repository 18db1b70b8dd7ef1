"""``sysupd user add|list|remove|passwd``: manage who may log in."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click

from sysupd.cli.options import config_options, fail, load
from sysupd.errors import SysupdError
from sysupd.store.audit import AuditLog
from sysupd.store.db import Database
from sysupd.store.identity import check_database_present
from sysupd.store.users import UserStore, make_hasher
from sysupd.system.clock import SystemClock

__all__ = ["user"]


def _store(config_file: Path | None, state_dir: Path | None) -> UserStore:
    config = load(config_file, state_dir)
    try:
        # A lost database is not made anew here either: see ``store.identity``.
        check_database_present(config.state_dir, config.db_path)
        db = Database(config.db_path)
    except SysupdError as exc:
        fail(str(exc))
    return UserStore(
        db, make_hasher(config.kdf_time_cost, config.kdf_memory_kib, config.kdf_parallelism)
    )


def _audit(event: str, details: str, config_file: Path | None, state_dir: Path | None) -> None:
    """Record a change of users in the audit record the service keeps too."""
    config = load(config_file, state_dir)
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = f"uid {os.getuid()}"
    try:
        AuditLog(config.state_dir / "audit", SystemClock()).change(
            event, by=f"{who} with sysupd user", details=details
        )
    except OSError as exc:
        fail(f"the change is made, but the audit record could not be written: {exc}")


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@click.group()
def user() -> None:
    """Manage users."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_options
def add(
    name: str, admin: bool, password_stdin: bool, config_file: Path | None, state_dir: Path | None
) -> None:
    """Add a user."""
    store = _store(config_file, state_dir)
    if store.credentials(name)[0] is not None:  # before asking for a password to no end
        fail(f"user {name!r} already exists")
    try:
        created = store.add(name, _password(password_stdin), is_admin=admin)
    except SysupdError as exc:
        fail(str(exc))
    role = "administrator" if created.is_admin else "user"
    _audit("user added", f"{created.name} ({role})", config_file, state_dir)
    click.echo(f"added {role} {created.name} ({created.uuid})")


@user.command("list")
@config_options
def list_(config_file: Path | None, state_dir: Path | None) -> None:
    """List users."""
    for entry in _store(config_file, state_dir).list():
        role = "admin" if entry.is_admin else "user"
        click.echo(f"{entry.name}\t{role}\t{entry.uuid}")


@user.command("remove")
@click.argument("name")
@config_options
def remove(name: str, config_file: Path | None, state_dir: Path | None) -> None:
    """Remove a user; their sessions end at their next call."""
    try:
        removed = _store(config_file, state_dir).remove(name)
    except SysupdError as exc:
        fail(str(exc))
    _audit("user removed", removed.name, config_file, state_dir)
    click.echo(f"removed {removed.name}")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_options
def passwd(
    name: str, password_stdin: bool, config_file: Path | None, state_dir: Path | None
) -> None:
    """Change a user's password."""
    store = _store(config_file, state_dir)
    if store.credentials(name)[0] is None:  # before asking for a password to no end
        fail(f"there is no user {name!r}")
    try:
        changed = store.set_password(name, _password(password_stdin))
    except SysupdError as exc:
        fail(str(exc))
    _audit("password changed", changed.name, config_file, state_dir)
    click.echo(f"password changed for {changed.name}")
