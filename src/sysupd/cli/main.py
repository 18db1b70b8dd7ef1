"""The ``sysupd`` command: the only place that reads the environment and the process arguments."""

from __future__ import annotations

import click

from sysupd import __version__
from sysupd.cli.release import release
from sysupd.cli.serve import serve
from sysupd.cli.updates import boot, install, status
from sysupd.cli.users import user

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sysupd")
def cli() -> None:
    """sysupd: safe system updates for self-hosted appliances."""


cli.add_command(serve)
cli.add_command(install)
cli.add_command(status)
cli.add_command(boot)
cli.add_command(user)
cli.add_command(release)


def main() -> None:
    """Console-script entry point."""
    cli(auto_envvar_prefix="SYSUPD")
