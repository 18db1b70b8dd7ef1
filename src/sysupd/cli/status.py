"""``sysupd status``: the system as the running service tells it, or (``--local``, or with
``--state-dir``/``--config``) as the state directory records it, without a service.

The one command that is both a client and a device-side command; the rule is the same as
everywhere in ``sysupd``: state-directory options mean "this device's files", ``--server`` means
"a running service".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sysupd.cli.options import config_options, existing_state
from sysupd.cli.remote import Remote, client_options, run_remote
from sysupd.client.session import LoggedIn

__all__ = ["status"]


@click.command()
@click.option("--local", is_flag=True, help="Read this device's state directory, not the service.")
@config_options
@client_options
def status(
    local: bool, config_file: Path | None, state_dir: Path | None, server: str, as_json: bool
) -> None:
    """What runs, how it booted, the update and the reboot (from the service, or --local)."""
    if local or config_file is not None or state_dir is not None:
        from sysupd.cli.updates import show_local_status

        existing_state(config_file, state_dir)  # a missing one is refused, not made
        show_local_status(config_file, state_dir, as_json)
        return
    remote = Remote(server, as_json)

    async def work(session: LoggedIn) -> dict[str, Any]:
        client = session.client
        report: dict[str, Any] = {"server": remote.server.base_url, "user": session.user}
        for key, call in (
            ("info", "sys/info"),
            ("update", "sys/update_status"),
            ("reboot", "sys/reboot_time"),
            ("available", "sys/updates_available"),
        ):
            report[key] = await client.call(call)
        return report

    async def run() -> dict[str, Any]:
        session = await remote.session()
        try:
            return await work(session)
        finally:
            await session.client.close()

    report = run_remote(remote, run())
    remote.emit(report, "\n".join(describe(report)))


def describe(report: dict[str, Any]) -> list[str]:
    """The status for people."""
    info, update = report["info"], report["update"]
    reboot, available = report["reboot"], report["available"]
    lines = [
        f"{report['server']}: running {info.get('system_version')} in slot {info.get('slot')}, "
        f"boot status {info.get('boot_status')}  (sysupd {info.get('middleware_version')})"
    ]
    last = update.get("last_result")
    if last and last.get("result") == "rolled back":
        lines.append(f"ROLLED BACK: {last.get('detail')} ({last.get('at')})")
    if update.get("update_running"):
        lines.append("update: running (follow it with: sysupd events)")
    elif last:
        lines.append(f"last update: {last.get('result')}: {last.get('detail')} ({last.get('at')})")
    else:
        lines.append("last update: none")
    if update.get("reboot_required"):
        lines.append("a reboot is required to start the installed version")
    if reboot.get("reboot_scheduled"):
        lines.append(
            f"reboot: {reboot.get('reboot_type')} in {reboot.get('reboot_delay_seconds')} s "
            f"(at {reboot.get('reboot_time')})"
        )
    lines.append(f"updates: {available.get('updates_info')}")
    return lines
