"""The service at start-up: it reports the booted slot's version, confirms the slot with the health
check, and after a failed check reboots into the previous slot and says "rolled back"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, boot_settled
from tests.engines import make_engine
from tests.releases import PRODUCT, make_repo


def _installed(tmp_path: Path) -> tuple[ReleaseRepository, Path]:
    repo = make_repo(tmp_path, "1.1.0")
    bundle = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", bundle)
    state = tmp_path / "state"
    engine = make_engine(state, repo)
    engine.start()
    engine.confirm(True, "")
    engine.install(BundleFile(bundle))
    return repo, state


async def test_new_slot_boots_and_is_confirmed(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo, state = _installed(tmp_path)
    service = await start_service(
        state_dir=state, product=PRODUCT, trust_root=str(repo.path / "metadata" / "1.root.json")
    )
    assert await boot_settled(service) == "good"
    info = await (await connect(service, login=USER)).call("sys", "info")
    assert (info["system_version"], info["slot"], info["boot_status"]) == ("1.1.0", "B", "good")
    assert any("is confirmed" in line for line in service.log.lines())


async def test_failed_health_check_reboots_into_the_previous_slot(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    repo, state = _installed(tmp_path)
    settings = {
        "product": PRODUCT,
        "trust_root": str(repo.path / "metadata" / "1.root.json"),
        "health_check_command": "sh -c 'echo database unreachable; exit 3'",
        "auto_reboot_delay_s": 0,
        "reboot_action": "exit",
    }
    service = await start_service(state_dir=state, **settings)
    assert await boot_settled(service) == "failed"
    await asyncio.wait_for(service.wait_exit_requested(), 5)  # the reboot it scheduled
    log = "\n".join(service.log.lines())
    assert "exited with status 3: database unreachable" in log
    await service.stop()

    after = await start_service(state_dir=state, **{**settings, "health_check_command": ""})
    assert await boot_settled(after) == "rolled back"
    admin = await connect(after, login=ADMIN)
    info = await admin.call("sys", "info")
    assert (info["system_version"], info["slot"], info["boot_status"]) == (
        "0.0.0",
        "A",
        "rolled back",
    )
    status = await admin.call("sys", "update_status")
    assert "rolled back: slot B (1.1.0) failed its health check" in status["update_status"]
    assert "rolled back: rolled back" not in status["update_status"]


def _processes_running(needle: str) -> list[int]:
    """The pids whose command line contains ``needle``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(proc.name))
    return found


async def test_a_hanging_health_check_is_stopped_and_counts_as_failed(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    """health_check_timeout_s ends it — the script and the child it waits on — and the new slot
    is abandoned as for a failed check."""
    repo, state = _installed(tmp_path)
    settings = {
        "product": PRODUCT,
        "trust_root": str(repo.path / "metadata" / "1.root.json"),
        "health_check_command": "sh -c 'echo waiting for the database; sleep 4871; true'",
        "health_check_timeout_s": 1,
        "auto_reboot_delay_s": 0,
        "reboot_action": "exit",
    }
    service = await start_service(state_dir=state, **settings)
    assert await boot_settled(service) == "failed"
    await asyncio.wait_for(service.wait_exit_requested(), 5)
    log = "\n".join(service.log.lines())
    assert "sleep 4871; true" in log
    assert "did not finish within 1 s" in log
    assert _processes_running("sleep 4871") == [], "the check's child outlived the deadline"
    await service.stop()
    after = await start_service(state_dir=state, **{**settings, "health_check_command": ""})
    assert await boot_settled(after) == "rolled back"
    info = await (await connect(after, login=ADMIN)).call("sys", "info")
    assert (info["slot"], info["boot_status"]) == ("A", "rolled back")


async def test_a_boot_trial_that_cannot_run_says_why_in_sys_info(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    """The bootloader's record is unusable: the service still answers, and sys/info's
    boot_status is "error: " and the reason, as before the status became typed."""
    grubenv = tmp_path / "grubenv"
    grubenv.write_bytes(b"this is not a grubenv\n")
    service = await start_service(bootloader="grub", grubenv=str(grubenv))
    status = await boot_settled(service)
    assert status == "error"
    info = await (await connect(service, login=USER)).call("sys", "info")
    assert info["boot_status"].startswith("error: ")
    assert len(info["boot_status"]) > len("error: ")
