"""Benchmark of offline updates through the API: an uploaded bundle and a ``fetch_url`` bundle,
each from the first byte sent to the final ``sys/update_now`` event, against curl and the physical
pipeline on the same bytes.

Run: ``.venv/bin/python bench/offline.py [--mib N] [--runs R] [--rss-2g | --no-rss-2g] [--keep]``

1. In a fresh directory under /tmp (or ``--workdir``) the project's release tool (``sysupd release
   init|add|bundle``) builds a raw release of an N MiB random image for the product ``bench`` and
   writes its bundle. nginx serves the bundles' directory on 127.0.0.1.
2. Every measured update gets a fresh state directory and a fresh ``sysupd serve`` process (on
   127.0.0.1, kernel-chosen ports) configured with ``slots = ["A:raw:…", "B:raw:…"]``: two
   preallocated files in the work directory's filesystem, slot B preallocated anew every time.
   The service trusts the repository's root, ``auto_reboot = false``, ``event_interval_s = 1``.
   An administrator made beforehand with ``sysupd user add … --admin --password-stdin`` logs in
   over the WebSocket, untimed.
3. Each round times:
   (a) *upload*: ``sys/upload_file``, ``POST /upload`` of the bundle (by curl, streaming), then
       ``sys/update_now {"file_upload": …}`` until the final event;
   (b) *fetch_url*: ``sys/update_now {"fetch_url": "http://127.0.0.1:PORT/….bundle"}`` (from the
       same nginx) until the final event;
   and the baselines, on the same bundle file: for (a) ``curl -o FILE`` of the bundle from nginx,
   for (b) ``curl -o /dev/null``, each followed by the physical pipeline ``openssl dgst -sha256
   BUNDLE`` + ``dd if=BUNDLE of=TARGET bs=1M conv=fsync`` (timed together). The order rotates
   every round. Slot B is checked against the image's SHA-256 after every update (untimed).
4. Targets: each update at most 1.3 times its baseline; the service's peak RSS (``VmHWM`` of the
   ``sysupd serve`` process, read from /proc after the final event) at most 100 MiB with a
   2048 MiB image (``--rss-2g``, on by default at the default size: one more round at 2 GiB).

How it measures: wall time is ``time.perf_counter`` in this process; for the service legs from
just before the first request (``sys/upload_file``, or ``sys/update_now``) to the final event's
arrival, so the WebSocket round trips and event delivery are included; the service's start-up is
not (it is a long-running service). Baselines are subprocesses timed from fork to reaping. The
page cache is warm on purpose (the bundle is read before every round) and ``sync`` runs before
every timed step, so none pays for another's dirty pages. Only 127.0.0.1 is used. Everything
large lives in the work directory and is deleted at the end unless ``--keep``; every child
process is ended on exit; every step is bounded in time.

``bench/online.py`` imports the helpers below (WebSocket client, nginx, service processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import html
import itertools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from _harness import (
    BenchError,
    kill_group,
    preallocate,
    remove,
    sysupd_command,
    warm,
    write_random,
)

MIB = 1 << 20
DEFAULT_MIB = 1024
RSS_2G_MIB = 2048
RATIO_TARGET = 1.3
RSS_TARGET_MIB = 100.0
PRODUCT = "bench"
HOST = "127.0.0.1"
KDF = {"kdf_time_cost": 1, "kdf_memory_kib": 8192, "kdf_parallelism": 1}
ADMIN = ("bench-admin", "bench-admin-password")
UPLOAD_NAME = "bench.bundle"

_COPY_BYTES = MIB
_TAIL_CHARS = 2000
_BUILD_TIMEOUT_S = 1800.0
_START_TIMEOUT_S = 60.0
_CALL_TIMEOUT_S = 60.0


# -- child processes ---------------------------------------------------------------------------


class Children:
    """Every long-lived child process (services, nginx), so that all are ended on exit."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []

    def add(self, popen: subprocess.Popen[bytes]) -> None:
        self.popens.append(popen)

    def end(self, popen: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int | None:
        """Signal one child (its own process group), wait, kill the group if it lingers."""
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(popen.pid)
                popen.wait(5)
        with contextlib.suppress(ValueError):
            self.popens.remove(popen)
        return popen.returncode

    def end_all(self) -> None:
        for popen in list(self.popens):
            self.end(popen)


CHILDREN = Children()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_TAIL_CHARS:]
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed subprocess."""

    wall_s: float
    rss_kib: int


def run_timed(cmd: Sequence[str], log: Path, *, timeout: float, sync_first: bool = True) -> Sample:
    """Run ``cmd`` (output appended to ``log``); its wall time (fork to reaping) and peak RSS.

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
            f"{shlex.join(cmd)} exited with {proc.returncode}; end of {log}:\n{_tail(log)}"
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


# -- releases ----------------------------------------------------------------------------------


@dataclass
class Release:
    """A raw release in the bench repository."""

    version: str
    payload_bytes: int
    payload_sha256: str


def init_repo(repo: Path, log: Path) -> None:
    """``sysupd release init`` for the product ``bench``."""
    run_quiet(
        [*sysupd_command(), "release", "init", "--repo", str(repo), "--product", PRODUCT], log
    )


def add_raw_release(repo: Path, version: str, mib: int, scratch: Path, log: Path) -> Release:
    """``sysupd release add --image`` of a fresh random image of ``mib`` MiB."""
    image = scratch / f"image-{version}.img"
    write_random(image, mib * MIB)
    try:
        text = run_quiet(
            [
                *sysupd_command(),
                "release",
                "add",
                "--repo",
                str(repo),
                "--version",
                version,
                "--image",
                str(image),
            ],
            log,
        )
    finally:
        remove(image)
    found = re.search(r"\((\d+) bytes, .*sha256 ([0-9a-f]{64})\)", text)
    if found is None:
        raise BenchError(f"cannot read the release's length and hash from: {text.strip()}")
    return Release(version, int(found.group(1)), found.group(2))


def device_config(path: Path, repo: Path, slots: Sequence[Path], **extra: object) -> Path:
    """The service's TOML: the product, the trusted root, raw file slots, quick events."""
    values: dict[str, object] = {
        "product": PRODUCT,
        "trust_root": str((repo / "metadata" / "1.root.json").resolve()),
        "slots": [f"{name}:raw:{slot}" for name, slot in zip("AB", slots, strict=True)],
        "auto_reboot": False,
        "event_interval_s": 1,
        **KDF,
        **extra,
    }
    # JSON's scalars and arrays are valid TOML values (strings with JSON escapes included).
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


# -- nginx -------------------------------------------------------------------------------------

_NGINX_CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {work}/access.log;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


def nginx_binary() -> str:
    """nginx's path.

    Raises:
        BenchError: it is not installed.
    """
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise BenchError("nginx is not installed (Debian package nginx)")
    return found


@contextlib.contextmanager
def nginx_serving(root: Path, work: Path) -> Iterator[str]:
    """A real nginx (sendfile on) serving ``root`` on 127.0.0.1; yields its base URL."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read a 0700 work directory
    config.write_text(
        _NGINX_CONFIG.format(user=user, work=work, host=HOST, port=port, root=root.resolve())
    )
    out = work / "nginx.out"
    with out.open("wb") as sink:
        popen = subprocess.Popen(
            [nginx_binary(), "-c", str(config), "-p", str(work)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    CHILDREN.add(popen)
    try:
        deadline = time.monotonic() + 20
        while True:
            if popen.poll() is not None:
                raise BenchError(f"nginx exited at start: {_tail(out)} {_tail(work / 'error.log')}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
                break
            if time.monotonic() > deadline:
                raise BenchError("nginx did not start listening within 20 s")
            time.sleep(0.02)
        yield f"http://{HOST}:{port}"
    finally:
        CHILDREN.end(popen, signal.SIGQUIT)


# -- the service -------------------------------------------------------------------------------


@dataclass
class Serve:
    """A running ``sysupd serve``."""

    popen: subprocess.Popen[bytes]
    ws_port: int
    http_port: int
    state_dir: Path
    out: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def hwm_kib(self) -> int:
        """Its peak resident set so far (``VmHWM``)."""
        return proc_status_kib(self.popen.pid, "VmHWM")


_LISTENING = re.compile(r"sysupd listening: ws://[^ ]*:(\d+)/websocket\s+https?://[^ ]*:(\d+)/")


def add_admin(config: Path, state_dir: Path, log: Path) -> None:
    """``sysupd user add ADMIN --admin --password-stdin`` into ``state_dir``."""
    run_quiet(
        [
            *sysupd_command(),
            "user",
            "add",
            ADMIN[0],
            "--admin",
            "--password-stdin",
            "--config",
            str(config),
            "--state-dir",
            str(state_dir),
        ],
        log,
        stdin=ADMIN[1] + "\n",
        timeout=60,
    )


async def start_serve(
    config: Path, state_dir: Path, logs: Path, name: str, *, descriptor_limit: int = 0
) -> Serve:
    """A fresh state directory with the administrator, then ``sysupd serve`` on 127.0.0.1 with
    kernel-chosen ports (its own process and session); waits until it listens.
    ``descriptor_limit``, when not 0, is the child's RLIMIT_NOFILE."""

    def limit() -> None:
        if descriptor_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))

    remove(state_dir)
    add_admin(config, state_dir, logs / "setup.log")
    out = logs / f"serve-{name}.log"
    command = [
        *sysupd_command(),
        "serve",
        "--config",
        str(config),
        "--state-dir",
        str(state_dir),
        "--host",
        HOST,
    ]
    command += ["--ws-port", "0", "--http-port", "0", "--no-tls"]
    with out.open("wb") as sink:
        popen = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit,  # noqa: PLW1509 - the benchmarks start no threads
        )
    CHILDREN.add(popen)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _LISTENING.search(out.read_text(errors="replace"))
        if found is not None:
            return Serve(popen, int(found.group(1)), int(found.group(2)), state_dir, out)
        if popen.poll() is not None:
            break
        await asyncio.sleep(0.02)
    CHILDREN.end(popen)
    raise BenchError(f"sysupd serve did not start; end of {out}:\n{_tail(out)}")


def stop_serve(serve: Serve) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it lingers.

    Raises:
        BenchError: it did not exit cleanly.
    """
    code = CHILDREN.end(serve.popen)
    if code not in (0, -signal.SIGTERM):
        raise BenchError(
            f"sysupd serve exited with {code}; end of {serve.out}:\n{_tail(serve.out)}"
        )


@contextlib.asynccontextmanager
async def sampled(py_spy: str | None, pid: int, out: Path) -> AsyncIterator[None]:
    """While the body runs, ``py-spy record`` of process ``pid`` (every thread, non-blocking,
    100 samples/s, idle frames left out) into ``out`` as collapsed stacks; nothing if ``py_spy``
    is None."""
    if py_spy is None:
        yield
        return
    log = out.with_suffix(".log")
    command = [py_spy, "record", "--pid", str(pid), "--threads", "--nonblocking"]
    command += ["--rate", "100", "--format", "raw", "--output", str(out)]
    with log.open("wb") as sink:
        popen = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    CHILDREN.add(popen)
    try:
        deadline = time.monotonic() + 20
        while "Sampling process" not in log.read_text(errors="replace"):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"py-spy did not start sampling: {_tail(log)}")
            await asyncio.sleep(0.05)
        yield
    finally:
        CHILDREN.end(popen, signal.SIGINT)


def hot_spots(collapsed: Path, top: int = 10) -> list[str]:
    """What py-spy's collapsed stacks say: busy time per thread, the lines with the most samples
    of their own, and the sysupd functions with the most samples within them."""
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in collapsed.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            thread = next((f for f in frames if f.startswith("thread ")), "?")
            threads[thread] = threads.get(thread, 0) + count
            calls = [f for f in frames if not f.startswith(("process ", "thread "))]
            if calls:
                own[calls[-1]] = own.get(calls[-1], 0) + count
            for function in {_function(f) for f in calls if "sysupd/" in f}:
                within[function] = within.get(function, 0) + count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples = {total / 100:.2f} s busy, over all threads:"]
    lines += [f"  {n / 100:6.2f} s  {name}" for name, n in _biggest(threads, 6)]
    lines.append("lines with the most samples of their own:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in _biggest(own, top)]
    lines.append("sysupd functions with the most samples within them:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in _biggest(within, top)]
    return lines


def _function(frame: str) -> str:
    """``name (path:line)`` without the line."""
    return re.sub(r":\d+\)$", ")", frame)


def _biggest(counts: dict[str, int], top: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: -item[1])[:top]


class WsApi:
    """One logged-in WebSocket session: calls matched by id, events in a queue."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int, user: tuple[str, str] = ADMIN) -> WsApi:
        """Connect to ``ws://127.0.0.1:PORT/websocket`` and log in as ``user``."""
        session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(_CALL_TIMEOUT_S):
                ws = await session.ws_connect(
                    f"ws://{HOST}:{port}/websocket", max_msg_size=64 * MIB, autoping=True
                )
        except BaseException:
            await session.close()
            raise
        api = cls(session, ws)
        try:
            await api.call("rpc", "auth", {"username": user[0], "password": user[1]})
        except BaseException:
            await api.close()
            raise
        return api

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame.get("namespace") == "event":
                    self.events.put_nowait(frame)
                    continue
                future = self._pending.pop(str(frame.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(frame)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BenchError("the WebSocket closed"))
            self._pending.clear()
            self.events.put_nowait({"namespace": "closed", "name": "", "args": {}})

    async def call(
        self,
        namespace: str,
        name: str,
        args: dict[str, Any] | None = None,
        timeout: float = _CALL_TIMEOUT_S,
    ) -> Any:
        """Send a call; its reply's ``args``.

        Raises:
            BenchError: an error reply, or none in time.
        """
        call_id = f"b{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        frame = {"namespace": namespace, "name": name, "id": call_id, "args": args or {}}
        await self._ws.send_str(json.dumps(frame))
        try:
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError as exc:
            self._pending.pop(call_id, None)
            raise BenchError(f"{namespace}/{name}: no reply within {timeout:g} s") from exc
        if reply.get("namespace") != "response":
            raise BenchError(f"{namespace}/{name} failed: {json.dumps(reply.get('args'))}")
        return reply["args"]

    async def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event called ``name`` (others are skipped): its ``args``.

        Raises:
            BenchError: none in time, or the socket closed.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self.events.get()
                    if event["namespace"] == "closed":
                        raise BenchError(f"the WebSocket closed while waiting for {name}")
                    if event.get("name") == name:
                        args: dict[str, Any] = event["args"]
                        return args
        except TimeoutError as exc:
            raise BenchError(f"no {name} event within {timeout:g} s") from exc

    async def wait_final(self, timeout: float) -> tuple[int, dict[str, Any]]:
        """How many running ``sys/update_now`` events came, then the final one's ``args``."""
        deadline = time.monotonic() + timeout
        running = 0
        while True:
            event = await self.next_event("sys/update_now", max(0.1, deadline - time.monotonic()))
            if event.get("update_running"):
                running += 1
            else:
                return running, event

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._session.close()


def job_lines(final: dict[str, Any]) -> list[str]:
    """The update job's log from its final event (HTML-escaped lines joined by ``<br>``)."""
    return [html.unescape(line) for line in str(final.get("details", "")).split("<br>")]


def check_final(final: dict[str, Any], what: str) -> None:
    """Raises BenchError unless the update succeeded."""
    if final.get("result") != "success":
        raise BenchError(f"{what} failed:\n  " + "\n  ".join(job_lines(final)))


# -- printing ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(rows: Sequence[Sequence[str]], left: int = 1) -> None:
    """Print ``rows`` (the first is the heading) as aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j < left else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def mbs(size: int, seconds: float) -> str:
    """MB/s (10^6 bytes per second)."""
    return f"{size / 1e6 / seconds:,.0f}" if seconds > 0 else "-"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def revision() -> str:
    """The commit of the sysupd being measured, and whether src/ differs from it."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {head}" + (" with src/ modified" if dirty else "")


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (
        f"{os.cpu_count()} CPUs ({model}), {ram:.0f} GiB RAM, Linux {platform.release()},"
        f" Python {platform.python_version()}"
    )


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


# -- the offline benchmark ---------------------------------------------------------------------


@dataclass
class Baseline:
    """curl of the bundle from nginx, then openssl + dd of the bundle file."""

    curl: Sample
    openssl: Sample
    dd: Sample
    flush: Sample | None = None
    """For information, not in the baseline: ``sync`` right after ``curl -o FILE``, i.e. what
    making the downloaded file durable (as ``POST /upload`` does) would add."""

    @property
    def pipeline_s(self) -> float:
        return self.openssl.wall_s + self.dd.wall_s

    @property
    def total_s(self) -> float:
        return self.curl.wall_s + self.pipeline_s


@dataclass
class Leg:
    """One update through the service."""

    total_s: float
    upload_s: float  # 0 for fetch_url
    events: int
    hwm_kib: int
    start_hwm_kib: int
    lines: list[str]

    @property
    def install_s(self) -> float:
        return self.total_s - self.upload_s


@dataclass
class Case:
    """One release size and its measurements."""

    label: str
    mib: int
    runs: int
    release: Release
    bundle: Path
    bundle_bytes: int = 0
    bundle_sha256: str = ""
    config: Path = Path()
    slot_b: Path = Path()
    upload: list[Leg] = field(default_factory=list)
    fetch: list[Leg] = field(default_factory=list)
    base_file: list[Baseline] = field(default_factory=list)
    base_null: list[Baseline] = field(default_factory=list)


class OfflineBench:
    """The work directory, the repository, nginx, and the rounds."""

    def __init__(self, options: argparse.Namespace, work: Path) -> None:
        self.options = options
        self.work = work
        self.timeout: float = options.timeout
        self.logs = work / "logs"
        self.repo = work / "repo"
        for sub in ("logs", "bundles", "slots", "state", "configs", "scratch", "profiles"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.build_log = self.logs / "build.log"
        self.url = ""

    def build(self, label: str, mib: int, version: str, runs: int) -> Case:
        start = time.perf_counter()
        release = add_raw_release(self.repo, version, mib, self.work / "scratch", self.build_log)
        bundle = self.work / "bundles" / f"{label}.bundle"
        run_quiet(
            [
                *sysupd_command(),
                "release",
                "bundle",
                "--repo",
                str(self.repo),
                "--version",
                version,
                "--output",
                str(bundle),
            ],
            self.build_log,
        )
        case = Case(label, mib, runs, release, bundle)
        case.bundle_bytes = bundle.stat().st_size
        case.bundle_sha256 = sha256_file(bundle)
        slot_a = self.work / "slots" / f"{label}-A.img"
        case.slot_b = self.work / "slots" / f"{label}-B.img"
        preallocate(slot_a, mib * MIB)
        case.config = device_config(
            self.work / "configs" / f"{label}.toml", self.repo, [slot_a, case.slot_b]
        )
        print(
            f"  {label}: {release.payload_bytes:,} payload bytes, bundle {case.bundle_bytes:,}"
            f" bytes, built in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        return case

    # baselines

    def baseline(self, case: Case, run: int, to_file: bool) -> Baseline:
        kind = "file" if to_file else "null"
        out = self.work / "scratch" / "curl-out.bin"
        remove(out)
        curl = run_timed(
            [
                "curl",
                "-sS",
                "--fail",
                "-o",
                str(out) if to_file else "/dev/null",
                f"{self.url}/{case.bundle.name}",
            ],
            self.logs / f"{case.label}-curl-{kind}-{run}.log",
            timeout=self.timeout,
        )
        flush = None
        if to_file:
            if out.stat().st_size != case.bundle_bytes:
                raise BenchError(f"curl wrote {out.stat().st_size} bytes, not the bundle's")
            flush = run_timed(
                ["sync"], self.logs / "sync.log", timeout=self.timeout, sync_first=False
            )
        remove(out)
        target = self.work / "scratch" / "pipeline-target.img"
        preallocate(target, case.bundle_bytes)
        log = self.logs / f"{case.label}-openssl-{kind}-{run}.log"
        openssl = run_timed(
            ["openssl", "dgst", "-sha256", str(case.bundle)], log, timeout=self.timeout
        )
        if case.bundle_sha256 not in log.read_text():
            raise BenchError(f"openssl printed another digest than the bundle's; see {log}")
        dd = run_timed(
            ["dd", f"if={case.bundle}", f"of={target}", "bs=1M", "conv=fsync", "status=none"],
            self.logs / f"{case.label}-dd-{kind}-{run}.log",
            timeout=self.timeout,
            sync_first=False,  # timed together with openssl, which dirtied nothing
        )
        remove(target)
        result = Baseline(curl, openssl, dd, flush)
        (case.base_file if to_file else case.base_null).append(result)
        return result

    # the service

    async def leg(self, case: Case, run: int, upload: bool) -> Leg:
        kind = "upload" if upload else "fetch"
        name = f"{case.label}-{kind}-{run}"
        preallocate(case.slot_b, case.mib * MIB)
        serve = await start_serve(case.config, self.work / "state" / name, self.logs, name)
        try:
            api = await WsApi.open(serve.ws_port)
            try:
                start_hwm = serve.hwm_kib()
                os.sync()
                samples = self.work / "profiles" / f"{name}.txt"
                async with (
                    sampled(self.options.py_spy, serve.pid, samples),
                    asyncio.timeout(self.timeout),
                ):
                    if upload:
                        leg = await self._upload_leg(case, serve, api, name)
                    else:
                        leg = await self._fetch_leg(case, api)
                leg.start_hwm_kib = start_hwm
                leg.hwm_kib = serve.hwm_kib()
            finally:
                await api.close()
        finally:
            stop_serve(serve)
        (self.logs / f"{name}-job.log").write_text("\n".join(leg.lines) + "\n")
        if sha256_file(case.slot_b, case.release.payload_bytes) != case.release.payload_sha256:
            raise BenchError(f"slot B ({case.slot_b}) does not hold the image after {name}")
        remove(serve.state_dir)
        (case.upload if upload else case.fetch).append(leg)
        return leg

    async def _upload_leg(self, case: Case, serve: Serve, api: WsApi, name: str) -> Leg:
        start = time.perf_counter()
        grant = await api.call("sys", "upload_file")
        log = self.logs / f"{name}-curl-upload.log"
        with log.open("wb") as err:
            curl = await asyncio.create_subprocess_exec(
                "curl",
                "-sS",
                "--fail-with-body",
                "-X",
                "POST",
                "-u",
                f"{grant['upload_user']}:{grant['upload_pass']}",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                "Expect:",
                "-T",
                str(case.bundle),
                f"http://{HOST}:{serve.http_port}/upload?filename={UPLOAD_NAME}",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
            try:
                out, _ = await curl.communicate()
            except BaseException:
                kill_group(curl.pid)
                await curl.wait()
                raise
        uploaded = time.perf_counter()
        if curl.returncode != 0:
            raise BenchError(f"the upload failed ({curl.returncode}): {out[-500:]!r} {_tail(log)}")
        stored = json.loads(out)
        if stored.get("sha256") != case.bundle_sha256:
            raise BenchError(f"the service stored other bytes than the bundle: {stored}")
        reply = await api.call("sys", "update_now", {"file_upload": stored["file_upload"]})
        if reply.get("result") != "success":
            raise BenchError(f"sys/update_now refused the upload: {reply}")
        events, final = await api.wait_final(self.timeout)
        end = time.perf_counter()
        check_final(final, f"the update from the upload ({name})")
        return Leg(end - start, uploaded - start, events, 0, 0, job_lines(final))

    async def _fetch_leg(self, case: Case, api: WsApi) -> Leg:
        url = f"{self.url}/{case.bundle.name}"
        start = time.perf_counter()
        reply = await api.call("sys", "update_now", {"fetch_url": url})
        if reply.get("result") != "success":
            raise BenchError(f"sys/update_now refused {url}: {reply}")
        events, final = await api.wait_final(self.timeout)
        end = time.perf_counter()
        check_final(final, f"the update from {url}")
        return Leg(end - start, 0.0, events, 0, 0, job_lines(final))

    async def measure(self, case: Case) -> None:
        """R rounds of: (a) baseline, (a) upload, (b) baseline, (b) fetch_url; order rotating."""
        steps: list[tuple[str, Callable[[int], Any]]] = [
            ("curl>file", lambda run: self.baseline(case, run, True)),
            ("upload", lambda run: self.leg(case, run, True)),
            ("curl>null", lambda run: self.baseline(case, run, False)),
            ("fetch_url", lambda run: self.leg(case, run, False)),
        ]
        for run in range(case.runs):
            warm(case.bundle)
            shift = run % len(steps)
            for _, step in steps[shift:] + steps[:shift]:
                done = step(run)
                if asyncio.iscoroutine(done):
                    await done
            up, fe = case.upload[-1], case.fetch[-1]
            bf, bn = case.base_file[-1], case.base_null[-1]
            print(
                f"  {case.label} round {run + 1}/{case.runs}:"
                f" upload+update {up.total_s:.2f} s (upload {up.upload_s:.2f} + update"
                f" {up.install_s:.2f}; {up.hwm_kib / 1024:.0f} MiB) vs curl>file+openssl+dd"
                f" {bf.total_s:.2f} s ({bf.curl.wall_s:.2f} + {bf.openssl.wall_s:.2f} +"
                f" {bf.dd.wall_s:.2f});  fetch_url {fe.total_s:.2f} s"
                f" ({fe.hwm_kib / 1024:.0f} MiB) vs curl>null+openssl+dd {bn.total_s:.2f} s"
                f" ({bn.curl.wall_s:.2f} + {bn.openssl.wall_s:.2f} + {bn.dd.wall_s:.2f})",
                flush=True,
            )


def print_offline_summary(cases: Sequence[Case]) -> None:
    print()
    print(
        "SUMMARY (medians; MB/s = bundle bytes / 10^6 / s; baseline = curl of the bundle from the"
        " same nginx + openssl dgst -sha256 + dd conv=fsync; ratio = sysupd / baseline)"
    )
    rows: list[tuple[str, ...]] = [
        (
            "case",
            "MiB",
            "update",
            "runs",
            "sysupd s",
            "MB/s",
            "baseline s",
            "MB/s",
            "ratio",
            f"<={RATIO_TARGET}",
            "peak RSS MiB",
            f"<={RSS_TARGET_MIB:.0f}",
        ),
    ]
    for case in cases:
        for label, legs, bases in (
            ("upload+update_now", case.upload, case.base_file),
            ("fetch_url", case.fetch, case.base_null),
        ):
            took = median([leg.total_s for leg in legs])
            base = median([b.total_s for b in bases])
            ratio = took / base
            rss = max(leg.hwm_kib for leg in legs) / 1024
            rows.append(
                (
                    case.label,
                    f"{case.mib}",
                    label,
                    f"{len(legs)}",
                    f"{took:.2f}",
                    mbs(case.bundle_bytes, took),
                    f"{base:.2f}",
                    mbs(case.bundle_bytes, base),
                    f"{ratio:.2f}",
                    verdict(ratio <= RATIO_TARGET),
                    f"{rss:.1f}",
                    verdict(rss <= RSS_TARGET_MIB) if case.mib >= RSS_2G_MIB else "",
                )
            )
    table(rows, left=3)
    print("  parts (medians, s):")
    for case in cases:
        up = case.upload
        bf, bn = case.base_file, case.base_null
        print(
            f"    {case.label:<7} upload: POST /upload {median([x.upload_s for x in up]):.2f}"
            f" (curl>file {median([b.curl.wall_s for b in bf]):.2f}, then sync"
            f" {median([b.flush.wall_s for b in bf if b.flush]):.2f}), update_now to final event"
            f" {median([x.install_s for x in up]):.2f} (openssl+dd"
            f" {median([b.pipeline_s for b in bf]):.2f});  fetch_url: curl>null"
            f" {median([b.curl.wall_s for b in bn]):.2f}, openssl+dd"
            f" {median([b.pipeline_s for b in bn]):.2f}"
        )
    print("  min-max over runs (s):")
    for case in cases:
        print(
            f"    {case.label:<7} upload+update_now {span([x.total_s for x in case.upload])},"
            f" its baseline {span([b.total_s for b in case.base_file])}; fetch_url"
            f" {span([x.total_s for x in case.fetch])}, its baseline"
            f" {span([b.total_s for b in case.base_null])}; dd alone"
            f" {span([b.dd.wall_s for b in case.base_file + case.base_null])}"
        )
    starts = [leg.start_hwm_kib for case in cases for leg in case.upload + case.fetch]
    print(
        f"  peak RSS = VmHWM of the sysupd serve process after the final event; after start-up"
        f" and login alone it was {min(starts) / 1024:.1f}-{max(starts) / 1024:.1f} MiB"
    )
    first = cases[0]
    for label, legs in (("upload", first.upload), ("fetch_url", first.fetch)):
        if legs:
            print(f"  the job's log ({first.label}, {label}, round 1):")
            for line in legs[0].lines:
                print(f"    {line}")


async def offline_bench(options: argparse.Namespace, work: Path) -> None:
    print(f"bench/offline.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"  sysupd {revision()}")
    print(
        f"  work directory {work} ({shutil.disk_usage(work).free / (1 << 30):.0f} GiB free);"
        " page cache warm (the bundle is read before every round); sync before every timed"
        " step; a fresh state directory and `sysupd serve` process for every update; the"
        f" service's argon2id cost is cheap ({', '.join(f'{k}={v}' for k, v in KDF.items())})"
    )
    bench = OfflineBench(options, work)
    init_repo(bench.repo, bench.build_log)
    specs = [("raw", options.mib, "1.0.0", options.runs)]
    if options.rss_2g:
        specs.append(("raw-2g", RSS_2G_MIB, "2.0.0", 1))
    print(f"building releases and bundles with `{shlex.join(sysupd_command())} release ...`")
    cases = [bench.build(*spec) for spec in specs]
    with nginx_serving(work / "bundles", work / "nginx") as url:
        bench.url = url
        print(f"measuring (nginx at {url})", flush=True)
        for case in cases:
            await bench.measure(case)
            if not options.keep:  # free the space before the 2 GiB case
                for path in (
                    case.bundle,
                    case.slot_b,
                    case.slot_b.with_name(f"{case.label}-A.img"),
                ):
                    remove(path)
    print_offline_summary(cases)
    if options.py_spy:
        for case in cases:
            for kind in ("upload", "fetch"):
                path = work / "profiles" / f"{case.label}-{kind}-0.txt"
                print(f"\nHOT SPOTS of sysupd serve, {case.label} {kind} round 1 (py-spy {path}):")
                for line in hot_spots(path):
                    print(f"  {line}")


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--mib", type=int, default=DEFAULT_MIB, help="image size in MiB")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each update, each baseline)")
    parser.add_argument(
        "--rss-2g",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also one round with a {RSS_2G_MIB} MiB image, for peak RSS"
        " [default: on when --mib is the default]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, help="parent of the work directory [default: /tmp]")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed to one timed step"
    )
    parser.add_argument(
        "--py-spy",
        metavar="BIN",
        help="sample every sysupd serve during its update with this py-spy binary and print its"
        " hot spots (collapsed stacks in the work directory's profiles/, kept with --keep)",
    )
    options = parser.parse_args(argv)
    if options.mib <= 0 or options.runs <= 0 or options.timeout <= 0:
        parser.error("--mib, --runs and --timeout must be greater than 0")
    if options.rss_2g is None:
        options.rss_2g = options.mib == DEFAULT_MIB
    return options


def _time_limit(options: argparse.Namespace) -> int:
    gib = options.mib / 1024
    limit = 300 + gib * (90 + options.runs * 150)
    if options.rss_2g:
        limit += 2 * (90 + 150)
    return int(limit)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the verdicts, 1 if it could not run."""
    options = _options(argv)

    def body() -> None:
        with workdir(options.workdir, "sysupd-bench-offline-", options.keep) as work:
            asyncio.run(offline_bench(options, work))

    return run_main("bench/offline.py", _time_limit(options), body)


if __name__ == "__main__":
    sys.exit(main())
