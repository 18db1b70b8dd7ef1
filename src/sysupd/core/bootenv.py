"""The boot environment's rules: which slot boots, which is on trial, and rolling back.

Modelled on RAUC's GRUB scheme, so that the ``grub`` adapter stores exactly these values in a
grubenv (``ORDER``, ``<slot>_OK``, ``<slot>_TRY``) and the ``file`` adapter in a JSON file, while
the decisions live here, free of I/O:

- at power-on the first slot in ``order`` that is good (``ok``) and has attempts left boots, and
  its attempt counter goes up (``choose_boot``);
- a booted slot whose health check passes is confirmed: its counter is reset (``confirm``);
- an install first marks the target bad (``begin_install``), and only a fully verified payload
  makes it good and first in line (``activate``) — so an interrupted install never boots;
- a slot that fails its health check is marked bad and sent to the back (``reject``); a slot that
  never comes up uses its attempts up, and the next good slot boots by itself;
- an operator's marks (``sysupd mark``) apply the same rules (``confirm``, ``reject``,
  ``activate``), and ``bootable`` says which slots a power-on could still choose;
- a record the firmware could not read (lost, corrupt) is rebuilt around the slot that booted
  anyway (``recreated``): it is the one slot known to work, and nothing says what the others
  hold, so they are bad until an install rewrites them.

Invariant: every slot named in ``order`` has an entry in ``slots`` and vice versa.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

__all__ = ["BootChoice", "BootEnv", "SlotBoot"]


@dataclass(frozen=True, slots=True)
class SlotBoot:
    """One slot's boot record."""

    ok: bool = True
    tries: int = 0
    """Boots started since the slot was last confirmed."""


@dataclass(frozen=True, slots=True)
class BootChoice:
    """What ``choose_boot`` decided."""

    slot: str | None
    """The slot to boot, ``None`` when no slot is bootable."""
    fell_back_from: str | None
    """The preferred slot that was passed over (bad or out of attempts), if any."""
    env: BootEnv
    """The environment with the chosen slot's attempt counted."""


@dataclass(frozen=True, slots=True)
class BootEnv:
    """The slots' boot order and records."""

    order: tuple[str, ...]
    slots: Mapping[str, SlotBoot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.order) != set(self.slots) or len(set(self.order)) != len(self.order):
            raise ValueError(f"boot order {self.order} does not match slots {sorted(self.slots)}")
        object.__setattr__(self, "slots", MappingProxyType(dict(self.slots)))

    @classmethod
    def fresh(cls, names: tuple[str, ...]) -> BootEnv:
        """A new environment: the first slot good and preferred, the others empty (bad)."""
        return cls(names, {name: SlotBoot(ok=(i == 0)) for i, name in enumerate(names)})

    @classmethod
    def recreated(cls, names: tuple[str, ...], booted: str) -> BootEnv:
        """The record rebuilt while ``booted`` runs: it good and first with no attempts counted
        (the health check's ``confirm`` resets them anyway), every other slot bad, after it in
        configured order. ``recreated(names, names[0])`` is ``fresh(names)``.

        Raises:
            ValueError: ``booted`` is not one of ``names``.
        """
        if booted not in names:
            raise ValueError(f"booted slot {booted!r} is not one of {names}")
        order = (booted, *[name for name in names if name != booted])
        return cls(order, {name: SlotBoot(ok=(name == booted)) for name in names})

    def choose_boot(self, max_attempts: int) -> BootChoice:
        """What a bootloader does at power-on."""
        preferred = self.order[0]
        for name in self.order:
            record = self.slots[name]
            if record.ok and record.tries < max_attempts:
                env = self._with(name, replace(record, tries=record.tries + 1))
                return BootChoice(name, preferred if name != preferred else None, env)
        return BootChoice(None, preferred, self)

    def confirm(self, name: str) -> BootEnv:
        """The booted slot passed its health check."""
        return self._with(name, SlotBoot(ok=True, tries=0))

    def reject(self, name: str) -> BootEnv:
        """The slot failed its health check: never boot it again until reinstalled."""
        env = self._with(name, SlotBoot(ok=False, tries=0))
        return replace(env, order=(*[n for n in self.order if n != name], name))

    def begin_install(self, target: str) -> BootEnv:
        """Before the first byte is written: the target must not boot."""
        env = self._with(target, SlotBoot(ok=False, tries=0))
        return replace(env, order=(*[n for n in self.order if n != target], target))

    def activate(self, target: str) -> BootEnv:
        """After the whole payload verified: boot the target next, on trial."""
        env = self._with(target, SlotBoot(ok=True, tries=0))
        return replace(env, order=(target, *[n for n in self.order if n != target]))

    def bootable(self, max_attempts: int) -> tuple[str, ...]:
        """The slots a power-on could still choose (good, attempts left), in boot order."""
        return tuple(
            name
            for name in self.order
            if self.slots[name].ok and self.slots[name].tries < max_attempts
        )

    def is_preferred(self, name: str) -> bool:
        """Whether ``name`` is first in line."""
        return self.order[0] == name

    def _with(self, name: str, record: SlotBoot) -> BootEnv:
        if name not in self.slots:
            raise KeyError(f"unknown slot {name!r}")
        return replace(self, slots={**self.slots, name: record})
