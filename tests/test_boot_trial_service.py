"""The service at start-up: it reports the booted slot's version, confirms the slot with the health
check, and after a failed check reboots into the previous slot and says "rolled back"."""

from __future__ import annotations

import asyncio
import html
import random
from pathlib import Path

from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, boot_settled
from tests.engines import make_engine
from tests.programs import requires
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


def _kernel_cmdline(tmp_path: Path, slot: str | None) -> str:
    """A file standing in for /proc/cmdline, naming ``slot`` as GRUB's snippet does."""
    cmdline = tmp_path / "cmdline"
    named = f" sysupd.slot={slot}" if slot else ""
    cmdline.write_text(f"BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro quiet{named}\n")
    return str(cmdline)


@requires("grub-editenv")
async def test_a_boot_trial_that_cannot_run_says_why_in_sys_info(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    """The bootloader's record is unusable and cannot be recreated (nothing says which slot
    booted): the service still answers, and sys/info's boot_status is "error: " and both
    reasons, as before the status became typed."""
    grubenv = tmp_path / "grubenv"
    grubenv.write_bytes(b"this is not a grubenv\n")
    service = await start_service(
        bootloader="grub", grubenv=str(grubenv), kernel_cmdline=_kernel_cmdline(tmp_path, None)
    )
    status = await boot_settled(service)
    assert status == "error"
    info = await (await connect(service, login=USER)).call("sys", "info")
    assert info["boot_status"] == (
        f"error: grubenv {grubenv.resolve()}: only 22 bytes, shorter than the 1024-byte block "
        "grub-editenv writes (truncated, or not a grubenv); it cannot be recreated: the kernel "
        "command line names no sysupd.slot, so nothing says which slot booted"
    )
    assert grubenv.read_bytes() == b"this is not a grubenv\n"


@requires("grub-editenv")
async def test_a_corrupt_grubenv_is_recreated_and_the_log_says_so(
    tmp_path: Path, start_service: ServiceFactory, connect: ClientFactory
) -> None:
    """Issue 12: GRUB could not read the grubenv and booted slot A as on a fresh device; the
    service recreates it around A, confirms A, and its log says what happened."""
    grubenv = tmp_path / "esp" / "grubenv"
    grubenv.parent.mkdir()
    garbage = random.Random(12).randbytes(1024)
    grubenv.write_bytes(garbage)
    service = await start_service(
        bootloader="grub",
        grubenv=str(grubenv),
        kernel_cmdline=_kernel_cmdline(tmp_path, "A"),
        factory_version="1.0.0",
    )
    assert await boot_settled(service) == "good"
    admin = await connect(service, login=ADMIN)
    info = await admin.call("sys", "info")
    assert (info["system_version"], info["slot"], info["boot_status"]) == ("1.0.0", "A", "good")
    log = html.unescape((await admin.call("sys", "middleware_log"))["log"]).split("<br>")
    repaired = [line for line in log if "WARNING boot: grub-editenv list" in line]
    assert len(repaired) == 1, log
    assert repaired[0].endswith(
        "invalid environment block: recreated it with slot A (1.0.0) good and first, slot B "
        f"marked bad until the next install; the unusable copy is kept as {grubenv.resolve()}"
        ".unusable"
    )
    assert not [line for line in log if "rolled back" in line or "interrupted" in line]
    assert (tmp_path / "esp" / "grubenv.unusable").read_bytes() == garbage
    listed = await asyncio.create_subprocess_exec(
        "grub-editenv", str(grubenv), "list", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await listed.communicate()
    assert out.decode().splitlines() == ["ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]
