"""The ``sysupd`` command: the only place that reads the environment and the process arguments.

Subcommands are imported when they are called, so ``sysupd install`` on a small device does not
pay for loading the API server, and ``sysupd serve`` not for the release tool.
"""

from __future__ import annotations

import importlib

import click

from sysupd import __version__

__all__ = ["cli", "main"]

_DEVICE = {
    "serve": ("sysupd.cli.serve", "serve"),
    "boot": ("sysupd.cli.updates", "boot"),
    "install": ("sysupd.cli.updates", "install"),
    "inspect": ("sysupd.cli.device", "inspect"),
    "mark": ("sysupd.cli.device", "mark"),
    "user": ("sysupd.cli.users", "user"),
    "reinit": ("sysupd.cli.reinit", "reinit"),
    "release": ("sysupd.cli.release", "release"),
    "tuf-client": ("sysupd.cli.tufclient", "tuf_client"),
}
"""Commands that work on this machine's files (``--state-dir``, ``--config``), no service needed."""

_CLIENT = {
    "login": ("sysupd.cli.remote", "login"),
    "logout": ("sysupd.cli.remote", "logout"),
    "status": ("sysupd.cli.status", "status"),
    "info": ("sysupd.cli.remote", "info"),
    "update": ("sysupd.cli.follow", "update"),
    "check": ("sysupd.cli.remote", "check"),
    "available": ("sysupd.cli.remote", "available"),
    "reboot": ("sysupd.cli.remote", "reboot"),
    "log": ("sysupd.cli.remote", "log"),
    "events": ("sysupd.cli.remote", "events"),
    "call": ("sysupd.cli.remote", "call"),
}
"""Commands that talk to a running service (``--server``), from this machine or another."""

_COMMANDS = {**_DEVICE, **_CLIENT}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use, listed in two sections."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attribute = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, names in (
            ("Client commands (a running service at --server)", _CLIENT),
            ("Device commands (this machine's state directory)", _DEVICE),
        ):
            rows = []
            for name in names:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width - 20)))
            with formatter.section(title):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sysupd")
def cli() -> None:
    """sysupd: safe system updates for self-hosted appliances.

    \b
    Two kinds of commands:
    - client commands talk to a running service: --server URL or SYSUPD_SERVER
      (default http://localhost:5183; https://HOST:5185 from another machine).
      Log in once with 'sysupd login'; the token is kept in ~/.config/sysupd.
    - device commands work on this machine's files: --state-dir DIR (default
      ./sysupd-state) and --config FILE; they need no running service.
    'sysupd status' is both: the service's view, or with --local (or --state-dir
    or --config) the state directory's.
    """


def main() -> None:
    """Console-script entry point."""
    cli(auto_envvar_prefix="SYSUPD")
