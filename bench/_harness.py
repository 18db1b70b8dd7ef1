"""What every benchmark here needs: child processes timed and ended, files, tables, a main.

Each bench (install.py, offline.py, online.py, flood.py, web.py, api.py) keeps its own command
line and output and builds on this; tables and the run's description are in ``_report.py``,
releases and the physical pipeline in ``_releases.py``, a running service, nginx and py-spy in
``_service.py``, the WebSocket client in ``_wsapi.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "CHILDREN",
    "HOST",
    "MIB",
    "BenchError",
    "Children",
    "Sample",
    "free_port",
    "kill_group",
    "preallocate",
    "proc_status_kib",
    "remove",
    "run_main",
    "run_quiet",
    "run_timed",
    "sha256_file",
    "spawn",
    "sysupd_command",
    "tail",
    "warm",
    "workdir",
    "write_random",
]

MIB = 1 << 20
HOST = "127.0.0.1"  # every benchmark uses loopback only

_COPY_BYTES = MIB
_TAIL_CHARS = 2000
_BUILD_TIMEOUT_S = 1800.0


class BenchError(Exception):
    """The benchmark cannot go on."""


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def preallocate(path: Path, size: int) -> None:
    """A fresh regular file of ``size`` allocated bytes (like a partition, but a file)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a file or a tree, if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Trash:
    """Where the trees that runs wrote go until the rows are measured, then deleted at once.

    Why: this machine's root is ext4 without a journal, which skips the inodes deleted in the
    last half minute when it makes new ones (``recently_deleted``); a run that began just after
    the last run's 35,000-file tree was deleted took up to 40 % longer, by its place in the
    order alone. Files (an image) are deleted at once: that frees one inode.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._count = 0
        remove(directory)  # left by an interrupted run

    def put(self, path: Path, *, tree: bool) -> None:
        """Move ``path`` here if the run wrote a ``tree`` in it; else delete it now."""
        if not tree:
            remove(path)
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path.rename(self._dir / str(self._count))

    def empty(self) -> None:
        """Delete every tree put here."""
        remove(self._dir)


def sysupd_command() -> list[str]:
    """The ``sysupd`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("sysupd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sysupd"]


def warm(path: Path) -> None:
    """Read ``path`` to its end, so its pages are cached for the next contender; without
    touching its access time, which would leave its inode dirty (a booted tree linked with
    ``cp -al`` has every ctime newer than its atime), for the contender's run to write back."""
    buffer = bytearray(_COPY_BYTES)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    with open(fd, "rb", buffering=0) as source:
        while source.readinto(buffer):
            pass


def write_random(path: Path, size: int) -> None:
    """``size`` random (incompressible) bytes."""
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(_COPY_BYTES, left))
            out.write(block)
            left -= len(block)


# -- child processes ---------------------------------------------------------------------------


class Children:
    """Every long-lived child process (services, nginx, helpers), so that all are ended on exit."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.procs: list[BaseProcess] = []

    def add(self, popen: subprocess.Popen[bytes]) -> None:
        self.popens.append(popen)

    def add_process(self, proc: BaseProcess) -> None:
        """A ``multiprocessing`` child: terminated, then killed, by ``end_all``."""
        self.procs.append(proc)

    def end(self, popen: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int | None:
        """Signal one child (its own process group), wait, kill the group if it lingers."""
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(popen.pid)
                popen.kill()  # not a group leader when started without a session of its own
                popen.wait(5)
        with contextlib.suppress(ValueError):
            self.popens.remove(popen)
        return popen.returncode

    def end_all(self) -> None:
        for popen in list(self.popens):
            self.end(popen)
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.procs.clear()


CHILDREN = Children()


def spawn(
    command: Sequence[str], out: Path, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    """A long-lived child in a session of its own, its output to ``out``, ended by
    ``CHILDREN`` (``preexec_fn`` runs in the child before it starts: the benchmarks start no
    threads before their children)."""
    with out.open("wb") as sink:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - see the docstring
        )
    CHILDREN.add(popen)
    return popen


def tail(path: Path) -> str:
    """The end of a log, for an error message."""
    try:
        return path.read_text(errors="replace")[-_TAIL_CHARS:]
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed subprocess."""

    wall_s: float
    rss_kib: int


def run_timed(
    cmd: Sequence[str],
    log: Path,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    sync_first: bool = True,
) -> Sample:
    """Run ``cmd`` (output appended to ``log``); its wall time (fork to reaping) and peak RSS.

    The child runs in a session of its own, so a timeout (or an interrupt) kills it and
    everything it started. Peak RSS is ``ru_maxrss`` from ``os.wait4`` on that very child.

    Raises:
        BenchError: the command failed or ran out of time.
    """
    if sync_first:
        os.sync()
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        timed_out = threading.Event()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

        def expire() -> None:
            timed_out.set()
            kill_group(proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill_group(proc.pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            proc.returncode = -1
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if timed_out.is_set():
        raise BenchError(f"{shlex.join(cmd)} ran out of its {timeout:g} s; see {log}")
    if proc.returncode != 0:
        raise BenchError(
            f"{shlex.join(cmd)} exited with {proc.returncode}; end of {log}:\n{tail(log)}"
        )
    return Sample(wall, usage.ru_maxrss)


def run_quiet(
    cmd: Sequence[str], log: Path, *, stdin: str | None = None, timeout: float = _BUILD_TIMEOUT_S
) -> str:
    """Run an untimed set-up command; its output (also appended to ``log``).

    Raises:
        BenchError: the command failed or ran out of time.
    """
    try:
        done = subprocess.run(
            cmd,
            input=stdin.encode() if stdin is not None else None,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{shlex.join(cmd)} ran out of its {timeout:g} s") from exc
    text = (done.stdout + done.stderr).decode(errors="replace")
    with log.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n{text}")
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited with {done.returncode}:\n{text[-2000:]}")
    return text


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of /proc/PID/status; 0 if it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# -- files -------------------------------------------------------------------------------------


def sha256_file(path: Path, limit: int | None = None) -> str:
    """The SHA-256 of the file (of its first ``limit`` bytes), hex; also caches its pages."""
    digest = hashlib.sha256()
    buffer = bytearray(_COPY_BYTES)
    view = memoryview(buffer)
    left = limit
    with path.open("rb", buffering=0) as source:
        while count := source.readinto(buffer):
            if left is not None:
                count = min(count, left)
                left -= count
            digest.update(view[:count])
            if left == 0:
                break
    return digest.hexdigest()


# -- running -----------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(parent: Path | None, prefix: str, keep: bool) -> Iterator[Path]:
    """A private work directory, deleted at the end unless ``keep``."""
    base = parent or Path("/tmp")  # noqa: S108 - a private mkdtemp below it
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_main(
    name: str,
    time_limit: int,
    body: Callable[[], Any],
) -> int:
    """Run ``body`` under an alarm; 0 whatever the verdicts, 1 if it could not run. Every child
    process is ended on the way out."""

    def give_up(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"{name}: stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, give_up)
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(time_limit)
    try:
        body()
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        CHILDREN.end_all()
    return 0
