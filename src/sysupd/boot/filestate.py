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
  truncated, wrong types, another format, over 64 KiB, other slot names) is a
  ``BootRecordUnusable`` naming the file and the problem, and the file is left as it is for the
  operator to inspect. The engine never recreates it: sysupd itself chooses the slot from it, so
  no firmware has booted around the damage (``recreate`` is there for the seam's sake, and keeps
  the file beside the new one as ``bootenv.json.unusable``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from sysupd.core.bootenv import BootEnv, SlotBoot
from sysupd.errors import BootError, BootRecordMissing, BootRecordUnusable, ConfigError
from sysupd.fsutil import FileTooLargeError, atomic_write, fsync_dir, read_capped

__all__ = ["FORMAT", "KEPT_SUFFIX", "MAX_STATE_BYTES", "FileBootloader"]

FORMAT = 1
"""The state file format this module reads and writes."""

MAX_STATE_BYTES = 64 * 1024
"""A boot state file is a few hundred bytes; anything over this is not one."""

KEPT_SUFFIX = ".unusable"
"""Added to the file's name for the unusable copy ``recreate`` keeps."""


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

    def load(self, *, missing_ok: bool = True) -> BootEnv:
        """The stored environment, or ``BootEnv.fresh`` if the file does not exist.

        Raises:
            BootRecordMissing: the file does not exist, and not ``missing_ok``.
            BootRecordUnusable: the file is not a valid state for the configured slots.
            BootError: the file cannot be read.
        """
        try:
            raw = read_capped(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            if not missing_ok:
                raise BootRecordMissing(f"boot state file {self.path} does not exist") from None
            return BootEnv.fresh(self.slot_names)
        except FileTooLargeError as exc:
            raise self._unusable(f"larger than {exc.max_bytes} bytes, so not a boot state") from exc
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror}") from exc
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._unusable(f"not valid JSON (truncated or corrupt?): {exc}") from exc
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

    def recreate(self, env: BootEnv) -> str | None:
        """Replace a missing or unusable file with ``env``, the old one kept beside it as
        ``bootenv.json.unusable``; that name, ``None`` if there was no file.

        Raises:
            BootError: ``env`` names other slots, or the directory cannot be written.
        """
        kept = self.path.with_name(self.path.name + KEPT_SUFFIX)
        try:
            os.replace(self.path, kept)
            fsync_dir(self.path.parent)
        except FileNotFoundError:
            self.save(env)
            return None
        except OSError as exc:
            raise self._error(f"cannot be moved aside: {exc.strerror or exc}") from exc
        try:
            self.save(env)
        except BootError:
            with contextlib.suppress(OSError):
                os.replace(kept, self.path)
            raise
        return str(kept)

    def booted_slot(self) -> str | None:
        """Always ``None``: sysupd chooses the slot itself from this file."""
        return None

    def _parse(self, document: object) -> BootEnv:
        if not isinstance(document, dict):
            raise self._unusable(f"expected a JSON object, found {type(document).__name__}")
        keys = set(document)
        if keys != {"format", "order", "slots"}:
            raise self._unusable(
                f"expected exactly the keys format, order, slots; found {sorted(keys)}"
            )
        fmt = document["format"]
        if type(fmt) is not int or fmt != FORMAT:
            raise self._unusable(
                f"format {fmt!r} is not supported; this sysupd reads format {FORMAT}"
            )
        order = document["order"]
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            raise self._unusable(f"'order' must be a list of slot names, not {order!r}")
        if sorted(order) != sorted(self.slot_names):
            raise self._unusable(
                f"'order' {order} does not list the configured slots {list(self.slot_names)} "
                "once each"
            )
        slots = document["slots"]
        if not isinstance(slots, dict):
            raise self._unusable(f"'slots' must be an object, not {type(slots).__name__}")
        if set(slots) != set(self.slot_names):
            raise self._unusable(
                f"'slots' has {sorted(slots)}; configured are {list(self.slot_names)}"
            )
        records = {name: self._record(name, slots[name]) for name in self.slot_names}
        return BootEnv(tuple(order), records)

    def _record(self, name: str, value: object) -> SlotBoot:
        where = f"'slots'.{name}"
        if not isinstance(value, Mapping) or set(value) != {"ok", "tries"}:
            raise self._unusable(f"{where} must be an object with exactly 'ok' and 'tries'")
        ok, tries = value["ok"], value["tries"]
        if not isinstance(ok, bool):
            raise self._unusable(f"{where}.ok must be true or false, not {ok!r}")
        if type(tries) is not int or tries < 0:
            raise self._unusable(f"{where}.tries must be a whole number >= 0, not {tries!r}")
        return SlotBoot(ok=ok, tries=tries)

    def _error(self, problem: str) -> BootError:
        return BootError(f"boot state file {self.path}: {problem}")

    def _unusable(self, problem: str) -> BootRecordUnusable:
        return BootRecordUnusable(f"boot state file {self.path}: {problem}")
