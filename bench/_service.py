"""A running ``sysupd serve``, nginx beside it, and py-spy on it: what the API benchmarks share.

Every process started here is registered with the harness's ``CHILDREN``, so ``run_main`` ends it
whatever happens; only 127.0.0.1 is used, with kernel-chosen or just-free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    CHILDREN,
    HOST,
    BenchError,
    free_port,
    proc_status_kib,
    remove,
    run_quiet,
    spawn,
    sysupd_command,
    tail,
)
from _releases import device_config

__all__ = [
    "ADMIN",
    "KDF",
    "Serve",
    "add_admin",
    "hot_spots",
    "nginx_serving",
    "sampled",
    "service_config",
    "start_serve",
    "stop_serve",
]

KDF = {"kdf_time_cost": 1, "kdf_memory_kib": 8192, "kdf_parallelism": 1}  # a cheap Argon2id
ADMIN = ("bench-admin", "bench-admin-password")

_START_TIMEOUT_S = 60.0


def service_config(path: Path, repo: Path, slots: Sequence[Path], **extra: object) -> Path:
    """The service's TOML: a device's, with no automatic reboot, quick events, a cheap KDF."""
    return device_config(path, repo, slots, auto_reboot=False, event_interval_s=1, **KDF, **extra)


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
    popen = spawn([nginx_binary(), "-c", str(config), "-p", str(work)], out)
    try:
        deadline = time.monotonic() + 20
        while True:
            if popen.poll() is not None:
                raise BenchError(f"nginx exited at start: {tail(out)} {tail(work / 'error.log')}")
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
    popen = spawn(command, out, limit)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _LISTENING.search(out.read_text(errors="replace"))
        if found is not None:
            return Serve(popen, int(found.group(1)), int(found.group(2)), state_dir, out)
        if popen.poll() is not None:
            break
        await asyncio.sleep(0.02)
    CHILDREN.end(popen)
    raise BenchError(f"sysupd serve did not start; end of {out}:\n{tail(out)}")


def stop_serve(serve: Serve) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it lingers.

    Raises:
        BenchError: it did not exit cleanly.
    """
    code = CHILDREN.end(serve.popen)
    if code not in (0, -signal.SIGTERM):
        raise BenchError(f"sysupd serve exited with {code}; end of {serve.out}:\n{tail(serve.out)}")


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
    popen = spawn(command, log)
    try:
        deadline = time.monotonic() + 20
        while "Sampling process" not in log.read_text(errors="replace"):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"py-spy did not start sampling: {tail(log)}")
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
