"""Online updates from a real static server (nginx): check, report, install end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory
from tests.offline import wait_final
from tests.online import checked, online_overrides, serve_repo
from tests.procs import free_port
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    repo = make_repo(tmp_path, "1.1.0")
    repo.publish()
    return repo


async def test_check_then_install_from_nginx(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url))
        admin = await connect(service, login=ADMIN)
        user = await connect(service, login=USER)
        assert (await user.call("sys", "updates_available"))["updates_available"] is False
        available = await checked(admin, service)
        assert available["updates_available"] is True
        assert available["version"] == "1.1.0"
        assert isinstance(available["size"], int)
        assert available["last_checked"]
        assert "Version 1.1.0 is available" in str(available["updates_info"])

        assert await admin.call("sys", "update_now", {}) == {
            "result": "success",
            "updates": "starting",
        }
        running, final = await wait_final(user)
        assert final["result"] == "success", final["details"]
        assert running[0]["update_running"] is True
    slot = service.config.state_dir / "slots" / "B" / "etc" / "version"
    assert slot.read_text() == "1.1.0\n"
    assert (await admin.call("sys", "update_status"))["reboot_required"] is True


async def test_nothing_newer(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url, factory_version="1.1.0"))
        admin = await connect(service, login=ADMIN)
        available = await checked(admin, service)
        assert available["updates_available"] is False
        assert "newest release" in str(available["updates_info"])
        assert "error" not in available
        reply = await admin.call("sys", "update_now", {})
        assert reply == {"result": "failure", "error": "No newer update is available"}


async def test_no_server_configured(service: Service, connect: ClientFactory) -> None:
    admin = await connect(service, login=ADMIN)
    assert await admin.call("sys", "update_now", {}) == {
        "result": "failure",
        "error": "No update server is configured",
    }


async def test_server_down_is_an_error_not_no_updates(
    repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    service = await start_service(**online_overrides(repo, server))
    admin = await connect(service, login=ADMIN)
    available = await checked(admin, service)
    assert available["updates_available"] is False
    assert available["error"]
    assert "failed" in str(available["updates_info"])
    reply = await admin.call("sys", "update_now", {})
    assert reply["result"] == "failure"
    assert "The update check failed" in reply["error"]
    assert service.engine().status().to_json()["next_boot"] == "A"


async def test_releases_for_another_product_are_passed_over_with_the_reason(
    tmp_path: Path, repo: ReleaseRepository, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    with serve_repo(repo, tmp_path / "server") as url:
        service = await start_service(**online_overrides(repo, url, product="another-box"))
        admin = await connect(service, login=ADMIN)
        available = await checked(admin, service)
    assert available["updates_available"] is False
    assert "product 'sysupd-demo'" in str(available["updates_info"])
    assert "this device is 'another-box'" in str(available["updates_info"])
