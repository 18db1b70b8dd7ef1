"""Options shared by several commands, and turning configuration errors into clean exits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from sysupd.config import ServiceConfig, load_config
from sysupd.engine.engine import Engine
from sysupd.errors import SysupdError
from sysupd.store.db import Database
from sysupd.store.settings import SettingsStore
from sysupd.system.clock import SystemClock

__all__ = ["config_options", "device_engine", "engine_for", "existing_state", "fail", "load"]

F = TypeVar("F", bound=Callable[..., Any])


def config_options(func: F) -> F:
    """``--config`` and ``--state-dir``."""
    func = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Directory holding all of the service's state [default: ./sysupd-state].",
    )(func)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="TOML configuration file (flat keys, the same names as sys/list_config).",
    )(func)


def load(
    config_file: Path | None, state_dir: Path | None, overrides: dict[str, Any] | None = None
) -> ServiceConfig:
    """The configuration, or a clean exit naming what is wrong."""
    try:
        return load_config(config_file, state_dir=state_dir, overrides=overrides)
    except SysupdError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit 1."""
    raise click.ClickException(message)


def existing_state(config_file: Path | None, state_dir: Path | None) -> ServiceConfig:
    """The configuration of a device whose state directory exists, or a clean exit saying that
    there is none: the commands that only look or mark must not make an empty device."""
    config = load(config_file, state_dir)
    if not config.state_dir.is_dir():
        where = "exists but is not a directory" if config.state_dir.exists() else "does not exist"
        fail(
            f"no state directory at {config.state_dir} ({where}; give --state-dir DIR, or "
            "--config FILE with state_dir, of a device that the service or 'sysupd boot' has run "
            "on)"
        )
    return config


def device_engine(
    config_file: Path | None, state_dir: Path | None, *, create: bool = True
) -> Engine:
    """The update engine of this device with the settings the service would use (the file's,
    then those changed over the API); a database that does not exist yet is not created, nor
    (without ``create``) a state directory. A configuration or state problem is a clean exit."""
    config = load(config_file, state_dir) if create else existing_state(config_file, state_dir)
    return engine_for(config)


def engine_for(config: ServiceConfig) -> Engine:
    """The update engine for ``config``, with the settings changed over the API applied (a
    problem is a clean exit)."""
    try:
        settings = config.settings
        if config.db_path.exists():
            db = Database(config.db_path)
            try:
                settings = SettingsStore(db).load(config.settings)[0]
            finally:
                db.close()
        return Engine.from_settings(
            config.state_dir, settings, SystemClock(), cmdline=Path(config.kernel_cmdline)
        )
    except SysupdError as exc:
        fail(str(exc))
