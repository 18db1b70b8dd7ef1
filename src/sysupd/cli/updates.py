"""``sysupd install``, ``sysupd boot`` and ``sysupd status --local``: the engine from the command
line, on this device's state directory, with no service needed."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from sysupd.cli.options import config_options, device_engine, engine_for, fail, load
from sysupd.core.job import JobState
from sysupd.core.units import human_size
from sysupd.core.versions import parse_version
from sysupd.engine.state import Outcome
from sysupd.errors import SysupdError
from sysupd.servicelog import ServiceLog
from sysupd.sources.base import Source
from sysupd.sources.bundlefile import BundleFile
from sysupd.sources.server import ServerSource
from sysupd.sources.tuf_fetcher import FetcherLimits
from sysupd.system.clock import SystemClock
from sysupd.system.health import run_health_check
from sysupd.system.reboot import RebootKind, run_reboot_action

__all__ = ["boot", "install", "show_local_status"]


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option(
    "--server",
    metavar="URL",
    help="Install the newest release from this published repository instead of a bundle "
    "(only the chunks this device lacks are downloaded, unless delta_updates is off).",
)
@click.option(
    "--online",
    is_flag=True,
    help="Install the newest release from the update_server setting's repository.",
)
@click.option(
    "--version",
    "wanted",
    metavar="VERSION",
    help="With --server or --online: this release instead of the newest.",
)
@config_options
def install(
    bundle: Path | None,
    server: str | None,
    online: bool,
    wanted: str | None,
    config_file: Path | None,
    state_dir: Path | None,
) -> None:
    """Verify BUNDLE (or the newest release on a server) and install it into the inactive
    slot."""
    if sum((bundle is not None, server is not None, online)) != 1:
        fail("give a bundle, --server URL or --online (exactly one)")
    config = load(config_file, state_dir)
    engine = device_engine(config_file, state_dir)
    source: Source
    if wanted is not None and bundle is not None:
        fail("--version goes with --server or --online; a bundle holds one release")
    if bundle is not None:
        source = BundleFile(bundle)
    else:
        url = server or engine.settings.update_server
        if not url:
            fail("no update server is configured (setting update_server); give --server URL")
        limits = FetcherLimits(
            deadline_s=config.fetch_deadline_s, min_rate_window_s=config.fetch_stall_s
        )
        source = ServerSource.configured(
            url, config.state_dir, threading.Lock(), engine.settings, limits
        )
        if wanted is not None:
            try:
                source = replace(source, wanted=parse_version(wanted))
            except ValueError as exc:
                fail(f"--version: {exc}")
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

        def origins(device: int, network: int, downloaded: int) -> None:
            bar.update(
                task,
                description=f"{human_size(device)} from this device, "
                f"{human_size(downloaded)} downloaded",
            )

        try:
            manifest = engine.install(source, progress=progress, log=click.echo, origins=origins)
        except SysupdError as exc:
            fail(str(exc))
    click.echo(f"installed {manifest.product} {manifest.version}; reboot to boot it (on trial)")


def show_local_status(config_file: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """``sysupd status --local``: the slots, what boots next, the trial and the last result, from
    the state directory."""
    try:
        report = device_engine(config_file, state_dir).status().to_json()
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
        click.echo(f"last result: {last['result']}: {last['detail']} ({last['at']})")


@click.command()
@click.option(
    "--reboot",
    "reboot_now",
    is_flag=True,
    help="When the new slot is abandoned, run reboot_command at once (for ExecStartPre).",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="When the trial cannot be settled (a boot record or state that cannot be read or "
    "written), say why and exit 0 all the same, so that the service still starts and reports "
    "it in sys/info (for ExecStartPre).",
)
@config_options
def boot(
    reboot_now: bool, keep_going: bool, config_file: Path | None, state_dir: Path | None
) -> None:
    """Settle the boot trial before the service starts (for a unit's ExecStartPre).

    Exits 0 when the booted slot is good, 2 when it failed its health check and was abandoned:
    reboot then, and the previous slot boots (--reboot runs reboot_command right away). Exits 1
    when the trial cannot be settled, unless --keep-going.
    """
    config = load(config_file, state_dir)
    engine = engine_for(config)
    # Its lines go to the service log too: the service preloads that file's tail, so after the
    # reboot into the previous slot sys/middleware_log still says why the new one was abandoned.
    log = ServiceLog(config.log_path, SystemClock(), config.log_max_bytes)

    def say(line: str, *, warning: bool = False) -> None:
        click.echo(line)
        (log.warning if warning else log.info)(f"boot: {line}", console=False)

    try:
        report = engine.start()
        if report.repaired:
            say(report.repaired, warning=True)
        if report.interrupted:
            say(report.interrupted, warning=True)
        if report.rolled_back:
            say(f"rolled back: {report.rolled_back}", warning=True)
        settings = engine.settings
        ok, detail = asyncio.run(
            run_health_check(settings.health_check_command, settings.health_check_timeout_s)
        )
        verdict = engine.settle_boot(ok, detail)
        say(f"booted slot {report.slot} ({report.version}): {detail}", warning=not ok)
        if verdict.settled is not None:
            rolled_back = verdict.settled.result is Outcome.ROLLED_BACK
            say(f"{verdict.settled.result}: {verdict.settled.detail}", warning=rolled_back)
        if verdict.reboot:
            if reboot_now:
                outcome = asyncio.run(
                    run_reboot_action(
                        "command",
                        RebootKind.RESTART,
                        settings.reboot_command,
                        settings.poweroff_command,
                    )
                )
                say(outcome.log_line, warning=outcome.failed)
            sys.exit(2)
        if not ok:
            say(f"slot {report.slot} is not on trial, so it is kept despite the failed check")
    except SysupdError as exc:
        log.error(f"boot: {exc}", console=False)
        if not keep_going:
            fail(str(exc))
        click.echo(f"Error: {exc}", err=True)
        click.echo("the service starts all the same and reports it (--keep-going)", err=True)
    finally:
        log.close()
