"""The pure rule for which browser origins are the service's own."""

from __future__ import annotations

import pytest

from sysupd.core.origins import is_own_origin

PORTS = {5182, 5183, 5184, 5185}
NAMES = {"box", "localhost", "updates.lan", "*.corp.example"}


@pytest.mark.parametrize(
    ("origin", "host", "own"),
    [
        ("https://box:5185", "box:5185", True),
        ("http://box:5183", "box:5182", True),  # the page on the HTTP listener, WS listener
        ("https://box:5185", "box:5184", True),
        ("https://box", "box", True),  # behind a reverse proxy: the same address as requested
        ("http://BOX:5183", "box:5183", True),
        ("http://[::1]:5183", "[::1]:5182", True),
        ("http://evil.example", "box:5183", False),
        ("http://evil.example:5183", "box:5183", False),
        ("http://box:8080", "box:5183", False),  # another service on the same machine
        ("https://box", "box:5185", False),
        ("null", "box:5183", False),
        ("file://", "box:5183", False),
        ("ftp://box:5183", "box:5183", False),
        ("http://box:5183/path", "box:5183", False),
        ("http://box:99999", "box:5183", False),
        ("http://[bad", "box:5183", False),
        # DNS rebinding: the attacker's name, re-pointed at the device, matches its Host header.
        ("http://evil.example:5183", "evil.example:5183", False),
        ("http://evil.example", "evil.example", False),
        ("http://10.0.0.5:5183", "10.0.0.5:5183", True),  # an address names no one else's site
        ("http://10.0.0.5:5183", "10.0.0.5:5182", True),
        ("http://localhost:5183", "localhost:5182", True),
        ("https://updates.lan", "updates.lan", True),  # a configured name (a reverse proxy)
        ("https://UPDATES.LAN.", "updates.lan.", True),
        ("https://box.evil.example", "box.evil.example", False),
        ("https://dev1.corp.example", "dev1.corp.example", True),  # a wildcard certificate
        ("https://a.dev1.corp.example", "a.dev1.corp.example", False),  # one label deep only
        ("https://corp.example", "corp.example", False),
    ],
)
def test_own_origins(origin: str, host: str, own: bool) -> None:
    assert is_own_origin(origin, host, PORTS, NAMES) is own
