"""``sysupd serve``: run the API service until a signal or a reboot ends it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
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
@click.option("--host", help="Address the TLS listeners (wss, https) bind [default: 0.0.0.0].")
@click.option(
    "--plain-host", help="Address the plain listeners (ws, http) bind [default: 127.0.0.1]."
)
@click.option("--ws-port", type=int, help="Plain WebSocket port [default: 5182].")
@click.option("--http-port", type=int, help="Plain HTTP port [default: 5183].")
@click.option("--wss-port", type=int, help="WebSocket over TLS port [default: 5184].")
@click.option("--https-port", type=int, help="HTTPS port [default: 5185].")
@click.option(
    "--tls/--no-tls", default=None, help="Serve wss and https (the default) or not at all."
)
def serve(
    config_file: Path | None,
    state_dir: Path | None,
    **listeners: str | int | bool | None,
) -> None:
    """Run the service: the API on WebSocket and HTTP, and the web page.

    The TLS listeners (wss 5184, https 5185) serve the network with the configured certificate
    or one made at the first start; the plain ones (ws 5182, http 5183) serve loopback only,
    unless --plain-host (or plain_host in the file) opens them.
    """
    config = load(config_file, state_dir, listeners)
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
    """First start with no trust root: a demo repository to try a real update with, whose root
    becomes the device's trust as a provisioned trust_root would."""
    demo = create_demo(service.config.state_dir / "demo", service.settings.product)
    service.adopt_trust_root(demo.trust_root.resolve())
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
        if not service.trusts_a_root:
            _make_demo(service)
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    # Signals first: whoever waits for the banner may stop the service at once.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_exit, ProcessExit.EXIT)
    click.echo("\n".join(_banner(service)))
    sys.stdout.flush()
    try:
        return await service.wait_exit_requested()
    finally:
        await service.stop()


def _banner(service: Service) -> list[str]:
    """Where the service listens, for people (and the first line for scripts that wait for it)."""
    config = service.config
    plain, host = _url_host(config.plain_host), _url_host(config.host)
    first = (
        f"sysupd listening: ws://{plain}:{service.ws_port}/websocket  "
        f"http://{plain}:{service.http_port}/"
    )
    certificate = service.certificate
    if certificate is None:
        return [f"{first}  (state in {config.state_dir}; TLS is off)"]
    made = " (made now)" if certificate.generated else ""
    return [
        f"{first}  wss://{host}:{service.wss_port}/websocket  https://{host}:{service.https_port}/"
        f"  (state in {config.state_dir})",
        f"Web page: https://{_page_host(config.host)}:{service.https_port}/  "
        f"(on this machine also http://localhost:{service.http_port}/)",
        f"TLS certificate SHA-256 fingerprint{made}: {certificate.fingerprint}",
    ]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _page_host(host: str) -> str:
    """The host part of the page's address: listening on every address, the machine's name."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
        return socket.gethostname() or "localhost"
    return _url_host(host)
