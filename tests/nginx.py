"""A real nginx serving a directory on a free loopback port, for the tests (``tools/nginx.py``
runs it); a missing nginx fails the test and names the package, rather than skip it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.programs import need
from tools.nginx import access_log
from tools.nginx import nginx_serving as _serving

__all__ = ["access_log", "nginx_serving"]


@contextmanager
def nginx_serving(root: Path, work: Path, extra: str = "") -> Iterator[str]:
    """nginx serving ``root``; yields its base URL (see ``tools.nginx.nginx_serving``)."""
    need("nginx")
    with _serving(root, work, extra) as url:
        yield url
