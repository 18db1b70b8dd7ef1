"""The ``sysupd`` client commands, run as real processes against a real service over https."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from sysupd.api.service import Service
from sysupd.client import parse_server
from tests.cli import Cli
from tests.conftest import ADMIN, USER, ServiceFactory, wait_until
from tests.procs import free_port, run_cli


@pytest.fixture
async def device(start_service: ServiceFactory) -> Service:
    return await start_service()


@pytest.fixture
def cli(device: Service, tmp_path: Path) -> Cli:
    return Cli.for_service(device, tmp_path / "cfg")


async def test_login_pins_the_certificate_and_keeps_a_token_never_the_password(
    device: Service, cli: Cli
) -> None:
    said = await cli.login(*ADMIN)
    assert device.certificate is not None
    assert f"Pinned the TLS certificate of {cli.server}" in said
    assert device.certificate.fingerprint in said
    pins = (cli.config_dir / "known_servers").read_text()
    assert pins == f"{cli.server} {device.certificate.fingerprint}\n"
    tokens = cli.config_dir / "tokens.json"
    assert tokens.stat().st_mode & 0o777 == 0o600
    assert ADMIN[1] not in tokens.read_text()
    assert cli.tokens()[cli.server]["user"] == ADMIN[0]
    info = await cli.json("info")
    assert info["system_id"] == device.system_id
    assert "Pinned" not in await cli.ok("info"), "pinned once, then quiet"


async def test_each_command_hands_the_token_on(cli: Cli) -> None:
    await cli.login(*ADMIN)
    first = cli.tokens()[cli.server]["token"]
    await cli.ok("info")
    second = cli.tokens()[cli.server]["token"]
    assert second != first
    await cli.ok("info")


async def test_wrong_password_says_so_and_keeps_nothing(cli: Cli) -> None:
    err = await cli.fails("login", "--user", ADMIN[0], "--password-stdin", stdin="wrong")
    assert "401 Unauthorized: wrong user name or password" in err
    assert "run: sysupd login" not in err, "not told to run what was just run"
    assert not (cli.config_dir / "tokens.json").exists()


async def test_a_login_that_fails_still_shows_the_certificate_it_pinned(
    device: Service, cli: Cli
) -> None:
    err = await cli.fails("login", "--user", ADMIN[0], "--password-stdin", stdin="wrong")
    assert device.certificate is not None
    pinned = f"Pinned the TLS certificate of {cli.server}: SHA-256 {device.certificate.fingerprint}"
    assert pinned in err
    assert err.index(pinned) < err.index("401 Unauthorized"), "shown before the password went"
    assert (cli.config_dir / "known_servers").read_text() == (
        f"{cli.server} {device.certificate.fingerprint}\n"
    )
    assert "Pinned" not in await cli.login(*ADMIN), "it was said once, when it was pinned"


async def test_an_empty_password_on_stdin_is_refused_before_sending(cli: Cli) -> None:
    err = await cli.fails("login", "--user", ADMIN[0], "--password-stdin", stdin="")
    assert "no password on standard input" in err
    assert not cli.config_dir.exists(), "nothing connected, nothing pinned"


async def test_commands_without_a_login_pin_nothing(cli: Cli) -> None:
    for command in ("info", "status", "logout"):
        code, _, err = await cli.run(command)
        assert code == (0 if command == "logout" else 1), err
    assert not (cli.config_dir / "known_servers").exists()
    err = await cli.fails("info")
    assert f"you are not logged in to {cli.server}; run: sysupd login --server {cli.server}" in err


async def test_only_a_login_pins_again_after_the_pin_is_lost(device: Service, cli: Cli) -> None:
    await cli.login(*ADMIN)
    pins = cli.config_dir / "known_servers"
    pins.unlink()
    err = await cli.fails("info")
    assert f"no certificate is pinned for {cli.server}" in err
    assert f"run: sysupd login --server {cli.server}" in err
    assert not pins.exists()
    assert await cli.ok("logout") == f"Logged out {ADMIN[0]} from {cli.server}.\n"
    assert not pins.exists(), "logging out pins nothing either"
    assert "Pinned the TLS certificate" in await cli.login(*ADMIN)
    assert pins.exists()


async def test_a_corrupt_known_servers_line_is_named(device: Service, cli: Cli) -> None:
    pins = cli.config_dir / "known_servers"
    await cli.login(*ADMIN)
    good = pins.read_text()
    pins.write_text(f"https://192.0.2.9:5185 {'AB:' * 31}AB\n{cli.server} garbage\n")
    for args in (("info",), ("login", "--password-stdin")):
        code, _, err = await cli.run(*args, stdin=ADMIN[1])
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"{pins}, line 2, is not a pinned certificate" in lines[0]
        assert f"'{cli.server} garbage'" in lines[0]
        assert "remove that line" in lines[0]
    pins.write_text(good)
    assert (await cli.json("info"))["system_id"] == device.system_id, "the login was kept"


async def test_not_logged_in_says_how_to_log_in(cli: Cli) -> None:
    err = await cli.fails("status")
    assert f"you are not logged in to {cli.server}; run: sysupd login --server {cli.server}" in err


async def test_a_revoked_login_says_to_log_in_again_and_is_forgotten(
    device: Service, cli: Cli
) -> None:
    await cli.login(*USER)
    device.users.set_password(USER[0], "a-new-password")
    err = await cli.fails("info")
    assert "the login has ended" in err
    assert "run: sysupd login" in err
    assert cli.server not in cli.tokens()
    await cli.login(USER[0], "a-new-password")
    await cli.ok("info")


async def test_an_unreachable_service_is_named(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cfg", f"https://127.0.0.1:{free_port()}")
    err = await cli.fails("login", "--password-stdin", stdin="x")
    assert f"cannot reach {cli.server}" in err
    assert "is the service running there?" in err


async def test_no_login_and_nothing_listening_says_both(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cfg", f"http://127.0.0.1:{free_port()}")
    err = await cli.fails("status")
    assert (
        f"you are not logged in to {cli.server}, and nothing answers there (Connection refused); "
        f"run: sysupd login --server {cli.server}"
    ) in err


async def test_a_kept_login_to_a_service_that_is_gone_says_it_cannot_reach_it(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start_service()
    clis = [
        Cli.for_service(service, tmp_path / "tls"),
        Cli.for_service(service, tmp_path / "plain", tls=False),
    ]
    for cli in clis:
        await cli.login(*ADMIN)
    await service.stop()
    for cli in clis:
        err = await cli.fails("status")
        assert f"cannot reach {cli.server}: Connection refused" in err
        assert "not logged in" not in err
        code, out, err = await cli.run("logout")
        assert (code, out) == (0, f"Logged out {ADMIN[0]} from {cli.server}.\n")
        assert err == "", "no unclosed HTTP session"


async def test_https_to_a_plain_listener_says_to_use_http(device: Service, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cfg", f"https://127.0.0.1:{device.http_port}")
    err = await cli.fails("login", "--password-stdin", stdin=ADMIN[1])
    plain = f"http://127.0.0.1:{device.http_port}"
    assert f"the server at {cli.server} does not speak TLS here; use {plain}" in err
    assert "WRONG_VERSION_NUMBER" not in err
    assert not (cli.config_dir / "known_servers").exists()


async def test_a_changed_certificate_is_refused_until_accepted_by_fingerprint(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    first = await start_service(state_dir=tmp_path / "first")
    cli = Cli.for_service(first, tmp_path / "cfg")
    await cli.login(*ADMIN)
    port = first.https_port
    await first.stop()
    # Another machine (or a replaced certificate) answers at the same address.
    second = await start_service(state_dir=tmp_path / "second", https_port=port)
    assert second.certificate is not None
    presented = second.certificate.fingerprint
    err = await cli.fails("info")
    assert "is not the one pinned when you first connected" in err
    assert f"presented: {presented}" in err
    assert f"sysupd login --server {cli.server} --accept-certificate {presented}" in err
    wrong = "00:" * 31 + "00"
    err = await cli.fails(
        "login", "--password-stdin", "--accept-certificate", wrong, stdin=ADMIN[1]
    )
    assert "nothing was pinned" in err
    code, _, err = await cli.run(
        "login",
        "--user",
        ADMIN[0],
        "--password-stdin",
        "--accept-certificate",
        presented.replace(":", "").lower(),
        stdin=ADMIN[1],
    )
    assert code == 0, err
    assert (await cli.json("info"))["system_id"] == second.system_id


async def test_plain_http_to_another_machine_warns_about_the_password(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cfg", "http://192.0.2.1:5183")  # TEST-NET: never reached
    code, _, err = await cli.run("login", "--password-stdin", stdin="x", timeout=30)
    assert "crosses the network in clear text" in err
    assert code == 1


async def test_status_info_and_reboot_commands(device: Service, cli: Cli) -> None:
    await cli.login(*ADMIN)
    status = await cli.ok("status")
    assert "running 0.0.0 in slot A" in status
    assert "last update: none" in status
    report = await cli.json("status")
    assert report["info"]["system_id"] == device.system_id
    assert set(report) == {"server", "user", "info", "update", "reboot", "available"}
    said = await cli.ok("reboot", "--in", "600")
    assert said.startswith("Reboot in 600 s")
    assert device.reboots.plan is not None
    assert "Reboot in" in await cli.ok("reboot", "--when")
    assert (await cli.json("reboot", "--when"))["reboot_scheduled"] is True
    assert await cli.ok("reboot", "--cancel") == "Reboot cancelled.\n"
    assert device.reboots.plan is None
    assert await cli.ok("reboot", "--cancel") == "No reboot was scheduled.\n"
    assert await cli.ok("reboot", "--when") == "No reboot is scheduled.\n"
    code, _, err = await cli.run("reboot", "--cancel", "--in", "5")
    assert code == 2
    assert "give one of" in err


async def test_call_log_and_check(device: Service, cli: Cli) -> None:
    await cli.login(*ADMIN)
    reply = json.loads(await cli.ok("call", "sys/info"))
    assert reply["system_id"] == device.system_id
    plan = json.loads(await cli.ok("call", "sys/reboot", '{"delay_seconds": 900}'))
    assert plan["reboot_delay_seconds"] == 900
    code, _, err = await cli.run("call", "sys/reboot", "{not json")
    assert code == 2
    assert "not valid JSON" in err
    code, _, err = await cli.run("call", "sys/reboot", "[1]")
    assert code == 2
    assert "must be a JSON object" in err
    err = await cli.fails("call", "sys/nothing")
    assert "404 Not Found: there is no call sys/nothing" in err
    for login_call in ("rpc/auth_clear", "/rpc/auth", "rpc/auth_token"):
        code, _, err = await cli.run("call", login_call, '{"token": "x"}')
        assert code == 2, err
        assert "log in with 'sysupd login' and out with 'sysupd logout'" in err
    assert reply == json.loads(await cli.ok("call", "sys/info")), "still logged in"
    log = await cli.ok("log")
    assert "restart scheduled by root in 900 s" in log
    assert "<br>" not in log
    assert len((await cli.ok("log", "--lines", "2")).splitlines()) == 2
    checked = await cli.run("check")
    assert checked[0] == 1
    assert "no update server is configured" in checked[1]
    assert "No update check has completed yet" not in await cli.ok("available")


async def test_a_user_gets_403_for_admin_calls(cli: Cli) -> None:
    await cli.login(*USER)
    err = await cli.fails("reboot", "--in", "60")
    assert "403 Forbidden: sys/reboot is for administrators only" in err
    await cli.ok("status")


async def test_logout_ends_the_login(device: Service, cli: Cli) -> None:
    await cli.login(*ADMIN)
    token = cli.tokens()[cli.server]["token"]
    assert await cli.ok("logout") == f"Logged out {ADMIN[0]} from {cli.server}.\n"
    assert not device.auth.is_live(token)
    assert await cli.ok("logout") == "You were not logged in.\n"
    assert "not logged in" in await cli.fails("info")


async def test_events_print_json_lines_and_survive_other_commands(
    device: Service, cli: Cli
) -> None:
    await cli.login(*ADMIN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sysupd",
        "events",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **cli.env},
    )
    assert proc.stdout is not None
    try:
        await wait_until(
            lambda: any(s.wants_events() for s in device.sessions),
            10,
            "the events command's session is logged in",
        )
        # Other commands meanwhile spend the kept token; the events session must go on.
        await cli.ok("status")
        await cli.ok("reboot", "--in", "700")
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        event = json.loads(line)
        assert event["event"] == "sys/reboot"
        assert event["args"]["reboot_delay_seconds"] == 700
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 130


async def test_help_explains_the_two_kinds_of_commands() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    assert "Client commands (a running service at --server)" in out
    assert "Device commands (this machine's state directory)" in out
    assert "'sysupd status' is both" in out
    for command in ("login", "update", "events", "install", "mark", "inspect", "release"):
        assert f"  {command} " in out


async def test_local_status_needs_no_service(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    code, out, err = await run_cli("status", "--local", "--state-dir", str(state))
    assert code == 0, err
    assert "slot A" in out
    code, out, err = await run_cli("status", "--state-dir", str(state), "--json")
    assert code == 0, err
    assert set(json.loads(out)["slots"]) == {"A", "B"}


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("localhost:5183", "http://localhost:5183"),
        ("192.168.1.20:5182", "http://192.168.1.20:5182"),
        ("box", "https://box:5185"),
        ("box:5185", "https://box:5185"),
        ("box:8443", "https://box:8443"),
        ("[::1]:5183", "http://[::1]:5183"),
        ("https://box:5183", "https://box:5183"),
    ],
)
def test_a_bare_address_on_a_plain_port_means_http(server: str, url: str) -> None:
    assert parse_server(server).base_url == url


@pytest.mark.parametrize(
    ("server", "why"),
    [
        ("ftp://box", "must be http://HOST:PORT or https://HOST:PORT"),
        ("https://user:pw@box", "must not carry a user name or password"),
        ("https://box/api", "no path"),
        ("https://box:99999", "not a valid address"),
    ],
)
async def test_a_bad_server_address_is_a_usage_error(tmp_path: Path, server: str, why: str) -> None:
    code, _, err = await Cli(tmp_path / "cfg", server).run("info")
    assert code == 2
    assert why in err
