"""The ``grub`` bootloader adapter: the boot environment in a grubenv, RAUC-style.

GRUB reads the environment at power-on and picks the slot itself (``docs/grub.md`` has the
``grub.cfg`` snippet); sysupd reads and writes the same variables through ``grub-editenv``::

    ORDER=A B       the boot order, space-separated
    A_OK=1          1: good (may boot), 0: bad (never boots)
    A_TRY=2         boots started since the slot was last confirmed (a count, not RAUC's 0/1)

Invariants:

- ``grub-editenv`` is run with an argument list (never a shell) and a timeout; its absence is a
  ``BootError`` telling the operator to install ``grub-common``;
- ``load`` never writes (``grub-editenv FILE list`` would create a missing file, so a missing
  grubenv is detected first and loads as ``BootEnv.fresh``, as does a grubenv that holds none of
  sysupd's variables); a grubenv with some but not all of them, or with a value GRUB's snippet
  would not understand, is a ``BootError`` naming the variables;
- variables of other tools (``saved_entry``, ``next_entry`` …) are kept as they are;
- ``save`` replaces the grubenv as a whole or not at all (below).

Crash safety. ``grub-editenv FILE set`` (GRUB 2.06, checked with strace) does not rewrite its
1 KiB block in place: it reads the file, then ``open(O_WRONLY|O_CREAT|O_TRUNC)``, writes the
1024-byte block and fsyncs. A power cut between the truncate and the fsync leaves an empty or
short file, which GRUB's ``load_env`` rejects ("invalid environment block"), so every variable
would be unset at the next boot. ``grub-editenv FILE create`` resets an existing file. So
``save`` never edits the live file: it copies it (or creates a new block) into a temp file in the
same directory, runs ONE ``grub-editenv TEMP set ORDER=… A_OK=… A_TRY=… …`` on the copy, fsyncs
it, renames it over the grubenv with ``os.replace`` and fsyncs the directory. A crash leaves the
old or the new block. Symlinks are resolved first so the file GRUB reads is the one replaced. GRUB
itself (``save_env`` at boot) does write the block in place, through the file's sector list; it
refuses sparse or unmappable files (btrfs, ZFS, LVM/RAID: "sparse file not allowed"), so the
grubenv must live on a filesystem GRUB can write (ext2/3/4, FAT), or no attempt is ever counted.
On FAT a rename is not journaled; the window is one directory-entry update instead of the whole
truncate-write-fsync sequence.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path

from sysupd.core.bootenv import BootEnv, SlotBoot
from sysupd.errors import BootError, ConfigError
from sysupd.fsutil import FileTooLargeError, fsync_dir, read_capped

__all__ = ["INSTALL_HINT", "MAX_GRUBENV_BYTES", "GrubBootloader", "parse_cmdline_slot"]

INSTALL_HINT = "install grub-common (apt-get install grub-common)"

MAX_GRUBENV_BYTES = 64 * 1024
"""A grubenv is one 1 KiB block; anything much larger is not one."""

MAX_CMDLINE_BYTES = 64 * 1024

_SLOT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
# GRUB's snippet compares strings, so only the canonical spelling of a count is accepted.
_COUNT = re.compile(r"0|[1-9][0-9]{0,5}")
_CMDLINE_KEYS = ("sysupd.slot", "rauc.slot")


def parse_cmdline_slot(cmdline: str) -> str | None:
    """The slot named by ``sysupd.slot=NAME`` or ``rauc.slot=NAME``; ``None`` if neither.

    Raises:
        ValueError: the command line names more than one slot.
    """
    named = {
        value
        for token in cmdline.split()
        for key, sep, value in [token.partition("=")]
        if sep and key in _CMDLINE_KEYS
    }
    if len(named) > 1:
        raise ValueError(f"names more than one slot: {', '.join(sorted(named))}")
    return named.pop() if named else None


class GrubBootloader:
    """Keeps the boot environment in a grubenv through ``grub-editenv``."""

    name = "grub"

    def __init__(
        self,
        grubenv: Path,
        slot_names: tuple[str, ...],
        editenv: str = "grub-editenv",
        cmdline: Path = Path("/proc/cmdline"),
        timeout_s: float = 10.0,
    ) -> None:
        """Raises: ConfigError: a slot name cannot be a GRUB variable prefix, or is repeated."""
        if not slot_names or len(set(slot_names)) != len(slot_names):
            raise ConfigError(f"boot slots must be distinct names, got {slot_names}")
        for slot in slot_names:
            if not _SLOT_NAME.fullmatch(slot):
                raise ConfigError(
                    f"boot slot name {slot!r} cannot be stored in a grubenv: use a letter "
                    "followed by up to 31 letters, digits or underscores"
                )
        self.grubenv = grubenv
        self.slot_names = slot_names
        self.editenv = editenv
        self.cmdline = cmdline
        self.timeout_s = timeout_s

    def variable_names(self) -> list[str]:
        """The grubenv variables sysupd owns, in the order it writes them."""
        names = ["ORDER"]
        for slot in self.slot_names:
            names += [f"{slot}_OK", f"{slot}_TRY"]
        return names

    def load(self) -> BootEnv:
        """The environment stored in the grubenv, or ``BootEnv.fresh`` if it holds none.

        Raises:
            BootError: ``grub-editenv`` is missing or fails, or the variables are incomplete or
                invalid.
        """
        target = self._target()
        try:
            info = target.stat()
        except FileNotFoundError:
            return BootEnv.fresh(self.slot_names)
        except OSError as exc:
            raise self._error(target, f"cannot be read: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise self._error(target, "not a regular file")
        if info.st_size > MAX_GRUBENV_BYTES:
            raise self._error(target, f"larger than {MAX_GRUBENV_BYTES} bytes, so not a grubenv")
        listing = self._run(target, "list")
        try:
            text = listing.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._error(target, f"variables are not UTF-8: {exc}") from exc
        return self._parse(target, text)

    def save(self, env: BootEnv) -> None:
        """Replace sysupd's variables in the grubenv with ``env``, atomically.

        Raises:
            BootError: ``env`` names other slots, the grubenv is corrupt, ``grub-editenv`` is
                missing or fails, or the directory is not writable.
        """
        if set(env.order) != set(self.slot_names):
            raise BootError(
                f"refusing to store slots {list(env.order)} in {self.grubenv}: configured are "
                f"{list(self.slot_names)}"
            )
        assignments = [f"ORDER={' '.join(env.order)}"]
        for slot in self.slot_names:
            record = env.slots[slot]
            assignments += [f"{slot}_OK={int(record.ok)}", f"{slot}_TRY={record.tries}"]
        target = self._target()
        try:
            fd, tmp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise self._error(target, f"cannot be replaced: {exc.strerror}") from exc
        tmp = Path(tmp_name)
        try:
            os.close(fd)
            self._prepare_copy(target, tmp)
            self._run(tmp, "set", *assignments, shown=target)
            _fsync_file(tmp)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise self._error(target, f"cannot be replaced: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def booted_slot(self) -> str | None:
        """The slot named on the kernel command line by GRUB, ``None`` if it names none.

        Raises:
            BootError: the command line cannot be read, names several slots or an unknown one.
        """
        try:
            raw = read_capped(self.cmdline, MAX_CMDLINE_BYTES)
        except OSError as exc:
            raise BootError(
                f"kernel command line {self.cmdline} cannot be read: {exc.strerror}"
            ) from exc
        try:
            slot = parse_cmdline_slot(raw.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise BootError(f"kernel command line {self.cmdline} {exc}") from exc
        if slot is not None and slot not in self.slot_names:
            raise BootError(
                f"kernel command line {self.cmdline} names slot {slot!r}; configured are "
                f"{list(self.slot_names)}"
            )
        return slot

    def _target(self) -> Path:
        # A symlinked grubenv (/boot/grub2/grubenv -> the ESP) must be replaced where it points.
        return Path(os.path.realpath(self.grubenv))

    def _prepare_copy(self, target: Path, tmp: Path) -> None:
        """Fill ``tmp`` with the current block, or a new empty one if there is none."""
        try:
            current = read_capped(target, MAX_GRUBENV_BYTES)
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            self._run(tmp, "create", shown=target)
            mode = 0o644
        except FileTooLargeError as exc:
            raise self._error(
                target, f"larger than {MAX_GRUBENV_BYTES} bytes, so not a grubenv"
            ) from exc
        else:
            tmp.write_bytes(current)
        # A FAT filesystem (an ESP) refuses chmod; the mode is cosmetic there.
        with contextlib.suppress(PermissionError):
            tmp.chmod(mode)

    def _parse(self, target: Path, text: str) -> BootEnv:
        variables: dict[str, str] = {}
        if text and not text.endswith("\n"):
            raise self._error(target, "the variable listing is truncated (no final newline)")
        for number, line in enumerate(text.split("\n")[:-1], start=1):
            key, sep, value = line.partition("=")
            if not sep or not key:
                raise self._error(target, f"variable line {number} is not KEY=VALUE: {line!r}")
            if key in variables:
                raise self._error(target, f"{key} is set twice")
            variables[key] = value
        owned = self.variable_names()
        present = [name for name in owned if name in variables]
        if not present:
            return BootEnv.fresh(self.slot_names)
        missing = [name for name in owned if name not in variables]
        if missing:
            raise self._error(
                target, f"missing {', '.join(missing)} (present: {', '.join(present)})"
            )
        problems: list[str] = []
        order = variables["ORDER"].split(" ")
        if sorted(order) != sorted(self.slot_names):
            problems.append(
                f"ORDER={variables['ORDER']!r} must list {', '.join(self.slot_names)} once each, "
                "separated by single spaces"
            )
        records: dict[str, SlotBoot] = {}
        for slot in self.slot_names:
            ok, tries = variables[f"{slot}_OK"], variables[f"{slot}_TRY"]
            if ok not in ("0", "1"):
                problems.append(f"{slot}_OK={ok!r} must be 0 or 1")
            if not _COUNT.fullmatch(tries):
                problems.append(f"{slot}_TRY={tries!r} must be a count (0, 1, 2, …)")
            if not problems:
                records[slot] = SlotBoot(ok=ok == "1", tries=int(tries))
        if problems:
            raise self._error(target, f"invalid variables: {'; '.join(problems)}")
        return BootEnv(tuple(order), records)

    def _run(self, file: Path, *args: str, shown: Path | None = None) -> bytes:
        """``grub-editenv FILE ARGS…``; its stdout. ``shown`` is the file named in errors."""
        argv = [self.editenv, str(file), *args]
        shown = shown or file
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise BootError(
                f"{self.editenv} is needed to use grubenv {shown} and was not found: {INSTALL_HINT}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BootError(
                f"{self.editenv} {args[0]} on {shown} did not finish in {self.timeout_s} s"
            ) from exc
        except OSError as exc:
            raise BootError(f"{self.editenv} cannot be run: {exc.strerror}") from exc
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip()[:500]
            raise BootError(
                f"{self.editenv} {args[0]} on grubenv {shown} failed "
                f"(exit {done.returncode}): {message or 'no message'}"
            )
        return done.stdout

    @staticmethod
    def _error(target: Path, problem: str) -> BootError:
        return BootError(f"grubenv {target}: {problem}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
