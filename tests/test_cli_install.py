"""``sysupd install``, ``status`` and ``boot`` as an operator runs them, and an install killed
part-way, which leaves the booted slot alone and is reported at the next start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from sysupd.release.repository import ReleaseRepository
from sysupd.servicelog import ServiceLog
from sysupd.system.clock import SystemClock
from tests.procs import run_cli, write_config
from tests.programs import requires
from tests.releases import PRODUCT, make_repo
from tools.appliance.badinput import stripped_of_signatures


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


def _args(tmp_path: Path, repo: ReleaseRepository) -> list[str]:
    config = write_config(
        tmp_path / "device.toml",
        product=PRODUCT,
        trust_root=str(repo.path / "metadata" / "1.root.json"),
    )
    return ["--config", str(config), "--state-dir", str(tmp_path / "state")]


async def _installed_with_check(
    tmp_path: Path, repo: ReleaseRepository, settings: str
) -> list[str]:
    """A device with 1.1.0 installed into B, on trial, and ``settings`` (TOML lines, e.g. a
    failing health check) added to its configuration; its command-line arguments."""
    bundle = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", bundle)
    device = _args(tmp_path, repo)
    assert (await run_cli("install", str(bundle), *device))[0] == 0
    with Path(device[1]).open("a") as config:
        config.write(settings)
    return device


async def test_install_status_boot(tmp_path: Path, repo: ReleaseRepository) -> None:
    bundle = tmp_path / "u.bundle"
    repo.write_bundle("1.1.0", bundle)
    device = _args(tmp_path, repo)
    code, out, err = await run_cli("install", str(bundle), *device)
    assert code == 0, err
    assert "installed sysupd-demo 1.1.0" in out
    code, out, _ = await run_cli("status", "--json", *device)
    report = json.loads(out)
    assert (report["next_boot"], report["trial"]) == ("B", "B")
    assert report["slots"]["B"]["version"] == "1.1.0"
    code, out, _ = await run_cli("boot", *device)
    assert code == 0
    assert "booted slot B (1.1.0)" in out
    assert "success" in out
    _, out, _ = await run_cli("status", *device)
    assert "last result: success" in out


async def test_refused_bundle_is_one_clear_line(tmp_path: Path, repo: ReleaseRepository) -> None:
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(b"definitely not a bundle" * 10)
    code, out, err = await run_cli("install", str(bad), *_args(tmp_path, repo))
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == ["Error: not a sysupd bundle: wrong magic bytes"]


async def test_failed_health_check_exits_2(tmp_path: Path, repo: ReleaseRepository) -> None:
    device = await _installed_with_check(tmp_path, repo, 'health_check_command = "false"\n')
    code, out, _ = await run_cli("boot", *device)
    assert code == 2
    assert "rolled back" in out
    code, out, _ = await run_cli("boot", *device)
    assert code == 0  # the established slot is kept: there is nothing better to go to
    assert "booted slot A (0.0.0)" in out
    assert "kept despite the failed check" in out


async def test_boot_says_the_rollback_in_the_service_log(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """Found on the appliance's real boots (issue 12, scenario 2): ``sysupd boot`` in the unit's
    ExecStartPre abandoned the new slot and the machine rebooted into the previous one, but the
    service log (``sys/middleware_log``) of that next start never said so, or why."""
    check = "health_check_command = \"sh -c 'echo disk full; exit 3'\"\n"
    device = await _installed_with_check(tmp_path, repo, check)
    assert (await run_cli("boot", *device))[0] == 2
    # What the next start of the service preloads and sys/middleware_log answers.
    log = ServiceLog(tmp_path / "state" / "log" / "sysupd.log", SystemClock(), 1 << 20)
    lines = log.lines()
    log.close()
    rolled_back = [line for line in lines if "WARNING boot: rolled back: slot B (1.1.0)" in line]
    assert len(rolled_back) == 1, lines
    assert "failed its health check" in rolled_back[0]
    assert rolled_back[0].endswith("exited with status 3: disk full")


def _service_log(tmp_path: Path) -> list[str]:
    """What the next start of the service preloads and sys/middleware_log answers."""
    log = ServiceLog(tmp_path / "state" / "log" / "sysupd.log", SystemClock(), 1 << 20)
    lines = log.lines()
    log.close()
    return lines


def _grub_device(tmp_path: Path, slot: str | None) -> tuple[list[str], Path]:
    """The command-line arguments of a grub device that booted ``slot`` (its kernel command
    line says so), and its grubenv's path."""
    cmdline = tmp_path / "cmdline"
    named = f" sysupd.slot={slot}" if slot else ""
    cmdline.write_text(f"BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro quiet{named}\n")
    grubenv = tmp_path / "esp" / "grubenv"
    grubenv.parent.mkdir(exist_ok=True)
    config = write_config(
        tmp_path / "grub.toml",
        bootloader="grub",
        grubenv=str(grubenv),
        kernel_cmdline=str(cmdline),
    )
    return ["--config", str(config), "--state-dir", str(tmp_path / "state")], grubenv


@requires("grub-editenv")
async def test_boot_recreates_a_truncated_grubenv_and_says_so(tmp_path: Path) -> None:
    """Issue 12 in the unit's ExecStartPre: GRUB could not read the grubenv and booted B;
    ``sysupd boot`` recreates it around B, says so, and so does the service log."""
    device, grubenv = _grub_device(tmp_path, "B")
    cut = b"# GRUB Environment Block\nORDER=B A\nA_OK=1\nA_"
    grubenv.write_bytes(cut)
    code, out, err = await run_cli("boot", *device)
    assert code == 0, err
    said = (
        f"grubenv {grubenv.resolve()}: only {len(cut)} bytes, shorter than the 1024-byte block "
        "grub-editenv writes (truncated, or not a grubenv): recreated it with slot B (0.0.0) "
        "good and first, slot A marked bad until the next install; the unusable copy is kept "
        f"as {grubenv.resolve()}.unusable"
    )
    assert out.splitlines()[0] == said
    assert "booted slot B (0.0.0)" in out
    warned = [line for line in _service_log(tmp_path) if "WARNING boot: grubenv" in line]
    assert len(warned) == 1
    assert warned[0].endswith(f"WARNING boot: {said}")
    assert Path(f"{grubenv}.unusable").read_bytes() == cut
    code, out, _ = await run_cli("boot", *device)
    assert code == 0
    assert "grubenv" not in out  # recreated once


@requires("grub-editenv")
async def test_boot_that_cannot_recreate_the_grubenv_says_both_problems(tmp_path: Path) -> None:
    device, grubenv = _grub_device(tmp_path, None)
    grubenv.write_bytes(b"\0" * 1024)
    code, out, err = await run_cli("boot", *device)
    assert code == 1
    assert out == ""
    assert "invalid environment block; it cannot be recreated: the kernel command line" in err
    errors = [line for line in _service_log(tmp_path) if "ERROR boot: " in line]
    assert len(errors) == 1
    assert "it cannot be recreated" in errors[0]
    assert grubenv.read_bytes() == b"\0" * 1024


async def test_install_killed_part_way(tmp_path: Path) -> None:
    big = make_repo(tmp_path / "big")
    tree = tmp_path / "big-tree"
    (tree / "data").mkdir(parents=True)
    (tree / "data" / "blob").write_bytes(os.urandom(96 * 1024 * 1024))
    big.add_release("2.0.0", tree=tree)
    bundle = tmp_path / "big.bundle"
    big.write_bundle("2.0.0", bundle)
    device = _args(tmp_path, big)
    running = tmp_path / "state" / "slots" / "A"
    assert (await run_cli("boot", *device))[0] == 0
    running.mkdir(parents=True, exist_ok=True)
    (running / "running-system").write_text("factory\n")

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sysupd",
        "install",
        str(bundle),
        *device,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    while b"installing into slot" not in await asyncio.wait_for(proc.stdout.readline(), 60):
        pass
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    state = json.loads((tmp_path / "state" / "engine.json").read_text())
    if state["job"] is None:
        pytest.skip("the install finished before the kill landed")

    code, out, _ = await run_cli("boot", *device)
    assert code == 0
    assert "interrupted" in out
    assert "booted slot A (0.0.0)" in out
    assert (running / "running-system").read_text() == "factory\n"
    report = json.loads((await run_cli("status", "--json", *device))[1])
    assert report["next_boot"] == "A"
    assert report["slots"]["B"]["bootable"] is False
    assert report["last_result"]["result"] == "interrupted"
    code, _, err = await run_cli("install", str(bundle), *device)  # the next update succeeds
    assert code == 0, err


async def test_boot_reboot_runs_the_reboot_command_when_the_slot_is_abandoned(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    asked = tmp_path / "reboot-asked"
    device = await _installed_with_check(
        tmp_path, repo, f'health_check_command = "false"\nreboot_command = "touch {asked}"\n'
    )
    code, out, _ = await run_cli("boot", "--reboot", *device)
    assert code == 2
    assert asked.exists(), "the previous slot boots only after a reboot"
    assert f"reboot command 'touch {asked}' exited with status 0" in out
    asked.unlink()
    code, _, _ = await run_cli("boot", "--reboot", *device)
    assert code == 0
    assert not asked.exists(), "a good boot reboots nothing"


async def test_boot_keep_going_lets_the_service_start_and_report(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """A trial that cannot be settled fails ``sysupd boot`` (exit 1, one line); with
    ``--keep-going`` (the unit's ExecStartPre) it says why and exits 0, so that the service still
    starts and reports it, rather than the unit failing and nothing answering. Here the grub
    adapter finds no ``sysupd.slot`` on this (host) machine's kernel command line."""
    device = _args(tmp_path, repo)
    with Path(device[1]).open("a") as config:
        config.write(f'bootloader = "grub"\ngrubenv = "{tmp_path / "grubenv"}"\n')
    code, _, err = await run_cli("boot", *device)
    assert code == 1
    assert "kernel command line names no sysupd.slot" in err
    code, _, err = await run_cli("boot", "--reboot", "--keep-going", *device)
    assert code == 0, err
    assert "kernel command line names no sysupd.slot" in err
    assert "the service starts all the same and reports it" in err
    log = (tmp_path / "state" / "log" / "sysupd.log").read_text()
    assert "ERROR boot: grubenv" in log
    assert "names no sysupd.slot" in log


async def test_a_bundle_stripped_of_its_signatures_is_refused(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """The appliance's bad-input scenario sends ``tools.appliance.badinput.
    stripped_of_signatures`` of a good bundle; here the same bundle, on the same engine, is
    refused for what it lacks, and the good one installs."""
    good = tmp_path / "good.bundle"
    repo.write_bundle("1.1.0", good)
    unsigned = stripped_of_signatures(good, tmp_path / "unsigned.bundle")
    assert unsigned.stat().st_size < good.stat().st_size
    device = _args(tmp_path, repo)
    code, _, err = await run_cli("install", str(unsigned), *device)
    assert code == 1
    assert err.strip().startswith("Error: timestamp")
    assert "is not signed by the keys this device trusts" in err
    code, _, err = await run_cli("install", str(good), *device)
    assert code == 0, err
