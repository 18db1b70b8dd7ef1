"""The device's trust: adopted once from the provisioned trust_root, changed only by signed root
rotation, and kept with the boot switch even when the process is killed right at it (issue 9,
findings 2 and 5)."""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from sysupd.boot.adapter import make_bootloader
from sysupd.core.bootenv import BootEnv
from sysupd.engine.trust import TrustStore, TrustUpdate
from sysupd.errors import VerificationError
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
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
    return {role: version for role, version in versions.items() if role != "root"}


class _AroundTheSwitch:
    """The real file bootloader, with something done around its saving the switch to slot B
    (an I/O boundary's twin: the save itself is the real one)."""

    def __init__(self, state: Path) -> None:
        self._real = make_bootloader("file", state, ("A", "B"), None)
        self.name = self._real.name
        self.slot_names = self._real.slot_names

    def load(self, *, missing_ok: bool = True) -> BootEnv:
        return self._real.load(missing_ok=missing_ok)

    def recreate(self, env: BootEnv) -> str | None:
        return self._real.recreate(env)

    def booted_slot(self) -> str | None:
        return self._real.booted_slot()

    def save(self, env: BootEnv) -> None:
        switching = env.order[0] == "B" and env.slots["B"].ok
        if switching:
            self.before()
        self._real.save(env)
        if switching:
            self.after()

    def before(self) -> None:
        """Just before the switch is saved."""

    def after(self) -> None:
        """Just after the switch is saved."""


class _KillAtTheSwitch(_AroundTheSwitch):
    """The power cut just before or just after the switch is saved."""

    def __init__(self, state: Path, after: bool) -> None:
        super().__init__(state)
        self._after = after

    def before(self) -> None:
        if not self._after:
            os.kill(os.getpid(), signal.SIGKILL)

    def after(self) -> None:
        if self._after:
            os.kill(os.getpid(), signal.SIGKILL)


def _install_and_die(state: str, repo_path: str, bundle: str, after: bool) -> None:
    """In a child process: install ``bundle`` and be killed at the switch."""
    firmware = _KillAtTheSwitch(Path(state), after)
    engine = make_engine(Path(state), ReleaseRepository.open(Path(repo_path)), boot_twin=firmware)
    engine.install(BundleFile(Path(bundle)))


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
        role: version for role, version in repo.metadata_versions().items() if role != "root"
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
    engine.install(BundleFile(bundle_file(repo, tmp_path, "1.2.0")))
    assert _versions(state) == {
        role: version for role, version in repo.metadata_versions().items() if role != "root"
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
        engine.install(BundleFile(bundle_file(foreign, tmp_path, "9.0.0")))
    assert (state / "trust" / "root.json").read_bytes() == adopted
    assert make_engine(state, repo).status().to_json()["slots"]["B"]["version"] is None


class _FillTheDiskAtTheSwitch(_AroundTheSwitch):
    """Right after the switch is saved, the disk fills up (another process's log, say), so the
    trust commit that follows meets a real ENOSPC."""

    def __init__(self, state: Path, disk: Path) -> None:
        super().__init__(state)
        self._disk = disk

    def after(self) -> None:
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
    booted_engine(state, repo)
    firmware = _FillTheDiskAtTheSwitch(state, small_disk)
    engine = make_engine(state, repo, boot_twin=firmware)
    lines: list[str] = []
    bundle = bundle_file(repo, tmp_path, "1.2.0")
    # The bookkeeping after the switch cannot be written either, so the call fails; what matters
    # is the next start.
    with contextlib.suppress(OSError):
        engine.install(BundleFile(bundle), log=lines.append)
    assert any("kept at the next start" in line for line in lines), lines
    assert (state / "trust" / "pending.json").exists()
    assert _versions(state) is None

    (small_disk / "filler").unlink()
    report = make_engine(state, repo).start()
    assert (report.slot, report.version) == ("B", "1.2.0")
    assert _versions(state) == _published(repo)
    assert not (state / "trust" / "pending.json").exists()
    assert make_engine(state, repo).status().to_json()["last_result"]["result"] == "installed"


def test_an_older_bundle_still_installs_after_newer_metadata_was_seen(tmp_path: Path) -> None:
    """Issue 11, tried as a new user would: a bundle made for 1.1.0 before the repository moved
    on installs after the device has seen (and kept) newer metadata, as long as that metadata
    still lists 1.1.0."""
    repo = make_repo(tmp_path, "1.1.0")
    old = bundle_file(repo, tmp_path, "1.1.0")
    repo.add_release("1.2.0", tree=tmp_path / "tree-1.1.0", compress="none", chunk_size=65536)
    state = tmp_path / "state"
    booted_engine(state, repo).install(BundleFile(bundle_file(repo, tmp_path, "1.2.0")))
    kept = json.loads((state / "trust" / "releases.json").read_bytes())
    assert kept["signed"]["version"] == _versions(state)["releases"]  # type: ignore[index]
    manifest = make_engine(state, repo).install(BundleFile(old))
    assert str(manifest.version) == "1.1.0"
    assert json.loads((state / "trust" / "releases.json").read_bytes()) == kept, "kept as is"


def test_a_refused_bundle_still_leaves_its_verified_roots_trusted(tmp_path: Path) -> None:
    """The TUF client workflow keeps each verified root: a bundle refused for its release (here:
    another product) still rotates the device's root, so the rotated-out key stops counting."""
    repo = make_repo(tmp_path, "1.1.0")
    state = tmp_path / "state"
    engine = booted_engine(state, repo, product="another-box")
    repo.rotate_key("root")
    lines: list[str] = []
    with pytest.raises(VerificationError, match="another-box"):
        engine.install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")), log=lines.append)
    assert json.loads((state / "trust" / "root.json").read_bytes())["signed"]["version"] == 2
    assert (state / "trust" / "2.root.json").exists()
    assert _versions(state) is None, "the versions go only with an installed release"
    assert any("now trusting the newer roots this bundle brought (v2)" in line for line in lines)


def test_the_trusted_root_never_goes_back(tmp_path: Path) -> None:
    """A trust staged before a refused bundle rotated the root further (kept at once) is
    committed later: its older root must not replace the newer one (review of issue 11)."""
    repo = make_repo(tmp_path, "1.1.0")
    repo.rotate_key("root")
    repo.rotate_key("root")
    v2, v3 = ((repo.path / "metadata" / f"{v}.root.json").read_bytes() for v in (2, 3))
    store = TrustStore(tmp_path / "trust", str(repo.path / "metadata" / "1.root.json"))
    store.adopt()
    store.stage(TrustUpdate((v2,), v2, {"targets": 1, "releases": 1}, {}), "B")
    store.keep_roots((v2, v3))
    assert store.commit_pending()
    assert store.load().root == v3
    assert (tmp_path / "trust" / "2.root.json").read_bytes() == v2


def test_a_staged_trust_reads_across_sysupd_versions(tmp_path: Path) -> None:
    """The slot that commits a staged trust may run another sysupd than the one that staged it:
    a record of the older one (two version numbers, targets and releases kept) commits here,
    and this one's record keeps the older one's keys (review of issue 11)."""
    repo = make_repo(tmp_path, "1.1.0")
    bundle = bundle_file(repo, tmp_path, "1.1.0")
    state = tmp_path / "state"
    booted_engine(state, repo)
    engine = make_engine(state, repo)
    engine.install(BundleFile(bundle))
    trust = state / "trust"
    published = _published(repo)
    assert json.loads((trust / "versions.json").read_bytes()) == published
    store = TrustStore(tmp_path / "older", str(repo.path / "metadata" / "1.root.json"))
    store.adopt()
    root = (repo.path / "metadata" / "1.root.json").read_bytes()
    kept = {role: (trust / f"{role}.json").read_bytes() for role in ("targets", "releases")}
    older = {
        "slot": "B",
        "new_roots": [],
        "root": base64.b64encode(root).decode(),
        "targets": published["targets"],
        "releases": published["releases"],
        "metadata": {role: base64.b64encode(data).decode() for role, data in kept.items()},
    }
    (tmp_path / "older" / "pending.json").write_text(json.dumps(older))
    assert store.commit_pending()
    loaded = store.load()
    assert loaded.seen == {
        "timestamp": 0,
        "snapshot": 0,
        "targets": published["targets"],
        "releases": published["releases"],
    }
    assert set(loaded.kept) == {"targets", "releases"}
    store.stage(TrustUpdate((), root, published, {}), "A")
    record = json.loads((tmp_path / "older" / "pending.json").read_bytes())
    assert (record["targets"], record["releases"]) == (
        published["targets"],
        published["releases"],
    ), "an older sysupd reads these two"


def test_a_kept_copy_the_versions_do_not_name_is_not_kept(tmp_path: Path) -> None:
    """An older sysupd commits versions.json with two numbers and leaves the newer code's
    timestamp and snapshot copies behind, stale: they are not read as kept."""
    repo = make_repo(tmp_path, "1.1.0")
    state = tmp_path / "state"
    booted_engine(state, repo)
    make_engine(state, repo).install(BundleFile(bundle_file(repo, tmp_path, "1.1.0")))
    trust = state / "trust"
    versions = json.loads((trust / "versions.json").read_bytes())
    two = {"targets": versions["targets"], "releases": versions["releases"]}
    (trust / "versions.json").write_text(json.dumps(two))
    loaded = TrustStore(trust, "").load()
    assert set(loaded.kept) == {"targets", "releases"}
    assert loaded.seen == two
