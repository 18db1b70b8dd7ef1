"""The device commands that only look or mark (``inspect``, ``mark``, ``status --local``) refuse a
state directory that is not there, instead of making an empty device where none was."""

from __future__ import annotations

from pathlib import Path

import pytest

from sysupd.release.repository import ReleaseRepository
from tests.procs import run_cli, write_config
from tests.releases import PRODUCT, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("inspect", "BUNDLE"), id="inspect"),
        pytest.param(("inspect", "BUNDLE", "--json"), id="inspect-json"),
        pytest.param(("mark", "good", "booted"), id="mark"),
        pytest.param(("status", "--local"), id="status-local"),
        pytest.param(("status", "--json"), id="status-state-dir"),
    ],
)
async def test_a_missing_state_directory_is_refused_and_not_made(
    tmp_path: Path, repo: ReleaseRepository, command: tuple[str, ...]
) -> None:
    bundle = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", bundle)
    config = write_config(
        tmp_path / "device.toml",
        product=PRODUCT,
        trust_root=str(repo.path / "metadata" / "1.root.json"),
    )
    state = tmp_path / "no-such-device"
    args = [str(bundle) if arg == "BUNDLE" else arg for arg in command]
    code, out, err = await run_cli(*args, "--config", str(config), "--state-dir", str(state))
    assert code == 1, err
    assert out == ""
    assert err.strip().splitlines() == [
        f"Error: no state directory at {state} (does not exist; give --state-dir DIR, or "
        "--config FILE with state_dir, of a device that the service or 'sysupd boot' has run on)"
    ]
    assert not state.exists(), "nothing made: no directory, no update.lock"


async def test_a_state_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory\n")
    config = write_config(tmp_path / "device.toml", state_dir=str(state))
    code, _, err = await run_cli("status", "--local", "--config", str(config))
    assert code == 1
    assert f"no state directory at {state} (exists but is not a directory;" in err
    assert state.read_text() == "not a directory\n"


async def test_boot_and_install_still_make_a_new_device(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """The first start makes the state directory: that is how a device comes to be."""
    config = write_config(
        tmp_path / "device.toml",
        product=PRODUCT,
        trust_root=str(repo.path / "metadata" / "1.root.json"),
    )
    state = tmp_path / "new-device"
    code, _, err = await run_cli("boot", "--config", str(config), "--state-dir", str(state))
    assert code == 0, err
    assert state.is_dir()
    code, _, err = await run_cli("mark", "good", "booted", "--state-dir", str(state))
    assert code == 0, err
