"""The service's settings: one typed, frozen record, its registry and its validation.

Each field of ``Settings`` is a setting; its metadata gives the description and the check. The
same names are used on the wire (``sys/list_config``/``sys/set_config``), in the TOML file (flat at
its top level) and in the database. Validation is all-or-nothing: every change is checked before
any is applied.

Settings come in two kinds. Most are the operator's, changed over the API at run time. Those
marked ``device`` say what the device *is* — its product, the trust root, its slots and
bootloader, the commands it runs as root, the networks it fetches from: they are provisioned in
the configuration file by whoever installs the appliance and are read-only over the API, since an
administrator's password must not be enough to make the device trust another repository, run
another command or empty another directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sysupd.core.schema import is_json_type, json_type_name
from sysupd.core.versions import parse_version
from sysupd.errors import ConfigError

__all__ = [
    "DEVICE_SETTINGS",
    "SettingInfo",
    "Settings",
    "apply_changes",
    "describe",
    "refuse_device_settings",
    "settings_to_wire",
]

Check = Callable[[Any], str | None]

DEFAULT_FETCH_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)


def _range(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def _choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}"

    return check


def _product(value: Any) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value)
    return None if ok else "must be 1-64 letters, digits, '.', '_' or '-'"


def _http_url_or_empty(value: Any) -> str | None:
    if value == "":
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return "must be an http or https URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL, or empty"
    if parts.username or parts.password:
        return "must not carry a user name or password"
    return None


def _networks(value: Any) -> str | None:
    for item in value:
        if not isinstance(item, str):
            return "must be a list of network strings such as '10.0.0.0/8'"
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"has {item!r}, which is not a network such as '10.0.0.0/8'"
    return None


def _slots(value: Any) -> str | None:
    if not value:
        return None
    names: set[str] = set()
    for item in value:
        parts = item.split(":", 2) if isinstance(item, str) else []
        if len(parts) != 3 or not re.fullmatch(r"[A-Za-z0-9_]{1,16}", parts[0]) or not parts[2]:
            return f"has {item!r}; each slot is 'NAME:TYPE:PATH', e.g. 'A:raw:/dev/sda2'"
        if parts[1] not in ("directory", "raw"):
            return f"has {item!r}, whose type is not 'directory' or 'raw'"
        if parts[0] in names:
            return f"names slot {parts[0]!r} twice"
        names.add(parts[0])
    paths = [item.split(":", 2)[2].rstrip("/") for item in value]
    for path in paths:
        for other in paths:
            if other != path and (other.startswith(path + "/") or other == path + ".delta-seed"):
                return (
                    f"has {other!r} inside or beside {path!r}: slot paths must not nest, nor "
                    "be another slot's delta seed (PATH.delta-seed)"
                )
    return None if len(names) >= 2 else "needs at least two slots"


def _version(value: Any) -> str | None:
    try:
        parse_version(value)
    except ValueError as exc:
        return f"is not a version: {exc}"
    return None


def _no_nul(value: Any) -> str | None:
    return "must not contain NUL characters" if "\0" in value else None


def _setting(default: Any, doc: str, check: Check | None = None, *, device: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check, "device": device})


def _device(default: Any, doc: str, check: Check | None = None) -> Any:
    """A setting that says what the device is: provisioned in the configuration file only."""
    return _setting(default, doc, check, device=True)


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings: the operator's, changed over the API, and the device's, from the file."""

    product: str = _device(
        "sysupd-demo", "Product name; a release must name the same product.", _product
    )
    trust_root: str = _device(
        "", "Path of the release repository's root.json the device trusts.", _no_nul
    )
    update_server: str = _setting(
        "", "Base URL of the online release repository; empty for none.", _http_url_or_empty
    )
    delta_updates: bool = _setting(
        True,
        "Download only the chunks of a release this device does not hold, when the update "
        "server offers them; off: always the whole payload.",
    )
    delta_parallel: int = _setting(
        4, "Chunk requests at a time during a delta update.", _range(1, 32)
    )
    download_max_rate_bps: int = _setting(
        0,
        "Cap on the download rate from the update server, in bytes a second; 0 for none.",
        _range(0, 1 << 40),
    )
    update_check_interval_s: int = _setting(
        86400, "Seconds between automatic update checks; 0 turns them off.", _range(0, 31536000)
    )
    event_interval_s: float = _setting(
        5.0, "Seconds between sys/update_now progress events.", _range(0.1, 3600)
    )
    auto_reboot: bool = _setting(True, "Reboot by itself after a successful update.")
    auto_reboot_delay_s: int = _setting(
        10, "Seconds from a successful update to the automatic reboot.", _range(0, 86400)
    )
    fetch_networks: tuple[str, ...] = _device(
        DEFAULT_FETCH_NETWORKS, "Networks that fetch_url hosts must resolve into.", _networks
    )
    max_upload_bytes: int = _setting(
        8 * 1024**3, "Largest file accepted by /upload, in bytes.", _range(1, 2**50)
    )
    reboot_action: str = _device(
        "exec",
        "What a reboot does: exec (restart the service in place), command, or exit.",
        _choice("exec", "command", "exit"),
    )
    reboot_command: str = _device(
        "systemctl reboot", "Command run by the 'command' reboot action.", _no_nul
    )
    poweroff_command: str = _device(
        "systemctl poweroff", "Command run by the 'command' action for a poweroff.", _no_nul
    )
    lockout_loopback: bool = _setting(
        False, "Apply the failed-login lockout to loopback addresses too."
    )
    slots: tuple[str, ...] = _device(
        (),
        "Slots as 'NAME:TYPE:PATH' (TYPE directory or raw); empty for a directory pair A and B "
        "inside the state directory.",
        _slots,
    )
    slot_capacity_bytes: int = _device(
        0,
        "The most bytes a slot holds; a larger release is refused before anything changes. "
        "0: no limit beyond the device's own size.",
        _range(0, 2**62),
    )
    bootloader: str = _device(
        "file",
        "Where the boot choice is kept: file (sysupd chooses) or grub.",
        _choice("file", "grub"),
    )
    grubenv: str = _device(
        "/boot/grub/grubenv", "The grubenv used by the grub bootloader.", _no_nul
    )
    boot_attempts: int = _device(
        3, "Boots a new slot gets to pass its health check before it is abandoned.", _range(1, 10)
    )
    health_check_command: str = _device(
        "",
        "Command whose exit status 0 confirms a newly booted slot; empty: starting is enough.",
        _no_nul,
    )
    health_check_timeout_s: int = _device(
        120,
        "Seconds the health check may run; one that takes longer is stopped and counts as "
        "failed. Keep the unit's TimeoutStartSec above it.",
        _range(1, 3600),
    )
    allow_downgrade: bool = _setting(False, "Accept releases older than the installed floor.")
    factory_version: str = _device(
        "0.0.0", "Version of the first slot until an update replaces it.", _version
    )


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """A setting as listed for people: name, JSON type, default and description."""

    name: str
    kind: str
    default: Any
    doc: str
    device: bool
    """Provisioned in the configuration file; read-only over the API."""


_HINTS: dict[str, Any] = typing.get_type_hints(Settings)
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
DEVICE_SETTINGS = frozenset(name for name, f in _FIELDS.items() if f.metadata["device"])
"""The settings that say what the device is (see the module's text)."""


def describe() -> list[SettingInfo]:
    """Every setting, in declaration order."""
    return [
        SettingInfo(
            f.name,
            json_type_name(_json_kind(f.name)),
            _wire(f.default),
            f.metadata["doc"],
            f.metadata["device"],
        )
        for f in _FIELDS.values()
    ]


def refuse_device_settings(names: Iterable[str]) -> None:
    """Refuse a change over the API to any of the device's own settings.

    Raises:
        ConfigError: naming the first such setting and where it is set instead.
    """
    for name in names:
        if name in DEVICE_SETTINGS:
            raise ConfigError(
                f"setting {name!r} is read-only: it is part of what the device is, provisioned "
                "in the configuration file by whoever installs the appliance"
            )


def apply_changes(current: Settings, changes: Mapping[str, Any]) -> Settings:
    """Return ``current`` with ``changes`` applied, after checking every one of them.

    Raises:
        ConfigError: naming the first unknown setting or invalid value; nothing is applied.
    """
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        clean[name] = _validate(name, value)
    return dataclasses.replace(current, **clean)


def settings_to_wire(settings: Settings) -> dict[str, Any]:
    """The JSON form of every setting."""
    return {name: _wire(getattr(settings, name)) for name in _FIELDS}


def _validate(name: str, value: Any) -> Any:
    spec = _FIELDS.get(name)
    if spec is None:
        raise ConfigError(f"unknown setting {name!r}")
    kind = _json_kind(name)
    if not is_json_type(value, kind):
        raise ConfigError(
            f"setting {name!r} must be {json_type_name(kind)}, not {json_type_name(type(value))}"
        )
    check: Check | None = spec.metadata["check"]
    if check is not None and (problem := check(value)) is not None:
        raise ConfigError(f"setting {name!r} {problem}")
    if kind is list:
        return tuple(value)
    if kind is float:
        return float(value)
    return value


def _json_kind(name: str) -> type:
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return list
    if isinstance(hint, type):
        return hint
    raise TypeError(f"setting {name} has an unsupported type {hint!r}")  # pragma: no cover


def _wire(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
