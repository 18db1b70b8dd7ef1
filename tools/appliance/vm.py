"""The harness: boot the appliance disk in QEMU (OVMF, TCG) and talk to the guest's sysupd.

Responsibility: one QEMU process per ``Vm``, with its own copy of the disk and of the OVMF
variable store, the serial console logged to a file, the guest's plain HTTP port (5183) forwarded
to a free port on the host's loopback, and a QMP socket to power it off. The guest is driven only
through its public API, with the project's client (``sysupd.client``).

Invariants:

- the cached disk is never booted itself, only a sparse copy, so one run cannot change the next;
- ``-accel tcg`` always: KVM does not work on the machines this runs on (nested
  virtualisation);
- a guest reboot is a cold restart: QEMU ends on the guest's reset (``-action reboot=shutdown``)
  and is started again at once on the same disk and variable store, its serial console appended
  to the same log. OVMF under TCG can hang for good on a warm reset of a busy host (no output
  after ``reboot: machine restart``, seen once in CI), and a cold start is what a real
  appliance's platform reset amounts to for the firmware, GRUB and sysupd alike;
- every wait has a deadline, and a failure says what the serial console showed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysupd.client import ApiError, Client, ClientFailure, parse_server
from tools.appliance.build import Appliance
from tools.appliance.commands import BuildError, find_program, run
from tools.appliance.grubcfg import ESP_GRUB_DIR
from tools.appliance.layout import DISK

__all__ = [
    "BOOT_MARKS",
    "OVMF_CODE",
    "OVMF_VARS",
    "Answer",
    "Vm",
    "demo",
    "read_grubenv",
    "replace_esp_file",
    "slot_digest",
    "state_database_check",
]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GUEST_HTTP_PORT = 5183
STATE_DB = "sysupd.db"
"""The state database's name at the root of the data partition (``/var/lib/sysupd``)."""


BOOT_MARKS = (
    ("GRUB", "Welcome to GRUB"),
    ("kernel", "Linux version"),
    ("initramfs", "Run /init as init process"),
    ("systemd", "Welcome to .*Debian"),
    ("sysupd started", "Starting .*sysupd.service"),
    ("sysupd listening", "sysupd listening"),
)
"""What each boot stage prints first on the serial console, for ``Vm.timeline``."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The guest's first answer: its ``sys/info`` and the seconds from start to it."""

    info: dict[str, Any]
    seconds: float


class Vm:
    """One QEMU machine booting a copy of the appliance disk."""

    def __init__(
        self, appliance: Appliance, workdir: Path, *, memory_mib: int = 1024, cpus: int = 2
    ) -> None:
        self.appliance = appliance
        self.workdir = workdir
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.disk = workdir / "disk.img"
        self.serial_log = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        self.port = _free_port()
        self.started = 0.0
        self.events_path = workdir / "events.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._cut = False
        """The power was cut (``kill``): no reset of the guest's restarts the machine."""
        self.power_ons = 0
        """How often QEMU was started on this copy of the disk (a power-on, not a reboot)."""
        self.reboots = 0
        """How often the guest reset itself since the last power-on (each a cold restart)."""
        self.timeline: dict[str, float] = {}
        """Seconds from start to each of ``BOOT_MARKS`` first seen (since the last reset)."""
        self._seen = 0

    @property
    def server_url(self) -> str:
        """The guest's API as the host reaches it."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Copy the disk and the variable store, then start QEMU (returns at once).

        Raises:
            BuildError: QEMU or OVMF is not installed.
        """
        for firmware in (OVMF_CODE, OVMF_VARS):
            if not firmware.exists():
                raise BuildError(f"{firmware} is needed and missing: apt-get install ovmf")
        self.workdir.mkdir(parents=True, exist_ok=True)
        stale_files = (self.serial_log, self.qmp_path, self.events_path, self.workdir / "qemu.log")
        for stale in (*stale_files, *self.workdir.glob("serial.*.log")):
            stale.unlink(missing_ok=True)  # a previous run's, which would be read as this one's
        self.power_ons = 0
        run(["cp", "--sparse=always", self.appliance.disk, self.disk])
        run(["cp", OVMF_VARS, self.workdir / "vars.fd"])
        self.power_on()

    def power_on(self) -> None:
        """Start QEMU on this machine's disk as it is now (after ``start``, and again after a
        power cut): a new serial log, the previous one kept as ``serial.N.log``.

        Raises:
            BuildError: QEMU is not installed, or the machine is still running.
        """
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                raise BuildError("power_on() while the machine is still running")
            if self.serial_log.exists():
                self.serial_log.rename(self.workdir / f"serial.{self.power_ons}.log")
            self.power_ons += 1
            self.reboots = 0
            self._cut = False
            self._launch()

    def _launch(self) -> None:
        """Start QEMU (the lock held) and the thread that restarts it on the guest's reset."""
        qemu = find_program("qemu-system-x86_64")
        for socket_path in (self.qmp_path, self.events_path):
            socket_path.unlink(missing_ok=True)
        argv = [
            qemu,
            *("-machine", "q35", "-accel", "tcg"),
            *("-m", str(self.memory_mib), "-smp", str(self.cpus)),
            *("-display", "none", "-monitor", "none"),
            *("-action", "reboot=shutdown"),
            *("-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            *("-drive", f"if=pflash,format=raw,file={self.workdir / 'vars.fd'}"),
            *("-drive", f"file={self.disk},format=raw,if=virtio"),
            *("-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:{GUEST_HTTP_PORT}"),
            *("-device", "virtio-net-pci,netdev=net0"),
            # Entropy for the guest's first getrandom() calls, which would otherwise wait.
            *("-device", "virtio-rng-pci"),
            *("-chardev", f"file,id=serial0,path={self.serial_log},append=on"),
            *("-serial", "chardev:serial0"),
            # Two monitors: one for the commands sent (``quit``), one only listened to.
            *("-qmp", f"unix:{self.qmp_path},server=on,wait=off"),
            *("-qmp", f"unix:{self.events_path},server=on,wait=off"),
        ]
        log = (self.workdir / "qemu.log").open("ab")
        self.started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self._proc = proc
        self._supervisor = threading.Thread(
            target=self._supervise, args=(proc,), name="vm-supervisor", daemon=True
        )
        self._supervisor.start()

    def _supervise(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for ``proc`` to end; start the machine again if the guest reset it."""
        reason = _shutdown_reason(self.events_path, proc)
        proc.wait()
        with self._lock:
            if reason == "guest-reset" and self._proc is proc and not self._cut:
                self.reboots += 1
                self._launch()

    def _settled(self) -> subprocess.Popen[bytes] | None:
        """The QEMU process now, once a restart that a guest reset calls for has begun."""
        proc = self._proc
        supervisor = self._supervisor
        if proc is not None and proc.poll() is not None and supervisor is not None:
            supervisor.join(timeout=30.0)
        return self._proc

    def serial_text(self) -> str:
        """What the guest has written to its serial console so far."""
        try:
            return self.serial_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def client(self) -> Client:
        """A client of the guest's API (not yet logged in)."""
        return Client(parse_server(self.server_url), timeout_s=300.0)

    async def wait_for_api(self, timeout_s: float = 300.0) -> Answer:
        """Log in as the demo administrator and ask ``sys/info`` until the guest answers.

        QEMU accepts the forwarded port's connections before the guest listens, so only a
        logged-in answer counts.

        Raises:
            BuildError: no answer before the deadline, or QEMU exited.
        """
        deadline = time.monotonic() + timeout_s
        watcher = asyncio.get_running_loop().create_task(self._watch_marks())
        try:
            return await self._ask_until(deadline, timeout_s)
        finally:
            watcher.cancel()
            self._note_marks()

    async def _ask_until(self, deadline: float, timeout_s: float) -> Answer:
        last = "no attempt yet"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                async with self.client() as client:
                    await client.login("admin", self.appliance.admin_password)
                    info = await client.call("sys/info")
                    return Answer(info, time.monotonic() - self.started)
            except (ClientFailure, ApiError) as exc:
                last = str(exc)
            await asyncio.sleep(1.0)
        raise self._failure(f"the guest's API did not answer in {timeout_s:g} s ({last})")

    async def wait_for_serial(
        self, pattern: str, timeout_s: float = 300.0, *, since: int = 0
    ) -> re.Match[str]:
        """The first match of ``pattern`` in the serial log after offset ``since`` (a
        ``len(serial_text())`` taken earlier), once it appears.

        Raises:
            BuildError: it did not appear before the deadline, or QEMU exited.
        """
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (found := compiled.search(self.serial_text(), since)) is not None:
                return found
            self._check_running()
            await asyncio.sleep(0.5)
        raise self._failure(f"the serial console never showed {pattern!r} in {timeout_s:g} s")

    async def poweroff(self, timeout_s: float = 120.0) -> bool:
        """Power the guest off through its API (``sys/reboot`` with ``poweroff``: sysupd runs
        ``systemctl poweroff``), wait for QEMU to end, and quit it at the deadline.

        Not the ACPI power button: the minimal guest has no logind to act on it. Returns whether
        the guest powered itself off (False: QEMU had to be ended, or was not running).
        """
        if self._proc is None or self._proc.poll() is not None:
            return False
        with contextlib.suppress(ClientFailure, ApiError):
            async with self.client() as client:
                await client.login("admin", self.appliance.admin_password)
                await client.call("sys/reboot", {"delay_seconds": 0, "poweroff": True})
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self._proc.wait, timeout_s)
        clean = self._proc.poll() is not None
        if not clean:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                await asyncio.wait_for(self._qmp("quit"), 10.0)
        self.kill()
        return clean

    def kill(self) -> None:
        """Cut the power: SIGKILL the QEMU process (a reboot under way is not restarted)."""
        with self._lock:
            self._cut = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    async def _qmp(self, command: str) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(self.qmp_path))
        try:
            await reader.readline()  # the greeting
            for execute in ("qmp_capabilities", command):
                writer.write(json.dumps({"execute": execute}).encode() + b"\n")
                await writer.drain()
                while True:
                    reply: dict[str, Any] = json.loads(await reader.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply
        finally:
            writer.close()

    def restart_clock(self) -> None:
        """Count the next boot (a reboot inside the running machine) from now."""
        self.started = time.monotonic()
        self._seen = len(self.serial_text())
        self.timeline = {}

    async def _watch_marks(self) -> None:
        while True:
            self._note_marks()
            await asyncio.sleep(0.25)

    def _note_marks(self) -> None:
        """Record when each boot stage first showed on the console (to the poll's precision)."""
        text = self.serial_text()[self._seen :]
        now = time.monotonic() - self.started
        for name, pattern in BOOT_MARKS:
            if name not in self.timeline and re.search(pattern, text):
                self.timeline[name] = round(now, 1)

    def _check_running(self) -> None:
        proc = self._settled()
        if proc is not None and proc.poll() is not None:
            raise self._failure(f"QEMU exited with status {proc.returncode}")

    def _failure(self, problem: str) -> BuildError:
        tail = "\n".join(self.serial_text().splitlines()[-25:])
        qemu_log = self.workdir / "qemu.log"
        qemu = qemu_log.read_text(errors="replace").strip() if qemu_log.exists() else ""
        return BuildError(
            f"{problem}\nserial console ({self.serial_log}), last lines:\n{tail}"
            + (f"\nQEMU said: {qemu}" if qemu else "")
        )


def read_grubenv(disk: Path, work: Path) -> dict[str, str]:
    """The grubenv on the ESP of ``disk`` (a stopped machine's), as variables.

    Raises:
        BuildError: mtools or grub-editenv fails.
    """
    offset = DISK.partition("esp").offset_bytes
    copy = work / "grubenv.read"
    copy.unlink(missing_ok=True)
    run(["mcopy", "-n", f"-i{disk}@@{offset}", f"::{ESP_GRUB_DIR}/grubenv", copy])
    listing = run(["grub-editenv", copy, "list"]).decode()
    return dict(line.split("=", 1) for line in listing.splitlines() if "=" in line)


def replace_esp_file(disk: Path, work: Path, name: str, content: bytes | None) -> None:
    """Put ``content`` at ``name`` (e.g. ``EFI/sysupd/grubenv``) on the ESP of ``disk`` (a
    stopped machine's), or remove the file when ``content`` is ``None``.

    Raises:
        BuildError: mtools fails.
    """
    image = f"-i{disk}@@{DISK.partition('esp').offset_bytes}"
    if content is None:
        run(["mdel", image, f"::{name}"])
        return
    source = work / "esp-file"
    source.write_bytes(content)
    run(["mcopy", "-o", image, source, f"::{name}"])


def state_database_check(disk: Path, work: Path) -> str:
    """``PRAGMA integrity_check`` of the state database on the data partition of ``disk`` (a
    stopped machine's, e.g. just after a power cut): ``"ok"``, or what SQLite found.

    The partition is copied out and its journal replayed by ``e2fsck`` first, as the guest's next
    mount would; SQLite then recovers its own journal or WAL from the copied files, as the
    service's next start would. The disk itself is not changed.

    Raises:
        BuildError: the file system cannot be repaired or the database is not on it.
    """
    part = DISK.partition("data")
    copy, files = work / "data.part", work / "state-copy"
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    copy.unlink(missing_ok=True)
    run(
        [
            "dd", f"if={disk}", f"of={copy}", "bs=4M", "conv=sparse", "status=none",
            "iflag=skip_bytes,count_bytes", f"skip={part.offset_bytes}", f"count={part.size_bytes}",
        ]
    )  # fmt: skip
    try:
        fsck = subprocess.run(
            [find_program("e2fsck"), "-fy", str(copy)], capture_output=True, check=False
        )
        if fsck.returncode >= 4:  # 1 and 2: errors corrected (a replayed journal is one)
            raise BuildError(f"e2fsck could not repair the data partition: {fsck.stdout[-800:]!r}")
        for name in (STATE_DB, f"{STATE_DB}-wal", f"{STATE_DB}-journal"):
            with contextlib.suppress(BuildError):  # the journal files exist only at times
                run([find_program("debugfs"), "-R", f"dump /{name} {files / name}", copy])
    finally:
        copy.unlink(missing_ok=True)
    database = files / STATE_DB
    if not database.exists() or database.stat().st_size == 0:
        raise BuildError(f"the data partition holds no {STATE_DB}")
    try:
        with contextlib.closing(sqlite3.connect(database)) as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:  # damaged beyond what the check itself can list
        return f"SQLite cannot open it: {exc}"
    return "; ".join(str(row[0]) for row in rows)


def slot_digest(disk: Path, label: str) -> str:
    """The sha256 of partition ``label`` of ``disk``: all its bytes."""
    part = DISK.partition(label)
    remaining = part.size_bytes
    digest = hashlib.sha256()
    with disk.open("rb") as source:
        source.seek(part.offset_bytes)
        while remaining > 0:
            block = source.read(min(4 * 1024 * 1024, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


async def demo(appliance: Appliance) -> None:
    """Boot a copy of the disk, print the guest's ``sys/info`` and the boot time, power off."""
    work = appliance.disk.with_name("demo")
    vm = Vm(appliance, work)
    vm.start()
    print(f"appliance: booting (serial console in {vm.serial_log}, API at {vm.server_url})")
    try:
        answer = await vm.wait_for_api()
        print(f"appliance: sys/info after {answer.seconds:.1f} s: {json.dumps(answer.info)}")
        stages = ", ".join(f"{name} {at:.1f} s" for name, at in vm.timeline.items())
        print(f"appliance: boot stages first seen on the console: {stages}")
    finally:
        await vm.poweroff()
    print(f"appliance: grubenv after power-off: {read_grubenv(vm.disk, work)}")


def _shutdown_reason(events: Path, proc: subprocess.Popen[bytes]) -> str | None:
    """The reason of the ``SHUTDOWN`` event QEMU ``proc`` sends on its monitor at ``events``
    before it ends (``guest-reset``, ``guest-shutdown``, ``host-qmp-quit``…), or ``None`` (it was
    killed, or ended before the monitor could be reached)."""
    reason: str | None = None
    with socket.socket(socket.AF_UNIX) as monitor:
        while True:
            try:
                monitor.connect(str(events))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None:
                    return None
                time.sleep(0.05)
        with contextlib.suppress(OSError), monitor.makefile("rwb") as stream:
            stream.readline()  # the greeting
            stream.write(b'{"execute": "qmp_capabilities"}\n')
            stream.flush()
            for line in stream:  # until QEMU closes the monitor as it ends
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if message.get("event") == "SHUTDOWN":
                        reason = str(message.get("data", {}).get("reason"))
    return reason


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
