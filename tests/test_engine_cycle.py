"""The whole update cycle on the engine: install, boot on trial, confirm — or roll back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sysupd.engine.engine import Engine
from sysupd.engine.lock import UpdateLock
from sysupd.errors import UpdateBusy
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.engines import make_engine, snapshot_tree
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0", "1.2.0")


@pytest.fixture
def bundle(repo: ReleaseRepository, tmp_path: Path) -> Path:
    out = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", out)
    return out


def _factory(state: Path, repo: ReleaseRepository) -> Engine:
    engine = make_engine(state, repo)
    report = engine.start()
    assert (report.slot, report.version) == ("A", "0.0.0")
    engine.confirm(True, "")
    (state / "slots" / "A").mkdir(parents=True, exist_ok=True)
    (state / "slots" / "A" / "running-system").write_text("factory\n")
    return engine


def test_install_boot_confirm(tmp_path: Path, repo: ReleaseRepository, bundle: Path) -> None:
    state = tmp_path / "state"
    engine = _factory(state, repo)
    lines: list[str] = []
    progress: list[int] = []
    manifest = engine.install(
        BundleFile(bundle),
        log=lines.append,
        progress=lambda _stage, done, _total: progress.append(done),
    )
    assert str(manifest.version) == "1.1.0"
    assert (state / "slots" / "B" / "etc" / "version").read_text() == "1.1.0\n"
    assert snapshot_tree(state / "slots" / "B") == snapshot_tree(tmp_path / "tree-1.1.0")
    assert progress[-1] == manifest.length
    assert any("signed metadata of release 1.1.0" in line for line in lines)
    assert any(re.search(r"\((\d|\.)+ (bytes|KiB|MiB)/s\)", line) for line in lines)
    status = engine.status().to_json()
    assert status["next_boot"] == "B"
    assert status["trial"] == "B"
    assert status["last_result"]["result"] == "installed"

    rebooted = make_engine(state, repo)
    report = rebooted.start()
    assert (report.slot, report.version) == ("B", "1.1.0")
    result = rebooted.confirm(True, "")
    assert result is not None
    assert result.result == "success"
    status = rebooted.status().to_json()
    assert status["floor"] == "1.1.0"
    assert status["booted"] == "B"
    assert status["slots"]["B"]["version"] == "1.1.0"


def test_failed_health_check_rolls_back(
    tmp_path: Path, repo: ReleaseRepository, bundle: Path
) -> None:
    state = tmp_path / "state"
    _factory(state, repo).install(BundleFile(bundle))
    trial = make_engine(state, repo)
    assert trial.start().slot == "B"
    result = trial.confirm(False, "exit status 3")
    assert result is not None
    assert result.result == "rolled back"
    assert "failed its health check: exit status 3" in result.detail
    back = make_engine(state, repo)
    report = back.start()
    assert (report.slot, report.version) == ("A", "0.0.0")
    back.confirm(True, "")
    status = back.status().to_json()
    assert status["last_result"]["result"] == "rolled back"
    assert status["slots"]["B"]["bootable"] is False
    assert (state / "slots" / "A" / "running-system").read_text() == "factory\n"


def test_slot_that_never_comes_up_is_abandoned(
    tmp_path: Path, repo: ReleaseRepository, bundle: Path
) -> None:
    state = tmp_path / "state"
    _factory(state, repo).install(BundleFile(bundle))
    for _ in range(3):  # boots that crash before the health check
        assert make_engine(state, repo).start().slot == "B"
    report = make_engine(state, repo).start()
    assert report.slot == "A"
    assert report.rolled_back is not None
    assert "did not come up within 3 boot attempts" in report.rolled_back


def test_one_update_at_a_time(tmp_path: Path, repo: ReleaseRepository, bundle: Path) -> None:
    state = tmp_path / "state"
    engine = _factory(state, repo)
    with UpdateLock(state / "update.lock"), pytest.raises(UpdateBusy, match="already running"):
        engine.install(BundleFile(bundle))
    assert engine.install(BundleFile(bundle)).version


def test_next_update_after_a_good_one(tmp_path: Path, repo: ReleaseRepository) -> None:
    state = tmp_path / "state"
    first = tmp_path / "a.bundle"
    second = tmp_path / "b.bundle"
    repo.write_bundle("1.1.0", first)
    repo.write_bundle("1.2.0", second)
    _factory(state, repo).install(BundleFile(first))
    booted = make_engine(state, repo)
    booted.start()
    booted.confirm(True, "")
    booted.install(BundleFile(second))
    assert (state / "slots" / "A" / "etc" / "version").read_text() == "1.2.0\n"
    final = make_engine(state, repo)
    assert (final.start().slot, final.confirm(True, "") is not None) == ("A", True)
    assert final.status().to_json()["floor"] == "1.2.0"


def test_established_slot_is_kept_when_its_check_fails(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    _factory(state, repo)
    again = make_engine(state, repo)
    assert again.start().slot == "A"
    assert again.confirm(False, "exit status 1") is None
    status = again.status().to_json()
    assert status["slots"]["A"]["bootable"] is True
    assert status["next_boot"] == "A"


def test_a_restart_before_the_reboot_keeps_the_new_slot_on_trial(
    tmp_path: Path, repo: ReleaseRepository, bundle: Path
) -> None:
    """With a firmware bootloader the service may restart on the old slot after an install (no
    reboot yet): the old slot's health check must not settle the new slot's trial."""
    state, cmdline = tmp_path / "state", tmp_path / "cmdline"
    grubenv = tmp_path / "grubenv"
    changes: dict[str, Any] = {"bootloader": "grub", "grubenv": str(grubenv)}
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda2 sysupd.slot=A\n")

    def engine() -> Engine:
        settings = make_engine(state, repo, **changes).settings
        return Engine.from_settings(
            state, settings, make_engine(state, repo).clock, cmdline=cmdline
        )

    engine().start()
    engine().confirm(True, "")
    engine().install(BundleFile(bundle))
    assert engine().status().to_json()["trial"] == "B"
    engine().start()  # the service restarts, still on slot A
    assert engine().confirm(True, "") is None
    assert engine().status().to_json()["trial"] == "B", "B still waits for its first boot"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda3 sysupd.slot=B\n")
    engine().start()
    result = engine().confirm(True, "")
    assert result is not None
    assert result.result == "success"
    assert engine().status().to_json()["trial"] is None
