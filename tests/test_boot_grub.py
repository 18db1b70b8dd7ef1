"""The ``grub`` bootloader adapter with the real ``grub-editenv``, and the grub.cfg snippet.

The snippet in ``docs/grub.md`` is run in ``grub-emu`` (when installed) against
``BootEnv.choose_boot`` for every combination of the variables.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sysupd.boot.grub import INSTALL_HINT, GrubBootloader, parse_cmdline_slot
from sysupd.core.bootenv import BootEnv, SlotBoot
from sysupd.core.settings import Settings, apply_changes
from sysupd.engine.engine import Engine
from sysupd.engine.state import BootStatus, JobRecord, Outcome
from sysupd.errors import BootError, BootRecordMissing, BootRecordUnusable, ConfigError
from sysupd.release.repository import ReleaseRepository
from sysupd.sources.bundlefile import BundleFile
from sysupd.system.clock import SystemClock
from tests.engines import bundle_file, device_settings
from tests.programs import requires
from tests.releases import make_repo
from tests.test_boot_file import MAX_ATTEMPTS, SLOTS, env_shapes, simulate_rollback_cycle

EDITENV = shutil.which("grub-editenv")
needs_editenv = requires("grub-editenv")
DOC = Path(__file__).resolve().parents[1] / "docs" / "grub.md"


def run_editenv(grubenv: Path, *args: str) -> str:
    """Run the real grub-editenv, as an operator would."""
    assert EDITENV is not None
    done = subprocess.run(
        [EDITENV, str(grubenv), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def make_grubenv(path: Path, *assignments: str) -> bytes:
    run_editenv(path, "create")
    if assignments:
        run_editenv(path, "set", *assignments)
    return path.read_bytes()


def grub(
    path: Path,
    cmdline: Path | None = None,
    editenv: str = "grub-editenv",
    timeout_s: float = 10.0,
) -> GrubBootloader:
    cmdline = cmdline or path.with_name("cmdline")
    return GrubBootloader(path, SLOTS, editenv=editenv, cmdline=cmdline, timeout_s=timeout_s)


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# -- round trips and the cycle ----------------------------------------------------------------


@needs_editenv
def test_rollback_cycle(tmp_path: Path) -> None:
    simulate_rollback_cycle(GrubBootloader, tmp_path / "grubenv")


@needs_editenv
@pytest.mark.parametrize("env", env_shapes())
def test_round_trip(tmp_path: Path, env: BootEnv) -> None:
    path = tmp_path / "grubenv"
    grub(path).save(env)
    assert grub(path).load() == env
    assert path.stat().st_size == 1024
    assert _no_temp_files(tmp_path)


@needs_editenv
def test_saved_variables_are_rauc_style_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    env = BootEnv.fresh(SLOTS).begin_install("B").activate("B").choose_boot(MAX_ATTEMPTS).env
    grub(path).save(env.choose_boot(MAX_ATTEMPTS).env)
    assert run_editenv(path, "list").splitlines() == [
        "ORDER=B A",
        "A_OK=1",
        "A_TRY=0",
        "B_OK=1",
        "B_TRY=2",
    ]


@needs_editenv
def test_reads_a_grubenv_written_by_grub_editenv(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    make_grubenv(
        path, "saved_entry=0", "B_TRY=1", "ORDER=B A", "A_OK=1", "B_OK=1", "A_TRY=0", "x=y=z"
    )
    assert grub(path).load() == BootEnv(
        ("B", "A"), {"A": SlotBoot(ok=True, tries=0), "B": SlotBoot(ok=True, tries=1)}
    )


@needs_editenv
def test_save_keeps_other_variables_and_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    make_grubenv(path, "saved_entry=gnulinux-advanced", "next_entry=")
    path.chmod(0o600)
    grub(path).save(BootEnv.fresh(SLOTS).begin_install("B"))
    listing = run_editenv(path, "list").splitlines()
    assert listing[:2] == ["saved_entry=gnulinux-advanced", "next_entry="]
    assert "B_OK=0" in listing
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _no_temp_files(tmp_path)


@needs_editenv
def test_save_through_a_symlink_replaces_the_target(tmp_path: Path) -> None:
    esp = tmp_path / "esp"
    esp.mkdir()
    real = esp / "grubenv"
    make_grubenv(real)
    link = tmp_path / "grubenv"
    link.symlink_to(real)
    env = BootEnv.fresh(SLOTS).begin_install("B").activate("B")
    grub(link).save(env)
    assert link.is_symlink()
    assert grub(real).load() == env
    assert _no_temp_files(esp)


@needs_editenv
def test_save_writes_the_block_in_place(tmp_path: Path) -> None:
    """The same file, the same length, nothing else in its directory: on FAT (an ESP) no
    cluster is allocated or freed, which a power cut could leave half done (scenario 4)."""
    esp = tmp_path / "esp"
    esp.mkdir()
    path = esp / "grubenv"
    before = make_grubenv(path)
    inode = path.stat().st_ino
    env = BootEnv.fresh(SLOTS).begin_install("B").activate("B")
    grub(path).save(env)
    after = path.read_bytes()
    assert path.stat().st_ino == inode
    assert len(after) == len(before) == 1024
    assert [p.name for p in esp.iterdir()] == ["grubenv"]
    assert grub(path).load() == env
    assert run_editenv(path, "list").splitlines()[0] == "ORDER=B A"


@needs_editenv
def test_save_keeps_a_larger_block_in_place(tmp_path: Path) -> None:
    """A block of another size (GRUB takes any multiple of 512) is rewritten at its own size."""
    path = tmp_path / "grubenv"
    path.write_bytes(b"# GRUB Environment Block\nsaved_entry=1\n".ljust(2048, b"#"))
    inode = path.stat().st_ino
    grub(path).save(BootEnv.fresh(SLOTS))
    assert path.stat().st_ino == inode
    assert path.stat().st_size == 2048
    assert run_editenv(path, "list").splitlines()[0] == "saved_entry=1"
    assert grub(path).load() == BootEnv.fresh(SLOTS)


def test_missing_grubenv_is_fresh_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    assert grub(path, editenv="/nonexistent/grub-editenv").load() == BootEnv.fresh(SLOTS)
    with pytest.raises(BootRecordMissing, match=rf"grubenv {re.escape(str(path))} does not exist"):
        grub(path).load(missing_ok=False)
    assert not path.exists()


@needs_editenv
def test_missing_grubenv_is_created_on_save(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grub(path).save(BootEnv.fresh(SLOTS))
    assert path.read_bytes().startswith(b"# GRUB Environment Block\n")
    assert grub(path).load() == BootEnv.fresh(SLOTS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@needs_editenv
def test_grubenv_without_sysupd_variables_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    make_grubenv(path, "saved_entry=0")
    assert grub(path).load() == BootEnv.fresh(SLOTS)


# -- bad grubenvs -----------------------------------------------------------------------------

_GOOD = {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}


def _vars(**changes: str | None) -> tuple[str, ...]:
    merged = {**_GOOD, **changes}
    return tuple(f"{key}={value}" for key, value in merged.items() if value is not None)


BAD_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "ok as a word": (_vars(A_OK="yes"), "A_OK='yes' must be 0 or 1"),
    "ok empty": (_vars(B_OK=""), "B_OK='' must be 0 or 1"),
    "negative tries": (_vars(A_TRY="-1"), "A_TRY='-1' must be a count"),
    "tries with a leading zero": (_vars(A_TRY="01"), "A_TRY='01' must be a count"),
    "tries as a word": (_vars(B_TRY="many"), "B_TRY='many' must be a count"),
    "tries with a space": (_vars(B_TRY=" 1"), "B_TRY=' 1' must be a count"),
    "unknown slot in order": (_vars(ORDER="A C"), "ORDER='A C' must list A, B once each"),
    "slot missing from order": (_vars(ORDER="A"), "ORDER='A' must list"),
    "double space in order": (_vars(ORDER="A  B"), "ORDER='A  B' must list"),
    "duplicate in order": (_vars(ORDER="A A B"), "ORDER='A A B' must list"),
    "no order": (_vars(ORDER=None), "missing ORDER"),
    "no B_TRY": (_vars(B_TRY=None), "missing B_TRY"),
    "only ORDER": (("ORDER=A B",), "missing A_OK, A_TRY, B_OK, B_TRY"),
    "value with a newline": (("saved_entry=a\nb", *_vars()), "line 2 is not KEY=VALUE: 'b'"),
}


@needs_editenv
@pytest.mark.parametrize("case", sorted(BAD_VARIABLES))
def test_bad_variables_are_a_boot_error_naming_them(tmp_path: Path, case: str) -> None:
    assignments, problem = BAD_VARIABLES[case]
    path = tmp_path / "grubenv"
    before = make_grubenv(path, *assignments)
    with pytest.raises(BootRecordUnusable) as caught:
        grub(path).load()
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert path.read_bytes() == before


@needs_editenv
def test_several_bad_variables_are_named_together(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    make_grubenv(path, *_vars(A_OK="2", B_TRY="x"))
    with pytest.raises(BootError, match="A_OK='2' must be 0 or 1; B_TRY='x' must be a count"):
        grub(path).load()


_INVALID_BLOCK = "failed (exit 1): grub-editenv: error: invalid environment block"


_VALID_BLOCK = (
    b"# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than "
    b"grub-editenv!!!\nORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=0\n"
).ljust(1024, b"#")

CORRUPT: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty (0 bytes)"),
    # Its header, and ORDER cut off: grub-editenv lists no variables from it, GRUB neither.
    "truncated": (_VALID_BLOCK[:100], "only 100 bytes, shorter than the 1024-byte block"),
    "short garbage": (b"# GRUB Envir", "only 12 bytes"),
    "garbage": (b"garbage" * 200, _INVALID_BLOCK),
    "zeros": (b"\0" * 1024, _INVALID_BLOCK),
}


@needs_editenv
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_grubenv_is_a_boot_error_on_load_and_save(tmp_path: Path, case: str) -> None:
    content, problem = CORRUPT[case]
    path = tmp_path / "grubenv"
    path.write_bytes(content)
    with pytest.raises(BootRecordUnusable) as caught:
        grub(path).load()
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    with pytest.raises(BootError, match=r"invalid environment block|bytes"):
        grub(path).save(BootEnv.fresh(SLOTS))
    assert path.read_bytes() == content  # never silently reset
    assert _no_temp_files(tmp_path)


@needs_editenv
def test_the_valid_block_of_the_corrupt_cases_is_one(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(_VALID_BLOCK)
    assert grub(path).load().order == ("A", "B")
    assert make_grubenv(tmp_path / "made", *_vars(B_OK="1")) == _VALID_BLOCK


def test_oversize_or_odd_grubenv(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(b"#" * (64 * 1024 + 1))
    with pytest.raises(BootError, match="larger than 65536 bytes"):
        grub(path).load()
    with pytest.raises(BootError, match="larger than 65536 bytes"):
        grub(path).save(BootEnv.fresh(SLOTS))
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(BootError, match="not a regular file"):
        grub(directory).load()


@needs_editenv
def test_save_refuses_other_slots(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    before = make_grubenv(path)
    with pytest.raises(BootError, match="refusing to store slots"):
        grub(path).save(BootEnv.fresh(("A", "C")))
    assert path.read_bytes() == before


def test_save_into_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "grubenv"
    with pytest.raises(BootError, match="cannot be created"):
        grub(path).save(BootEnv.fresh(SLOTS))


# -- recreating a missing or unusable grubenv ------------------------------------------------

UNUSABLE: dict[str, bytes | tuple[str, ...]] = {
    "empty": b"",
    "truncated": _VALID_BLOCK[:100],
    "garbage": random.Random(12).randbytes(1024),
    "partial variables": ("ORDER=A B", "A_OK=1"),
    "invalid values": _vars(ORDER="A C"),
}
"""Grubenvs GRUB boots as a fresh device: raw bytes, or the variables grub-editenv sets."""


def write_unusable(path: Path, case: str) -> bytes:
    """The grubenv of ``case`` at ``path``; its bytes."""
    content = UNUSABLE[case]
    if isinstance(content, tuple):
        return make_grubenv(path, *content)
    path.write_bytes(content)
    return content


@needs_editenv
@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_recreate_writes_a_new_block_and_keeps_the_unusable_one(tmp_path: Path, case: str) -> None:
    path = tmp_path / "grubenv"
    before = write_unusable(path, case)
    with pytest.raises(BootRecordUnusable):
        grub(path).load()
    env = BootEnv.recreated(SLOTS, "B")
    kept = grub(path).recreate(env)
    assert kept == f"{path}.unusable"
    assert Path(kept).read_bytes() == before
    assert run_editenv(path, "list").splitlines() == [
        "ORDER=B A",
        "A_OK=0",
        "A_TRY=0",
        "B_OK=1",
        "B_TRY=0",
    ]
    assert grub(path).load() == env
    assert path.stat().st_size == 1024
    assert _no_temp_files(tmp_path)


@needs_editenv
def test_recreate_of_a_missing_grubenv_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    assert grub(path).recreate(BootEnv.recreated(SLOTS, "A")) is None
    assert grub(path).load() == BootEnv.fresh(SLOTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grubenv"]


def test_recreate_that_cannot_write_leaves_the_grubenv_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(b"garbage" * 200)
    with pytest.raises(BootError, match=re.escape(INSTALL_HINT)):
        grub(path, editenv="/nonexistent/grub-editenv").recreate(BootEnv.fresh(SLOTS))
    parent_is_a_file = tmp_path / "file" / "grubenv"
    parent_is_a_file.parent.write_bytes(b"not a directory")
    with pytest.raises(BootError, match="cannot be moved aside: Not a directory"):
        grub(parent_is_a_file).recreate(BootEnv.fresh(SLOTS))
    assert path.read_bytes() == b"garbage" * 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "grubenv"]


@needs_editenv
def test_recreate_never_moves_a_directory_aside(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.mkdir()
    with pytest.raises(BootError, match="not a regular file, so not replaced"):
        grub(path).recreate(BootEnv.fresh(SLOTS))
    assert path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grubenv"]


# -- at start: a grubenv GRUB could not read --------------------------------------------------


def grub_device(
    tmp_path: Path,
    slot: str | None,
    repo: ReleaseRepository | None = None,
    *,
    grubenv: Path | None = None,
    editenv: str | None = None,
) -> Engine:
    """The engine of a device with the grub bootloader (``tmp_path/grubenv``, state in
    ``tmp_path/state``) that GRUB booted into ``slot``, as its kernel command line says; it
    trusts ``repo``, and runs ``editenv`` for grub-editenv when given."""
    grubenv = grubenv or tmp_path / "grubenv"
    cmdline = tmp_path / "cmdline"
    named = f" sysupd.slot={slot}" if slot else ""
    cmdline.write_text(f"BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro quiet{named}\n")
    changes = {"bootloader": "grub", "grubenv": str(grubenv), "factory_version": "1.0.0"}
    settings = device_settings(repo, **changes) if repo else apply_changes(Settings(), changes)
    boot = None if editenv is None else grub(grubenv, cmdline=cmdline, editenv=editenv)
    state = tmp_path / "state"
    return Engine.from_settings(state, settings, SystemClock(), cmdline=cmdline, bootloader=boot)


def _good_first_boot(tmp_path: Path, grubenv: Path | None = None) -> None:
    engine = grub_device(tmp_path, "A", grubenv=grubenv)
    assert engine.start().repaired is not None  # no grubenv yet
    assert engine.settle_boot(True, "").status is BootStatus.GOOD


def _listed(path: Path) -> list[str]:
    return run_editenv(path, "list").splitlines()


@needs_editenv
def test_start_creates_a_missing_grubenv_around_slot_a(tmp_path: Path) -> None:
    """A new device whose image has no grubenv: GRUB booted A as fresh, and the start writes
    the fresh record down, saying so; nothing rolled back, nothing interrupted."""
    path = tmp_path / "grubenv"
    engine = grub_device(tmp_path, "A")
    report = engine.start()
    assert report.repaired == (
        f"grubenv {path.resolve()} does not exist: created it with slot A (1.0.0) good and "
        "first, slot B marked bad until the next install"
    )
    assert (report.slot, report.version, report.rolled_back, report.interrupted) == (
        "A",
        "1.0.0",
        None,
        None,
    )
    assert grub(path).load() == BootEnv.fresh(SLOTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmdline", "grubenv", "state"]
    verdict = engine.settle_boot(True, "")
    assert (verdict.status, verdict.settled) == (BootStatus.GOOD, None)
    assert _listed(path) == ["ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]
    again = grub_device(tmp_path, "A").start()
    assert (again.repaired, again.rolled_back, again.interrupted) == (None, None, None)


@needs_editenv
def test_start_recreates_a_grubenv_lost_after_grub_booted_the_new_slot(tmp_path: Path) -> None:
    """2.0.0 was installed into B and GRUB booted it; then the grubenv was lost. B is the slot
    that runs: good and first, and its trial still ends with the health check."""
    repo = make_repo(tmp_path, "2.0.0")
    path = tmp_path / "grubenv"
    _good_first_boot(tmp_path)
    grub_device(tmp_path, "A", repo).install(BundleFile(bundle_file(repo, tmp_path, "2.0.0")))
    assert _listed(path)[0] == "ORDER=B A"
    path.unlink()
    engine = grub_device(tmp_path, "B", repo)
    report = engine.start()
    assert report.repaired == (
        f"grubenv {path.resolve()} does not exist: created it with slot B (2.0.0) good and "
        "first, slot A marked bad until the next install"
    )
    assert (report.slot, report.version, report.rolled_back, report.interrupted) == (
        "B",
        "2.0.0",
        None,
        None,
    )
    verdict = engine.settle_boot(True, "")
    assert verdict.settled is not None
    assert verdict.settled.result is Outcome.SUCCESS
    assert grub(path).load() == BootEnv(
        ("B", "A"), {"A": SlotBoot(ok=False, tries=0), "B": SlotBoot(ok=True, tries=0)}
    )
    assert grub_device(tmp_path, "B", repo).start().repaired is None


@needs_editenv
@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_start_recreates_an_unusable_grubenv(tmp_path: Path, case: str) -> None:
    path = tmp_path / "grubenv"
    _good_first_boot(tmp_path)
    before = write_unusable(path, case)
    with pytest.raises(BootRecordUnusable) as caught:
        grub(path).load()
    problem = str(caught.value).rstrip(".")
    engine = grub_device(tmp_path, "A")
    report = engine.start()
    kept = path.resolve().with_name("grubenv.unusable")
    assert report.repaired == (
        f"{problem}: recreated it with slot A (1.0.0) good and first, slot B marked bad until "
        f"the next install; the unusable copy is kept as {kept}"
    )
    assert (report.rolled_back, report.interrupted) == (None, None)
    assert kept.read_bytes() == before
    assert grub(path).load() == BootEnv.fresh(SLOTS)
    assert engine.settle_boot(True, "").status is BootStatus.GOOD
    assert _no_temp_files(tmp_path)


@needs_editenv
def test_a_failed_health_check_after_a_recreated_grubenv_is_only_reported(
    tmp_path: Path,
) -> None:
    """The recreated record has no other good slot to fall back to: the check's failure is
    reported, the booted slot kept."""
    path = tmp_path / "grubenv"
    write_unusable(path, "garbage")
    engine = grub_device(tmp_path, "A")
    assert engine.start().repaired is not None
    verdict = engine.settle_boot(False, "exit status 1")
    assert (verdict.status, verdict.reboot) == (BootStatus.UNHEALTHY, False)
    assert _listed(path) == ["ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]


@needs_editenv
def test_a_grubenv_lost_before_the_reboot_into_a_new_slot_abandons_it(tmp_path: Path) -> None:
    """Installed into B, not rebooted yet, and the grubenv is lost: GRUB boots A as fresh, so B
    (marked bad now) is no longer on trial; its install was complete, not interrupted."""
    repo = make_repo(tmp_path, "2.0.0")
    path = tmp_path / "grubenv"
    _good_first_boot(tmp_path)
    grub_device(tmp_path, "A", repo).install(BundleFile(bundle_file(repo, tmp_path, "2.0.0")))
    assert grub_device(tmp_path, "A", repo).status().to_json()["trial"] == "B"
    path.unlink()
    engine = grub_device(tmp_path, "A", repo)
    report = engine.start()
    assert report.repaired is not None
    assert (report.slot, report.rolled_back, report.interrupted) == ("A", None, None)
    status = engine.status().to_json()
    assert (status["trial"], status["next_boot"]) == (None, "A")
    assert status["slots"]["B"]["bootable"] is False


@needs_editenv
@pytest.mark.parametrize(("booted", "settled"), [("A", "interrupted"), ("B", "installed")])
def test_a_job_record_with_a_lost_grubenv(tmp_path: Path, booted: str, settled: str) -> None:
    """The power failed right after the switch to B, before the job record was cleared, and the
    grubenv was lost: if GRUB booted A the switch cannot be proven, so the install was
    interrupted; if it booted B (the grubenv lost after GRUB read it), the switch happened."""
    repo = make_repo(tmp_path, "2.0.0")
    path = tmp_path / "grubenv"
    _good_first_boot(tmp_path)
    installer = grub_device(tmp_path, "A", repo)
    installer.install(BundleFile(bundle_file(repo, tmp_path, "2.0.0")))
    record = installer.state_file.load()
    job = JobRecord("B", "2.0.0", "x", "t")
    installer.state_file.save(dataclasses.replace(record, job=job, last_result=None))
    path.unlink()
    engine = grub_device(tmp_path, booted, repo)
    report = engine.start()
    assert report.slot == booted
    assert f"created it with slot {booted} " in (report.repaired or "")
    assert report.rolled_back is None
    assert (report.interrupted is not None) == (settled == "interrupted")
    status = engine.status().to_json()
    assert status["last_result"]["result"] == settled
    assert status["trial"] == (None if booted == "A" else "B")
    assert grub(path).load().order[0] == booted


def _unchanged_by_a_refused_start(tmp_path: Path, engine: Engine, grubenv: Path) -> str:
    """Start ``engine``, which must fail; its message. Nothing was changed."""
    state = (tmp_path / "state" / "engine.json").read_bytes()
    before = grubenv.read_bytes() if grubenv.exists() else None
    with pytest.raises(BootError) as caught:
        engine.start()
    assert not isinstance(caught.value, BootRecordUnusable)
    assert (tmp_path / "state" / "engine.json").read_bytes() == state
    assert (grubenv.read_bytes() if grubenv.exists() else None) == before
    assert not grubenv.with_name("grubenv.unusable").exists()
    assert _no_temp_files(grubenv.parent)
    return str(caught.value)


@needs_editenv
def test_start_without_a_booted_slot_cannot_recreate_and_says_both_problems(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grubenv"
    _good_first_boot(tmp_path)
    write_unusable(path, "garbage")
    message = _unchanged_by_a_refused_start(tmp_path, grub_device(tmp_path, None), path)
    assert message.startswith(f"grub-editenv list on grubenv {path.resolve()} failed")
    assert (
        "invalid environment block; it cannot be recreated: the kernel command line names no "
        "sysupd.slot, so nothing says which slot booted"
    ) in message


@needs_editenv
def test_start_without_grub_editenv_cannot_create_and_says_both_problems(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grubenv"
    _good_first_boot(tmp_path)
    path.unlink()
    engine = grub_device(tmp_path, "A", editenv="/nonexistent/grub-editenv")
    message = _unchanged_by_a_refused_start(tmp_path, engine, path)
    assert message.startswith(
        f"grubenv {path.resolve()} does not exist; it cannot be recreated: "
        "/nonexistent/grub-editenv is needed"
    )
    assert message.endswith(INSTALL_HINT)


@needs_editenv
def test_start_on_a_read_only_esp_cannot_recreate_and_says_both_problems(
    tmp_path: Path, small_disk: Path
) -> None:
    """The ESP is mounted read-only (a real read-only filesystem: root's writes fail too)."""
    path = small_disk / "grubenv"
    _good_first_boot(tmp_path, grubenv=path)
    write_unusable(path, "partial variables")
    remount = ["mount", "-o", "remount,ro", str(small_disk)]
    done = subprocess.run(remount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"remounting read-only is not permitted here: {done.stderr.strip()}")
    message = _unchanged_by_a_refused_start(
        tmp_path, grub_device(tmp_path, "A", grubenv=path), path
    )
    assert message == (
        f"grubenv {path.resolve()}: missing A_TRY, B_OK, B_TRY (present: ORDER, A_OK); it "
        f"cannot be recreated: grubenv {path.resolve()}: cannot be moved aside: Read-only file "
        "system"
    )


# -- grub-editenv itself ----------------------------------------------------------------------


def test_missing_grub_editenv_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(b"# GRUB Environment Block\n" + b"#" * 999)
    boot = grub(path, editenv="/nonexistent/grub-editenv")
    for action in (boot.load, lambda: boot.save(BootEnv.fresh(SLOTS))):
        with pytest.raises(BootError) as caught:
            action()
        assert "/nonexistent/grub-editenv" in str(caught.value)
        assert INSTALL_HINT in str(caught.value)
        assert "apt-get install grub-common" in str(caught.value)
    assert _no_temp_files(tmp_path)


def test_hanging_grub_editenv_times_out(tmp_path: Path) -> None:
    slow = tmp_path / "slow-editenv"
    # An editenv that hangs (sleeps far past the timeout): the point of the test.
    slow.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    slow.chmod(0o755)
    path = tmp_path / "grubenv"
    path.write_bytes(_VALID_BLOCK)
    with pytest.raises(BootError, match=r"list on .* did not finish in 0.2 s"):
        grub(path, editenv=str(slow), timeout_s=0.2).load()


@pytest.mark.parametrize("names", [(), ("A", "A"), ("A", "B C"), ("1",), ("A-1",), ("x" * 33,)])
def test_slot_names_that_cannot_be_grub_variables(tmp_path: Path, names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        GrubBootloader(tmp_path / "grubenv", names)


# -- the kernel command line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "slot"),
    [
        ("BOOT_IMAGE=/A/vmlinuz root=PARTLABEL=root-A ro sysupd.slot=A quiet\n", "A"),
        ("root=/dev/sda3 rauc.slot=B", "B"),
        ("rauc.slot=B sysupd.slot=B", "B"),
        ("root=/dev/sda2 ro quiet splash\n", None),
        ("", None),
        ("xsysupd.slot=A sysupd.slots=B sysupd.slot", None),
    ],
)
def test_booted_slot_from_the_command_line(tmp_path: Path, line: str, slot: str | None) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(line)
    assert grub(tmp_path / "grubenv", cmdline=cmdline).booted_slot() == slot
    assert parse_cmdline_slot(line) == slot


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("sysupd.slot=A rauc.slot=B", "names more than one slot: A, B"),
        ("sysupd.slot=C", "names slot 'C'; configured are ['A', 'B']"),
        ("sysupd.slot=", "names slot ''"),
    ],
)
def test_bad_command_line_is_a_boot_error(tmp_path: Path, line: str, problem: str) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(line)
    with pytest.raises(BootError) as caught:
        grub(tmp_path / "grubenv", cmdline=cmdline).booted_slot()
    assert str(cmdline) in str(caught.value)
    assert problem in str(caught.value)


def test_unreadable_command_line_is_a_boot_error(tmp_path: Path) -> None:
    with pytest.raises(BootError, match=r"kernel command line .*missing.* cannot be read"):
        grub(tmp_path / "grubenv", cmdline=tmp_path / "missing").booted_slot()


# -- the grub.cfg snippet of docs/grub.md -----------------------------------------------------


def _doc_block() -> str:
    match = re.search(r"```grub\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match, "docs/grub.md has no grub block"
    return match.group(1)


def _selection_snippet() -> str:
    block = _doc_block()
    start = block.index("# >>> sysupd slot selection")
    end = block.index("# <<< sysupd slot selection")
    return block[start:end]


@requires("grub-script-check")
def test_doc_snippet_is_valid_grub_script(tmp_path: Path) -> None:
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(_doc_block())
    subprocess.run(["grub-script-check", str(cfg)], check=True, timeout=30)


def _cases() -> list[dict[str, str]]:
    cases: list[dict[str, str]] = [{}]  # never written by sysupd: fresh
    for order, a_ok, b_ok, a_try, b_try in itertools.product(
        ("A B", "B A"), "01", "01", "0123", "0123"
    ):
        cases.append({"ORDER": order, "A_OK": a_ok, "A_TRY": a_try, "B_OK": b_ok, "B_TRY": b_try})
    # Values sysupd never writes: the slot must not boot.
    for a_ok, a_try in (("yes", "0"), ("1", "01"), ("1", "x"), ("1", "-1"), ("1", "4")):
        cases.append({"ORDER": "A B", "A_OK": a_ok, "A_TRY": a_try, "B_OK": "0", "B_TRY": "0"})
    cases.append({})  # again after the others: nothing carries over between cases
    return cases


def _variables(env: BootEnv) -> dict[str, str]:
    variables = {"ORDER": " ".join(env.order)}
    for name in SLOTS:
        variables[f"{name}_OK"] = str(int(env.slots[name].ok))
        variables[f"{name}_TRY"] = str(env.slots[name].tries)
    return variables


def _expected(case: dict[str, str]) -> tuple[str | None, dict[str, str], BootEnv | None]:
    """The slot choose_boot picks, the variables left in the grubenv, the env sysupd reads."""
    if not case:
        choice = BootEnv.fresh(SLOTS).choose_boot(MAX_ATTEMPTS)
        return choice.slot, _variables(choice.env), choice.env
    if any(
        case[f"{name}_OK"] not in ("0", "1") or not re.fullmatch(r"0|[1-9]\d*", case[f"{name}_TRY"])
        for name in SLOTS
    ):
        return None, case, None  # the damaged slot never boots, and B is bad in these cases
    records = {
        name: SlotBoot(ok=case[f"{name}_OK"] == "1", tries=int(case[f"{name}_TRY"]))
        for name in SLOTS
    }
    choice = BootEnv(tuple(case["ORDER"].split()), records).choose_boot(MAX_ATTEMPTS)
    return choice.slot, _variables(choice.env) if choice.slot else case, choice.env


@requires("grub-emu", "grub-editenv", "mke2fs", "debugfs")
def test_doc_snippet_in_grub_emu_matches_choose_boot(tmp_path: Path) -> None:
    """Boot GRUB (emulated) once per case on a real ext2 image, with its real save_env."""
    cases = _cases()
    tree = tmp_path / "tree"
    (tree / "boot" / "grub").mkdir(parents=True)
    script = ["function sysupd_select {", _selection_snippet(), "}"]
    for number, case in enumerate(cases):
        case_dir = tree / "cases" / str(number)
        case_dir.mkdir(parents=True)
        make_grubenv(case_dir / "grubenv", *(f"{k}={v}" for k, v in case.items()))
        # GRUB's unset takes one name: clear every variable the previous case may have set.
        script += [f"unset {name}" for name in _variables(BootEnv.fresh(SLOTS))]
        script += [
            "unset sysupd_slot",
            f"set prefix=(hd0)/cases/{number}",
            "sysupd_select",
            f'echo "case {number} chose [${{sysupd_slot}}]"',
        ]
    script.append("halt")
    (tree / "boot" / "grub" / "grub.cfg").write_text("\n".join(script) + "\n")
    image = tmp_path / "disk.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", "-N", "1024", "-d", str(tree), str(image), "16M"],
        check=True,
        timeout=60,
    )
    device_map = tmp_path / "device.map"
    device_map.write_text(f"(hd0) {image}\n")
    emu = subprocess.run(
        ["grub-emu", "-m", str(device_map), "-r", "hd0", "-d", "/boot/grub"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "TERM": "dumb"},
    )
    output = emu.stdout.decode("utf-8", errors="replace")
    chosen = dict(re.findall(r"case (\d+) chose \[(\w*)\]", output))
    assert len(chosen) == len(cases), output[-2000:]

    after = tmp_path / "after"
    after.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump /cases {after}", str(image)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    for number, case in enumerate(cases):
        slot, variables, env = _expected(case)
        assert (chosen[str(number)] or None) == slot, f"case {number}: {case}"
        grubenv = after / "cases" / str(number) / "grubenv"
        listing = run_editenv(grubenv, "list").splitlines()
        assert dict(line.split("=", 1) for line in listing) == variables, f"case {number}: {case}"
        if env is not None:
            assert grub(grubenv).load() == env, f"case {number}: {case}"
