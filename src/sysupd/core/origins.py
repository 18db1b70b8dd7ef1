"""Which browser origins are the service's own: the rule behind refusing cross-site requests.

A browser attaches cached Basic credentials to requests that any page makes, and lets any page
open a WebSocket; both listeners therefore refuse requests whose ``Origin`` is another site's.
The service's own origins are the address the request was sent to (the ``Host`` header, so a
reverse proxy in front keeps working) and that host on any of the service's own listening
ports — so the web page served on the HTTP listener may also use the WebSocket listener.
Requests without an ``Origin`` (command-line tools, scripts) are not browsers' and pass.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["is_own_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_own_origin(origin: str, host_header: str, own_ports: Collection[int]) -> bool:
    """Whether ``origin`` (the header's value) is one of the service's own origins."""
    try:
        parts = urlsplit(origin)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        requested = urlsplit(f"//{host_header}")
        requested_host = requested.hostname
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return False
    if parts.netloc.lower() == host_header.lower():
        return True
    return parts.hostname == requested_host and port in own_ports
