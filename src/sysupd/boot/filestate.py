"""The ``file`` bootloader adapter: the boot environment in a JSON state file.

Used where sysupd itself chooses the slot at start-up (application trees, containers), so no
firmware reports a booted slot. The file reads::

    {"format": 1, "order": ["A", "B"],
     "slots": {"A": {"ok": true, "tries": 0}, "B": {"ok": false, "tries": 0}}}

Invariants:

- the file is only ever replaced whole (``fsutil.atomic_write``): a crash leaves the old or the
  new environment, never a mix;
- a missing file loads as ``BootEnv.fresh`` and is not written until ``save``;
- anything else that is not exactly this shape for exactly the configured slots (corrupt,
  truncated, wrong types, another format, over 64 KiB, other slot names) is a ``BootError``
  naming the file and the problem, and the file is left as it is for the operator to inspect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from sysupd.core.bootenv import BootEnv, SlotBoot
from sysupd.errors import BootError, ConfigError
from sysupd.fsutil import FileTooLargeError, atomic_write, read_capped

__all__ = ["FORMAT", "MAX_STATE_BYTES", "FileBootloader"]

FORMAT = 1
"""The state file format this module reads and writes."""

MAX_STATE_BYTES = 64 * 1024
"""A boot state file is a few hundred bytes; anything over this is not one."""


class FileBootloader:
    """Keeps the boot environment in a JSON file written atomically."""

    name = "file"

    def __init__(self, path: Path, slot_names: tuple[str, ...]) -> None:
        """Raises: ConfigError: the slot names are empty, repeated or contain whitespace."""
        if not slot_names or len(set(slot_names)) != len(slot_names):
            raise ConfigError(f"boot slots must be distinct names, got {slot_names}")
        for name in slot_names:
            if not name or name.split() != [name]:
                raise ConfigError(f"boot slot name {name!r} must be non-empty, without spaces")
        self.path = path
        self.slot_names = slot_names

    def load(self) -> BootEnv:
        """The stored environment, or ``BootEnv.fresh`` if the file does not exist.

        Raises:
            BootError: the file cannot be read, or is not a valid state for the configured slots.
        """
        try:
            raw = read_capped(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return BootEnv.fresh(self.slot_names)
        except FileTooLargeError as exc:
            raise self._error(f"larger than {exc.max_bytes} bytes, so not a boot state") from exc
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror}") from exc
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._error(f"not valid JSON (truncated or corrupt?): {exc}") from exc
        return self._parse(document)

    def save(self, env: BootEnv) -> None:
        """Replace the file with ``env``.

        Raises:
            BootError: ``env`` names other slots than configured, or the file cannot be written.
        """
        if set(env.order) != set(self.slot_names):
            raise self._error(
                f"refusing to store slots {list(env.order)}; configured are {list(self.slot_names)}"
            )
        document = {
            "format": FORMAT,
            "order": list(env.order),
            "slots": {
                name: {"ok": env.slots[name].ok, "tries": env.slots[name].tries}
                for name in self.slot_names
            },
        }
        data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            raise self._error(f"cannot be written: {exc.strerror or exc}") from exc

    def booted_slot(self) -> str | None:
        """Always ``None``: sysupd chooses the slot itself from this file."""
        return None

    def _parse(self, document: object) -> BootEnv:
        if not isinstance(document, dict):
            raise self._error(f"expected a JSON object, found {type(document).__name__}")
        keys = set(document)
        if keys != {"format", "order", "slots"}:
            raise self._error(
                f"expected exactly the keys format, order, slots; found {sorted(keys)}"
            )
        fmt = document["format"]
        if type(fmt) is not int or fmt != FORMAT:
            raise self._error(f"format {fmt!r} is not supported; this sysupd reads format {FORMAT}")
        order = document["order"]
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            raise self._error(f"'order' must be a list of slot names, not {order!r}")
        if sorted(order) != sorted(self.slot_names):
            raise self._error(
                f"'order' {order} does not list the configured slots {list(self.slot_names)} "
                "once each"
            )
        slots = document["slots"]
        if not isinstance(slots, dict):
            raise self._error(f"'slots' must be an object, not {type(slots).__name__}")
        if set(slots) != set(self.slot_names):
            raise self._error(
                f"'slots' has {sorted(slots)}; configured are {list(self.slot_names)}"
            )
        records = {name: self._record(name, slots[name]) for name in self.slot_names}
        return BootEnv(tuple(order), records)

    def _record(self, name: str, value: object) -> SlotBoot:
        where = f"'slots'.{name}"
        if not isinstance(value, Mapping) or set(value) != {"ok", "tries"}:
            raise self._error(f"{where} must be an object with exactly 'ok' and 'tries'")
        ok, tries = value["ok"], value["tries"]
        if not isinstance(ok, bool):
            raise self._error(f"{where}.ok must be true or false, not {ok!r}")
        if type(tries) is not int or tries < 0:
            raise self._error(f"{where}.tries must be a whole number >= 0, not {tries!r}")
        return SlotBoot(ok=ok, tries=tries)

    def _error(self, problem: str) -> BootError:
        return BootError(f"boot state file {self.path}: {problem}")
