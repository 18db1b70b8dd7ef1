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
  sysupd's variables, or is ``BootRecordMissing`` where the caller asks);
- a grubenv GRUB would not read as sysupd wrote it is ``BootRecordUnusable`` naming the file and
  the problem: shorter than the 1 KiB block (empty, truncated), not an environment block, or with
  some but not all of sysupd's variables, or a value GRUB's snippet would not understand. GRUB
  boots such a device as a fresh one, so the start recreates it (``recreate``, for
  ``engine.boottrial``) around the slot that booted; nothing else ever replaces it;
- ``recreate`` writes a new block and keeps the unusable file beside it, byte for byte, as
  ``grubenv.unusable`` (an ESP is FAT: a short name in the same directory);
- variables of other tools (``saved_entry``, ``next_entry`` …) are kept as they are by ``save``
  (a recreated block has none: they are in the kept copy);
- ``save`` and ``recreate`` leave the old block or the new one, never a mixture or none (below).

Crash safety. ``grub-editenv FILE set`` (GRUB 2.06, checked with strace) does not rewrite its
1 KiB block in place: it reads the file, then ``open(O_WRONLY|O_CREAT|O_TRUNC)``, writes the
1024-byte block and fsyncs. A power cut between the truncate and the fsync leaves an empty or
short file, which GRUB's ``load_env`` rejects ("invalid environment block"), so every variable
would be unset at the next boot. So ``save`` never runs it on the live file: it runs ONE
``grub-editenv COPY set ORDER=… A_OK=… A_TRY=… …`` on a copy in a temp directory *off* the
grubenv's file system, then writes the resulting block over the live file's bytes in place
(``pwrite`` at offset 0, same length, ``fsync``) — what GRUB's own ``save_env`` does at boot.

In place, not a temp file renamed over it: the grubenv usually lives on the ESP, and FAT has no
journal. A rename there allocates clusters for the new file and frees the old one's, in FAT
tables, directory entries and FSINFO that reach the disk in no particular order; the appliance's
power-cut scenario (``tools/appliance``, scenario 4) caught a cut leaving a FAT whose chains
pointed past the end, which the kernel answers by remounting the ESP read-only — and then no
grubenv can be written at all. An overwrite of the same length changes only the block's own
sectors (sysupd's variables fit in the first 512 bytes, so even a write torn between sectors
leaves the old or the new variables) and the entry's modification time. Only a grubenv that does
not exist yet (or whose size would change), and one ``recreate`` replaces, is created as a temp
file in the same directory, fsynced and renamed into place. Symlinks are resolved first so the
file GRUB reads is the one written. GRUB refuses sparse or unmappable files (btrfs, ZFS,
LVM/RAID: "sparse file not allowed"), so the grubenv must live on a file system GRUB can write
(ext2/3/4, FAT), or no attempt is ever counted.
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
from sysupd.errors import BootError, BootRecordMissing, BootRecordUnusable, ConfigError
from sysupd.fsutil import FileTooLargeError, fsync_dir, read_capped

__all__ = [
    "BLOCK_BYTES",
    "INSTALL_HINT",
    "KEPT_SUFFIX",
    "MAX_GRUBENV_BYTES",
    "GrubBootloader",
    "parse_cmdline_slot",
]

INSTALL_HINT = "install grub-common (apt-get install grub-common)"

MAX_GRUBENV_BYTES = 64 * 1024
"""A grubenv is one 1 KiB block; anything much larger is not one."""

BLOCK_BYTES = 1024
"""The block ``grub-editenv create`` writes (and ``set`` keeps); a shorter file was cut off."""

KEPT_SUFFIX = ".unusable"
"""Added to the grubenv's name for the unusable copy ``recreate`` keeps."""

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

    def load(self, *, missing_ok: bool = True) -> BootEnv:
        """The environment stored in the grubenv, or ``BootEnv.fresh`` if it holds none.

        Raises:
            BootRecordMissing: there is no grubenv, and not ``missing_ok``.
            BootRecordUnusable: the grubenv is truncated, not an environment block, or its
                variables are incomplete or invalid.
            BootError: it cannot be read, or ``grub-editenv`` is missing or cannot run.
        """
        target = self._target()
        try:
            info = target.stat()
        except FileNotFoundError:
            if not missing_ok:
                raise BootRecordMissing(f"grubenv {target} does not exist") from None
            return BootEnv.fresh(self.slot_names)
        except OSError as exc:
            raise self._error(target, f"cannot be read: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise self._error(target, "not a regular file")
        self._check_size(target, info.st_size)
        try:  # so that only a file grub-editenv could read and refused is unusable
            with target.open("rb"):
                pass
        except OSError as exc:
            raise self._error(target, f"cannot be read: {exc.strerror}") from exc
        listing = self._run(target, "list", refused=BootRecordUnusable)
        try:
            text = listing.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._unusable(target, f"variables are not UTF-8: {exc}") from exc
        return self._parse(target, text)

    def save(self, env: BootEnv) -> None:
        """Replace sysupd's variables in the grubenv with ``env``: in place when there is one.

        Raises:
            BootError: ``env`` names other slots, the grubenv is corrupt, ``grub-editenv`` is
                missing or fails, or the file or its directory is not writable.
        """
        target = self._target()
        current = self._current_block(target)
        block = self._block(target, env, current)
        if current is not None and len(block) == len(current):
            self._overwrite(target, block)
        else:
            self._create(target, block)

    def recreate(self, env: BootEnv) -> str | None:
        """Replace a missing or unusable grubenv with a new block holding ``env``; where the
        unusable file is kept (``grubenv.unusable``, an older copy replaced), ``None`` if there
        was none. The new block is complete before the old file is moved aside.

        Raises:
            BootError: ``env`` names other slots, ``grub-editenv`` is missing or fails, or the
                directory is not writable; the grubenv is then as it was.
        """
        target = self._target()
        block = self._block(target, env, None)
        kept = self._move_aside(target)
        try:
            self._create(target, block)
        except BootError:
            if kept is not None:  # the new block could not take its place: the old one back
                with contextlib.suppress(OSError):
                    os.replace(kept, target)
            raise
        return str(kept) if kept is not None else None

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

    def _check_size(self, target: Path, size: int) -> None:
        if size > MAX_GRUBENV_BYTES:
            raise self._too_large(target)
        if size == 0:
            raise self._unusable(target, "empty (0 bytes)")
        if size < BLOCK_BYTES:
            raise self._unusable(
                target,
                f"only {size} bytes, shorter than the {BLOCK_BYTES}-byte block grub-editenv "
                "writes (truncated, or not a grubenv)",
            )

    def _block(self, target: Path, env: BootEnv, current: bytes | None) -> bytes:
        """The block that holds ``env``: ``current`` (``None``: a new one) with sysupd's
        variables set by ONE ``grub-editenv set``, made in a temp directory off the grubenv's
        file system (a temp file beside it would allocate clusters on the ESP)."""
        if set(env.order) != set(self.slot_names):
            raise BootError(
                f"refusing to store slots {list(env.order)} in {self.grubenv}: configured are "
                f"{list(self.slot_names)}"
            )
        assignments = [f"ORDER={' '.join(env.order)}"]
        for slot in self.slot_names:
            record = env.slots[slot]
            assignments += [f"{slot}_OK={int(record.ok)}", f"{slot}_TRY={record.tries}"]
        with tempfile.TemporaryDirectory(prefix="sysupd-grubenv-") as scratch:
            edited = Path(scratch) / "grubenv"
            if current is None:
                self._run(edited, "create", shown=target)
            else:
                edited.write_bytes(current)
            self._run(edited, "set", *assignments, shown=target)
            return read_capped(edited, MAX_GRUBENV_BYTES)

    def _current_block(self, target: Path) -> bytes | None:
        """The grubenv's bytes (checked for size), ``None`` if there is none."""
        try:
            current = read_capped(target, MAX_GRUBENV_BYTES)
        except FileNotFoundError:
            return None
        except FileTooLargeError as exc:
            raise self._too_large(target) from exc
        except OSError as exc:
            raise self._error(target, f"cannot be read: {exc.strerror or exc}") from exc
        self._check_size(target, len(current))
        return current

    def _overwrite(self, target: Path, block: bytes) -> None:
        """Write ``block`` over the grubenv's bytes where they are, as GRUB's ``save_env`` does:
        no cluster is allocated or freed and no directory entry moves (see the module's text)."""
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise self._error(target, f"cannot be written: {exc.strerror or exc}") from exc
        try:
            if os.pwrite(fd, block, 0) != len(block):
                raise self._error(target, "was written short")
            os.fsync(fd)
        except OSError as exc:
            raise self._error(target, f"cannot be written: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def _create(self, target: Path, block: bytes) -> None:
        """Put ``block`` where there is no grubenv (or one of another size): a temp file beside
        it, fsynced and renamed into place, so that GRUB never finds a partial one."""
        try:
            fd, tmp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise self._error(target, f"cannot be created: {exc.strerror}") from exc
        tmp = Path(tmp_name)
        try:
            try:
                if os.write(fd, block) != len(block):
                    raise self._error(target, "was written short")
                with contextlib.suppress(PermissionError):  # FAT (an ESP) refuses chmod
                    os.fchmod(fd, 0o644)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise self._error(target, f"cannot be created: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):  # gone, or the file system went read-only
                tmp.unlink()

    def _move_aside(self, target: Path) -> Path | None:
        """Rename ``target`` to ``grubenv.unusable`` beside it; that name, ``None`` if there is
        no ``target``."""
        try:
            if not stat.S_ISREG(target.stat().st_mode):  # never move a directory aside
                raise self._error(target, "not a regular file, so not replaced")
            kept = target.with_name(target.name + KEPT_SUFFIX)
            os.replace(target, kept)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(target, f"cannot be moved aside: {exc.strerror or exc}") from exc
        return kept

    def _parse(self, target: Path, text: str) -> BootEnv:
        variables: dict[str, str] = {}
        if text and not text.endswith("\n"):
            raise self._unusable(target, "the variable listing is truncated (no final newline)")
        for number, line in enumerate(text.split("\n")[:-1], start=1):
            key, sep, value = line.partition("=")
            if not sep or not key:
                raise self._unusable(target, f"variable line {number} is not KEY=VALUE: {line!r}")
            if key in variables:
                raise self._unusable(target, f"{key} is set twice")
            variables[key] = value
        owned = self.variable_names()
        present = [name for name in owned if name in variables]
        if not present:
            return BootEnv.fresh(self.slot_names)
        missing = [name for name in owned if name not in variables]
        if missing:
            raise self._unusable(
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
            raise self._unusable(target, f"invalid variables: {'; '.join(problems)}")
        return BootEnv(tuple(order), records)

    def _run(
        self,
        file: Path,
        *args: str,
        shown: Path | None = None,
        refused: type[BootError] = BootError,
    ) -> bytes:
        """``grub-editenv FILE ARGS…``; its stdout. ``shown`` is the file named in errors,
        ``refused`` what a non-zero exit raises (the tool ran, and did not accept the file)."""
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
            raise refused(
                f"{self.editenv} {args[0]} on grubenv {shown} failed "
                f"(exit {done.returncode}): {message or 'no message'}"
            )
        return done.stdout

    @staticmethod
    def _error(target: Path, problem: str) -> BootError:
        return BootError(f"grubenv {target}: {problem}")

    @classmethod
    def _too_large(cls, target: Path) -> BootRecordUnusable:
        return cls._unusable(target, f"larger than {MAX_GRUBENV_BYTES} bytes, so not a grubenv")

    @staticmethod
    def _unusable(target: Path, problem: str) -> BootRecordUnusable:
        return BootRecordUnusable(f"grubenv {target}: {problem}")
