"""``sysupd update``: upload (or name) a bundle, start the update and follow it to the end.

The person sees an upload bar, then a bar fed by the ``sys/update_now`` events (the phase, bytes,
rate and time left; when piped, the events' ``progress`` lines instead), the job's log line by
line, and the result; scripts (``--json``) get every event as a JSON line and a final result
line. ``--no-reboot`` cancels the automatic reboot;
``--wait`` follows the service through the reboot (the connection drops, the client reconnects
with its token) and reports the version it booted. Exit status 0 when the update installed (and,
with ``--wait``, the new slot came up), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sysupd.cli.remote import Remote, client_options, run_remote, text_of_log
from sysupd.client.connection import Client, Disconnected, Event, Reconnected
from sysupd.client.errors import ConnectionFailed, NotLoggedIn
from sysupd.client.session import LoggedIn

__all__ = ["update"]

_SETTLED = ("good", "rolled back", "failed", "unhealthy")
_SETTLE_POLL_S = 0.25
_REBOOT_POLL_S = 0.25
_PHASES = {
    "download": "downloading",
    "verify": "verifying",
    "install": "installing",
    "switch": "switching",
}


class _Reporter:
    """How the update is shown: bars and lines on a terminal, lines when piped, JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=as_json or not self.console.is_terminal,
        )
        self._upload: TaskID | None = None
        self._update: TaskID | None = None
        self._lines_shown = 0
        self._progress_said = ""

    def __enter__(self) -> _Reporter:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(None, None, None)

    def say(self, line: str) -> None:
        """A line for people, above the bars on a terminal (stdout keeps results for scripts)."""
        if self.as_json:
            return
        if self.bars.disable:
            click.echo(line, err=True)
        else:
            self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def json(self, data: dict[str, Any]) -> None:
        """A JSON line (only with ``--json``)."""
        if self.as_json:
            click.echo(json.dumps(data))
            sys.stdout.flush()

    def upload_progress(self, sent: int, size: int) -> None:
        """Called by the client as the upload goes."""
        if self._upload is None:
            self._upload = self.bars.add_task("uploading", total=size)
        self.bars.update(self._upload, completed=sent)

    def update_event(self, args: dict[str, Any]) -> None:
        """A ``sys/update_now`` event."""
        self.json({"event": "sys/update_now", "args": args})
        lines = text_of_log(str(args.get("log") or ""))
        for line in lines[self._lines_shown :]:
            self.say(line)
        self._lines_shown = max(self._lines_shown, len(lines))
        if not args.get("update_running"):
            return
        progress = str(args.get("progress") or "")
        if progress and self.bars.disable and progress != self._progress_said:
            # No bar to draw (piped): the service's line for people says how far it is.
            self.say(progress)
            self._progress_said = progress
        phase = str(args.get("phase") or "")
        label = _PHASES.get(phase, phase or "working")
        if phase == "install" and args.get("slot"):
            label = f"installing into slot {args['slot']}"
        total = int(args.get("bytes_total") or 0) or None
        if self._update is None:
            self._update = self.bars.add_task(label, total=total)
        self.bars.update(
            self._update,
            description=label,
            completed=int(args.get("bytes_done") or 0),
            total=total,
        )

    def finish_upload(self) -> None:
        """The upload is done: its bar goes."""
        if self._upload is not None:
            self.bars.remove_task(self._upload)
            self._upload = None

    def finish_bars(self) -> None:
        """The update ended: its bars go."""
        self.finish_upload()
        if self._update is not None:
            self.bars.remove_task(self._update)
            self._update = None


@click.command()
@click.option(
    "--file",
    "bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Upload this bundle and install it.",
)
@click.option("--url", help="Install the bundle at this URL on the local network.")
@click.option("--online", is_flag=True, help="Install the newest release from the update server.")
@click.option("--no-reboot", is_flag=True, help="Cancel the automatic reboot after it installed.")
@click.option("--wait", is_flag=True, help="Follow the reboot and report the version it booted.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="How long --wait waits for the service to come back.",
)
@client_options
def update(
    bundle: Path | None,
    url: str | None,
    online: bool,
    no_reboot: bool,
    wait: bool,
    wait_timeout: float,
    server: str,
    as_json: bool,
) -> None:
    """Update the system: --file BUNDLE, --url URL or --online; follow it to the end."""
    if (bundle is not None) + (url is not None) + online != 1:
        raise click.UsageError("give exactly one of --file BUNDLE, --url URL, --online")
    if no_reboot and wait:
        raise click.UsageError("--wait follows the reboot that --no-reboot cancels: give one")
    if bundle is not None and not bundle.is_file():
        raise click.UsageError(f"--file {bundle}: there is no such file")
    if bundle is not None and bundle.stat().st_size == 0:
        raise click.UsageError(f"--file {bundle} is empty, not an update bundle")
    remote = Remote(server, as_json)
    reporter = _Reporter(as_json)

    async def work() -> bool:
        session = await remote.session()
        try:
            with reporter:
                return await _run(session, reporter, bundle, url, no_reboot, wait, wait_timeout)
        finally:
            await session.client.close()

    ok = run_remote(remote, work())
    sys.exit(0 if ok else 1)


async def _run(
    session: LoggedIn,
    out: _Reporter,
    bundle: Path | None,
    url: str | None,
    no_reboot: bool,
    wait: bool,
    wait_timeout: float,
) -> bool:
    client = session.client
    args: dict[str, Any] = {}
    if bundle is not None:
        stored = await client.upload(bundle, progress=out.upload_progress)
        out.finish_upload()
        # A name the service would refuse (".x", "a..b") went as upload.bundle: say so.
        sent_as = stored.get("file_upload")
        renamed = f", sent as {sent_as}" if sent_as != bundle.name else ""
        out.say(f"uploaded {bundle.name} (sha256 {stored['sha256']}{renamed})")
        out.json({"upload": stored})
        args = {"file_upload": stored["file_upload"]}
    elif url is not None:
        args = {"fetch_url": url}
    reply = await client.call("sys/update_now", args)
    if reply.get("result") != "success":
        error = str(reply.get("error", "the update did not start"))
        details = f" ({reply['details']})" if reply.get("details") else ""
        out.finish_bars()
        out.say(f"error: {error}{details}")
        out.json({"result": "failure", "error": error, "details": reply.get("details")})
        return False
    final = await _follow_job(client, out)
    out.finish_bars()
    status = await client.call("sys/update_status")
    last = status.get("last_result") or {}
    if final.get("result") != "success":
        lines = text_of_log(str(final.get("details", "")))
        cause = _cause(lines[-1]) if lines else "see: sysupd log"
        out.say(f"error: the update failed: {cause}")
        out.json({"result": "failure", "error": cause, "log": lines})
        return False
    version = last.get("version")
    if no_reboot:
        stopped = await client.call("sys/reboot_stop")
        said = "the automatic reboot is cancelled; " if stopped.get("result") == "success" else ""
        out.say(f"installed {version}; {said}reboot when you are ready: sysupd reboot --in 0")
        out.json({"result": "success", "version": version, "rebooted": False})
        return True
    if not wait:
        when = await client.call("sys/reboot_time")
        soon = (
            f"the service reboots into it in {when['reboot_delay_seconds']} s "
            "(cancel with: sysupd reboot --cancel)"
            if when.get("reboot_scheduled")
            else "reboot to start it: sysupd reboot --in 0"
        )
        out.say(f"installed {version}; {soon}")
        out.json({"result": "success", "version": version, "rebooted": False})
        return True
    return await _wait_for_reboot(client, out, version, wait_timeout)


def _cause(line: str) -> str:
    """A log line without its time stamp and "update failed:", as the cause of a failure."""
    _, _, text = line.partition(" ") if line[:2].isdigit() else ("", "", line)
    return text.removeprefix("update failed: ")


async def _follow_job(client: Client, out: _Reporter) -> dict[str, Any]:
    """The job's events until its final one."""
    async for item in client.follow(retry_for_s=60.0):
        if isinstance(item, Event) and item.name == "sys/update_now":
            out.update_event(item.args)
            if not item.args.get("update_running"):
                return item.args
        elif isinstance(item, Disconnected):
            out.say(f"({item.reason}; reconnecting)")
        elif isinstance(item, Reconnected):
            status = await client.call("sys/update_status")
            if not status.get("update_running"):  # it ended while we were away
                return {
                    "result": "success" if status.get("reboot_required") else "failure",
                    "details": status.get("update_status", ""),
                }
    raise ConnectionFailed("the connection ended before the update did")


async def _wait_for_reboot(
    client: Client, out: _Reporter, version: str | None, timeout_s: float
) -> bool:
    """Through the reboot: the connection drops, the old process goes, a new one answers and its
    boot trial settles; ``timeout_s`` counts from the drop after the old process was last seen.

    Until then a refused or closed connection means "still rebooting", never a failure: the
    old process may take a reconnect while it shuts down and drop it at the next call. Only a
    process that no longer says "reboot required" is the new one, so an answer from the old
    one is not taken for the result.
    """
    out.say("waiting for the reboot…")
    spare = await _spare_token(client)
    loop = asyncio.get_running_loop()
    deadline = 0.0
    connected, timing, said = True, False, False
    while True:
        if connected and await _cancelled_before_close(client):
            out.say("the reboot was cancelled")
            out.json({"result": "success", "version": version, "rebooted": False})
            return True
        connected = True
        if not timing:
            if not said:
                out.say("the service is rebooting; waiting for it to come back…")
                said = True
            deadline, timing = loop.time() + timeout_s, True
        try:
            await client.reconnect(retry_for_s=max(0.0, deadline - loop.time()))
            if (await client.call("sys/update_status")).get("reboot_required"):
                timing = False  # the old process, going down (or a blip before the reboot)
                continue
            info = await _settled_info(client, deadline)
            break
        except NotLoggedIn:
            if spare is None:
                raise
            # The old process spent our token and the reply with the next one was lost.
            client.token, spare = spare, None
        except ConnectionFailed as exc:
            if loop.time() >= deadline:
                raise ConnectionFailed(
                    f"{client.server.base_url} did not come back within {timeout_s:g} s of "
                    f"going down for the reboot ({exc}); see --wait-timeout"
                ) from exc
        connected = False  # gone, or of no use: reconnect (dropping it) without waiting on it
        await asyncio.sleep(_REBOOT_POLL_S)
    booted, slot, health = info.get("system_version"), info.get("slot"), info.get("boot_status")
    ok = booted == version and health == "good"
    out.json(
        {
            "result": "success" if ok else "failure",
            "version": version,
            "rebooted": True,
            "info": info,
        }
    )
    if ok:
        out.say(f"now running {booted} in slot {slot} (boot status: {health})")
        return True
    try:
        last = (await client.call("sys/update_status")).get("last_result") or {}
    except ConnectionFailed:  # it may be rebooting again, back to the previous slot
        last = {}
    why = last.get("detail", "")
    out.say(f"the new version did not stay: running {booted} in slot {slot} ({health}); {why}")
    return False


async def _cancelled_before_close(client: Client) -> bool:
    """Whether the reboot was cancelled before the connection closed (else it closed)."""
    async for event in client.events():
        if event.name == "sys/reboot" and event.args.get("reboot_scheduled") is False:
            return True
    return False


async def _spare_token(client: Client) -> str | None:
    """A second token for the reconnect after the reboot, or ``None`` if the reboot came first."""
    try:
        return await client.spare_token()
    except ConnectionFailed:
        return None


async def _settled_info(client: Client, deadline: float) -> dict[str, Any]:
    """``sys/info`` once the boot trial has settled, or as it is at ``deadline``."""
    loop = asyncio.get_running_loop()
    info = await client.call("sys/info")
    while info.get("boot_status") not in _SETTLED and loop.time() < deadline:
        await asyncio.sleep(_SETTLE_POLL_S)
        info = await client.call("sys/info")
    return info
