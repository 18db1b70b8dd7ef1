"""``sysupd install``, ``sysupd status`` and ``sysupd boot``: the engine from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from sysupd.cli.options import config_options, fail, load
from sysupd.config import ServiceConfig
from sysupd.core.job import JobState
from sysupd.core.settings import Settings
from sysupd.engine.engine import Engine
from sysupd.errors import SysupdError
from sysupd.store.db import Database
from sysupd.store.settings import SettingsStore
from sysupd.system.clock import SystemClock
from sysupd.system.health import run_health_check

__all__ = ["boot", "install", "status"]


def _engine(config: ServiceConfig) -> Engine:
    """The engine with the settings the service would use (file, then those set over the API)."""
    try:
        db = Database(config.db_path)
        try:
            settings: Settings = SettingsStore(db).load(config.settings)[0]
        finally:
            db.close()
        return Engine(config.state_dir, settings, SystemClock())
    except SysupdError as exc:
        fail(str(exc))


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@config_options
def install(bundle: Path, config_file: Path | None, state_dir: Path | None) -> None:
    """Verify BUNDLE and install it into the inactive slot."""
    engine = _engine(load(config_file, state_dir))
    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("installing", total=None)

        def progress(stage: JobState, done: int, total: int) -> None:
            bar.update(task, description=stage.value, completed=done, total=total)

        try:
            manifest = engine.install_bundle(bundle, progress=progress, log=click.echo)
        except SysupdError as exc:
            fail(str(exc))
    click.echo(f"installed {manifest.product} {manifest.version}; reboot to boot it (on trial)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@config_options
def status(as_json: bool, config_file: Path | None, state_dir: Path | None) -> None:
    """Show the slots, what boots next, the trial and the last result."""
    try:
        report = _engine(load(config_file, state_dir)).status()
    except SysupdError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"booted: {report['booted'] or '-'}   next boot: {report['next_boot'] or '-'}")
    for name, slot in report["slots"].items():
        marks = [
            m for m, on in (("booted", slot["booted"]), ("bad", slot["bootable"] is False)) if on
        ]
        click.echo(
            f"  slot {name}: {slot['version'] or 'empty':<12} {slot['kind']} {slot['path']}"
            + (f"  [{', '.join(marks)}]" if marks else "")
        )
    if report["trial"]:
        click.echo(f"on trial: slot {report['trial']}")
    if report["last_result"]:
        last = report["last_result"]
        click.echo(f"last result: {last['result']} — {last['detail']} ({last['at']})")


@click.command()
@config_options
def boot(config_file: Path | None, state_dir: Path | None) -> None:
    """Settle the boot trial before the service starts (for a unit's ExecStartPre).

    Exits 0 when the booted slot is good, 2 when it failed its health check and was abandoned:
    reboot then, and the previous slot boots.
    """
    engine = _engine(load(config_file, state_dir))
    try:
        report = engine.start()
        if report.interrupted:
            click.echo(report.interrupted)
        if report.rolled_back:
            click.echo(f"rolled back: {report.rolled_back}")
        ok, detail = asyncio.run(run_health_check(engine.settings.health_check_command))
        result = engine.confirm(ok, detail)
    except SysupdError as exc:
        fail(str(exc))
    click.echo(f"booted slot {report.slot} ({report.version}): {detail}")
    if result is not None:
        click.echo(f"{result.result}: {result.detail}")
    if result is not None and result.result == "rolled back":
        sys.exit(2)
    if not ok:
        click.echo(f"slot {report.slot} is not on trial, so it is kept despite the failed check")
