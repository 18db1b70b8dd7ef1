"""The client commands: ``sysupd login``, ``logout``, ``info``, ``check``, ``available``, ``log``,
``events``, ``call`` and ``reboot``, talking to a running service through ``sysupd.client``.

Every client command takes ``--server URL`` (or ``SYSUPD_SERVER``; default
``http://localhost:5183``) and ``--json`` (machine-readable output: one JSON document, or one JSON
object a line for streams). The login is kept in the client's configuration directory
(``SYSUPD_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/sysupd``, else ``~/.config/sysupd``): a token,
never the password. Every failure is one line on stderr that says what to do, and exit status 1.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from sysupd.client.address import DEFAULT_SERVER, Server, parse_server
from sysupd.client.connection import Disconnected, Event, Reconnected
from sysupd.client.errors import (
    ApiError,
    CertificateChanged,
    ConnectionFailed,
    NotLoggedIn,
    NotTls,
)
from sysupd.client.pinning import TlsTrust
from sysupd.client.session import ClientConfig, LoggedIn, log_in, log_out, open_session
from sysupd.errors import ConfigError, SysupdError

__all__ = [
    "Remote",
    "available",
    "call",
    "check",
    "client_options",
    "events",
    "info",
    "log",
    "login",
    "logout",
    "reboot",
    "run_remote",
    "text_of_log",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_CHECK_POLL_S = 0.25
_CHECK_WAIT_S = 120.0


class Remote:
    """What a client command needs: where the service is, how to print, the config directory."""

    def __init__(self, server: str, as_json: bool) -> None:
        try:
            self.server: Server = parse_server(server)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        self.as_json = as_json
        self.config = ClientConfig(config_dir())

    async def session(self) -> LoggedIn:
        """Logged in with the kept token (see ``client.session.open_session``)."""
        return await open_session(self.server, self.config)

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text`` (or ``data`` as a string)."""
        if self.as_json:
            click.echo(json.dumps(data, indent=None if _piped() else 2))
        else:
            click.echo(text if text is not None else str(data))


def config_dir() -> Path:
    """The client's configuration directory."""
    if explicit := os.environ.get("SYSUPD_CONFIG_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sysupd"


def client_options(func: F) -> F:
    """``--server`` and ``--json``."""
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
    )(func)
    return click.option(
        "--server",
        envvar="SYSUPD_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        metavar="URL",
        help="The service: http://HOST:5183, https://HOST:5185, or HOST (https; HOST:5183 is "
        "http).",
    )(func)


def run_remote(remote: Remote, work: Coroutine[Any, Any, T], *, login_hint: bool = True) -> T:
    """Run a client command's coroutine; failures become one clear line and exit status 1.
    A refused login says how to log in, unless (``login_hint=False``) that is what failed."""
    login_again = f"; run: sysupd login --server {remote.server.base_url}" if login_hint else ""
    try:
        return asyncio.run(work)
    except KeyboardInterrupt:
        sys.exit(130)
    except NotLoggedIn as exc:
        _fail(remote, f"{exc}{login_again}")
    except (CertificateChanged, NotTls) as exc:
        _fail(remote, str(exc))
    except ConnectionFailed as exc:
        _fail(remote, f"{exc} (is the service running there? see --server)")
    except ApiError as exc:
        _fail(remote, f"{exc}{login_again}" if exc.code == "401" else str(exc))
    except (SysupdError, OSError) as exc:
        _fail(remote, str(exc))


def _fail(remote: Remote, message: str) -> NoReturn:
    if remote.as_json:
        click.echo(json.dumps({"result": "failure", "error": message}))
    raise click.ClickException(message)


def _piped() -> bool:
    return not sys.stdout.isatty()


def text_of_log(text: str) -> list[str]:
    """The lines of a log as the service sends it (HTML-escaped, joined with ``<br>``)."""
    return [html.unescape(line) for line in text.split("<br>")] if text else []


async def _with_session(remote: Remote, work: Callable[[LoggedIn], Awaitable[T]]) -> T:
    session = await remote.session()
    try:
        return await work(session)
    finally:
        await session.client.close()


# -- login, logout -------------------------------------------------------------------------------


@click.command()
@click.option("--user", default="admin", show_default=True, help="The user to log in as.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of asking."
)
@click.option(
    "--accept-certificate",
    metavar="FINGERPRINT",
    help="Pin this SHA-256 fingerprint for the service (after its certificate was replaced).",
)
@client_options
def login(
    user: str, password_stdin: bool, accept_certificate: str | None, server: str, as_json: bool
) -> None:
    """Log in to the service; the token (never the password) is kept for the other commands."""
    remote = Remote(server, as_json)
    if not remote.server.tls and not remote.server.is_loopback:
        click.echo(
            f"warning: {remote.server.base_url} is plain http: the password crosses the network "
            "in clear text; use https://HOST:5185",
            err=True,
        )
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail(remote, "no password on standard input (--password-stdin reads its first line)")
    else:
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)

    def pinned(trust: TlsTrust) -> None:
        # Said before the password goes out, so it is seen even if the login then fails.
        click.echo(
            f"Pinned the TLS certificate of {remote.server.base_url}: SHA-256 "
            f"{trust.fingerprint}\n(compare it with the fingerprint the service printed "
            "at start; a different certificate will be refused from now on)",
            err=True,
        )

    async def work() -> LoggedIn:
        session = await log_in(
            remote.server,
            remote.config,
            user,
            password,
            accept_certificate=accept_certificate,
            on_pinned=pinned,
        )
        await session.client.close()
        return session

    run_remote(remote, work(), login_hint=False)
    remote.emit(
        {"result": "success", "server": remote.server.base_url, "user": user},
        f"Logged in to {remote.server.base_url} as {user}.",
    )


@click.command()
@client_options
def logout(server: str, as_json: bool) -> None:
    """End the kept login of the service and forget its token."""
    remote = Remote(server, as_json)
    stored = run_remote(remote, log_out(remote.server, remote.config))
    if stored is None:
        remote.emit({"result": "success", "was_logged_in": False}, "You were not logged in.")
    else:
        remote.emit(
            {"result": "success", "was_logged_in": True},
            f"Logged out {stored.user} from {remote.server.base_url}.",
        )


# -- reading -------------------------------------------------------------------------------------


@click.command()
@client_options
def info(server: str, as_json: bool) -> None:
    """The system's identity and version (sys/info)."""
    remote = Remote(server, as_json)
    reply = run_remote(remote, _with_session(remote, lambda s: s.client.call("sys/info")))
    width = max(map(len, reply), default=0)
    remote.emit(reply, "\n".join(f"{k:<{width}}  {v}" for k, v in reply.items()))


@click.command()
@client_options
def available(server: str, as_json: bool) -> None:
    """The result of the last update check (sys/updates_available)."""
    remote = Remote(server, as_json)
    reply = run_remote(
        remote, _with_session(remote, lambda s: s.client.call("sys/updates_available"))
    )
    remote.emit(reply, describe_available(reply))


@click.command()
@client_options
def check(server: str, as_json: bool) -> None:
    """Check the update server now and show what it has (sys/update_check)."""
    remote = Remote(server, as_json)

    async def work(session: LoggedIn) -> dict[str, Any]:
        client = session.client
        before = (await client.call("sys/updates_available")).get("last_checked")
        await client.call("sys/update_check")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CHECK_WAIT_S
        while True:
            reply = await client.call("sys/updates_available")
            if reply.get("last_checked") != before or loop.time() > deadline:
                return reply
            await asyncio.sleep(_CHECK_POLL_S)

    reply = run_remote(remote, _with_session(remote, work))
    remote.emit(reply, describe_available(reply))
    if reply.get("error"):
        sys.exit(1)


def describe_available(reply: dict[str, Any]) -> str:
    """``sys/updates_available`` for people."""
    checked = reply.get("last_checked")
    return str(reply.get("updates_info", "")) + (f"\n(checked {checked})" if checked else "")


@click.command()
@click.option("--lines", type=click.IntRange(min=1), help="Only the last N lines.")
@client_options
def log(lines: int | None, server: str, as_json: bool) -> None:
    """The service log (sys/middleware_log), newest last."""
    remote = Remote(server, as_json)
    reply = run_remote(remote, _with_session(remote, lambda s: s.client.call("sys/middleware_log")))
    text = text_of_log(str(reply.get("log", "")))
    if lines is not None:
        text = text[-lines:]
    remote.emit({"log": text}, "\n".join(text))


@click.command()
@client_options
def events(server: str, as_json: bool) -> None:
    """Print every event as one JSON object a line, until ^C (reconnects by itself)."""
    remote = Remote(server, as_json)

    async def work(session: LoggedIn) -> None:
        async for item in session.client.follow(retry_for_s=float("inf")):
            if isinstance(item, Event):
                click.echo(json.dumps({"event": item.name, "args": item.args}))
                sys.stdout.flush()
            elif isinstance(item, Disconnected):
                click.echo(f"({item.reason}; reconnecting)", err=True)
            elif isinstance(item, Reconnected):
                click.echo("(reconnected)", err=True)

    run_remote(remote, _with_session(remote, work))


@click.command()
@click.argument("target", metavar="NAMESPACE/NAME")
@click.argument("args", required=False, metavar="[JSON]")
@client_options
def call(target: str, args: str | None, server: str, as_json: bool) -> None:
    """Make any API call and print its reply's args as JSON.

    Example: sysupd call sys/reboot '{"delay_seconds": 60}'
    """
    remote = Remote(server, as_json)
    if "/" not in target.strip("/"):
        raise click.UsageError(f"{target!r} is not NAMESPACE/NAME, e.g. sys/info")
    namespace, _, name = target.strip("/").partition("/")
    if namespace == "rpc" and name.startswith("auth"):
        # They would log this command's own session in or out, under the kept login's feet.
        raise click.UsageError(
            f"sysupd call does not make {target.strip('/')}: log in with 'sysupd login' and "
            "out with 'sysupd logout'"
        )
    try:
        parsed = json.loads(args) if args else {}
    except ValueError as exc:
        raise click.UsageError(f"the arguments are not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise click.UsageError(
            "the arguments must be a JSON object, e.g. '{\"delay_seconds\": 60}'"
        )
    reply = run_remote(
        remote, _with_session(remote, lambda s: s.client.call(target.strip("/"), parsed))
    )
    click.echo(json.dumps(reply, indent=None if _piped() else 2))


# -- reboot ----------------------------------------------------------------------------------------


@click.command()
@click.option("--in", "delay", type=click.IntRange(min=0), metavar="SECONDS", help="Delay.")
@click.option("--poweroff", is_flag=True, help="Power off instead of restarting.")
@click.option("--cancel", is_flag=True, help="Cancel the scheduled reboot.")
@click.option("--when", is_flag=True, help="Show the scheduled reboot, if any.")
@client_options
def reboot(
    delay: int | None, poweroff: bool, cancel: bool, when: bool, server: str, as_json: bool
) -> None:
    """Schedule a reboot (in 300 s unless --in says otherwise), show it, or cancel it."""
    if cancel + when > 1 or ((cancel or when) and (delay is not None or poweroff)):
        raise click.UsageError("give one of: [--in SECONDS] [--poweroff], --cancel, --when")
    remote = Remote(server, as_json)

    async def work(session: LoggedIn) -> dict[str, Any]:
        client = session.client
        if cancel:
            return await client.call("sys/reboot_stop")
        if when:
            return await client.call("sys/reboot_time")
        args: dict[str, Any] = {"poweroff": poweroff}
        if delay is not None:
            args["delay_seconds"] = delay
        return await client.call("sys/reboot", args)

    reply = run_remote(remote, _with_session(remote, work))
    if cancel:
        cancelled = reply.get("result") == "success"
        remote.emit(reply, "Reboot cancelled." if cancelled else "No reboot was scheduled.")
    elif when and not reply.get("reboot_scheduled"):
        remote.emit(reply, "No reboot is scheduled.")
    else:
        kind = "power-off" if reply.get("reboot_type") == "poweroff" else "reboot"
        remote.emit(
            reply,
            f"{kind.capitalize()} in {reply['reboot_delay_seconds']} s "
            f"(at {reply['reboot_time']}); cancel with: sysupd reboot --cancel",
        )
