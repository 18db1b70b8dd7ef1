"""The device's trust: adopted once from the provisioned trust_root, changed only by signed root
rotation, and kept with the boot switch even when the process is killed right at it (issue 9,
findings 2 and 5)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from sysupd.core.bootenv import BootEnv
from sysupd.errors import VerificationError
from sysupd.release.repository import ReleaseRepository
from tests.engines import booted_engine, bundle_file, make_engine
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0", "1.2.0")


def _versions(state: Path) -> dict[str, int] | None:
    path = state / "trust" / "versions.json"
    return json.loads(path.read_bytes()) if path.exists() else None


def _published(repo: ReleaseRepository) -> dict[str, int]:
    versions = repo.metadata_versions()
    return {"targets": versions["targets"], "releases": versions["releases"]}


class _KillAtTheSwitch:
    """The real file bootloader, with the power cut just before or just after it records the
    switch to the new slot (an I/O boundary's twin: the save itself is the real one)."""

    def __init__(self, real: object, after: bool) -> None:
        self._real = real
        self._after = after
        self.name = real.name  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def save(self, env: BootEnv) -> None:
        switching = env.order[0] == "B" and env.slots["B"].ok
        if switching and not self._after:
            os.kill(os.getpid(), signal.SIGKILL)
        self._real.save(env)  # type: ignore[attr-defined]
        if switching and self._after:
            os.kill(os.getpid(), signal.SIGKILL)


def _install_and_die(state: str, repo_path: str, bundle: str, after: bool) -> None:
    """In a child process: install ``bundle`` and be killed at the switch."""
    engine = make_engine(Path(state), ReleaseRepository.open(Path(repo_path)))
    engine.bootloader = _KillAtTheSwitch(engine.bootloader, after)  # type: ignore[assignment]
    engine.install_bundle(Path(bundle))


def _killed_install(state: Path, repo: ReleaseRepository, bundle: Path, *, after: bool) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=_install_and_die, args=(str(state), str(repo.path), str(bundle), after)
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL


def test_a_kill_right_after_the_switch_still_advances_the_trust(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    booted_engine(state, repo)
    assert _versions(state) is None
    bundle = bundle_file(repo, tmp_path, "1.2.0")
    _killed_install(state, repo, bundle, after=True)
    assert (state / "trust" / "pending.json").exists()  # killed before the commit

    report = make_engine(state, repo).start()  # the reboot into the new slot
    assert (report.slot, report.version) == ("B", "1.2.0")
    assert _versions(state) is not None
    assert _versions(state) == {
        "targets": repo.metadata_versions()["targets"],
        "releases": repo.metadata_versions()["releases"],
    }
    assert not (state / "trust" / "pending.json").exists()


def test_a_kill_right_before_the_switch_keeps_the_old_trust(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    booted_engine(state, repo)
    _killed_install(state, repo, bundle_file(repo, tmp_path, "1.2.0"), after=False)
    assert (state / "trust" / "pending.json").exists()

    report = make_engine(state, repo).start()
    assert report.slot == "A"
    assert report.interrupted is not None
    assert _versions(state) is None
    assert not (state / "trust" / "pending.json").exists()


def test_the_trust_after_a_clean_install_is_committed_with_nothing_pending(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    state = tmp_path / "state"
    engine = booted_engine(state, repo)
    engine.install_bundle(bundle_file(repo, tmp_path, "1.2.0"))
    assert _versions(state) == {
        "targets": repo.metadata_versions()["targets"],
        "releases": repo.metadata_versions()["releases"],
    }
    assert not (state / "trust" / "pending.json").exists()


def test_the_provisioned_root_is_adopted_once_and_a_new_file_setting_is_ignored(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """Pointing trust_root at a foreign repository's root after the first start changes
    nothing: that repository's bundles stay refused, and the start says why."""
    state = tmp_path / "state"
    booted_engine(state, repo)
    adopted = (state / "trust" / "root.json").read_bytes()
    assert adopted == (repo.path / "metadata" / "1.root.json").read_bytes()

    foreign = make_repo(tmp_path / "foreign", "9.0.0")
    foreign_root = str(foreign.path / "metadata" / "1.root.json")
    engine = make_engine(state, repo, trust_root=foreign_root)
    report = engine.start()
    assert report.trust_warning is not None
    assert foreign_root in report.trust_warning
    assert "root rotation" in report.trust_warning
    with pytest.raises(VerificationError):
        engine.install_bundle(bundle_file(foreign, tmp_path, "9.0.0"))
    assert (state / "trust" / "root.json").read_bytes() == adopted
    assert make_engine(state, repo).status()["slots"]["B"]["version"] is None


class _FillTheDiskAtTheSwitch:
    """The real file bootloader; right after it records the switch, the disk fills up (another
    process's log, say), so the trust commit that follows meets a real ENOSPC."""

    def __init__(self, real: object, disk: Path) -> None:
        self._real = real
        self._disk = disk
        self.name = real.name  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def save(self, env: BootEnv) -> None:
        self._real.save(env)  # type: ignore[attr-defined]
        if env.order[0] == "B" and env.slots["B"].ok:
            with contextlib.suppress(OSError), (self._disk / "filler").open("ab") as out:
                while True:
                    out.write(b"\0" * 4096)
                    out.flush()


def test_a_commit_that_fails_after_the_switch_is_redone_at_the_next_start(
    tmp_path: Path, repo: ReleaseRepository, small_disk: Path
) -> None:
    """The disk is full between the switch and the trust commit: the install is done (the new
    slot boots next), and the next start keeps its trust."""
    state = small_disk / "state"
    engine = booted_engine(state, repo)
    engine.bootloader = _FillTheDiskAtTheSwitch(engine.bootloader, small_disk)  # type: ignore[assignment]
    lines: list[str] = []
    bundle = bundle_file(repo, tmp_path, "1.2.0")
    # The bookkeeping after the switch cannot be written either, so the call fails; what matters
    # is the next start.
    with contextlib.suppress(OSError):
        engine.install_bundle(bundle, log=lines.append)
    assert any("kept at the next start" in line for line in lines), lines
    assert (state / "trust" / "pending.json").exists()
    assert _versions(state) is None

    (small_disk / "filler").unlink()
    report = make_engine(state, repo).start()
    assert (report.slot, report.version) == ("B", "1.2.0")
    assert _versions(state) == _published(repo)
    assert not (state / "trust" / "pending.json").exists()
    assert make_engine(state, repo).status()["last_result"]["result"] == "installed"
