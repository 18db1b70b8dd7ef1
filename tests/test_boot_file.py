"""The ``file`` bootloader adapter on real files: round trips, a rollback cycle, bad files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sysupd.boot.adapter import Bootloader, MemoryBootloader, make_bootloader
from sysupd.boot.filestate import MAX_STATE_BYTES, FileBootloader
from sysupd.boot.grub import GrubBootloader
from sysupd.core.bootenv import BootEnv, SlotBoot
from sysupd.core.settings import Settings
from sysupd.engine.engine import Engine
from sysupd.errors import BootError, BootRecordMissing, BootRecordUnusable, ConfigError
from sysupd.system.clock import SystemClock

SLOTS = ("A", "B")
MAX_ATTEMPTS = 3


def env_shapes() -> list[BootEnv]:
    """Every kind of environment the rules produce for two slots."""
    fresh = BootEnv.fresh(SLOTS)
    booted = fresh.choose_boot(MAX_ATTEMPTS).env
    confirmed = booted.confirm("A")
    installing = confirmed.begin_install("B")
    active = installing.activate("B")
    trial = active.choose_boot(MAX_ATTEMPTS).env
    exhausted = trial.choose_boot(MAX_ATTEMPTS).env.choose_boot(MAX_ATTEMPTS).env
    fallen_back = exhausted.choose_boot(MAX_ATTEMPTS).env
    rejected = trial.reject("B")
    nothing_bootable = BootEnv(SLOTS, {"A": SlotBoot(ok=False), "B": SlotBoot(ok=False, tries=7)})
    return [
        fresh,
        booted,
        confirmed,
        installing,
        active,
        trial,
        exhausted,
        fallen_back,
        rejected,
        trial.confirm("B"),
        nothing_bootable,
    ]


def simulate_rollback_cycle(
    make: Callable[[Path, tuple[str, ...]], Bootloader], store: Path
) -> None:
    """Install B, power on into B, fail its health check, power on again: A boots.

    Every step goes through a new adapter instance, as after a reboot.
    """

    def boot() -> Bootloader:
        return make(store, SLOTS)

    def power_on() -> str | None:
        choice = boot().load().choose_boot(MAX_ATTEMPTS)
        boot().save(choice.env)
        return choice.slot

    assert power_on() == "A"
    boot().save(boot().load().confirm("A"))

    boot().save(boot().load().begin_install("B"))
    assert boot().load().slots["B"] == SlotBoot(ok=False, tries=0)
    assert power_on() == "A"  # an interrupted install never boots
    boot().save(boot().load().confirm("A"))

    boot().save(boot().load().begin_install("B"))
    boot().save(boot().load().activate("B"))
    assert boot().load().order == ("B", "A")

    assert power_on() == "B"
    assert boot().load().slots["B"] == SlotBoot(ok=True, tries=1)
    boot().save(boot().load().reject("B"))  # health check failed

    assert power_on() == "A"
    final = boot().load()
    assert final.order == ("A", "B")
    assert final.slots == {"A": SlotBoot(ok=True, tries=1), "B": SlotBoot(ok=False, tries=0)}


def test_rollback_cycle(tmp_path: Path) -> None:
    simulate_rollback_cycle(FileBootloader, tmp_path / "bootenv.json")


@pytest.mark.parametrize("env", env_shapes())
def test_round_trip(tmp_path: Path, env: BootEnv) -> None:
    path = tmp_path / "bootenv.json"
    FileBootloader(path, SLOTS).save(env)
    assert FileBootloader(path, SLOTS).load() == env
    assert path.stat().st_mode & 0o777 == 0o644
    assert list(tmp_path.iterdir()) == [path]  # no temp files left


def test_file_format(tmp_path: Path) -> None:
    path = tmp_path / "bootenv.json"
    FileBootloader(path, SLOTS).save(BootEnv.fresh(SLOTS).begin_install("B").activate("B"))
    assert json.loads(path.read_text()) == {
        "format": 1,
        "order": ["B", "A"],
        "slots": {"A": {"ok": True, "tries": 0}, "B": {"ok": True, "tries": 0}},
    }


def test_missing_file_is_fresh_and_not_written(tmp_path: Path) -> None:
    path = tmp_path / "bootenv.json"
    boot = FileBootloader(path, SLOTS)
    assert boot.load() == BootEnv.fresh(SLOTS)
    with pytest.raises(BootRecordMissing, match=f"{re.escape(str(path))} does not exist"):
        boot.load(missing_ok=False)
    assert not path.exists()
    assert boot.booted_slot() is None


def _valid() -> dict[str, object]:
    return {
        "format": 1,
        "order": ["A", "B"],
        "slots": {"A": {"ok": True, "tries": 0}, "B": {"ok": False, "tries": 0}},
    }


def _with(**changes: object) -> bytes:
    document = _valid()
    for key, value in changes.items():
        if value is _DROP:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


def _slot(name: str, record: object) -> bytes:
    document = _valid()
    slots = dict(document["slots"])  # type: ignore[call-overload]
    slots[name] = record
    document["slots"] = slots
    return json.dumps(document).encode()


_DROP = object()

BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "not valid JSON"),
    "truncated": (json.dumps(_valid()).encode()[:30], "not valid JSON"),
    "binary garbage": (b"\x00\xff\xfe garbage", "not valid JSON"),
    "not an object": (b"[1, 2]", "expected a JSON object, found list"),
    "no slots key": (_with(slots=_DROP), "exactly the keys"),
    "extra key": (_with(extra=1), "exactly the keys"),
    "newer format": (_with(format=2), "format 2 is not supported"),
    "format as text": (_with(format="1"), "format '1' is not supported"),
    "format as bool": (_with(format=True), "format True is not supported"),
    "order not a list": (_with(order="A B"), "'order' must be a list"),
    "order with a number": (_with(order=["A", 2]), "'order' must be a list"),
    "order with an unknown slot": (_with(order=["A", "C"]), "configured slots"),
    "order with a duplicate": (_with(order=["A", "A"]), "configured slots"),
    "order missing a slot": (_with(order=["A"]), "configured slots"),
    "slots not an object": (_with(slots=[]), "'slots' must be an object"),
    "slots with an extra slot": (
        _with(slots={"A": {"ok": True, "tries": 0}, "B": {"ok": True, "tries": 0}, "C": {}}),
        "'slots' has ['A', 'B', 'C']",
    ),
    "record not an object": (_slot("A", True), "'slots'.A must be an object"),
    "record with an extra key": (_slot("A", {"ok": True, "tries": 0, "x": 1}), "exactly 'ok'"),
    "ok as a number": (_slot("A", {"ok": 1, "tries": 0}), "'slots'.A.ok must be true or false"),
    "ok as text": (_slot("B", {"ok": "false", "tries": 0}), "'slots'.B.ok must be"),
    "negative tries": (_slot("A", {"ok": True, "tries": -1}), "'slots'.A.tries must be"),
    "fractional tries": (_slot("A", {"ok": True, "tries": 1.5}), "'slots'.A.tries must be"),
    "tries as bool": (_slot("A", {"ok": True, "tries": True}), "'slots'.A.tries must be"),
    "tries as text": (_slot("A", {"ok": True, "tries": "0"}), "'slots'.A.tries must be"),
    "oversize": (
        json.dumps(_valid()).encode() + b" " * MAX_STATE_BYTES,
        f"larger than {MAX_STATE_BYTES} bytes",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_a_boot_error_and_left_untouched(tmp_path: Path, case: str) -> None:
    content, problem = BAD_FILES[case]
    path = tmp_path / "bootenv.json"
    path.write_bytes(content)
    with pytest.raises(BootRecordUnusable) as caught:
        FileBootloader(path, SLOTS).load()
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert path.read_bytes() == content


def test_recreate_keeps_the_unusable_file(tmp_path: Path) -> None:
    path = tmp_path / "bootenv.json"
    path.write_bytes(b'{"format": 1, "ord')
    boot = FileBootloader(path, SLOTS)
    env = BootEnv.recreated(SLOTS, "B")
    assert boot.recreate(env) == f"{path}.unusable"
    assert (tmp_path / "bootenv.json.unusable").read_bytes() == b'{"format": 1, "ord'
    assert boot.load() == env
    path.unlink()
    assert boot.recreate(env) is None
    assert boot.load() == env


def test_start_never_recreates_the_file_bootloaders_record(tmp_path: Path) -> None:
    """sysupd chooses the slot from this file itself: no firmware booted around the damage, so
    the start stops and names it, for an operator to look at."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "bootenv.json").write_bytes(b"{}")
    engine = Engine.from_settings(state, Settings(), SystemClock())
    with pytest.raises(BootRecordUnusable, match="expected exactly the keys format"):
        engine.start()
    assert (state / "bootenv.json").read_bytes() == b"{}"
    assert not (state / "bootenv.json.unusable").exists()


def test_other_slot_names_than_configured(tmp_path: Path) -> None:
    path = tmp_path / "bootenv.json"
    FileBootloader(path, SLOTS).save(BootEnv.fresh(SLOTS))
    before = path.read_bytes()
    with pytest.raises(BootError, match=r"configured slots \['X', 'Y'\]"):
        FileBootloader(path, ("X", "Y")).load()
    assert path.read_bytes() == before


def test_directory_in_place_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bootenv.json"
    path.mkdir()
    with pytest.raises(BootError, match="cannot be read"):
        FileBootloader(path, SLOTS).load()
    with pytest.raises(BootError, match="cannot be written"):
        FileBootloader(path, SLOTS).save(BootEnv.fresh(SLOTS))
    assert path.is_dir()


def test_save_refuses_other_slots_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bootenv.json"
    boot = FileBootloader(path, SLOTS)
    boot.save(BootEnv.fresh(SLOTS))
    before = path.read_bytes()
    with pytest.raises(BootError, match="refusing to store slots"):
        boot.save(BootEnv.fresh(("A", "C")))
    assert path.read_bytes() == before


def test_save_into_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "bootenv.json"
    with pytest.raises(BootError, match=f"{re.escape(str(path))}: cannot be written"):
        FileBootloader(path, SLOTS).save(BootEnv.fresh(SLOTS))


@pytest.mark.parametrize("names", [(), ("A", "A"), ("A", ""), ("A", "B C")])
def test_bad_slot_names_are_a_config_error(tmp_path: Path, names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        FileBootloader(tmp_path / "bootenv.json", names)


def test_make_bootloader(tmp_path: Path) -> None:
    file_boot = make_bootloader("file", tmp_path, SLOTS, None)
    assert isinstance(file_boot, FileBootloader)
    assert file_boot.name == "file"
    assert file_boot.path == tmp_path / "bootenv.json"

    grub_boot = make_bootloader("grub", tmp_path, SLOTS, tmp_path / "grubenv", tmp_path / "cmd")
    assert isinstance(grub_boot, GrubBootloader)
    assert grub_boot.name == "grub"
    assert grub_boot.grubenv == tmp_path / "grubenv"
    assert grub_boot.cmdline == tmp_path / "cmd"

    with pytest.raises(ConfigError, match="needs the path of the grubenv"):
        make_bootloader("grub", tmp_path, SLOTS, None)
    with pytest.raises(ConfigError, match="unknown bootloader 'uboot'; known: file, grub"):
        make_bootloader("uboot", tmp_path, SLOTS, None)


def test_memory_twin_records_saves_and_can_fail() -> None:
    boot = MemoryBootloader(SLOTS, booted="B")
    assert boot.load() == BootEnv.fresh(SLOTS)
    env = boot.load().begin_install("B")
    boot.save(env)
    assert boot.saved == [env]
    assert boot.load() == env
    assert boot.booted_slot() == "B"
    with pytest.raises(BootError, match="refusing"):
        boot.save(BootEnv.fresh(("X", "Y")))
    boot.fail_with = BootError("store is gone")
    with pytest.raises(BootError, match="store is gone"):
        boot.load()


def test_memory_twin_can_hold_an_unusable_record() -> None:
    boot = MemoryBootloader(SLOTS, booted="B")
    with pytest.raises(BootRecordMissing):
        boot.load(missing_ok=False)
    boot.damage = "ORDER is 'A C'"
    with pytest.raises(BootRecordUnusable, match="ORDER is 'A C'"):
        boot.load()
    with pytest.raises(BootError, match="refusing to edit an unusable record"):
        boot.save(BootEnv.fresh(SLOTS))
    assert boot.recreate(BootEnv.recreated(SLOTS, "B")) == "memory: kept"
    assert boot.kept == "ORDER is 'A C'"
    assert boot.load() == BootEnv.recreated(SLOTS, "B")  # the damage is gone


def test_engine_rules_recreate_a_firmwares_unusable_record(tmp_path: Path) -> None:
    """The start's rule with the in-memory twin as the firmware's store: the slot that booted
    is good and first, the rest bad, and the report says what was wrong."""
    boot = MemoryBootloader(SLOTS, booted="B")
    boot.damage = "truncated"
    engine = Engine.from_settings(tmp_path / "state", Settings(), SystemClock(), bootloader=boot)
    report = engine.start()
    assert report.repaired == (
        "memory: truncated: recreated it with slot B (0.0.0) good and first, slot A marked bad "
        "until the next install; the unusable copy is kept as memory: kept"
    )
    assert boot.saved == [BootEnv.recreated(SLOTS, "B")]
    boot.booted, boot.damage = None, "garbage"
    with pytest.raises(BootError, match="garbage; it cannot be recreated: the kernel command"):
        engine.start()
