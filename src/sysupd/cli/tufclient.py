"""``sysupd tuf-client``: the client-under-test protocol of the TUF conformance suite.

The suite (github.com/theupdateframework/tuf-conformance) runs this command against its own
repositories to check the device's trust code from outside: ``--path online`` is the update
server's channel (python-tuf's ngclient through sysupd's origin-locked fetcher), ``--path
offline`` the walker every offline bundle goes through (``core.trustchain``), fed with what a
bundle would carry from the suite's repository. The protocol:

- ``--metadata-dir D init ROOT``: trust ``ROOT`` (stored as ``D/root.json``), no network;
- ``--metadata-dir D --metadata-url U refresh``: the TUF client workflow, trusted metadata
  written to ``D/<role>.json``;
- ``… --target-name T [--target-name T2 …] --target-base-url TB --target-dir TD download``:
  each target in argument order with one updater, stopping at the first failure; a file whose
  hashes match is not downloaded again.

Exit 0 on success, 1 on any failure (the reason on standard error).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sysupd.conformance import offline, online
from sysupd.conformance.metadata_dir import initialize
from sysupd.errors import SysupdError

__all__ = ["tuf_client"]


@click.command("tuf-client")
@click.argument("command", type=click.Choice(["init", "refresh", "download"]))
@click.argument("trusted_root", required=False, type=click.Path(path_type=Path))
@click.option(
    "--path",
    "mode",
    type=click.Choice(["online", "offline"]),
    default="online",
    show_default=True,
    help="Which of the device's trust paths to test.",
)
@click.option("--metadata-dir", type=click.Path(path_type=Path), required=True)
@click.option("--metadata-url")
@click.option("--target-name", "target_names", multiple=True)
@click.option("--target-base-url")
@click.option("--target-dir", type=click.Path(path_type=Path))
def tuf_client(
    command: str,
    trusted_root: Path | None,
    mode: str,
    metadata_dir: Path,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_base_url: str | None,
    target_dir: Path | None,
) -> None:
    """The TUF conformance suite's client protocol, run through sysupd's trust code."""
    try:
        if command == "init":
            if trusted_root is None:
                raise click.UsageError("init needs the trusted root's file")
            initialize(metadata_dir, trusted_root)
            return
        if metadata_url is None:
            raise click.UsageError(f"{command} needs --metadata-url")
        path = online if mode == "online" else offline
        if command == "refresh":
            path.refresh(metadata_dir, metadata_url)
            return
        if target_base_url is None or target_dir is None or not target_names:
            raise click.UsageError("download needs --target-name, --target-base-url, --target-dir")
        path.download(metadata_dir, metadata_url, target_base_url, target_dir, target_names)
    except SysupdError as exc:
        click.echo(f"tuf-client {mode} {command}: {exc}", err=True)
        sys.exit(1)
