"""Options shared by several commands, and turning configuration errors into clean exits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from sysupd.config import ServiceConfig, load_config
from sysupd.errors import SysupdError

__all__ = ["config_options", "fail", "load"]

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
