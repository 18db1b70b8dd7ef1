"""Where the service is: ``--server`` as a person types it, made into the URLs the client uses.

``http://HOST:PORT`` and ``https://HOST:PORT`` as given (80 and 443 when no port is given, as in
any URL); a bare ``HOST`` or ``HOST:PORT`` means https, on 5185 when no port is given, because a
password should not cross a network in clear text; but a bare ``HOST:5182`` or ``HOST:5183`` means
http, because those are the service's plain listeners and TLS there could only fail. Paths,
queries and credentials in the URL are refused rather than ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from sysupd.errors import ConfigError

__all__ = ["DEFAULT_SERVER", "Server", "parse_server"]

DEFAULT_SERVER = "http://localhost:5183"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TLS_PORT = 5185
_PLAIN_PORTS = frozenset({5182, 5183})
"""The service's plain ws and http listeners: a bare ``HOST:PORT`` on them means http."""


@dataclass(frozen=True, slots=True)
class Server:
    """A service's address."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted (https, wss)."""
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        """``host:port`` (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``https://host:port``: the key logins and pinned certificates are kept under."""
        return f"{self.scheme}://{self.netloc}"

    @property
    def websocket_url(self) -> str:
        """The WebSocket address on the same listener (``/websocket``)."""
        return f"{'wss' if self.tls else 'ws'}://{self.netloc}/websocket"

    @property
    def is_loopback(self) -> bool:
        """Whether the service is on this machine, so plain http crosses no network."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_server(text: str) -> Server:
    """The address in ``text``.

    Raises:
        ConfigError: not an http(s) URL or ``HOST[:PORT]``, or it carries a path or credentials.
    """
    value = text.strip()
    bare = "://" not in value
    try:
        parts = urlsplit(f"https://{value}" if bare else value)
        port = parts.port
        if bare and port in _PLAIN_PORTS:
            parts = urlsplit(f"http://{value}")
    except ValueError as exc:
        raise ConfigError(f"--server {text!r} is not a valid address: {exc}") from exc
    default_port = _TLS_PORT if bare else 0
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(
            f"--server {text!r} must be http://HOST:PORT or https://HOST:PORT (e.g. "
            f"https://192.168.1.20:5185)"
        )
    if parts.username or parts.password:
        raise ConfigError(f"--server {text!r} must not carry a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--server {text!r} must be only scheme, host and port, no path")
    return Server(
        parts.scheme, parts.hostname, port or default_port or _DEFAULT_PORTS[parts.scheme]
    )
