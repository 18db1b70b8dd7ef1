"""The service's configuration: one frozen object built once at start-up and passed down.

Order of precedence: built-in defaults, then the TOML file (flat at its top level, the same names
as on the wire), then command-line flags. Run-time settings (``Settings``) changed through the API
are stored in the database and win over the file on later starts; see ``store.settings``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sysupd.core.schema import is_json_type, json_type_name
from sysupd.core.settings import Settings, apply_changes
from sysupd.errors import ConfigError

__all__ = ["ServiceConfig", "load_config"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Everything the service needs to know at start-up."""

    state_dir: Path
    host: str = "0.0.0.0"  # noqa: S104 - an appliance serves its LAN; the contract's default
    """Address the TLS listeners (wss, https) bind."""
    plain_host: str = "127.0.0.1"
    """Address the plain listeners (ws, http) bind: loopback, so that no password crosses the
    network in clear text unless the operator opens them on purpose."""
    ws_port: int = 5182
    http_port: int = 5183
    wss_port: int = 5184
    https_port: int = 5185
    tls: bool = True
    """Serve wss and https; false turns the TLS listeners off."""
    tls_cert_file: str = ""
    """A certificate (PEM) to serve; empty: the one made beside the state at the first start."""
    tls_key_file: str = ""
    server_names: tuple[str, ...] = ()
    """DNS names the device is reached by in a browser, besides its own host names, its
    certificate's names and IP addresses (a page from any other name is another site's)."""
    max_connections: int = 0
    """Connections held at once on all listeners; 0: the descriptor limit less a reserve."""
    max_connections_per_address: int = 0
    """Connections held at once from one address; 0: a quarter of ``max_connections``."""
    idle_timeout_s: float = 15.0
    """Longest a connection may take to send a request's headers, from its start or the end
    of its previous request (idle, slow, stalled in the TLS handshake, or kept alive)."""
    max_frame_bytes: int = 1 * MiB
    login_timeout_s: float = 30.0
    token_ttl_s: float = 900.0
    login_max_failures: int = 5
    login_window_s: float = 600.0
    lockout_s: float = 3600.0
    session_queue_frames: int = 1024
    """Frames a session may have waiting to be sent before it is judged stuck and closed."""
    send_timeout_s: float = 30.0
    """Seconds a socket may accept nothing before it is judged stuck and closed."""
    fetch_deadline_s: float = 3600.0
    """Longest a fetch_url download may take in all."""
    fetch_stall_s: float = 30.0
    """A fetch_url download that gets (almost) nothing for this long has stalled."""
    upload_idle_s: float = 60.0
    """A ``POST /upload`` body that sends nothing for this long is dropped like one that broke
    off (its temp file removed, its credentials handed back for a retry)."""
    log_max_bytes: int = 1 * MiB
    kernel_cmdline: str = "/proc/cmdline"
    """Where a firmware bootloader's choice is read (``sysupd.slot=``): the kernel's command
    line, or a file standing in for it where ``/proc`` shows another one (a container, a test)."""
    kdf_time_cost: int = 3
    kdf_memory_kib: int = 65536
    kdf_parallelism: int = 4
    settings: Settings = field(default_factory=Settings)
    """The settings as the file gives them; the database may hold newer values."""

    @property
    def tls_dir(self) -> Path:
        """Where the generated certificate and key are kept."""
        return self.state_dir / "tls"

    @property
    def db_path(self) -> Path:
        """The SQLite database inside the state directory."""
        return self.state_dir / "sysupd.db"

    @property
    def log_path(self) -> Path:
        """The service log inside the state directory."""
        return self.state_dir / "log" / "sysupd.log"


_HINTS: dict[str, Any] = typing.get_type_hints(ServiceConfig)
_SERVICE_FIELDS = {f.name for f in dataclasses.fields(ServiceConfig)} - {"settings", "state_dir"}
_SETTING_FIELDS = {f.name for f in dataclasses.fields(Settings)}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServiceConfig)}
_ZERO_MEANS_DERIVED = frozenset({"max_connections", "max_connections_per_address"})


def load_config(
    config_file: Path | None = None,
    *,
    state_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Build the configuration from defaults, ``config_file`` and ``overrides`` (flags).

    Raises:
        ConfigError: the file cannot be read or parsed, or names an unknown or invalid setting.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_read_toml(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if state_dir is not None:
        values["state_dir"] = str(state_dir)
    return build_config(values)


def build_config(values: Mapping[str, Any]) -> ServiceConfig:
    """Build the configuration from one flat mapping of names to values.

    Raises:
        ConfigError: naming the first unknown or invalid key.
    """
    service: dict[str, Any] = {}
    setting_changes: dict[str, Any] = {}
    for name, value in values.items():
        if name == "state_dir":
            if not isinstance(value, str | Path) or not str(value):
                raise ConfigError("'state_dir' must be a non-empty path")
            service["state_dir"] = Path(value)
        elif name in _SETTING_FIELDS:
            setting_changes[name] = value
        elif name in _SERVICE_FIELDS:
            service[name] = _check_service_value(name, value)
        else:
            raise ConfigError(f"unknown configuration key {name!r}")
    service.setdefault("state_dir", Path("sysupd-state"))
    if bool(service.get("tls_cert_file")) != bool(service.get("tls_key_file")):
        raise ConfigError("TLS needs both 'tls_cert_file' and 'tls_key_file'")
    _check_ports_distinct(service)
    settings = apply_changes(Settings(), setting_changes)
    config = ServiceConfig(settings=settings, **service)
    if config.kdf_memory_kib < 8 * config.kdf_parallelism:
        raise ConfigError("'kdf_memory_kib' must be at least 8 times 'kdf_parallelism'")
    return config


def _check_ports_distinct(service: Mapping[str, Any]) -> None:
    """Each listener needs a port of its own (0 lets the kernel choose, so it never clashes)."""
    names = ["ws_port", "http_port"]
    if service.get("tls", True):
        names += ["wss_port", "https_port"]
    taken: dict[int, str] = {}
    for name in names:
        port = service.get(name, _DEFAULTS[name])
        if port and port in taken:
            raise ConfigError(
                f"{taken[port]!r} and {name!r} are both {port}; each listener needs its own port"
            )
        taken[port] = name


def _check_service_value(name: str, value: Any) -> Any:
    if name == "kernel_cmdline":
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError("'kernel_cmdline' must be a non-empty path")
        return value
    if name == "server_names":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and v.strip() for v in value
        ):
            raise ConfigError("'server_names' must be a list of host names")
        return tuple(value)
    kind = _HINTS[name]
    if not is_json_type(value, kind):
        raise ConfigError(
            f"{name!r} must be {json_type_name(kind)}, not {json_type_name(type(value))}"
        )
    if name.endswith("_port") and not 0 <= value <= 65535:
        raise ConfigError(f"{name!r} must be between 0 and 65535")
    derived = name in _ZERO_MEANS_DERIVED
    if kind in (int, float) and not name.endswith("_port") and value < (0 if derived else 1e-9):
        raise ConfigError(f"{name!r} must be {'0 or more' if derived else 'greater than 0'}")
    return float(value) if kind is float else value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
