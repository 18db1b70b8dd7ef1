"""``sysupd mark good|bad|active SLOT`` on a real device state: two populated slots made with real
installs, the trial settled by hand, and every refusal, which changes nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sysupd.core.job import JobState
from sysupd.engine.lock import UpdateLock
from sysupd.engine.marks import mark_slot
from sysupd.errors import BadRequest, UpdateBusy, UpdateError
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.engines import make_engine
from tests.procs import run_cli, write_config
from tests.programs import requires
from tests.releases import PRODUCT, make_repo


class _PowerCut(BaseException):
    """Stops an install in its tracks, as a kill would: nothing below catches it."""


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0", "1.2.0")


@pytest.fixture
def bundle(tmp_path: Path, repo: ReleaseRepository) -> Path:
    out = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", out)
    return out


@pytest.fixture
def device(tmp_path: Path, repo: ReleaseRepository) -> list[str]:
    """The options of a device of PRODUCT that trusts ``repo``, state in tmp_path/state."""
    config = write_config(
        tmp_path / "device.toml",
        product=PRODUCT,
        trust_root=str(repo.path / "metadata" / "1.root.json"),
    )
    return ["--config", str(config), "--state-dir", str(tmp_path / "state")]


def _state(device: list[str]) -> Path:
    return Path(device[3])


async def _ok(*args: str) -> str:
    code, out, err = await run_cli(*args)
    assert code == 0, err
    assert err == ""
    return out


async def _status(device: list[str]) -> dict[str, object]:
    report = json.loads(await _ok("status", "--json", *device))
    assert isinstance(report, dict)
    return report


async def _two_slots(device: list[str], bundle: Path) -> None:
    """Power on (A, the factory 0.0.0), install 1.1.0 into B, power on into B and keep it."""
    await _ok("boot", *device)
    await _ok("install", str(bundle), *device)
    assert "booted slot B (1.1.0)" in await _ok("boot", *device)


def _files(*paths: Path) -> dict[str, bytes | None]:
    return {str(p): p.read_bytes() if p.exists() else None for p in paths}


async def _refused(device: list[str], how: str, slot: str, match: str) -> str:
    """Run a mark that must be refused: one error line, exit 1, and nothing changed."""
    state = _state(device)
    watched = (state / "engine.json", state / "bootenv.json")
    before = _files(*watched)
    code, out, err = await run_cli("mark", how, slot, *device)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(r"(?i)error: .+", lines[0]), err
    assert match in lines[0]
    assert _files(*watched) == before
    return lines[0]


async def test_two_slots_marked_active_good_and_bad(device: list[str], bundle: Path) -> None:
    await _two_slots(device, bundle)
    out = await _ok("mark", "active", "other", *device)
    assert out.strip() == (
        "slot A marked active: it boots next (reboot to boot it); it holds 0.0.0, below the "
        "version floor 1.1.0"
    )
    report = await _status(device)
    assert (report["booted"], report["next_boot"]) == ("B", "A")
    assert "booted slot A (0.0.0)" in await _ok("boot", *device)  # the reboot

    out = await _ok("mark", "bad", "other", *device)
    assert out.strip() == "slot B marked bad: it does not boot (slot A boots next)"
    assert await _ok("mark", "bad", "B", *device) == (
        "slot B is already marked bad: it does not boot (slot A boots next)\n"
    )
    out = await _ok("mark", "good", "B", *device)
    assert out.strip() == "slot B marked good: slot A still boots next"
    slots = (await _status(device))["slots"]
    assert isinstance(slots, dict)
    assert (slots["A"]["bootable"], slots["B"]["bootable"]) == (True, True)

    out = await _ok("mark", "bad", "booted", *device)
    assert out.strip() == "slot A marked bad: slot B boots at the next reboot"
    assert "booted slot B (1.1.0)" in await _ok("boot", *device)


async def test_mark_json(device: list[str], bundle: Path) -> None:
    await _two_slots(device, bundle)
    result = json.loads(await _ok("mark", "active", "A", "--json", *device))
    assert result == {
        "mark": "active",
        "slot": "A",
        "changed": True,
        "message": "slot A marked active: it boots next (reboot to boot it); it holds 0.0.0, "
        "below the version floor 1.1.0",
        "booted": "B",
        "next_boot": "A",
        "reboot_needed": True,
        "trial": None,
        "floor": "1.1.0",
        "settled": None,
    }


async def test_mark_good_booted_settles_the_trial(
    tmp_path: Path, device: list[str], repo: ReleaseRepository, bundle: Path
) -> None:
    # The service's start-up on a new slot, before its health check has run.
    engine = make_engine(_state(device), repo)
    engine.start()
    engine.confirm(True, "")
    engine.install(BundleFile(bundle))
    assert engine.start().slot == "B"
    report = await _status(device)
    assert (report["booted"], report["trial"], report["floor"]) == ("B", "B", "0.0.0")

    out = await _ok("mark", "good", "booted", *device)
    assert out.strip() == "slot B marked good: version 1.1.0 passed its trial (the floor is 1.1.0)"
    report = await _status(device)
    assert (report["trial"], report["floor"]) == (None, "1.1.0")
    last = report["last_result"]
    assert isinstance(last, dict)
    assert (last["result"], last["version"]) == ("success", "1.1.0")
    assert await _ok("mark", "good", "B", *device) == "slot B is already marked good\n"


async def test_refusals_on_a_fresh_device_change_nothing(device: list[str]) -> None:
    _state(device).mkdir()  # made, and nothing in it yet (a missing one is refused outright)
    await _refused(device, "good", "booted", "'booted' needs the booted slot")
    await _ok("boot", *device)
    await _refused(device, "good", "B", "slot B holds no installed release")
    await _refused(device, "active", "other", "slot B holds no installed release")
    line = await _refused(device, "bad", "booted", "slot A is the only bootable slot")
    assert line.endswith(
        "slot A is the only bootable slot; marking it bad would leave nothing to boot"
    )
    await _refused(device, "bad", "A", "would leave nothing to boot")
    line = await _refused(device, "good", "C", "unknown slot 'C'")
    assert "the slots are A, B" in line


async def test_refused_after_a_failed_install(
    tmp_path: Path, device: list[str], repo: ReleaseRepository, bundle: Path
) -> None:
    await _two_slots(device, bundle)
    bad = tmp_path / "flipped.bundle"
    repo.write_bundle("1.2.0", bad)
    data = bytearray(bad.read_bytes())
    data[-1000] ^= 0x40
    bad.write_bytes(bytes(data))
    code, _, err = await run_cli("install", str(bad), *device)
    assert code == 1
    assert "does not match its signed hash" in err
    await _refused(device, "active", "A", "slot A holds no installed release: an install into")
    await _refused(device, "good", "other", "did not complete")
    await _refused(device, "bad", "B", "slot B is the only bootable slot")
    assert await _ok("mark", "bad", "A", *device) == (
        "slot A is already marked bad: it does not boot (slot B boots next)\n"
    )


async def test_refused_after_an_interrupted_install(
    device: list[str], repo: ReleaseRepository, bundle: Path
) -> None:
    engine = make_engine(_state(device), repo)
    engine.start()
    engine.confirm(True, "")

    def cut(stage: JobState, done: int, _total: int) -> None:
        if stage is JobState.INSTALLING and done:
            raise _PowerCut

    with pytest.raises(_PowerCut):
        engine.install(BundleFile(bundle), progress=cut)
    assert (await _status(device))["job"] is not None
    await _refused(device, "active", "B", "the install of 1.1.0 into it did not complete")
    await _refused(device, "good", "other", "the install of 1.1.0 into it did not complete")


async def test_refused_while_an_update_runs(device: list[str], bundle: Path) -> None:
    await _two_slots(device, bundle)
    with UpdateLock(_state(device) / "update.lock"):
        await _refused(device, "active", "other", "an update is running")
        await _refused(device, "good", "booted", "an update is running")
    await _ok("mark", "active", "other", *device)


async def test_refusals_are_the_callers_mistakes(
    device: list[str], repo: ReleaseRepository, bundle: Path
) -> None:
    """A refused mark is a ClientError (the caller's mistake), never a failed update."""
    await _two_slots(device, bundle)
    engine = make_engine(_state(device), repo)
    await _ok("mark", "bad", "B", *device)
    for how, slot in (("active", "nowhere"), ("bad", "A"), ("sideways", "A")):
        with pytest.raises(BadRequest) as refused:
            mark_slot(engine, how, slot)
        assert not isinstance(refused.value, UpdateError)
    with UpdateLock(engine.lock_path), pytest.raises(UpdateBusy, match="an update is running"):
        mark_slot(engine, "good", "A")
    code, _, err = await run_cli("mark", "sideways", "A", *device)
    assert code == 2  # click's usage error names the choices
    assert "'good', 'bad', 'active'" in err or "good, bad, active" in err


@requires("grub-editenv")
async def test_grub_adapter(tmp_path: Path, repo: ReleaseRepository, bundle: Path) -> None:
    grubenv = tmp_path / "boot" / "grubenv"
    grubenv.parent.mkdir()
    config = write_config(
        tmp_path / "grub.toml",
        product=PRODUCT,
        trust_root=str(repo.path / "metadata" / "1.root.json"),
        bootloader="grub",
        grubenv=str(grubenv),
    )
    device = ["--config", str(config), "--state-dir", str(tmp_path / "grub-state")]

    def variables() -> str:
        listed = subprocess.run(
            ["grub-editenv", str(grubenv), "list"], capture_output=True, text=True, check=True
        )
        return listed.stdout

    await _ok("install", str(bundle), *device)
    assert "ORDER=B A" in variables()
    out = await _ok("mark", "active", "A", *device)
    assert out.startswith("slot A marked active: it boots next")
    assert "ORDER=A B" in variables()
    assert "B_OK=1" in variables()
    await _ok("mark", "bad", "B", *device)
    assert "B_OK=0" in variables()
    before = grubenv.read_bytes()
    await _refused(device, "bad", "A", "slot A is the only bootable slot")
    await _refused(device, "good", "booted", "'booted' needs the booted slot")  # no sysupd.slot=
    assert grubenv.read_bytes() == before
