"""Which browser origins are the service's own: the rule behind refusing cross-site requests.

A browser attaches cached Basic credentials to requests that any page makes, and lets any page
open a WebSocket; both listeners therefore refuse requests whose ``Origin`` is another site's.
The service's own origins are the address the request was sent to (the ``Host`` header, so a
reverse proxy in front keeps working) and that host on any of the service's own listening
ports — so the web page served on the HTTP listener may also use the WebSocket listener.

The ``Host`` header alone is not enough: a page of ``evil.example`` whose name the attacker
re-points at the device (DNS rebinding) sends ``Origin: http://evil.example`` with
``Host: evil.example``, a perfect match. So the origin's host must also be one the device is
known by: an IP address, ``localhost``, the machine's own names, its certificate's names, or a
name configured for it (``server_names``, for a reverse proxy or a DNS name).

Requests without an ``Origin`` (command-line tools, scripts) are not browsers' and pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["is_own_origin", "normalize_name"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_own_origin(
    origin: str, host_header: str, own_ports: Collection[int], known_names: Collection[str]
) -> bool:
    """Whether ``origin`` (the header's value) is one of the service's own origins;
    ``known_names`` are normalized (``normalize_name``) DNS names the device answers to."""
    try:
        parts = urlsplit(origin)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        requested = urlsplit(f"//{host_header}")
        requested_host = requested.hostname
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return False
    if not _is_address(parts.hostname) and not _known(normalize_name(parts.hostname), known_names):
        return False
    if parts.netloc.lower() == host_header.lower():
        return True
    return parts.hostname == requested_host and port in own_ports


def normalize_name(name: str) -> str:
    """A DNS name as compared: lower case, without the root's trailing dot."""
    return name.lower().rstrip(".")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _known(name: str, known_names: Collection[str]) -> bool:
    """``name`` is known, as itself or under a certificate's ``*.`` name (one label deep)."""
    if name in known_names:
        return True
    _, dot, parent = name.partition(".")
    return bool(dot and parent) and f"*.{parent}" in known_names
