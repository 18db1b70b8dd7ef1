"""Marking a slot good, bad or active by hand (``sysupd mark``), as RAUC's ``mark-*`` commands do.

Responsibility: resolve the slot an operator names (a slot name, ``booted`` or ``other``), decide
whether the mark is safe, and apply it through the engine's bootloader adapter and state file with
the pure rules of ``core.bootenv`` (``confirm`` for good, ``reject`` for bad, ``activate`` for
active).

Invariants:

- everything happens under the engine's update lock, taken without waiting: while an update runs
  nothing is marked;
- every check runs before the first write, so a refused mark changes nothing; a mark that would
  change nothing writes nothing;
- no mark leaves the device without a slot a power-on could choose, and no mark makes a slot
  bootable that holds no complete release;
- marking the booted slot good while it is on trial settles the trial through the engine's own
  confirm path, exactly as a passing health check does: the result is "success" and the version
  floor rises.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sysupd.core.bootenv import BootEnv
from sysupd.core.versions import parse_version
from sysupd.engine.engine import Engine
from sysupd.engine.lock import UpdateLock
from sysupd.engine.state import EngineState, LastResult
from sysupd.errors import BadRequest, UpdateBusy

__all__ = ["MARKS", "SLOT_ALIASES", "MarkResult", "mark_slot"]

MARKS = ("good", "bad", "active")
SLOT_ALIASES = ("booted", "other")
"""Names that stand for a slot: the booted one, and the one that is not booted."""


@dataclass(frozen=True, slots=True)
class MarkResult:
    """What a mark did, and the boot state after it."""

    mark: str
    slot: str
    changed: bool
    """Whether the bootloader's record or the engine state changed."""
    message: str
    """One line for people, e.g. ``slot B marked active: it boots next (reboot to boot it)``."""
    booted: str | None
    next_boot: str
    reboot_needed: bool
    """Whether the slot that boots next is not the booted one."""
    trial: str | None
    floor: str | None
    settled: LastResult | None
    """The result of the trial that marking the booted slot good settled, if it was on trial."""


def mark_slot(engine: Engine, mark: str, slot: str) -> MarkResult:
    """Mark ``slot`` (a slot name, ``booted`` or ``other``) ``good``, ``bad`` or ``active``.

    Raises:
        BadRequest: an unknown mark or slot, or a mark that is refused (a slot that holds no
            complete release made good or active, the last bootable slot made bad); nothing
            changed.
        UpdateBusy: an update is running; nothing changed.
        BootError: the bootloader's record cannot be read or written.
        StateError: the engine state is unreadable.
    """
    if mark not in MARKS:
        raise BadRequest(f"unknown mark {mark!r}; use one of {', '.join(MARKS)}")
    try:
        with UpdateLock(engine.lock_path):  # only taking the lock raises UpdateBusy
            return _mark(engine, mark, slot)
    except UpdateBusy as exc:
        raise UpdateBusy(
            "an update is running (the update lock is held); mark the slot when it has finished"
        ) from exc


def _mark(engine: Engine, mark: str, named: str) -> MarkResult:
    state = engine.state_file.load()
    env = engine.bootloader.load()
    booted = engine.bootloader.booted_slot() or state.booted
    slot = _resolve(engine, named, booted)
    attempts = engine.settings.boot_attempts
    settled: LastResult | None = None
    if mark == "bad":
        after = env.reject(slot)
        if not after.bootable(attempts):
            if env.bootable(attempts) == (slot,):
                raise BadRequest(
                    f"slot {slot} is the only bootable slot; marking it bad would leave "
                    "nothing to boot"
                )
            raise BadRequest(f"marking slot {slot} bad would leave no slot to boot")
        _save_env(engine, env, after)
        if state.trial == slot:  # a rejected slot is no longer on trial
            engine.state_file.save(replace(state, trial=None))
    else:
        _check_holds_release(engine, state, slot, booted)
        if mark == "active":
            _save_env(engine, env, env.activate(slot))
        if slot == booted == state.booted and state.trial == slot:
            # As a passing health check settles it: the engine's own confirm path.
            settled = engine.confirm_locked(True, f"slot {slot} marked {mark} by hand")
        else:
            current = engine.bootloader.load()
            _save_env(engine, current, current.confirm(slot))
    return _result(engine, mark, slot, booted, state, env, settled)


def _resolve(engine: Engine, named: str, booted: str | None) -> str:
    names = tuple(engine.slots)
    if named in names:
        return named
    if named not in SLOT_ALIASES:
        raise BadRequest(
            f"unknown slot {named!r}; the slots are {', '.join(names)} "
            f"(or {' / '.join(SLOT_ALIASES)})"
        )
    if booted is None:
        raise BadRequest(
            f"'{named}' needs the booted slot, which is not known yet: run 'sysupd boot' "
            "(or start the service) first, or name the slot"
        )
    if named == "booted":
        return booted
    others = [name for name in names if name != booted]
    if len(others) != 1:
        raise BadRequest(
            f"'other' is ambiguous with the slots {', '.join(names)}; name the slot instead"
        )
    return others[0]


def _check_holds_release(engine: Engine, state: EngineState, slot: str, booted: str | None) -> None:
    """Refuse a slot that holds no complete release (never installed, or an install that did
    not finish), which must never be made bootable."""
    if state.job is not None and state.job.slot == slot:
        raise BadRequest(
            f"slot {slot} holds no installed release: the install of {state.job.version} into "
            "it did not complete"
        )
    record = state.slots.get(slot)
    if record is None:
        # Never installed into by sysupd: only the slot the device shipped with holds a system.
        factory = booted or next(iter(engine.slots))
        if slot == factory:
            return
        raise BadRequest(f"slot {slot} holds no installed release")
    if record.version is None:
        raise BadRequest(
            f"slot {slot} holds no installed release: an install into it did not complete"
        )


def _save_env(engine: Engine, before: BootEnv, after: BootEnv) -> None:
    if after != before:
        engine.bootloader.save(after)


def _result(
    engine: Engine,
    mark: str,
    slot: str,
    booted: str | None,
    before_state: EngineState,
    before_env: BootEnv,
    settled: LastResult | None,
) -> MarkResult:
    state = engine.state_file.load()
    env = engine.bootloader.load()
    bootable = env.bootable(engine.settings.boot_attempts)
    next_boot = bootable[0] if bootable else env.order[0]
    changed = env != before_env or state != before_state
    return MarkResult(
        mark=mark,
        slot=slot,
        changed=changed,
        message=_message(mark, slot, booted, next_boot, changed, before_state, state, settled),
        booted=booted,
        next_boot=next_boot,
        reboot_needed=booted is not None and next_boot != booted,
        trial=state.trial,
        floor=state.floor,
        settled=settled,
    )


def _message(
    mark: str,
    slot: str,
    booted: str | None,
    next_boot: str,
    changed: bool,
    before: EngineState,
    after: EngineState,
    settled: LastResult | None,
) -> str:
    done = f"slot {slot} marked {mark}" if changed else f"slot {slot} is already marked {mark}"
    if settled is not None:
        return f"{done}: version {settled.version} passed its trial (the floor is {after.floor})"
    if mark == "bad":
        if slot == booted:
            return f"{done}: slot {next_boot} boots at the next reboot"
        return f"{done}: it does not boot (slot {next_boot} boots next)"
    if mark == "active":
        line = f"{done}: it boots next" + (
            " (it is the booted slot)" if slot == booted else " (reboot to boot it)"
        )
        version = after.slots[slot].version if slot in after.slots else None
        if version and after.floor and parse_version(version) < parse_version(after.floor):
            line += f"; it holds {version}, below the version floor {after.floor}"
        if before.trial is not None and before.trial not in (slot, booted):
            line += f"; the update in slot {before.trial} no longer boots next"
        return line
    if after.trial == slot and slot != booted:
        return f"{done}: it stays on trial until it boots and passes its health check"
    if next_boot != slot:
        return f"{done}: slot {next_boot} still boots next"
    return done
