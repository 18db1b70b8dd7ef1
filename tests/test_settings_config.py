"""Contract §5 ``sys/list_config`` / ``sys/set_config``, persistence and the TOML file.

Settings are read and changed over the real WebSocket (and once over HTTP); every refusal checks
the code, that ``details`` names the setting at fault, and that nothing changed — in the reply of
``list_config``, in the running service, and after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.config import load_config
from sysupd.core.settings import DEFAULT_FETCH_NETWORKS, DEVICE_SETTINGS, describe
from sysupd.errors import ConfigError
from tests.client import ApiError, WsClient
from tests.conftest import (
    ADMIN,
    USER,
    ClientFactory,
    ServiceFactory,
    api_url,
    test_config_values,
)

FileServiceFactory = Callable[[Path, Path], Awaitable[Service]]

DEFAULTS: dict[str, Any] = {info.name: info.default for info in describe()}

TOML_FILE = """\
# sysupd configuration, flat at its top level
product = "acme-box"
update_server = "https://updates.example.com/repo/"
event_interval_s = 5
auto_reboot = false
auto_reboot_delay_s = 30
fetch_networks = ["10.0.0.0/8", "fd00::/8"]
reboot_action = "exit"
"""

TOML_VALUES: dict[str, Any] = {
    "product": "acme-box",
    "update_server": "https://updates.example.com/repo/",
    "event_interval_s": 5,
    "auto_reboot": False,
    "auto_reboot_delay_s": 30,
    "fetch_networks": ["10.0.0.0/8", "fd00::/8"],
    "reboot_action": "exit",
}


@pytest.fixture
async def start_from_file() -> AsyncIterator[FileServiceFactory]:
    """Start services configured by a TOML file, with users ADMIN and USER; stopped at the end."""
    started: list[Service] = []

    async def start(config_file: Path, state_dir: Path) -> Service:
        flags = test_config_values(state_dir)
        del flags["state_dir"]
        config = load_config(config_file, state_dir=state_dir, overrides=flags)
        service = Service(config)
        if service.users.count() == 0:
            service.users.add(*ADMIN, is_admin=True)
            service.users.add(*USER, is_admin=False)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service._runners:
            await service.stop()


async def list_config(client: WsClient) -> dict[str, Any]:
    """``sys/list_config``'s ``config``, after checking its (ext) ``readonly`` list."""
    reply = await client.call("sys", "list_config")
    assert set(reply) == {"config", "readonly"}
    assert reply["readonly"] == sorted(DEVICE_SETTINGS)
    config: dict[str, Any] = reply["config"]
    return config


async def refused(client: WsClient, changes: dict[str, Any]) -> ApiError:
    """The error that ``sys/set_config`` with ``changes`` answers."""
    with pytest.raises(ApiError) as caught:
        await client.call("sys", "set_config", changes)
    return caught.value


# -- list_config -----------------------------------------------------------------------------


async def test_list_config_returns_every_setting(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    config = await list_config(client)
    assert set(config) == {info.name for info in describe()}
    assert config == DEFAULTS
    assert config["fetch_networks"] == list(DEFAULT_FETCH_NETWORKS)


async def test_describe_gives_every_setting_a_type_and_description() -> None:
    infos = describe()
    assert len({info.name for info in infos}) == len(infos)
    for info in infos:
        assert info.kind
        assert info.doc
    assert {info.name for info in infos if info.device} == DEVICE_SETTINGS


def test_what_the_device_is_is_provisioned_and_the_rest_is_the_operators() -> None:
    """The issue's split: trust root, product, slots, bootloader and its env, the commands run
    as root and the network policy are the device's; intervals, delays, the update server,
    auto-reboot and the downgrade permission are the operator's."""
    assert {
        "product",
        "trust_root",
        "slots",
        "slot_capacity_bytes",
        "bootloader",
        "grubenv",
        "boot_attempts",
        "factory_version",
        "reboot_action",
        "reboot_command",
        "poweroff_command",
        "health_check_command",
        "health_check_timeout_s",
        "fetch_networks",
    } == DEVICE_SETTINGS


DEVICE_CHANGES = [
    pytest.param({"trust_root": "/srv/foreign/root.json"}, "trust_root", id="trust-root"),
    pytest.param({"reboot_command": "touch /tmp/pwned"}, "reboot_command", id="reboot-command"),
    pytest.param({"reboot_action": "command"}, "reboot_action", id="reboot-action"),
    pytest.param({"poweroff_command": "sh -c x"}, "poweroff_command", id="poweroff-command"),
    pytest.param({"health_check_command": "true"}, "health_check_command", id="health-check"),
    pytest.param({"health_check_timeout_s": 3600}, "health_check_timeout_s", id="health-limit"),
    pytest.param({"slots": ["A:directory:/etc", "B:directory:/srv"]}, "slots", id="slots"),
    pytest.param({"bootloader": "grub"}, "bootloader", id="bootloader"),
    pytest.param({"grubenv": "/srv/grubenv"}, "grubenv", id="grubenv"),
    pytest.param({"product": "acme-box"}, "product", id="product"),
    pytest.param({"fetch_networks": ["0.0.0.0/0"]}, "fetch_networks", id="fetch-networks"),
    pytest.param({"boot_attempts": 10}, "boot_attempts", id="boot-attempts"),
    pytest.param({"factory_version": "9.9.9"}, "factory_version", id="factory-version"),
    pytest.param(
        {"auto_reboot": False, "trust_root": "/srv/foreign/root.json"},
        "trust_root",
        id="operator-setting-with-a-device-one",
    ),
]


@pytest.mark.parametrize(("changes", "named"), DEVICE_CHANGES)
async def test_set_config_refuses_what_the_device_is(
    service: Service, connect: ClientFactory, changes: dict[str, Any], named: str
) -> None:
    """An administrator's password is not enough to make the device trust another repository,
    run another command as root or empty another directory."""
    client = await connect(service, login=ADMIN)
    before, before_settings = await list_config(client), service.settings
    error = await refused(client, changes)
    assert error.code == "400"
    assert named in error.details
    assert "read-only" in error.details
    assert "configuration file" in error.details
    assert await list_config(client) == before
    assert service.settings == before_settings
    assert service.db.query("SELECT name FROM settings") == []


# -- set_config ------------------------------------------------------------------------------


async def test_set_one_setting(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    reply = await client.call("sys", "set_config", {"event_interval_s": 2.5})
    assert reply == {"result": "success"}
    config = await list_config(client)
    assert config == {**DEFAULTS, "event_interval_s": 2.5}


async def test_set_several_settings(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    changes: dict[str, Any] = {
        "auto_reboot": False,
        "auto_reboot_delay_s": 60,
        "update_server": "https://updates.example.com/repo/",
        "update_check_interval_s": 0,
        "lockout_loopback": True,
        "allow_downgrade": True,
        "max_upload_bytes": 4096,
    }
    reply = await client.call("sys", "set_config", changes)
    assert reply == {"result": "success"}
    assert await list_config(client) == {**DEFAULTS, **changes}

    # A later change leaves the earlier ones alone; an empty list and an empty URL are valid.
    reply = await client.call(
        "sys", "set_config", {"allow_downgrade": False, "update_server": "", "event_interval_s": 1}
    )
    assert reply == {"result": "success"}
    assert await list_config(client) == {
        **DEFAULTS,
        **changes,
        "allow_downgrade": False,
        "update_server": "",
        "event_interval_s": 1,
    }


async def test_set_config_boundary_values_are_accepted(
    service: Service, connect: ClientFactory
) -> None:
    client = await connect(service, login=ADMIN)
    changes = {"auto_reboot_delay_s": 0, "event_interval_s": 0.1, "update_check_interval_s": 0}
    assert await client.call("sys", "set_config", changes) == {"result": "success"}
    assert await list_config(client) == {**DEFAULTS, **changes}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        pytest.param({"event_interval_s": "5"}, "event_interval_s", id="number-as-string"),
        pytest.param({"event_interval_s": None}, "event_interval_s", id="number-as-null"),
        pytest.param({"auto_reboot": 1}, "auto_reboot", id="bool-as-number"),
        pytest.param({"auto_reboot": "true"}, "auto_reboot", id="bool-as-string"),
        pytest.param({"auto_reboot_delay_s": True}, "auto_reboot_delay_s", id="int-as-bool"),
        pytest.param({"auto_reboot_delay_s": 1.5}, "auto_reboot_delay_s", id="int-as-fraction"),
        pytest.param({"auto_reboot_delay_s": -1}, "auto_reboot_delay_s", id="below-range"),
        pytest.param({"event_interval_s": 0}, "event_interval_s", id="zero-interval"),
        pytest.param(
            {"update_check_interval_s": 31536001}, "update_check_interval_s", id="above-range"
        ),
        pytest.param({"max_upload_bytes": 0}, "max_upload_bytes", id="zero-upload-limit"),
        pytest.param({"no_such_setting": 1}, "no_such_setting", id="unknown"),
        pytest.param({"update_server": "ftp://x"}, "update_server", id="ftp-url"),
        pytest.param({"update_server": "updates.example.com"}, "update_server", id="no-scheme"),
        pytest.param(
            {"update_server": "https://user:pw@updates.example.com/"},
            "update_server",
            id="url-with-password",
        ),
        pytest.param(
            {"auto_reboot": False, "event_interval_s": "5"},
            "event_interval_s",
            id="valid-then-invalid",
        ),
        pytest.param(
            {"event_interval_s": 0, "auto_reboot": False},
            "event_interval_s",
            id="invalid-then-valid",
        ),
        pytest.param(
            {"auto_reboot": True, "no_such_setting": 1, "auto_reboot_delay_s": 5},
            "no_such_setting",
            id="unknown-among-valid",
        ),
    ],
)
async def test_invalid_setting_is_400_and_changes_nothing(
    service: Service, connect: ClientFactory, changes: dict[str, Any], named: str
) -> None:
    client = await connect(service, login=ADMIN)
    before = await list_config(client)
    before_settings = service.settings

    error = await refused(client, changes)
    assert error.code == "400"
    assert error.message == "Bad Request"
    assert named in error.details

    assert await list_config(client) == before
    assert service.settings == before_settings


async def test_set_config_with_nothing_is_400(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    error = await refused(client, {})
    assert error.code == "400"
    assert "setting" in error.details
    reply = await client.request("sys", "set_config")  # no "args" at all: the same as {}
    assert reply["namespace"] == "error"
    assert reply["args"]["code"] == "400"
    assert "setting" in reply["args"]["details"]
    assert await list_config(client) == DEFAULTS


async def test_non_admin_may_neither_list_nor_set(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=USER)
    for name, args in (("list_config", {}), ("set_config", {"auto_reboot": False})):
        with pytest.raises(ApiError) as caught:
            await client.call("sys", name, args)
        assert caught.value.code == "403"
        assert f"sys/{name}" in caught.value.details
    assert service.settings.auto_reboot is True


async def test_set_and_list_config_over_http(service: Service, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": "Basic " + b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()}

    async def post(call: str, args: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(args).encode() if args is not None else None
        async with http.post(api_url(service, call), data=data, headers=auth) as resp:
            envelope: dict[str, Any] = await resp.json()
            return resp.status, envelope

    status, envelope = await post("sys/set_config", {"auto_reboot_delay_s": 42})
    assert status == 200
    assert envelope["namespace"] == "response"
    assert envelope["args"] == {"result": "success"}

    status, envelope = await post("sys/set_config", {"auto_reboot": False, "event_interval_s": 0})
    assert status == 400
    assert envelope["namespace"] == "error"
    assert envelope["args"]["code"] == "400"
    assert "event_interval_s" in envelope["args"]["details"]

    status, envelope = await post("sys/set_config", {"reboot_command": "touch /tmp/pwned"})
    assert status == 400
    assert "read-only" in envelope["args"]["details"]

    status, envelope = await post("sys/set_config", None)
    assert status == 400
    assert envelope["args"]["code"] == "400"

    status, envelope = await post("sys/list_config", None)
    assert status == 200
    assert envelope["args"]["config"] == {**DEFAULTS, "auto_reboot_delay_s": 42}


async def test_changed_setting_takes_effect_at_once(
    service: Service, connect: ClientFactory, http: aiohttp.ClientSession
) -> None:
    client = await connect(service, login=ADMIN)
    assert await client.call("sys", "set_config", {"lockout_loopback": True}) == {
        "result": "success"
    }
    wrong = {"Authorization": "Basic " + b64encode(f"{ADMIN[0]}:nope".encode()).decode()}
    for _ in range(5):
        async with http.post(api_url(service, "sys/info"), headers=wrong) as resp:
            assert resp.status == 401
    right = {"Authorization": "Basic " + b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()}
    async with http.post(api_url(service, "sys/info"), headers=right) as resp:
        assert resp.status == 429


# -- persistence -----------------------------------------------------------------------------


async def test_settings_persist_across_a_restart(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service()
    state_dir = service.config.state_dir
    client = await connect(service, login=ADMIN)
    changes = {"auto_reboot": False, "update_check_interval_s": 60, "event_interval_s": 3}
    assert await client.call("sys", "set_config", changes) == {"result": "success"}
    assert await client.call("sys", "set_config", {"event_interval_s": 4}) == {"result": "success"}
    await service.stop()

    again = await start_service(state_dir=state_dir)
    assert again.system_id == service.system_id
    client = await connect(again, login=ADMIN)
    assert await list_config(client) == {**DEFAULTS, **changes, "event_interval_s": 4}


async def test_refused_change_is_not_stored(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service()
    state_dir = service.config.state_dir
    client = await connect(service, login=ADMIN)
    error = await refused(client, {"auto_reboot": False, "auto_reboot_delay_s": -1})
    assert error.code == "400"
    assert "auto_reboot_delay_s" in error.details
    await service.stop()

    again = await start_service(state_dir=state_dir)
    client = await connect(again, login=ADMIN)
    assert await list_config(client) == DEFAULTS


# -- the configuration file and flags --------------------------------------------------------


async def test_values_from_the_toml_file_appear_in_list_config(
    tmp_path: Path, start_from_file: FileServiceFactory, connect: ClientFactory
) -> None:
    config_file = tmp_path / "sysupd.toml"
    config_file.write_text(TOML_FILE, encoding="utf-8")
    service = await start_from_file(config_file, tmp_path / "state")
    client = await connect(service, login=ADMIN)
    assert await list_config(client) == {**DEFAULTS, **TOML_VALUES}


def test_load_config_reads_settings_and_service_keys(tmp_path: Path) -> None:
    config_file = tmp_path / "sysupd.toml"
    config_file.write_text(
        TOML_FILE + 'http_port = 8183\nlogin_timeout_s = 10\nkernel_cmdline = "/run/cmdline"\n',
        "utf-8",
    )
    config = load_config(config_file, state_dir=tmp_path / "state")
    assert config.state_dir == tmp_path / "state"
    assert config.http_port == 8183
    assert config.kernel_cmdline == "/run/cmdline"
    assert config.login_timeout_s == 10
    assert config.settings.product == "acme-box"
    assert config.settings.auto_reboot is False
    assert config.settings.event_interval_s == 5
    assert list(config.settings.fetch_networks) == TOML_VALUES["fetch_networks"]


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "sysupd.toml"
    config_file.write_text(TOML_FILE, encoding="utf-8")
    config = load_config(
        config_file, state_dir=tmp_path, overrides={"product": "from-flag", "ws_port": None}
    )
    assert config.settings.product == "from-flag"
    assert config.settings.auto_reboot is False
    assert config.ws_port == 5182


async def test_stored_value_wins_over_the_file_on_restart(
    tmp_path: Path, start_from_file: FileServiceFactory, connect: ClientFactory
) -> None:
    config_file = tmp_path / "sysupd.toml"
    state_dir = tmp_path / "state"
    config_file.write_text(TOML_FILE, encoding="utf-8")
    service = await start_from_file(config_file, state_dir)
    client = await connect(service, login=ADMIN)
    changes = {"event_interval_s": 7, "auto_reboot": True}
    assert await client.call("sys", "set_config", changes) == {"result": "success"}
    assert await list_config(client) == {**DEFAULTS, **TOML_VALUES, **changes}
    await service.stop()

    # The file changes too: stored settings keep their stored values, the others follow the file.
    config_file.write_text(
        TOML_FILE.replace('"acme-box"', '"acme-two"')
        .replace("event_interval_s = 5", "event_interval_s = 9")
        .replace("auto_reboot_delay_s = 30", "auto_reboot_delay_s = 45"),
        encoding="utf-8",
    )
    again = await start_from_file(config_file, state_dir)
    client = await connect(again, login=ADMIN)
    assert await list_config(client) == {
        **DEFAULTS,
        **TOML_VALUES,
        "product": "acme-two",
        "auto_reboot_delay_s": 45,
        **changes,
    }


async def test_overrides_appear_in_list_config(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    overrides = {"product": "acme-flag", "auto_reboot": False, "fetch_networks": ["10.0.0.0/8"]}
    service = await start_service(**overrides)
    client = await connect(service, login=ADMIN)
    assert await list_config(client) == {**DEFAULTS, **overrides}


async def test_invalid_override_raises_config_error(start_service: ServiceFactory) -> None:
    with pytest.raises(ConfigError, match="auto_reboot"):
        await start_service(auto_reboot="yes")
    with pytest.raises(ConfigError, match="no_such_key"):
        await start_service(no_such_key=1)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("bogus_key = 1\n", "bogus_key", id="unknown-key"),
        pytest.param('[server]\nproduct = "x"\n', "server", id="table"),
        pytest.param('auto_reboot = "yes"\n', "auto_reboot", id="bool-as-string"),
        pytest.param('event_interval_s = "5"\n', "event_interval_s", id="number-as-string"),
        pytest.param("auto_reboot_delay_s = 1.5\n", "auto_reboot_delay_s", id="int-as-float"),
        pytest.param('fetch_networks = "10.0.0.0/8"\n', "fetch_networks", id="list-as-string"),
        pytest.param('fetch_networks = ["not-a-net"]\n', "fetch_networks", id="not-a-network"),
        pytest.param("fetch_networks = [10]\n", "fetch_networks", id="list-of-numbers"),
        pytest.param('product = ["acme"]\n', "product", id="string-as-list"),
        pytest.param('product = ""\n', "product", id="empty-product"),
        pytest.param('product = "../etc"\n', "product", id="product-path"),
        pytest.param('reboot_command = "reboot\\u0000now"\n', "reboot_command", id="nul"),
        pytest.param('slots = ["A:tape:/x", "B:raw:/y"]\n', "slots", id="bad-slot-type"),
        pytest.param(
            'slots = ["A:directory:/s/a", "B:directory:/s/a/b"]\n', "slots", id="nested-slots"
        ),
        pytest.param(
            'slots = ["A:directory:/s/a", "B:directory:/s/a.delta-seed"]\n',
            "slots",
            id="slot-in-another-slots-seed",
        ),
        pytest.param(
            "update_server = 1979-05-27T07:32:00Z\n", "update_server", id="datetime-as-url"
        ),
        pytest.param("auto_reboot_delay_s = -1\n", "auto_reboot_delay_s", id="out-of-range"),
        pytest.param('reboot_action = "halt"\n', "reboot_action", id="bad-choice"),
        pytest.param('update_server = "ftp://x"\n', "update_server", id="bad-url"),
        pytest.param('ws_port = "5182"\n', "ws_port", id="port-as-string"),
        pytest.param("ws_port = 70000\n", "ws_port", id="port-out-of-range"),
        pytest.param("login_timeout_s = 0\n", "login_timeout_s", id="zero-timeout"),
        pytest.param('kernel_cmdline = ""\n', "kernel_cmdline", id="empty-cmdline"),
        pytest.param("kernel_cmdline = 1\n", "kernel_cmdline", id="cmdline-as-number"),
    ],
)
def test_bad_key_or_value_in_the_file_raises_config_error(
    tmp_path: Path, text: str, named: str
) -> None:
    config_file = tmp_path / "sysupd.toml"
    config_file.write_text("update_check_interval_s = 60\n" + text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, state_dir=tmp_path / "state")
    assert named in str(caught.value)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"product = \n", id="missing-value"),
        pytest.param(b'product = "a"\nproduct = "b"\n', id="duplicate-key"),
        pytest.param(b"= 1\n", id="missing-key"),
        pytest.param(b'product = "acme\n', id="unterminated-string"),
        pytest.param(b"product = \xff\xfe\n", id="not-utf8"),
    ],
)
def test_invalid_toml_raises_config_error(tmp_path: Path, content: bytes) -> None:
    config_file = tmp_path / "sysupd.toml"
    config_file.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, state_dir=tmp_path / "state")
    assert "sysupd.toml" in str(caught.value)


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml", state_dir=tmp_path / "state")
    assert "absent.toml" in str(caught.value)


async def test_a_device_setting_stored_by_an_older_version_is_dropped(
    tmp_path: Path, start_from_file: FileServiceFactory, connect: ClientFactory
) -> None:
    """A database from a version that let the API set the reboot command: the file wins, the
    stored value goes, and the log says so."""
    config_file = tmp_path / "sysupd.toml"
    state_dir = tmp_path / "state"
    config_file.write_text(TOML_FILE, encoding="utf-8")
    service = await start_from_file(config_file, state_dir)
    await service.stop()
    with sqlite3.connect(state_dir / "sysupd.db") as conn:  # as an older version stored it
        conn.execute(
            "INSERT INTO settings (name, value) VALUES ('reboot_command', '\"touch /x\"'), "
            "('event_interval_s', '7')"
        )
    conn.close()
    again = await start_from_file(config_file, state_dir)
    assert again.settings.reboot_command == "systemctl reboot"
    assert again.settings.event_interval_s == 7
    assert [tuple(r) for r in again.db.query("SELECT name FROM settings")] == [
        ("event_interval_s",)
    ]
    assert "dropping stored setting 'reboot_command'" in again.log.text()


async def test_a_trust_root_stored_by_an_older_version_is_adopted_not_lost(
    tmp_path: Path, start_from_file: FileServiceFactory
) -> None:
    """An older version kept trust_root in the database (the demo's first start did): after
    the upgrade the device still trusts that root, now from its trust store."""
    root = tmp_path / "vendor-root.json"
    root.write_bytes(b'{"signed": {"version": 1}, "signatures": []}')
    config_file = tmp_path / "sysupd.toml"
    state_dir = tmp_path / "state"
    config_file.write_text("auto_reboot = false\n", encoding="utf-8")
    service = await start_from_file(config_file, state_dir)
    await service.stop()
    trust = state_dir / "trust"
    for leftover in trust.glob("*"):
        leftover.unlink()
    with sqlite3.connect(state_dir / "sysupd.db") as conn:
        conn.execute(
            "INSERT INTO settings (name, value) VALUES ('trust_root', ?)", (json.dumps(str(root)),)
        )
    conn.close()
    again = await start_from_file(config_file, state_dir)
    assert (trust / "root.json").read_bytes() == root.read_bytes()
    assert "kept from before" in again.log.text()
    assert [tuple(r) for r in again.db.query("SELECT name FROM settings")] == []
