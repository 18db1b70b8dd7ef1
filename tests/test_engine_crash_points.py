"""The engine at the instants an install can be cut short, and in the boot situations that must
never lose the known-good slot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sysupd.boot.adapter import MemoryBootloader
from sysupd.engine.engine import Engine
from sysupd.engine.state import JobRecord, Outcome
from sysupd.errors import InstallError, VerificationError
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.engines import booted_engine, bundle_file, make_engine
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0", "1.2.0")


def test_crash_after_the_switch_settles_as_installed(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    engine = booted_engine(state, repo)
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    # The power fails after the switch, before the final bookkeeping: the job is still recorded.
    record = engine.state_file.load()
    engine.state_file.save(
        dataclasses.replace(record, job=JobRecord("B", "1.1.0", "x", "t"), last_result=None)
    )
    rebooted = make_engine(state, repo)
    report = rebooted.start()
    assert (report.slot, report.version, report.interrupted) == ("B", "1.1.0", None)
    result = rebooted.confirm(False, "broken")
    assert result is not None
    assert result.result == "rolled back"  # the new slot was still on trial
    assert make_engine(state, repo).start().slot == "A"


def test_crash_before_the_switch_settles_as_interrupted(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    engine = booted_engine(state, repo)
    env = engine.bootloader.load().begin_install("B")
    engine.bootloader.save(env)
    record = engine.state_file.load()
    engine.state_file.save(dataclasses.replace(record, job=JobRecord("B", "1.1.0", "x", "t")))
    report = make_engine(state, repo).start()
    assert report.slot == "A"
    assert report.interrupted is not None
    status = make_engine(state, repo).status().to_json()
    assert status["slots"]["B"]["version"] is None
    assert status["trial"] is None
    recorded = make_engine(state, repo).state_file.load().last_result
    assert recorded is not None
    assert recorded.result is Outcome.INTERRUPTED  # typed again when read back
    assert status["last_result"]["result"] == "interrupted"  # the wire's word


def test_no_install_while_the_booted_slot_is_on_trial(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    booted_engine(state, repo).install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    trial = make_engine(state, repo)
    assert trial.start().slot == "B"
    with pytest.raises(InstallError, match="still on trial"):
        trial.install(BundleFile(bundle_file(repo, tmp_path, "1.2.0")))
    assert trial.status().to_json()["slots"]["A"]["bootable"] is True


def test_the_last_bootable_slot_is_never_rejected(tmp_path: Path, repo: ReleaseRepository) -> None:
    state = tmp_path / "state"
    engine = booted_engine(state, repo)
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    env = engine.bootloader.load()
    engine.bootloader.save(env.reject("A"))  # the old slot got lost meanwhile
    trial = make_engine(state, repo)
    assert trial.start().slot == "B"
    assert trial.confirm(False, "flaky") is None
    assert make_engine(state, repo).start().slot == "B"


def test_failed_reinstall_clears_reboot_required(tmp_path: Path, repo: ReleaseRepository) -> None:
    state = tmp_path / "state"
    engine = booted_engine(state, repo)
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    bad = tmp_path / "bad.bundle"
    data = bytearray(bundle_file(repo, tmp_path, "1.2.0").read_bytes())
    data[-10] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        engine.install(BundleFile(bad))
    status = engine.status().to_json()
    assert status["trial"] is None
    assert status["slots"]["B"]["version"] is None
    assert status["next_boot"] == "A"


def test_confirmed_slot_that_stops_coming_up_is_reported_as_a_rollback(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    booted_engine(state, repo).install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    good = make_engine(state, repo)
    good.start()
    good.confirm(True, "")
    for _ in range(3):  # later starts that crash before their health check
        assert make_engine(state, repo).start().slot == "B"
    report = make_engine(state, repo).start()
    assert report.slot == "A"
    assert report.rolled_back is not None
    assert "did not come up" in report.rolled_back


def _firmware(state: Path, repo: ReleaseRepository, booted: str) -> tuple[Engine, MemoryBootloader]:
    """An engine whose boot loader is a firmware-chosen one (as grub is), in memory."""
    firmware = MemoryBootloader(("A", "B"), booted=booted)
    return make_engine(state, repo, boot_twin=firmware), firmware


def test_restart_before_the_reboot_is_not_a_rollback(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    engine, firmware = _firmware(state, repo, "A")
    engine.start()
    engine.confirm(True, "")
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    # The service restarts; the machine has not rebooted.
    restarted = make_engine(state, repo, boot_twin=firmware)
    report = restarted.start()
    assert (report.slot, report.rolled_back) == ("A", None)
    assert restarted.status().to_json()["trial"] == "B"


def test_install_goes_to_the_slot_the_firmware_did_not_boot(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    engine, firmware = _firmware(state, repo, "A")
    engine.start()
    engine.confirm(True, "")
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    # The machine reboots into B and confirms it; `sysupd install` then runs before the
    # service recorded the new boot.
    firmware.env = firmware.load().confirm("B")
    firmware.booted = "B"
    record = engine.state_file.load()
    engine.state_file.save(dataclasses.replace(record, trial=None))
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.2.0")))
    assert (state / "slots" / "A" / "etc" / "version").read_text() == "1.2.0\n"
    assert (state / "slots" / "B" / "etc" / "version").read_text() == "1.1.0\n"


def test_slot_that_never_came_up_is_marked_bad_and_reported_once(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """Found on the appliance's real boots (issue 12, scenario 3): after GRUB used up B's three
    attempts and booted A, the grubenv still had B good and first in ORDER, and every later
    start of the service reported the same rollback again, as new."""
    state = tmp_path / "state"
    engine, firmware = _firmware(state, repo, "A")
    engine.start()
    engine.confirm(True, "")
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    env = firmware.load()
    for _ in range(3):  # GRUB counts B's attempts; each boot panics before the service runs
        env = env.choose_boot(3).env
    firmware.env = env.choose_boot(3).env  # the fourth power-on: B is out of attempts, A boots
    assert firmware.env.order == ("B", "A")
    report = make_engine(state, repo, boot_twin=firmware).start()
    assert report.slot == "A"
    assert report.rolled_back is not None
    assert "slot B (1.1.0) did not come up within 3 boot attempts" in report.rolled_back
    assert firmware.env.order == ("A", "B")
    assert not firmware.env.slots["B"].ok
    engine = make_engine(state, repo, boot_twin=firmware)
    engine.confirm(True, "")
    status = engine.status().to_json()
    assert status["slots"]["B"]["bootable"] is False
    assert status["next_boot"] == "A"
    said = status["last_result"]
    assert said["result"] == "rolled back"
    again = make_engine(state, repo, boot_twin=firmware)  # the service restarts, or a reboot
    assert again.start().rolled_back is None
    assert again.status().to_json()["last_result"] == said  # still said, not said anew
