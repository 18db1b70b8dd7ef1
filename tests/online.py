"""An update server for the tests: a release repository published and served by real nginx."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.client import WsClient
from tests.conftest import wait_until
from tests.nginx import nginx_serving
from tests.releases import PRODUCT

__all__ = ["checked", "copy_published", "online_overrides", "serve_repo"]


@contextmanager
def serve_repo(repo: ReleaseRepository, work: Path, extra: str = "") -> Iterator[str]:
    """nginx serving only ``metadata/`` and ``targets/`` of ``repo`` (never its keys).

    ``extra``: more nginx directives for the ``server`` block (see ``nginx_serving``).
    """
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    for part in ("metadata", "targets"):
        link = www / part
        if not link.exists():
            link.symlink_to(repo.path / part)
    with nginx_serving(www, work / "nginx", extra) as url:
        yield url


def copy_published(repo: ReleaseRepository, dest: Path) -> Path:
    """A copy of what ``repo`` publishes now (``metadata/`` and ``targets/``, never its keys), as
    a mirror that stops following the repository would keep serving; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in ("metadata", "targets"):
        shutil.copytree(repo.path / part, dest / part, ignore=shutil.ignore_patterns(".*"))
    return dest


def online_overrides(repo: ReleaseRepository, server: str, **extra: Any) -> dict[str, Any]:
    """Settings of a device that trusts ``repo`` and checks ``server`` (only when asked)."""
    return {
        "product": PRODUCT,
        "trust_root": str(repo.path / "metadata" / "1.root.json"),
        "update_server": server,
        "update_check_interval_s": 0,
        "event_interval_s": 0.1,
        "auto_reboot": False,
        **extra,
    }


async def checked(client: WsClient, service: Service) -> dict[str, Any]:
    """``sys/update_check``, wait for it to end, then ``sys/updates_available``."""
    before = service.checks.last
    assert await client.call("sys", "update_check") == {
        "result": "success",
        "status": "starting check for updates",
    }
    await wait_until(lambda: service.checks.last is not before, 8, "the update check ends")
    return await client.call("sys", "updates_available")
