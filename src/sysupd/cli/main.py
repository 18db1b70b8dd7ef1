"""The ``sysupd`` command: the only place that reads the environment and the process arguments.

Subcommands are imported when they are called, so ``sysupd install`` on a small device does not
pay for loading the API server, and ``sysupd serve`` not for the release tool.
"""

from __future__ import annotations

import importlib

import click

from sysupd import __version__

__all__ = ["cli", "main"]

_COMMANDS = {
    "serve": ("sysupd.cli.serve", "serve"),
    "install": ("sysupd.cli.updates", "install"),
    "status": ("sysupd.cli.updates", "status"),
    "boot": ("sysupd.cli.updates", "boot"),
    "user": ("sysupd.cli.users", "user"),
    "release": ("sysupd.cli.release", "release"),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attribute = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sysupd")
def cli() -> None:
    """sysupd: safe system updates for self-hosted appliances."""


def main() -> None:
    """Console-script entry point."""
    cli(auto_envvar_prefix="SYSUPD")
