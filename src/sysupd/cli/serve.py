"""``sysupd serve``: run the API service until a signal or a reboot ends it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import click

from sysupd.api.service import FIRST_ADMIN, Service
from sysupd.cli.options import config_options, fail, load
from sysupd.config import ServiceConfig
from sysupd.errors import SysupdError
from sysupd.release.demo import create_demo
from sysupd.system.reboot import ProcessExit

__all__ = ["serve"]


@click.command()
@config_options
@click.option("--host", help="Address both listeners bind [default: 0.0.0.0].")
@click.option("--ws-port", type=int, help="WebSocket port [default: 5182].")
@click.option("--http-port", type=int, help="HTTP port [default: 5183].")
def serve(
    config_file: Path | None,
    state_dir: Path | None,
    host: str | None,
    ws_port: int | None,
    http_port: int | None,
) -> None:
    """Run the service (WebSocket and HTTP API)."""
    config = load(
        config_file, state_dir, {"host": host, "ws_port": ws_port, "http_port": http_port}
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        how = asyncio.run(_serve(config))
    except SysupdError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")
    if how is ProcessExit.REEXEC:
        sys.stdout.flush()
        sys.stderr.flush()
        # The same interpreter, flags and command line the process was started with.
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606


def _make_demo(service: Service) -> None:
    """First start with no trust root: a demo repository to try a real update with."""
    demo = create_demo(service.config.state_dir / "demo", service.settings.product)
    service.change_settings({"trust_root": str(demo.trust_root.resolve())}, by="the first start")
    click.echo(f"Made a demo release repository in {demo.repo}; bundles to try:")
    for bundle in demo.bundles:
        click.echo(f"  {bundle}")


async def _serve(config: ServiceConfig) -> ProcessExit:
    service = Service(config)
    password = service.ensure_first_admin()
    if password is not None:
        click.echo(
            f"Created the administrator {FIRST_ADMIN!r} with password {password}\n"
            "(shown only this once; change it with 'sysupd user passwd admin')",
        )
        if not service.settings.trust_root:
            _make_demo(service)
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    click.echo(
        f"sysupd listening: ws://{config.host}:{service.ws_port}/websocket  "
        f"http://{config.host}:{service.http_port}/  (state in {config.state_dir})",
    )
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_exit, ProcessExit.EXIT)
    try:
        return await service.wait_exit_requested()
    finally:
        await service.stop()
