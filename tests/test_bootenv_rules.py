"""The boot environment's rules, step by step, as a bootloader and the service apply them."""

from __future__ import annotations

import pytest

from sysupd.core.bootenv import BootEnv, SlotBoot


def test_fresh_env_boots_the_first_slot() -> None:
    env = BootEnv.fresh(("A", "B"))
    choice = env.choose_boot(3)
    assert choice.slot == "A"
    assert choice.fell_back_from is None
    assert choice.env.slots["A"] == SlotBoot(ok=True, tries=1)
    assert choice.env.confirm("A").slots["A"] == SlotBoot(ok=True, tries=0)


def test_update_cycle_with_a_good_new_slot() -> None:
    env = BootEnv.fresh(("A", "B")).choose_boot(3).env.confirm("A")
    env = env.begin_install("B")
    assert env.choose_boot(3).slot == "A"  # an interrupted install never boots
    env = env.activate("B")
    assert env.order == ("B", "A")
    choice = env.choose_boot(3)
    assert choice.slot == "B"
    assert choice.env.slots["B"].tries == 1
    assert choice.env.confirm("B").slots["B"] == SlotBoot(ok=True, tries=0)


def test_failed_health_check_rolls_back() -> None:
    env = BootEnv.fresh(("A", "B")).begin_install("B").activate("B")
    env = env.choose_boot(3).env.reject("B")
    choice = env.choose_boot(3)
    assert choice.slot == "A"
    assert choice.fell_back_from is None  # B was sent to the back: A is preferred again
    assert env.order == ("A", "B")
    assert env.slots["B"].ok is False


def test_slot_that_never_comes_up_uses_its_attempts_then_falls_back() -> None:
    env = BootEnv.fresh(("A", "B")).begin_install("B").activate("B")
    for _ in range(3):
        choice = env.choose_boot(3)
        assert choice.slot == "B"
        env = choice.env  # crashed before confirming
    choice = env.choose_boot(3)
    assert choice.slot == "A"
    assert choice.fell_back_from == "B"


def test_no_bootable_slot() -> None:
    env = BootEnv(("A", "B"), {"A": SlotBoot(ok=False), "B": SlotBoot(ok=False)})
    choice = env.choose_boot(3)
    assert choice.slot is None
    assert choice.env == env


def test_mismatched_order_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        BootEnv(("A", "B"), {"A": SlotBoot()})
    with pytest.raises(ValueError, match="does not match"):
        BootEnv(("A", "A"), {"A": SlotBoot()})
    with pytest.raises(KeyError, match="unknown slot"):
        BootEnv.fresh(("A", "B")).activate("C")


def test_bootable_lists_good_slots_with_attempts_left_in_boot_order() -> None:
    env = BootEnv.fresh(("A", "B"))
    assert env.bootable(3) == ("A",)
    env = env.activate("B")
    assert env.bootable(3) == ("B", "A")
    for _ in range(3):
        env = env.choose_boot(3).env  # B never comes up
    assert env.bootable(3) == ("A",)
    assert env.reject("A").bootable(3) == ()
    assert env.confirm("B").bootable(3) == ("B", "A")


def test_marks_by_hand_follow_the_same_rules() -> None:
    env = BootEnv.fresh(("A", "B")).begin_install("B").activate("B").confirm("B")
    bad = env.reject("B")  # mark bad: unbootable, sent to the back
    assert (bad.order, bad.slots["B"].ok, bad.bootable(3)) == (("A", "B"), False, ("A",))
    good = bad.confirm("B")  # mark good: bootable again, its place in line kept
    assert (good.order, good.slots["B"]) == (("A", "B"), SlotBoot(ok=True, tries=0))
    active = good.activate("B")  # mark active: good and first in line
    assert (active.order, active.choose_boot(3).slot) == (("B", "A"), "B")


def test_a_recreated_record_trusts_only_the_slot_that_booted() -> None:
    env = BootEnv.recreated(("A", "B", "C"), "B")
    assert env.order == ("B", "A", "C")
    assert env.slots == {"A": SlotBoot(ok=False), "B": SlotBoot(ok=True), "C": SlotBoot(ok=False)}
    assert env.bootable(3) == ("B",)
    assert env.choose_boot(3).env.confirm("B") == env
    assert BootEnv.recreated(("A", "B"), "A") == BootEnv.fresh(("A", "B"))
    with pytest.raises(ValueError, match="'C' is not one of"):
        BootEnv.recreated(("A", "B"), "C")
