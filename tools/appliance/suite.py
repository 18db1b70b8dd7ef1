"""Every scenario of issue 12, in order, as ``bench/appliance.py`` runs them: the five of the
issue, then its bad inputs on the device (6).

Each one boots its own copy of the appliance disk and returns a one-line summary, or raises
``ScenarioFailed`` saying what the guest reported instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tools.appliance.badinput import refuse_bad_input
from tools.appliance.build import Appliance
from tools.appliance.online import update_online
from tools.appliance.powercuts import survive_power_cuts
from tools.appliance.scenarios import (
    rollback_on_failed_health_check,
    rollback_when_never_up,
    update_into_other_slot,
)

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scenario: its number, its title, how to run it, and its deadline."""

    number: int
    title: str
    run: Callable[[Appliance, Path], Awaitable[str]]
    limit_s: float = 1800.0
    """The longest it may take (a boot is about a minute under TCG)."""


SCENARIOS = (
    Scenario(1, "update into the other slot over a real reboot", update_into_other_slot),
    Scenario(2, "failed health check: rolled back", rollback_on_failed_health_check),
    Scenario(3, "a release that never comes up: GRUB falls back", rollback_when_never_up),
    Scenario(4, "power cuts during installs and trial boots", survive_power_cuts, 5400.0),
    Scenario(5, "an online update from nginx on the host", update_online),
    Scenario(6, "bad input: refused, survived, nothing written", refuse_bad_input),
)
