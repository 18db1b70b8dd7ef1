"""The ``grub`` bootloader adapter with the real ``grub-editenv``, and the grub.cfg snippet.

The snippet in ``docs/grub.md`` is run in ``grub-emu`` (when installed) against
``BootEnv.choose_boot`` for every combination of the variables.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sysupd.boot.grub import INSTALL_HINT, GrubBootloader, parse_cmdline_slot
from sysupd.core.bootenv import BootEnv, SlotBoot
from sysupd.errors import BootError, ConfigError
from tests.programs import requires
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
    with pytest.raises(BootError) as caught:
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


@needs_editenv
@pytest.mark.parametrize(
    "content",
    [b"", b"# GRUB Envir", b"garbage" * 200, b"\0" * 1024],
    ids=["empty", "truncated", "garbage", "zeros"],
)
def test_corrupt_grubenv_is_a_boot_error_on_load_and_save(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(content)
    with pytest.raises(
        BootError, match=rf"on grubenv {re.escape(str(path))} failed .*invalid environment block"
    ):
        grub(path).load()
    with pytest.raises(BootError, match="invalid environment block"):
        grub(path).save(BootEnv.fresh(SLOTS))
    assert path.read_bytes() == content  # never silently reset
    assert _no_temp_files(tmp_path)


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
    path.write_bytes(b"x")
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
